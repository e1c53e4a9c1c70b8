"""Cold page cache (issue 13 §3 and §5): does a file that is not in memory hold
up the event loop, or the transfers beside it?

A server process (asyncio, one loop) answers one-byte requests on 127.0.0.1:
'0'..'3' send one of N cold files (evicted from the page cache before each run
with fsync + posix_fadvise(DONTNEED); on /var/tmp, which is a real disk, not a
tmpfs; --warm, the control, reads them into the cache instead) and close;
'h' sends a small cached ("hot") file and waits for the next request. The
server measures its own loop lag: the lateness of a 1 ms asyncio.sleep,
sampled while at least one cold stream runs. N client processes read the cold
files (slowly: --pace KiB per ms at most, so the streams last and the clients
leave the 2 cores to the server), while this process asks for the hot file
again and again on one connection and times request -> last byte; the same hot
requests are timed with no cold stream ("alone"). Contenders:

  zcsend                       zcsend.sendfile as the library runs it: a hot
                               transfer is stepped on the loop thread (it is all
                               in the page cache), a cold one goes to the engine
  zcsend (hot via the engine)  every transfer handed to the engine (no inline step):
                               hot ones then share the engine thread with the
                               cold ones (issue 13 §3: a cold file never stalls a
                               hot one)
  zcsend (engine prefetch off) the same with ZCSEND_ENGINE_PREFETCH=0: the engine
                               thread steps cold ranges itself (before issue 13 §3)
  asyncio loop.sendfile        the loop's own native sendfile
  read + write                 64 KiB f.read() + writer.write() + drain()

For every lag sample over 2 ms the server also reads its loop thread's
/proc/thread-self/schedstat around it: how much of the stall the thread spent
runnable, waiting for a CPU (other threads had both cores), how much running
(its own code: its CPU clock), and so how much blocked (asleep past its 1 ms:
a syscall that waits, the disk; or a late wake-up). The table counts the
stalls by where most of each went; the per-run lines give each as [lag,
waiting, running] ms.

Prints a markdown table: medians over --runs (min-max where runs > 1), and the
issue's targets (loop lag never above 2 ms; hot p99 beside N cold streams within
1.5x of alone).

    python benchmarks/cold.py [--runs 3] [--cold-size 64] [--streams 4] [--quick]
                              [--watch MS] [--read-mbps MB] [--warm] [--only NAMES]

--read-mbps puts the server in a cgroup that caps its disk reads, its own files
locked in memory first (tests/python/throttle.py's join_throttled, which is why
this script reads that directory).
"""
import argparse
import asyncio
import faulthandler
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from throttle import evict, join_throttled, warm  # noqa: E402 (tests/python/throttle.py: the cold tests use them too)

MiB = 1 << 20
STALL = 0.002  # a lag sample over issue 13's bound: the server says where its time went
CONTENDERS = [
    ("zcsend", "zcsend", {}),
    ("zcsend (hot via the engine)", "zcsend-engine", {}),
    ("zcsend (engine prefetch off)", "zcsend-engine", {"ZCSEND_ENGINE_PREFETCH": "0"}),
    ("asyncio loop.sendfile", "loop", {}),
    ("read + write", "readwrite", {}),
]


# ---- the server (a process of its own) -------------------------------------------
def thread_cpu():
    """CPU seconds of this process's threads by name (/proc/self/task/*/stat;
    zcsend names its threads zcs-engine and zcs-prefetch)"""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def prefetch_threads():
    """zcsend's engine prefetch threads in this process (started on the first cold
    range the engine met); 0 where zcsend is not in use."""
    core = sys.modules.get("zcsend._zcsend")
    return core.engine_stats()["workers"] if core else 0


