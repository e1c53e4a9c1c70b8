"""Server CPU per request of a bare asyncio protocol server (issue 13): 16 KiB
files, 100 keep-alive connections, wrk as the load.

Each contender is its own server process: the stock asyncio loop (or uvloop,
--loop uvloop), one thread, an asyncio.Protocol (no streams, no zcsend.server)
that finds the end of each HTTP/1.1 GET (the first b"\\r\\n\\r\\n"; pipelined
requests are answered in order) and answers it with the same 16 KiB file. Every
connection has one serving coroutine, woken by data_received with the number of
requests waiting; it writes the response head and sends the body. The
contenders differ only in how the body goes:

  zcsend          transport.write(head); await zcsend.sendfile(transport, f, 0, size)
  zcsend, head=   await zcsend.sendfile(transport, f, 0, size, head=head)
  read+write      f.seek(0); transport.write(head); transport.write(f.read(65536))
                  per 64 KiB (one write for 16 KiB), awaiting resume_writing when
                  the protocol is paused, as a correct protocol server does
  loop.sendfile   transport.write(head); await loop.sendfile(transport, f, 0, size)
                  (not on uvloop, which has no loop.sendfile)

each twice: "open per request" (open() and close() around every response, as a
static file server does: a file may change or go between requests) and "file
kept open" (one file object per connection, opened when it is made).

Before measuring, every server's answer is checked byte for byte (one request,
then two pipelined in one write) and warmed by a wrk run. Then, --runs times,
round-robin over the contenders (so the machine's drift spreads evenly):
`wrk -t1 -c100 -d{secs}s`, and server CPU per request = the server process's
user + system CPU (all its threads, /proc/PID/stat) over the wrk run / the
requests wrk completed, and client sleeps per request = wrk's voluntary context
switches (getrusage of the waited child) over the requests. Any non-2xx answer,
socket error or server traceback fails the run. --pin: servers on core 0, wrk
on the others (as run.py --pin; zcsend's engine thread then shares the loop's
core).

Client sleeps per request is in the table because server CPU per request
follows it on this VM more than any server's own code: whenever wrk sleeps, the
server's next send pays for waking it (an interprocessor interrupt, in
sock_def_readable under sendfile or sendto: 12% of the zcsend server's
samples open per request, 6% kept open), and a slower server leaves wrk asleep
more often. Measured 2026-11-29 across these contenders: about 40 us more
server CPU per request per client sleep per request (0.16 sleeps: 32 us; 0.91:
63 us). A response whose head goes out apart from its body (zcsend without
head=: the head's write, then zcsend's checks, then the body) can wake wrk
twice (0.9 sleeps per request).
Compare servers at similar sleeps per request, or read it as part of the cost.

The same holds for the request rate: a server that wrk keeps saturated does more
work per request than one idling between requests in a delayed-ACK rhythm
(measured 2026-11-29, 1 MiB: head= at 5,900 requests/s spent 157 us per request,
at 1,900 requests/s without MSG_MORE 96-124 us). --rate R compares at equal
throughput: each of wrk's 100 connections waits 100/R s before each request
(wrk's Lua delay()), so every contender that can serve R requests/s serves
about R (a little less: the delay adds to each response's own time).

Prints median (min-max) of the runs, and the issue 13 ratio: each zcsend
variant's CPU per request over read+write's with the same file handling
(target: <= 1.00x).

    python benchmarks/bare.py [--runs 5] [--secs 2] [--loop asyncio|uvloop] [--pin] [--quick]
                              [--size KiB] [--rate REQUESTS_PER_S]
"""
import argparse
import asyncio
import os
import re
import resource
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _process import ServerProcess, pinned  # noqa: E402

# the file's size: --size KiB (16 by default), handed to the server processes
# through the environment
SIZE = int(os.environ.get("ZCS_BARE_SIZE", 16 << 10))
CHUNK = 64 << 10


def _head(size):
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size)


HEAD = _head(SIZE)
BODIES = ["zcsend", "zcsend, head=", "read+write", "loop.sendfile"]
OPENS = {"request": "open per request", "connection": "file kept open"}
CONTENDERS = [(b, o) for b in BODIES for o in OPENS]
TARGET = "read+write"