def serve(mode, hot, cold, lifetime):
    if mode.startswith("zcsend"):
        import zcsend  # before the files are locked in
        if mode == "zcsend-engine":
            zcsend._core.INLINE_BUDGET = 0  # cold ones go to the engine regardless
    cg = os.environ.pop("ZCS_COLDBENCH_CGROUP", None)
    if cg:  # --read-mbps: this process (and every thread it starts) reads the disk slowly,
        join_throttled(cg)  # its own files locked in first (or it raises): a fault on its code would count as a stall
    watch_ms = float(os.environ.pop("ZCS_COLDBENCH_WATCH_MS", 0))

    async def main():
        loop = asyncio.get_running_loop()
        active = 0
        alone = False  # set by an 'A' request: the hot-alone phase
        lags, lags_alone, stalls = [], [], []
        quit_ = loop.create_future()

        # where a stall's time went: the loop thread's time runnable, waiting for a
        # CPU (schedstat's second field, Documentation/scheduler/sched-stats; updated
        # as the thread gets a CPU, so whole by the time it reads it), and its time
        # on one (its own CPU clock: schedstat's first field misses the current run)
        try:
            sched = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            if os.pread(sched, 128, 0).split()[:2] == [b"0", b"0"]:  # no sched_info here
                os.close(sched)
                sched = None
        except OSError:
            sched = None

        def counters():
            waited = int(os.pread(sched, 128, 0).split()[1]) if sched is not None else 0
            return waited, time.thread_time_ns()

        async def sampler():
            while True:
                t = loop.time()
                w0, r0 = counters()
                await asyncio.sleep(0.001)
                lag = loop.time() - t - 0.001
                if active:
                    lags.append(lag)
                    if lag > STALL and sched is not None:
                        w1, r1 = counters()
                        stalls.append([lag, (w1 - w0) / 1e9, (r1 - r0) / 1e9])
                elif alone:
                    lags_alone.append(lag)

        async def send(w, path):
            with open(path, "rb") as f:
                if mode.startswith("zcsend"):
                    await zcsend.sendfile(w, f)
                elif mode == "loop":
                    await loop.sendfile(w.transport, f)
                else:
                    while True:
                        chunk = f.read(64 << 10)
                        if not chunk:
                            break
                        w.write(chunk)
                        await w.drain()

        async def handle(r, w):
            nonlocal active, alone
            try:
                while True:
                    req = await r.read(1)
                    if not req:
                        return
                    if req == b"q":
                        w.write(json.dumps({"lags": lags, "lags_alone": lags_alone, "stalls": stalls,
                                            "prefetch_threads": prefetch_threads(),
                                            "thread_cpu": thread_cpu()}).encode())
                        await w.drain()
                        quit_.set_result(None)
                        return
                    if req in (b"A", b"a"):  # the hot-alone phase starts, ends
                        alone = req == b"A"
                        continue
                    if req == b"h":
                        await send(w, hot)
                        continue
                    active += 1
                    alone = False
                    try:
                        await send(w, cold[int(req)])
                    finally:
                        active -= 1
                    return
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass  # a client gone; or the server quitting while an idle connection waits
            finally:
                w.close()

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(srv.sockets[0].getsockname()[1], flush=True)
        task = asyncio.ensure_future(sampler())
        if watch_ms:  # --watch: faulthandler's own thread (no GIL) dumps a stalled loop's stack
            def rearm():
                if not quit_.done():
                    faulthandler.dump_traceback_later(watch_ms / 1e3, file=sys.stderr)
                    loop.call_later(0.001, rearm)
            rearm()
        try:
            await asyncio.wait_for(quit_, lifetime)  # ends by itself if the driver is gone
        finally:
            task.cancel()
            srv.close()
            faulthandler.cancel_dump_traceback_later()
    asyncio.run(main())


# ---- a cold client (a process of its own) ----------------------------------------
def cold_client(port, idx, pace):
    """Reads cold file idx to EOF, sleeping 1 ms after every pace KiB."""
    pace <<= 10
    print("ready", flush=True)  # started: the driver starts every stream at once
    sys.stdin.readline()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(str(idx).encode())
    print("go", flush=True)
    cpu0 = time.process_time()
    got = 0
    buf = bytearray(pace)
    while True:
        n = s.recv_into(buf)
        if not n:
            break
        if (got + n) // pace != got // pace:
            time.sleep(0.001)
        got += n
    s.close()
    print(got, time.process_time() - cpu0, flush=True)  # bytes; its CPU seconds while streaming


# ---- the driver --------------------------------------------------------------------
def hot_request(s, size, buf):
    t0 = time.perf_counter()
    s.sendall(b"h")
    got = 0
    while got < size:
        n = s.recv_into(buf)
        if not n:
            raise RuntimeError("server closed the hot connection")
        got += n
    return time.perf_counter() - t0


def steal_ms():
    """Time this VM's vCPUs were runnable but the host ran something else
    (/proc/stat's steal, all CPUs), in ms: a guest thread can't run, nor its
    timer fire, then."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class ReadLimit:
    """--read-mbps: a cgroup (v1 blkio, else v2 io) capping the disk reads of the
    processes put in it (the server) at mbps MB/s on the device behind path,
    for a disk slower than this machine's; removed on exit. Needs root."""

    def __init__(self, path, mbps):
        dev = os.stat(path).st_dev
        spec = f"{os.major(dev)}:{os.minor(dev)}"
        bps = mbps * 1000 * 1000
        if os.path.isdir("/sys/fs/cgroup/blkio"):
            self.dir = f"/sys/fs/cgroup/blkio/zcs-coldbench-{os.getpid()}"
            os.mkdir(self.dir)
            with open(os.path.join(self.dir, "blkio.throttle.read_bps_device"), "w") as f:
                f.write(f"{spec} {bps}")
        else:
            self.dir = f"/sys/fs/cgroup/zcs-coldbench-{os.getpid()}"
            os.mkdir(self.dir)
            with open(os.path.join(self.dir, "io.max"), "w") as f:
                f.write(f"{spec} rbps={bps}")

    def close(self):
        for _ in range(50):  # the server has exited; its cgroup empties soon after
            try:
                os.rmdir(self.dir)
                return
            except OSError:
                time.sleep(0.1)