def label(body, how):
    return f"{body} ({OPENS[how]})"


# ---------------------------------------------------------------- the server

def serve(body, how, path, kind, deadline):
    import zcsend
    loop_box = []

    async def zc(c, f):
        c.t.write(HEAD)
        await zcsend.sendfile(c.t, f, 0, SIZE)

    async def zc_head(c, f):
        await zcsend.sendfile(c.t, f, 0, SIZE, head=HEAD)

    async def read_write(c, f):
        f.seek(0)
        c.t.write(HEAD)
        left = SIZE
        while left:
            data = f.read(min(CHUNK, left))
            if not data:
                raise EOFError(f"{path} ended {left} bytes early")
            c.t.write(data)
            left -= len(data)
            if c.paused is not None:
                await c.paused
            if c.t.is_closing():
                return  # wrk went mid-answer: writing on would only log asyncio's warnings

    async def loop_sendfile(c, f):
        c.t.write(HEAD)
        await loop_box[0].sendfile(c.t, f, 0, SIZE)

    send = {"zcsend": zc, "zcsend, head=": zc_head, "read+write": read_write,
            "loop.sendfile": loop_sendfile}[body]

    class Conn(asyncio.Protocol):
        def connection_made(self, transport):
            self.t, self.buf, self.pending = transport, b"", 0
            self.wake = self.paused = None
            self.closed = False
            self.f = open(path, "rb") if how == "connection" else None
            self.task = loop_box[0].create_task(self.serve())

        def data_received(self, data):
            buf = self.buf + data if self.buf else data
            start = 0
            while True:
                end = buf.find(b"\r\n\r\n", start)
                if end < 0:
                    break
                self.pending += 1
                start = end + 4
            self.buf = buf[start:]
            if self.pending and self.wake is not None and not self.wake.done():
                self.wake.set_result(None)

        def eof_received(self):
            return False  # close

        def connection_lost(self, exc):
            self.closed = True
            for fut in (self.wake, self.paused):
                if fut is not None and not fut.done():
                    fut.set_result(None)

        def pause_writing(self):
            self.paused = loop_box[0].create_future()

        def resume_writing(self):
            fut, self.paused = self.paused, None
            if fut is not None and not fut.done():
                fut.set_result(None)

        async def serve(self):
            loop = loop_box[0]
            try:
                while True:
                    while not self.pending:
                        if self.closed:
                            return
                        self.wake = loop.create_future()
                        await self.wake
                        self.wake = None
                    if self.closed:
                        return
                    self.pending -= 1
                    if self.f is not None:
                        await send(self, self.f)
                    else:
                        with open(path, "rb") as f:
                            await send(self, f)
            except (ConnectionError, BrokenPipeError):
                pass  # wrk closes its connections when its time is up, mid-answer or not
            except Exception:
                if not (self.closed or self.t.is_closing()):
                    import traceback
                    traceback.print_exc()
                self.t.abort()
            finally:
                if self.f is not None:
                    self.f.close()

    async def main():
        loop = asyncio.get_running_loop()
        loop_box.append(loop)
        srv = await loop.create_server(Conn, "127.0.0.1", 0, backlog=1024)
        print(srv.sockets[0].getsockname()[1], flush=True)
        done = loop.create_future()
        # stop by itself: when the parent goes (stdin's end closes) or at the deadline
        loop.add_reader(0, lambda: os.read(0, 1) or (done.done() or done.set_result(None)))
        loop.call_later(deadline, lambda: done.done() or done.set_result(None))
        await done
        srv.close()

    if kind == "uvloop":
        import uvloop
        uvloop.install()
    asyncio.run(main())


# ---------------------------------------------------------------- the parent

SERVER_CPUS, CLIENT_CPUS = [], []


def pin():
    global SERVER_CPUS, CLIENT_CPUS
    SERVER_CPUS, CLIENT_CPUS = pinned("bare.py")


class Server(ServerProcess):
    """A --serve child: it binds port 0 itself and says which port on stdout."""

    def __init__(self, name, argv, log, start_timeout=20):
        self.name = name
        self.log = log
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, start_new_session=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"{name}: no port from the server (code {self.proc.returncode}); "
                               f"log: {log.name}")
        self.port = int(line)

    def stop(self):
        super().stop()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()


def recv_answer(s, buf):
    """One HTTP answer from s (buf: bytes already read): (status line, body, rest)."""
    while b"\r\n\r\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"connection closed in the head: {buf[:200]!r}")
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = None
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    if length is None:
        raise AssertionError(f"no Content-Length: {head!r}")
    while len(buf) < length:
        data = s.recv(65536)
        if not data:
            raise AssertionError(f"connection closed after {len(buf)} of {length} body bytes")
        buf += data
    return lines[0], buf[:length], buf[length:]


def verify(server, want):
    """The server's answers are the file, byte for byte: one request, then two
    pipelined in one write, on one keep-alive connection."""
    req = b"GET /f16 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        rest = b""
        for n in (1, 2):
            s.sendall(req * n)
            for _ in range(n):
                status, body, rest = recv_answer(s, rest)
                if not status.startswith(b"HTTP/1.1 200") or body != want:
                    raise AssertionError(f"{server.name}: wrong answer ({status!r}, "
                                         f"{len(body)} bytes, equal: {body == want})")
        if rest:
            raise AssertionError(f"{server.name}: {len(rest)} bytes more than asked for")


CONNECTIONS = 100
WRK_SCRIPT = []  # --rate: ["-s", a script whose delay() paces every connection]


def pace(rate, tmp):
    """wrk's arguments for about rate requests/s over all its connections"""
    path = os.path.join(tmp, "pace.lua")
    with open(path, "w") as f:
        f.write(f"function delay() return {round(CONNECTIONS * 1000 / rate)} end\n")
    return ["-s", path]