def one_run(mode, env, hot, hot_size, cold, args):
    for path in cold:
        (warm if args.warm else evict)(path)
    argv = [sys.executable, os.path.abspath(__file__), "--serve", mode, hot, *cold]
    if args.limit:
        env = {**env, "ZCS_COLDBENCH_CGROUP": args.limit.dir}
    if args.watch:
        env = {**env, "ZCS_COLDBENCH_WATCH_MS": str(args.watch)}
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
    clients = []
    try:
        port = int(server.stdout.readline())
        hs = socket.create_connection(("127.0.0.1", port))
        hs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(max(hot_size, 1 << 16))
        for _ in range(10):  # warm-up: the engine thread, the page cache, the connection
            hot_request(hs, hot_size, buf)
        hs.sendall(b"A")
        alone = [hot_request(hs, hot_size, buf) for _ in range(args.hot_requests)]
        hs.sendall(b"a")
        for i in range(len(cold)):
            clients.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--client",
                                             str(port), str(i), str(args.pace)], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True))
        for c in clients:  # their interpreters' start-up is over before a stream starts
            assert c.stdout.readline().strip() == "ready"
        for c in clients:
            c.stdin.write("go\n")
            c.stdin.flush()
        for c in clients:
            assert c.stdout.readline().strip() == "go"
        t_go = time.monotonic()
        cpu0, steal0 = time.process_time(), steal_ms()
        beside = []
        while any(c.poll() is None for c in clients):
            beside.append(hot_request(hs, hot_size, buf))
        cold_secs = time.monotonic() - t_go
        stolen = steal_ms() - steal0
        # the load's own CPU on these 2 cores while the streams ran: the hot client
        # (this process) and the cold clients (each says its own)
        clients_cpu = time.process_time() - cpu0
        for c, path in zip(clients, cold):
            got, cpu = c.stdout.readline().split()
            assert int(got) == os.path.getsize(path), (got, path)
            clients_cpu += float(cpu)
        hs.close()  # its handler ends on EOF, before the server quits
        q = socket.create_connection(("127.0.0.1", port))
        q.sendall(b"q")
        data = b""
        while True:
            chunk = q.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        q.close()
        reply = json.loads(data)
        lags = reply["lags"]
        server.wait(30)
    finally:
        for p in clients + [server]:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {
        "lag_p99": pct(lags, 99) * 1e3, "lag_max": max(lags) * 1e3 if lags else float("nan"),
        "lag_samples": len(lags),
        "lag_p99_alone": pct(reply["lags_alone"], 99) * 1e3,
        "lag_max_alone": max(reply["lags_alone"], default=float("nan")) * 1e3,
        "hot_p50_alone": pct(alone, 50) * 1e3, "hot_p99_alone": pct(alone, 99) * 1e3,
        "hot_p50_beside": pct(beside, 50) * 1e3, "hot_p99_beside": pct(beside, 99) * 1e3,
        "hot_beside_n": len(beside), "prefetch_threads": reply["prefetch_threads"],
        # the cold streams together, until the last one ended (bounded by --pace)
        "cold_mbps": sum(os.path.getsize(p) for p in cold) / cold_secs / 1e6,
        # lag samples over 2 ms, by where most of the loop thread's time went
        "stalls": len(reply["stalls"]),
        **{f"stalls_{k}": sum(1 for st in reply["stalls"] if stall_cause(*st) == k) for k in STALL_CAUSES},
        "stall_ms": [[round(x * 1e3, 2) for x in st] for st in reply["stalls"]],
        "thread_cpu_s": reply["thread_cpu"],
        "clients_cpu_s": round(clients_cpu, 2), "cold_secs": round(cold_secs, 2),
        "steal_ms": stolen,  # while the streams ran: a "blocked" stall may be the host's
    }


STALL_CAUSES = ("waiting", "running", "blocked")


def stall_cause(lag, waiting, running):
    """Where most of a stall went. The sample spans the 1 ms sleep + lag, and
    waiting + running + asleep fill it, so waiting + running + blocked = lag,
    where blocked = asleep past the 1 ms the loop meant to sleep. waiting:
    runnable, for a CPU (the 2 cores' other threads had them: the load's own
    processes, the engine); running: the loop's own code (a step, a probe,
    Python); blocked: in a syscall that waits (the disk, a lock), or a wake-up
    that came late. Waiting or running inside the planned 1 ms counts too, so
    blocked can be below zero where the loop was busy."""
    blocked = lag - waiting - running
    return max(zip((waiting, running, blocked), STALL_CAUSES))[1]