def wrk(server, secs):
    """(requests completed, requests/s, wrk's voluntary context switches)"""
    argv = CLIENT_CPUS + ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{secs}s"] + WRK_SCRIPT + [
        f"http://127.0.0.1:{server.port}/f16"]
    sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - sleeps  # taskset execs wrk
    text = out.stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if out.returncode or "Requests/sec:" not in text or not m:
        raise RuntimeError(f"wrk on {server.name}: {out.stderr.strip() or text}")
    bad = [line.strip() for line in text.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    if bad:
        raise RuntimeError(f"wrk on {server.name}: " + "; ".join(bad) + "\n" + text)
    return int(m.group(1)), float(text.split("Requests/sec:")[1].split()[0]), sleeps


def check_log(server):
    server.log.flush()
    with open(server.log.name) as f:
        text = f.read()
    if text.strip():
        raise RuntimeError(f"{server.name} wrote to stderr:\n{text}")


def measure(server, secs):
    c0 = server.cpu()
    requests, rps, sleeps = wrk(server, secs)
    time.sleep(0.1)  # the connections' ends, which the run caused
    cpu = server.cpu() - c0
    if not requests:
        raise RuntimeError(f"{server.name}: no request completed in {secs} s")
    return cpu / requests * 1e6, rps, sleeps / requests


def fmt(xs, spec):
    return f"{statistics.median(xs):{spec}} ({min(xs):{spec}}-{max(xs):{spec}})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--secs", type=int, default=2, help="seconds of each wrk run (whole seconds)")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--pin", action="store_true", help="servers on core 0, wrk on the others")
    ap.add_argument("--quick", action="store_true", help="1 run of 1 s per contender (CI smoke)")
    ap.add_argument("--size", type=int, help="KiB per file (default 16)")
    ap.add_argument("--rate", type=float, help="requests/s wrk asks for (default: as many as served)")
    ap.add_argument("--serve", nargs=5, metavar=("BODY", "OPEN", "PATH", "LOOP", "DEADLINE"),
                    help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.serve:
        body, how, path, kind, deadline = opts.serve
        return serve(body, how, path, kind, float(deadline))
    runs, secs = (1, 1) if opts.quick else (opts.runs, opts.secs)
    if opts.size:  # this process's, and (through the environment) the servers'
        global SIZE, HEAD
        SIZE = opts.size << 10
        HEAD = _head(SIZE)
        os.environ["ZCS_BARE_SIZE"] = str(SIZE)
    if opts.pin:
        pin()
    if opts.loop == "uvloop":
        __import__("uvloop")  # fail here, not in six servers
    import zcsend
    contenders = [c for c in CONTENDERS if not (opts.loop == "uvloop" and c[0] == "loop.sendfile")]
    skipped = [c for c in CONTENDERS if c not in contenders]
    # every server stops by itself after this long, should this process die without stopping it
    deadline = 120 + len(contenders) * (runs + 1) * (secs + 2) * 2
    tmp = tempfile.mkdtemp(prefix="zcs-bare-")
    path = os.path.join(tmp, "f16")
    want = os.urandom(SIZE)
    with open(path, "wb") as f:
        f.write(want)
    if opts.rate:
        WRK_SCRIPT[:] = pace(opts.rate, tmp)
    servers = []
    try:
        for body, how in contenders:
            name = label(body, how)
            log = open(os.path.join(tmp, f"{len(servers)}.log"), "w+")
            argv = SERVER_CPUS + [sys.executable, os.path.abspath(__file__), "--serve",
                                  body, how, path, opts.loop, str(deadline)]
            servers.append(Server(name, argv, log))
        for s in servers:
            verify(s, want)
            wrk(s, 1)  # warm: caches, allocator, every path a 100-connection run takes
            verify(s, want)
            check_log(s)
        results = {s.name: [] for s in servers}
        for run in range(runs):
            print(f"bare.py: run {run + 1} of {runs}", file=sys.stderr, flush=True)
            k = run % len(servers)  # each run starts one further along
            for s in servers[k:] + servers[:k]:
                results[s.name].append(measure(s, secs))
                check_log(s)
    finally:
        for s in servers:
            s.stop()
            s.log.close()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)

    paced = f", paced to {opts.rate:,.0f} requests/s" if opts.rate else ""
    print(f"\nBare asyncio protocol server, {SIZE / 1024:g} KiB file, wrk -t1 -c{CONNECTIONS} -d{secs}s{paced} "
          f"({opts.loop}, backend {zcsend.backend()}, {'pinned: server core 0, wrk the others' if opts.pin else 'unpinned'}; "
          f"median of {runs} (min-max); Python {sys.version.split()[0]}, {os.cpu_count()} cores)\n")
    print("| contender | server CPU us/request | requests/s | client sleeps/request |")
    print("|---|---|---|---|")
    for body, how in CONTENDERS:
        name = label(body, how)
        if (body, how) in skipped:
            print(f"| {name} | n/a ({opts.loop} has no loop.sendfile) | n/a | n/a |")
            continue
        cpu = [r[0] for r in results[name]]
        rps = [r[1] for r in results[name]]
        sleeps = [r[2] for r in results[name]]
        print(f"| {name} | {fmt(cpu, '.1f')} | {fmt(rps, ',.0f')} | {fmt(sleeps, '.2f')} |")
    print()
    for how in OPENS:
        base = statistics.median(r[0] for r in results[label(TARGET, how)])
        for body in ("zcsend", "zcsend, head="):
            med = statistics.median(r[0] for r in results[label(body, how)])
            ratio = med / base
            print(f"issue 13 target: {label(body, how)} <= {label(TARGET, how)} server CPU per request: "
                  f"{ratio:.2f}x ({'met' if ratio <= 1.0 else 'not met'})")
    if "loop.sendfile" in (c[0] for c in contenders):
        for how in OPENS:  # the 1 MiB target; printed at every size, as a ratio to read
            ours = statistics.median(r[0] for r in results[label("zcsend", how)])
            theirs = statistics.median(r[0] for r in results[label("loop.sendfile", how)])
            print(f"loop.sendfile / zcsend server CPU per request ({OPENS[how]}): {theirs / ours:.2f}x "
                  f"(issue 13's target at 1 MiB: >= 1.40x)")


if __name__ == "__main__":
    main()