def fmt(vals, digits=2):
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--streams", type=int, default=4, help="cold streams (at most 10)")
    ap.add_argument("--cold-size", type=int, default=64, help="MiB per cold file")
    ap.add_argument("--hot-size", type=int, default=64, help="KiB of the hot file")
    ap.add_argument("--hot-requests", type=int, default=300, help="hot requests timed alone")
    ap.add_argument("--read-mbps", type=int,
                    help="cap the server's disk reads at this many MB/s (a cgroup; needs root; "
                         "the server locks its own files in memory first)")
    ap.add_argument("--warm", action="store_true",
                    help="the control: the stream files read into the page cache before each run, not "
                         "evicted (the streams' CPU, no disk: what the hot requests pay for sharing the cores)")
    ap.add_argument("--only", help="comma-separated contender names")
    ap.add_argument("--quick", action="store_true", help="a smoke run: one run, small files")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--watch", type=float, metavar="MS",
                    help="print every server thread's Python stack when its loop stalls this long")
    ap.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--pace", type=int, default=64,
                    help="KiB a cold client reads per ms at most (it sleeps 1 ms after each)")
    ap.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        mode, hot, *cold = args.serve
        return serve(mode, hot, cold, 120)
    if args.client:
        return cold_client(*map(int, args.client))
    if args.quick:
        args.runs, args.cold_size, args.hot_requests = 1, 16, 50
    assert 1 <= args.streams <= 10
    d = tempfile.mkdtemp(prefix="zcs-coldbench-", dir="/var/tmp")
    args.limit = None
    try:
        if args.read_mbps:
            args.limit = ReadLimit(d, args.read_mbps)
        hot = os.path.join(d, "hot.bin")
        with open(hot, "wb") as f:
            f.write(os.urandom(args.hot_size << 10))
        cold = []
        for i in range(args.streams):
            path = os.path.join(d, f"cold{i}.bin")
            with open(path, "wb") as f:
                for _ in range(args.cold_size):
                    f.write(os.urandom(MiB))
            cold.append(path)
        hot_size = args.hot_size << 10
        wanted = set(args.only.split(",")) if args.only else None
        results = {}
        for r in range(args.runs):  # interleaved, so drift on the machine hits all alike
            for name, mode, env in CONTENDERS:
                if wanted and name not in wanted:
                    continue
                res = one_run(mode, env, hot, hot_size, cold, args)
                results.setdefault(name, []).append(res)
                print(f"run {r + 1} {name}: " + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()),
                    file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if args.limit:
            args.limit.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    how = "read into the page cache before each run: --warm, the control" if args.warm else "evicted before each run"
    print(f"\n{args.streams} cold files of {args.cold_size} MiB ({how}, "
          f"read at <= {args.pace} KiB/ms each"
          f"{f'; server disk reads capped at {args.read_mbps} MB/s' if args.read_mbps else ''}); hot file {args.hot_size} KiB"
          "; "
          f"medians of {args.runs} run(s), (min–max); times in ms\n")
    print("| server | loop lag p99 | loop lag max | loop lag p99 / max, no cold stream | hot p50 alone | hot p99 alone "
          f"| hot p50 beside {args.streams} cold | hot p99 beside {args.streams} cold "
          "| hot p99 beside / alone | cold streams MB/s | lag samples > 2 ms: all (waiting for a CPU / running / blocked) "
          "| lag max ≤ 2 ms | hot ratio ≤ 1.5 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        col = {k: [x[k] for x in runs] for k in runs[0] if k not in ("stall_ms", "thread_cpu_s", "steal_ms")}
        ratio = [x["hot_p99_beside"] / x["hot_p99_alone"] for x in runs]
        lag_ok = max(col["lag_max"]) <= 2.0
        ratio_ok = statistics.median(ratio) <= 1.5
        print(f"| {name} | {fmt(col['lag_p99'])} | {fmt(col['lag_max'])} "
              f"| {fmt(col['lag_p99_alone'])} / {fmt(col['lag_max_alone'])} | {fmt(col['hot_p50_alone'])} "
              f"| {fmt(col['hot_p99_alone'])} | {fmt(col['hot_p50_beside'])} | {fmt(col['hot_p99_beside'])} "
              f"| {fmt(ratio)}x | {fmt(col['cold_mbps'], 0)} "
              f"| {sum(col['stalls'])} ({' / '.join(str(sum(col['stalls_' + k])) for k in STALL_CAUSES)}) "
              f"| {'yes' if lag_ok else 'no'} "
              f"| {'yes' if ratio_ok else 'no'} |")


if __name__ == "__main__":
    main()
