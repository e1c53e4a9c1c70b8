#!/usr/bin/env python3
"""Cross-talk soak: many concurrent zcsend transfers with random faults, file
descriptors reused as fast as the kernel hands them out, and every byte checked.

    python3 tests/python/soak.py [--seconds 60] [--modes asyncio-tcp,uvloop-tls,...]

One process runs a server and its clients on one event loop per mode (asyncio or
uvloop; TCP, Unix socket or TLS). Each client connection sends requests ``"<conn>
<seq>\\n"``; the request's parameters (source, file, offset, count, head, bytes
written before the call, the faults to inject) sit in an in-process table, so the
server serves exactly what the client expects and each side records what it saw.
Sources: regular files (zero-copy, or the TLS write path), BytesIO, an object with
only read(), and pipes fed from the loop. Sizes from 0 B to 8 MiB, random offsets
(past the end too) and counts, heads, up to 1 MiB written before the call (so that
sendfile waits for the drain), small socket buffers on some connections. Besides the
connections with faults, "quiet" ones carry many small requests and no faults, and
idle ones ask for nothing at all.

Every file is position-encoded: each 8-byte block is (file id, block index), so a
byte from the wrong file or the wrong offset never matches. Heads and bytes written
before the call carry the connection and request number. The invariants (failure
categories):

- crosstalk: every byte a client reads is the byte it asked for, at that place;
  nothing arrives on a request or a connection that asked for nothing (idle
  connections, "nothing" requests, after the last response), nor on the sockets and
  pipes the fd churn holds, nor as a request line on the server; no TLS record is
  corrupt;
- count: sendfile's result, ``.bytes_sent`` and the file position are exact: equal to
  what the client got, or, where bytes can be lost after the fact (the client reset
  or closed, or a TLS transport was aborted), not less, and not more than what can be
  in flight (checked on connections with small socket buffers);
- unreported: an exception without ``.bytes_sent`` after bytes reached the client;
- outcome (README, Guarantees): a ``close()``/``abort()``, a cancel, or a reset while
  the transport still held bytes, during the call, is never a success; over TLS a
  success waits until the transport has passed every byte on to the socket; a source
  closed or replaced during the call doesn't end it (the call reads its own dup);
- hang: every sendfile ends, every client gets its bytes or an EOF;
- loop exception: nothing reaches the loop's exception handler;
- fds, active: fds and ``zcsend.stats()['active']`` are back where they were after
  each mode.

Faults, at random moments of a transfer: transport.close(), transport.abort(), task
cancel, closing the source, closing it and opening another file at once (which takes
the freed fd number when it is the lowest free one), dup2()ing another file onto the
source's fd while the source object still holds it; client resets (SO_LINGER 0),
closes, and stalls. Faults are armed once the call has begun. A thread opens and closes
files, pipes and socket pairs in a tight loop, and every close/abort fault is followed
by more of them, so freed fd numbers are taken again at once; the pipes and socket
pairs are checked for stray bytes before they are closed.

Exit status 1 when any invariant failed. ``tests/python/test_soak.py`` runs it briefly;
``scripts/soak.sh`` runs it for minutes."""
import argparse
import array
import asyncio
import collections
import gc
import io
import itertools
import json
import os
import random
import re
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import zcsend

try:
    import uvloop
except ImportError:  # the asyncio modes still run
    uvloop = None

MODES = ["asyncio-tcp", "asyncio-unix", "asyncio-tls", "uvloop-tcp", "uvloop-unix", "uvloop-tls"]

# The source files: sizes that end in the inline step, and sizes the engine (or the
# TLS write path) carries over many turns. Weights favour small ones: more transfers.
SIZES = [0, 1, 100, 4099, 16 << 10, (300 << 10) + 5, (2 << 20) + 7, (8 << 20) - 3]
SIZE_WEIGHTS = [3, 3, 6, 6, 8, 5, 2, 0.5]
QUIET_WEIGHTS = [3, 3, 6, 6, 8, 2, 0, 0]  # connections without faults: cheap transfers
SWAP_SIZES = [(8 << 20) + 1, 100]  # what a file swap puts at the source's fd number
CHURN_ID = 999
CHURN_PAUSE = 0.001
SMALL_BUF = 16 << 10  # SO_SNDBUF / SO_RCVBUF on "small" connections
# On a small-buffer connection, how far a reported count may run ahead of what the
# client got after it reset: kernel buffers, the client's StreamReader and TLS
# buffers, the server's TLS transport buffer and its chunks (up to 1.25 MiB measured
# over TLS), with room to spare.
IN_FLIGHT_BOUND = 2 << 20

# file-dup2 puts another file at the source's fd number while the source object still
# holds it: only a transfer that dup()s the fd when called is immune; its failures are
# counted apart ("... after dup2").
SERVER_FAULTS = {"close": 3, "abort": 3, "cancel": 3, "file-close": 2, "file-swap": 2, "file-dup2": 1}
DEFAULT_FAULTS = list(SERVER_FAULTS)
CLIENT_FAULTS = {"reset": 3, "close": 1, "stall": 2}
SOURCES = {"file": 14, "bytesio": 2, "reader": 2, "pipe": 2}


# ---- content ----------------------------------------------------------------------
def make_content(fid, size):
    """size bytes of 8-byte blocks (fid, block index), little-endian."""
    n = (size + 7) // 8
    a = array.array("I", bytes(8 * n))
    a[0::2] = array.array("I", [fid]) * n
    a[1::2] = array.array("I", range(n))
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()[:size]


def pattern(tag, cid, seq, n):
    """n bytes naming conn cid's request seq: heads (H) and bytes written before (P)."""
    unit = b"<%s%d.%d>" % (tag, cid, seq)
    return (unit * (n // len(unit) + 1))[:n]


class Corpus:
    """The files every mode sends, made once: {fid: (path, content)}."""

    def __init__(self, directory=None):
        self.own = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="zcs-soak-")
        self.files = {}
        for i, size in enumerate(SIZES):
            self._make(1 + i, size)
        self.sources = [1 + i for i in range(len(SIZES))]
        self.swaps = [self._make(101 + i, size) for i, size in enumerate(SWAP_SIZES)]
        self._make(CHURN_ID, 1 << 20)  # what the churn opens
        self._tls = None

    def _make(self, fid, size):
        data = make_content(fid, size)
        path = os.path.join(self.dir, "f%d" % fid)
        with open(path, "wb") as f:
            f.write(data)
        self.files[fid] = (path, data)
        return fid

    def path(self, fid):
        return self.files[fid][0]

    def tls_contexts(self):
        if self._tls is None:
            crt, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                            "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", crt],
                           check=True, capture_output=True)
            self._tls = crt, key
        crt, key = self._tls
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(crt, key)
        client = ssl.create_default_context(cafile=crt)
        return server, client

    def describe(self, data):
        """Where bytes come from, as far as they say: a head, bytes written before
        the call, or a file and offset."""
        data = bytes(data[:96])
        m = re.search(rb"<([HP])(\d+)\.(\d+)>", data)
        if m and m.start() < 16:
            what = "head" if m[1] == b"H" else "pre-written bytes"
            return f"{what} of conn {int(m[2])} request {int(m[3])}"
        for shift in range(8):
            n = (len(data) - shift) // 8
            if n < 2:
                break
            blocks = [struct.unpack_from("<II", data, shift + 8 * i) for i in range(n)]
            fid, idx = blocks[0]
            if fid in self.files and all(b == (fid, idx + i) for i, b in enumerate(blocks)):
                what = "the churn file" if fid == CHURN_ID else "swap file" if fid > 100 else "file"
                return f"{what} {fid} at offset {idx * 8 - shift}"
        m = re.match(rb"(\d+) (\d+)\n", data)
        if m:
            return f"the request line of conn {int(m[1])} request {int(m[2])}"
        return f"unrecognised bytes {data[:24]!r}"

    def close(self):
        if self.own:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---- process state ------------------------------------------------------------------
def fd_count():
    return len(os.listdir("/proc/self/fd"))


def rss_kib(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def raise_fd_limit(n=16384):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def new_loop_factory(kind):
    if kind == "uvloop":
        if uvloop is None:
            raise RuntimeError("uvloop is not installed")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_loop(kind, coro):
    """Runs coro on a new loop of this kind, then tidies up as asyncio.run does
    (asyncio.Runner is 3.11+)."""
    loop = new_loop_factory(kind)()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for t in tasks:
                t.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


if hasattr(asyncio, "timeout"):
    _timeout = asyncio.timeout  # cheaper than wait_for, which makes a task per call
else:  # Python 3.9, 3.10
    class _timeout:
        def __init__(self, delay):
            self.delay, self.expired = delay, False

        async def __aenter__(self):
            task = asyncio.current_task()

            def expire():
                self.expired = True
                task.cancel()
            self.handle = asyncio.get_running_loop().call_later(self.delay, expire)

        async def __aexit__(self, kind, exc, tb):
            self.handle.cancel()
            if self.expired and kind is asyncio.CancelledError:
                raise asyncio.TimeoutError


_warm = set()


def warm_up(kind):
    """One transfer on a throwaway loop of this kind, so the engine thread (and
    anything else zcsend keeps for the process) exists before fds are counted."""
    if kind in _warm:
        return
    _warm.add(kind)
    a, b = socket.socketpair()

    async def main():
        r, w = await asyncio.open_connection(sock=a)
        with tempfile.TemporaryFile() as f:
            f.write(b"x" * (1 << 20))
            f.flush()
            b.setblocking(False)
            loop = asyncio.get_running_loop()
            t = asyncio.ensure_future(zcsend.sendfile(w, f, 0))
            got = 0
            while got < (1 << 20):
                got += len(await loop.sock_recv(b, 1 << 20))
            await t
        w.close()

    run_loop(kind, main())
    b.close()
    gc.collect()


# ---- churn: fd numbers taken again as soon as they are freed -------------------------
class Churn:
    """Opens and closes the churn file, pipes and socket pairs; bytes found in a pipe
    or socket pair before it is closed were written to an fd that wasn't the writer's."""

    def __init__(self, soak):
        self.soak = soak
        self.path = soak.corpus.path(CHURN_ID)
        self.lock = threading.Lock()
        self.held = set()
        self.opened = 0

    def grab(self, rnd):
        k = rnd.random()
        if k < 0.4:
            obj = ("file", os.open(self.path, os.O_RDONLY))
        elif k < 0.7:
            r, w = os.pipe()
            os.set_blocking(r, False)
            obj = ("pipe", r, w)
        else:
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            obj = ("pair", a, b)
        with self.lock:
            self.held.add(obj)
            self.opened += 1
        return obj

    def release(self, obj):
        with self.lock:
            if obj not in self.held:
                return
            self.held.discard(obj)
        if obj[0] == "file":
            os.close(obj[1])
        elif obj[0] == "pipe":
            try:
                data = os.read(obj[1], 1 << 16)
            except (BlockingIOError, OSError):
                data = b""
            if data:
                self.soak.stray("churn pipe", data)
            os.close(obj[1])
            os.close(obj[2])
        else:
            for s in obj[1:]:
                try:
                    data = s.recv(1 << 16)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    self.soak.stray("churn socket pair", data)
                s.close()

    def run_thread(self, stop, seed):
        """The tight loop: bursts of opens and closes, a ring of up to 24 held."""
        rnd = random.Random(seed)
        ring = collections.deque()
        try:
            while not stop.is_set():
                for _ in range(32):
                    ring.append(self.grab(rnd))
                    keep = rnd.randint(0, 24)
                    while len(ring) > keep:
                        self.release(ring.popleft() if rnd.random() < 0.7 else ring.pop())
                time.sleep(CHURN_PAUSE)
        finally:
            while ring:
                self.release(ring.popleft())

    def burst(self, loop, rnd):
        """After a close or abort: take the freed numbers at once, again a little later
        (asyncio closes the socket one loop turn after close()), and hold them a while."""
        def take():
            objs = [self.grab(rnd) for _ in range(rnd.randint(1, 3))]
            loop.call_later(rnd.uniform(0.002, 0.03), lambda: [self.release(o) for o in objs])
        loop.call_soon(take)
        loop.call_later(0.0003, take)
        loop.call_later(0.002, take)

    def release_all(self):
        with self.lock:
            held = list(self.held)
        for obj in held:
            self.release(obj)


# ---- one request --------------------------------------------------------------------
class Job:
    __slots__ = ("cid", "seq", "kind", "src", "fid", "offset", "count", "call_off", "L", "extra", "head", "pre",
                 "sfault", "cfault", "small", "call", "regions", "total", "body_start",
                 # server side
                 "s_state", "s_res", "s_pos", "s_fault", "s_inflight", "s_pending",
                 # client side
                 "c_done", "c_pos", "c_fault", "c_corrupt", "c_err", "c_pending", "checked")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, None)

    def expected(self, pos, n):
        """The n bytes the client must see at stream position pos."""
        out = []
        for start, buf in self.regions:
            end = start + len(buf)
            if pos < end and pos + n > start:
                a = max(pos, start)
                b = min(pos + n, end)
                out.append(buf[a - start:b - start])
        return b"".join(out)

    def body_got(self):
        return max(0, min((self.c_pos or 0) - self.body_start, self.L))

    def __str__(self):
        src = f"{self.src} file {self.fid}" + (f" offset {self.offset}" if self.offset else "")
        parts = [f"conn {self.cid} req {self.seq}: {src} count {self.count} -> {self.L} B"]
        if self.head:
            parts.append(f"head {len(self.head)} B")
        if self.pre:
            parts.append(f"pre-written {len(self.pre)} B")
        if self.small:
            parts.append("small buffers")
        if self.s_fault:
            parts.append(f"server fault {self.s_fault} after {self.sfault[1] * 1000:.2f} ms")
        if self.c_fault:
            parts.append(f"client fault {self.c_fault} at byte {self.cfault[1]}")
        return ", ".join(parts)


class _ReadOnly:
    """A source with nothing but read()."""

    def __init__(self, f):
        self._f = f

    def read(self, n=-1):
        return self._f.read(n)


class _Feeder:
    """Writes data into a pipe from the event loop, then closes its end."""

    def __init__(self, loop, wfd, data):
        self.loop, self.w, self.data, self.pos = loop, wfd, memoryview(data), 0
        os.set_blocking(wfd, False)
        if not data:
            self.stop()
        else:
            loop.add_writer(wfd, self._write)

    def _write(self):
        try:
            self.pos += os.write(self.w, self.data[self.pos:self.pos + (1 << 16)])
        except BlockingIOError:
            return
        except OSError:
            self.stop()
            return
        if self.pos >= len(self.data):
            self.stop()

    def stop(self):
        if self.w is not None:
            self.loop.remove_writer(self.w)
            os.close(self.w)
            self.w = None


class _Source:
    """The object handed to sendfile, and what the faults do to it."""

    def __init__(self, soak, job):
        self.soak, self.job = soak, job
        self.f = self.b = self.feeder = None
        self.closed = self.swapped = False
        path, content = soak.corpus.files[job.fid]
        if job.src == "file":
            self.obj = self.f = open(path, "rb")
        elif job.src == "bytesio":
            self.obj = io.BytesIO(content)
        elif job.src == "reader":
            self.f = open(path, "rb")
            self.f.seek(job.offset)
            self.obj = _ReadOnly(self.f)
        else:  # pipe
            r, w = os.pipe()
            self.obj = self.f = open(r, "rb", buffering=0)
            data = content[job.offset:job.offset + job.L + job.extra]
            self.feeder = _Feeder(soak.loop, w, data)

    def fd(self):
        return None if self.f is None or self.f.closed else self.f.fileno()

    def close(self):
        (self.f if self.f is not None else self.obj).close()
        self.closed = True

    def swap(self, rnd):
        """Closes the source and opens another file at once: the lowest free fd
        number, the source's own when nothing below it is free."""
        fd = self.fd()
        self.close()
        if self.job.src in ("file", "pipe"):
            self.b = open(self.soak.corpus.path(rnd.choice(self.soak.corpus.swaps)), "rb")
            self.swapped = True
            return fd is not None and self.b.fileno() == fd
        return False

    def dup2(self, rnd):
        """Puts another file at the source's fd number, the source object none the wiser."""
        fd = self.fd()
        if fd is None or self.job.src not in ("file", "pipe"):
            return self.swap(rnd)
        self.b = open(self.soak.corpus.path(rnd.choice(self.soak.corpus.swaps)), "rb")
        os.dup2(self.b.fileno(), fd)
        self.swapped = True
        return True

    def position(self):
        if self.closed or self.swapped or self.job.src not in ("file", "bytesio"):
            return None
        return self.obj.tell()

    def cleanup(self):
        if self.feeder is not None:
            self.feeder.stop()
        for f in (self.f, self.obj, self.b):
            if f is not None and hasattr(f, "close"):
                try:
                    f.close()
                except OSError:
                    pass


def _where(exc):
    """Where an exception was raised: the innermost frames, then the outermost."""
    frames = traceback.extract_tb(exc.__traceback__)
    if len(frames) > 4:
        frames = frames[-2:] + frames[:2]
    else:
        frames = frames[::-1]
    return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames)


# ---- one mode ---------------------------------------------------------------------------
class Soak:
    def __init__(self, mode, corpus, seconds, *, seed=None, concurrency=None, fault_rate=0.35,
                 hang_timeout=30.0, read_timeout=30.0, server_faults=None, max_samples=40, quiet=None,
                 min_faults=0):
        self.mode = mode
        self.loop_kind, self.net = mode.split("-")
        self.tls = self.net == "tls"
        self.corpus = corpus
        self.seconds = seconds
        # Workers go on past `seconds` until this many server faults have landed (most
        # come after a small transfer is done: "faults too late"), for at most 4x as long.
        self.min_faults = min_faults
        self.overtime = 3 * seconds + 2  # past the deadline: the most they go on for that
        self.seed = random.randrange(1 << 30) if seed is None else seed
        self.concurrency = concurrency or (24 if self.tls else 48)
        self.quiet = quiet if quiet is not None else self.concurrency // 3
        self.fault_rate = fault_rate
        self.hang_timeout = hang_timeout
        self.read_timeout = read_timeout
        self.server_faults = {k: SERVER_FAULTS[k] for k in (server_faults or DEFAULT_FAULTS)}
        self.max_samples = max_samples
        self.c = collections.Counter()
        self.failures = collections.Counter()
        self.kinds = collections.Counter()
        self.samples = []
        self.jobs = {}
        self.cids = itertools.count(1)
        self.handlers = set()
        self.server_transports = {}  # conn id -> the server's transport, while it serves
        self.lock = threading.Lock()
        self.rnd = random.Random(self.seed ^ 0x5EED)

    # -- failures
    def fail(self, category, job, msg):
        if job is not None and job.s_fault == "file-dup2":
            category += " after dup2"  # the source's fd replaced under it, its object none the wiser
        if job is not None:  # what the request was: source kind, and the faults on it
            kind = f"{category}: {job.src or job.kind} source" + (f", {job.s_fault}" if job.s_fault else "") + (
                f", client {job.c_fault}" if job.c_fault else "")
        else:
            kind = f"{category}: {re.sub(r'[0-9]+', 'N', msg.split(':')[0][:60])}"
        with self.lock:
            self.failures[category] += 1
            self.kinds[kind] += 1
            if len(self.samples) < self.max_samples:
                self.samples.append(f"[{self.mode}] {category}: {msg}" + (f" ({job})" if job is not None else ""))

    def stray(self, where, data):
        self.fail("crosstalk", None, f"{len(data)} stray bytes in a {where}: {self.corpus.describe(data)}")

    # -- requests
    def new_job(self, rnd, cid, seq, small, quiet=False):
        """A request: what to send, and the faults to inject. quiet: no faults,
        files up to 300 KiB, a few pre-written bytes at most."""
        job = Job()
        job.cid, job.seq, job.small = cid, seq, small
        job.kind = "nothing" if rnd.random() < 0.05 else "send"
        job.c_pos = 0
        job.regions = []
        job.total = job.body_start = job.L = 0
        job.extra = 0
        self.jobs[cid, seq] = job
        if job.kind == "nothing":
            return job
        job.src = rnd.choices(list(SOURCES), list(SOURCES.values()))[0]
        job.fid = rnd.choices(self.corpus.sources, SIZE_WEIGHTS if not quiet else QUIET_WEIGHTS)[0]
        content = self.corpus.files[job.fid][1]
        size = len(content)
        if job.src == "pipe":
            job.offset = rnd.randint(0, size)
            job.L = rnd.randint(0, min(size - job.offset, 1 << 20))
            if job.L and rnd.random() < 0.5:
                job.count = job.L
                job.extra = min(size - job.offset - job.L, rnd.choice([1, 100, 1 << 16]))
            job.call_off = 0
        else:
            k = rnd.random()
            job.offset = 0 if k < 0.4 else rnd.randint(0, size) if k < 0.85 else size + rnd.choice([0, 1, 4096])
            left = max(0, size - job.offset)
            if rnd.random() < 0.4:
                job.count = None
                job.L = left
            else:
                job.count = rnd.randint(1, max(1, left)) + (rnd.choice([1, 1000]) if rnd.random() < 0.1 else 0)
                job.L = min(job.count, left)
            job.call_off = 0 if job.src == "reader" else job.offset
        if rnd.random() < 0.5:
            job.head = pattern(b"H", cid, seq, rnd.choice([1, 20, 200, 3000]))
        k = rnd.random()
        if k < 0.2:
            job.pre = pattern(b"P", cid, seq, rnd.randint(1, 4096))
        elif k < 0.27 and not quiet:  # more than the socket takes: sendfile waits for the drain
            job.pre = pattern(b"P", cid, seq, rnd.randint(64 << 10, 1 << 20))
        job.call = rnd.randrange(3)
        body = memoryview(content)[job.offset:job.offset + job.L]
        pos = 0
        for buf in (job.pre or b"", job.head or b"", body):
            job.regions.append((pos, buf))
            pos += len(buf)
        job.body_start = len(job.pre or b"") + len(job.head or b"")
        job.total = pos
        if quiet:
            return job
        if rnd.random() < self.fault_rate:
            kind = rnd.choices(list(self.server_faults), list(self.server_faults.values()))[0]
            d = rnd.random()
            delay = 0.0 if d < 0.3 else rnd.uniform(0, 0.001) if d < 0.6 else rnd.uniform(0, 0.01) \
                if d < 0.9 else rnd.uniform(0, 0.1)
            job.sfault = (kind, delay)
        if rnd.random() < self.fault_rate * 0.5:
            kind = rnd.choices(list(CLIENT_FAULTS), list(CLIENT_FAULTS.values()))[0]
            job.cfault = (kind, rnd.randint(0, job.total), rnd.uniform(0.005, 0.3), rnd.random() < 0.3)
        return job

    # -- server
    async def on_conn(self, reader, writer):
        task = asyncio.current_task()
        self.handlers.add(task)
        self.c["server connections"] += 1
        try:
            cid = None
            while True:
                try:
                    async with _timeout(self.hang_timeout):
                        line = await reader.readline()
                except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError, asyncio.TimeoutError):
                    break
                if not line or line == b"bye\n":
                    break
                job = self._parse(line, cid)
                if job is None:
                    self.fail("crosstalk", None, f"server read {line[:80]!r} where a request was due "
                              f"(conn {cid}): {self.corpus.describe(line)}")
                    break
                cid = job.cid
                self.server_transports[cid] = writer.transport
                if not await self.serve(job, writer):
                    break
        finally:
            writer.close()
            self.handlers.discard(task)
            self.server_transports.pop(cid, None)

    def _parse(self, line, cid):
        m = re.fullmatch(rb"(\d+) (\d+)\n", line)
        if not m:
            return None
        job = self.jobs.get((int(m[1]), int(m[2])))
        if job is None or (cid is not None and job.cid != cid) or job.s_state is not None:
            return None
        return job

    async def serve(self, job, writer):
        """Sends one response; True when the connection may carry another."""
        t = writer.transport
        job.s_state = "running"
        if job.small:
            try:
                t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUF)
            except (OSError, AttributeError, ValueError):  # uvloop: ValueError once closed
                pass
        if t.is_closing():  # the client went before its request was read
            job.s_state = "skipped"
            self._server_done(job)
            return False
        if job.kind == "nothing":
            self._server_done(job)
            return True
        src = _Source(self, job)
        try:
            if job.pre:
                writer.write(job.pre)
            if job.call == 0:
                coro = zcsend.sendfile(writer, src.obj, job.call_off, job.count, head=job.head)
            elif job.call == 1:
                coro = zcsend.sendfile(t, src.obj, job.call_off, job.count, head=job.head)
            else:
                coro = writer.sendfile_zc(src.obj, job.call_off, job.count, head=job.head)
            timer = None

            async def call():
                # The fault is armed from inside the call, so it comes once sendfile
                # has begun: uvloop runs due timers before callbacks queued earlier,
                # so a timer armed out here could fire before the task's first step.
                nonlocal timer
                if job.sfault is not None:
                    kind, delay = job.sfault
                    fire = lambda: self._fault(job, kind, task, t, src)
                    timer = self.loop.call_soon(fire) if delay == 0 else self.loop.call_later(delay, fire)
                job.s_inflight = True
                try:
                    n = await coro
                    job.s_pending = t.get_write_buffer_size()  # what the transport holds yet
                    return n
                finally:
                    job.s_inflight = False

            task = self.loop.create_task(call())
            self.c["transfers started"] += 1
            done, _ = await asyncio.wait({task}, timeout=self.hang_timeout)
            if timer is not None:
                timer.cancel()
            if not done:
                self.fail("hang", job, f"sendfile still running after {self.hang_timeout:.0f} s")
                job.s_state = "hung"
                task.cancel()
                await asyncio.wait({task}, timeout=5)
                return False
            if task.cancelled():
                job.s_res = ("cancelled",)
                self.c["transfers cancelled"] += 1
            elif task.exception() is not None:
                exc = task.exception()
                job.s_res = ("exc", exc)
                self.c["transfers errored"] += 1
                self.c["raised " + type(exc).__name__] += 1
            else:
                job.s_res = ("ok", task.result())
                self.c["transfers completed"] += 1
            job.s_pos = src.position()
        finally:
            src.cleanup()
        self._server_done(job)
        return job.s_res[0] == "ok" and job.s_fault is None and not t.is_closing()

    def _fault(self, job, kind, task, t, src):
        if task.done():
            self.c["faults too late"] += 1
            return
        job.s_fault = kind
        self.c["fault " + kind] += 1
        if kind == "close":
            t.close()
            self.churn.burst(self.loop, self.rnd)
        elif kind == "abort":
            t.abort()
            self.churn.burst(self.loop, self.rnd)
        elif kind == "cancel":
            task.cancel()
        elif kind == "file-close":
            src.close()
            self.churn.burst(self.loop, self.rnd)
        elif kind == "file-swap":
            if src.swap(self.rnd):
                self.c["file swaps onto the same fd"] += 1
        elif kind == "file-dup2":
            src.dup2(self.rnd)

    def _server_done(self, job):
        if job.s_state == "running":
            job.s_state = "done"
        self._maybe_check(job)

    # -- client
    async def connect(self, rnd, small, server):
        loop = self.loop
        if self.net == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr = server
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = ("127.0.0.1", server)
        try:
            if small:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUF)
            sock.setblocking(False)
            async with _timeout(self.read_timeout):
                await loop.sock_connect(sock, addr)
                kw = dict(ssl=self.cctx, server_hostname="127.0.0.1") if self.tls else {}
                if small:
                    kw["limit"] = SMALL_BUF
                return await asyncio.open_connection(sock=sock, **kw)
        except BaseException:
            sock.close()
            raise

    async def client_conn(self, rnd, quiet=False):
        """One connection and its requests. quiet ones carry many requests and no
        faults: cheap transfers, bystanders for bytes that go astray."""
        cid = next(self.cids)
        small = rnd.random() < 0.4
        try:
            reader, writer = await self.connect(rnd, small, self.port)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            self.c["connect errors " + type(exc).__name__] += 1
            return
        self.c["client connections"] += 1
        jobs = []
        try:
            n = rnd.randint(10, 100) if quiet else rnd.choice([1, 1, 1, 2, 3, 5, 8, 20])
            ok = True
            for seq in range(n):
                job = self.new_job(rnd, cid, seq, small, quiet)
                jobs.append(job)
                writer.write(b"%d %d\n" % (cid, seq))
                ok = await self.receive(job, reader, writer)
                if not ok or (quiet and not self._running()):
                    break
            if ok:  # all answered: nothing more may come
                writer.write(b"bye\n")
                await self._expect_eof(jobs[-1], reader, "after the last response")
        except (ConnectionError, OSError, RuntimeError) as exc:  # write() to a connection that went
            self.c["client " + type(exc).__name__] += 1
        finally:
            writer.transport.abort()
            for job in jobs:
                job.c_done = True
                self._maybe_check(job)

    async def _read(self, job, reader, n):
        """Up to n bytes; b"" at EOF or on a connection error; None when it failed."""
        try:
            async with _timeout(self.read_timeout):
                return await reader.read(n)
        except asyncio.TimeoutError:
            self.fail("hang", job, f"client got no byte for {self.read_timeout:.0f} s at stream byte "
                      f"{job.c_pos} of {job.total}; server side {job.s_state}")
            return None
        except ssl.SSLError as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            if "EOF" in str(reason).upper() or "EOF" in str(exc).upper():
                self.c["client TLS EOF " + str(reason)] += 1
                return b""
            self.fail("crosstalk", job, f"TLS stream corrupted ({reason}: {exc}) at stream byte {job.c_pos}")
            job.c_corrupt = True
            return None
        except (ConnectionError, OSError) as exc:
            job.c_err = type(exc).__name__
            self.c["client read " + job.c_err] += 1
            return b""

    async def _expect_eof(self, job, reader, where):
        data = await self._read(job, reader, 1 << 16)
        if data:  # once: the connection is dropped after
            self.fail("crosstalk", job, f"{len(data)} bytes (at least) {where}: {self.corpus.describe(data)}")
            job.c_corrupt = True

    async def receive(self, job, reader, writer):
        """Reads and checks one response; True when the connection goes on."""
        if job.kind == "nothing":
            try:
                async with _timeout(random.uniform(0.001, 0.02)):
                    data = await reader.read(1 << 16)
            except asyncio.TimeoutError:
                return True
            except (ConnectionError, OSError, ssl.SSLError):
                return False
            if data:
                self.fail("crosstalk", job, f"{len(data)} bytes on a request for nothing: "
                          f"{self.corpus.describe(data)}")
                job.c_corrupt = True
            return False
        cf = job.cfault
        while job.c_pos < job.total:
            if cf is not None and job.c_fault is None and job.c_pos >= cf[1]:
                job.c_fault = cf[0]
                self.c["client fault " + cf[0]] += 1
                if cf[0] == "stall":
                    await asyncio.sleep(cf[2])
                    if cf[3]:  # and then reset
                        job.c_fault = "reset"
                if job.c_fault == "reset":
                    # what the server's transport still holds once this socket is
                    # really closed can't reach it: a sendfile in flight must not
                    # succeed. abort() closes the socket a loop turn later, and the
                    # server may pass its bytes on to it meanwhile: look then.
                    st = self.server_transports.get(job.cid)
                    proto = writer.transport.get_protocol()
                    if proto is not None:  # None: gone already (a TLS peer closed first)
                        lost = proto.connection_lost

                        def look(exc, st=st, job=job, lost=lost):
                            if job.s_inflight and st is not None and not st.is_closing():
                                job.c_pending = st.get_write_buffer_size()
                            lost(exc)
                        proto.connection_lost = look
                    sock = writer.get_extra_info("socket")
                    if sock is not None:  # None: asyncio's TLS transport, closed already
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return False
                if job.c_fault == "close":
                    writer.close()
                    return False
            want = min(1 << 18, job.total - job.c_pos)
            if cf is not None and job.c_fault is None and cf[1] > job.c_pos:
                want = min(want, cf[1] - job.c_pos)
            data = await self._read(job, reader, want)
            if not data:
                return False
            expected = job.expected(job.c_pos, len(data))
            if data != expected:
                i = next(i for i in range(len(data)) if i >= len(expected) or data[i] != expected[i])
                at = job.c_pos + i
                region = "pre-written bytes" if at < len(job.pre or b"") else "head" \
                    if at < job.body_start else f"file byte {job.offset + at - job.body_start}"
                self.fail("crosstalk", job, f"stream byte {at} ({region}) is wrong: got "
                          f"{self.corpus.describe(data[i:])}, expected {self.corpus.describe(expected[i:])}; "
                          f"the read returned {len(data)} B from stream byte {job.c_pos}: {data[:40]!r}")
                job.c_pos += i
                job.c_corrupt = True
                return False
            job.c_pos += len(data)
            self.c["bytes verified"] += len(data)
        return True

    # -- idle connections: nothing asked, nothing may arrive
    async def on_idle_conn(self, reader, writer):
        task = asyncio.current_task()
        self.handlers.add(task)
        try:
            while True:
                try:
                    async with _timeout(self.hang_timeout):
                        data = await reader.read(1 << 16)
                except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError):
                    break
                if not data:
                    break
                self.fail("crosstalk", None, f"{len(data)} bytes from an idle client: "
                          f"{self.corpus.describe(data)}")
        finally:
            writer.close()
            self.handlers.discard(task)

    def _running(self):
        now = time.monotonic()
        if now < self.deadline:
            return True
        landed = sum(v for k, v in self.c.items() if k.startswith("fault "))
        return landed < self.min_faults and now < self.deadline + self.overtime

    async def idle_worker(self, seed):
        rnd = random.Random(seed)
        while self._running():
            try:
                reader, writer = await self.connect(rnd, False, self.idle_port)
            except (OSError, ssl.SSLError, asyncio.TimeoutError):
                continue
            self.c["idle connections"] += 1
            try:
                async with _timeout(rnd.uniform(0.005, 0.2)):
                    data = await reader.read(1 << 16)
                if data:
                    self.fail("crosstalk", None, f"{len(data)} bytes on an idle connection: "
                              f"{self.corpus.describe(data)}")
            except (asyncio.TimeoutError, ConnectionError, OSError, ssl.SSLError):
                pass
            writer.transport.abort()

    async def client_worker(self, seed, quiet=False):
        rnd = random.Random(seed)
        while self._running():
            try:
                await self.client_conn(rnd, quiet)
            except Exception as exc:  # the soak's own bug: say so, and go on
                self.fail("soak error", None, f"{exc!r} at {_where(exc)}")

    # -- checks
    def _maybe_check(self, job):
        if job.checked or not job.c_done or job.s_state == "running":
            return
        if job.s_state is None:
            return  # the server may read the request yet; swept at the end
        job.checked = True
        self.jobs.pop((job.cid, job.seq), None)
        if job.kind == "send" and job.s_state == "done":
            self.check_outcome(job)
            if not job.c_corrupt:
                self.check_counts(job)

    def check_outcome(self, job):
        """The README's guarantees on outcomes (for faults that came during the call):
        a local close or abort is never a success, nor is a cancel, nor a connection
        the peer reset while the transport still held bytes; a TLS success comes only
        once the transport has passed every byte on; a source closed or replaced
        under a transfer doesn't stop it (it reads its own dup)."""
        res, fault = job.s_res, job.s_fault
        if res[0] == "ok" and fault in ("close", "abort"):
            self.fail("outcome", job, f"transport.{fault}() during the call, yet sendfile returned {res[1]}")
        elif res[0] == "ok" and fault == "cancel":
            self.fail("outcome", job, f"cancelled during the call, yet sendfile returned {res[1]}")
        elif res[0] == "ok" and self.tls and job.s_pending and (job.L or job.head):
            self.fail("outcome", job, f"sendfile returned {res[1]} while the TLS transport still held "
                      f"{job.s_pending} B (a success waits until they are passed on to the socket)")
        elif res[0] == "ok" and job.c_fault == "reset" and job.c_pending:
            self.fail("outcome", job, f"the client reset during the call while the server's transport "
                      f"still held {job.c_pending} B, yet sendfile returned {res[1]}")
        elif res[0] != "ok" and fault in ("file-close", "file-swap", "file-dup2") and job.src in ("file", "pipe") \
                and job.c_fault is None:
            what = "cancelled" if res[0] == "cancelled" else f"{type(res[1]).__name__}: {res[1]}"
            self.fail("outcome", job, f"the source was closed or replaced under the call, which should go "
                      f"on reading its own dup, but it ended: {what}")

    def check_counts(self, job):
        g = job.body_got()
        lost = job.c_fault in ("reset", "close") or (self.tls and job.s_fault == "abort")
        res = job.s_res
        exc = res[1] if res[0] == "exc" else None
        reported = None
        if res[0] == "ok":
            reported = res[1]
            if reported != job.L:
                self.fail("count", job, f"sendfile returned {reported}, the request was for {job.L}")
        elif exc is not None:
            reported = getattr(exc, "bytes_sent", None)
            if not isinstance(exc, (OSError, asyncio.CancelledError, RuntimeError, ValueError)):
                self.fail("exception", job, f"unexpected {type(exc).__name__}: {exc} at {_where(exc)}")
        # the position says offset + bytes sent once a transfer began (a call refused
        # at the start, RuntimeError or ValueError, leaves it alone, as asyncio's does)
        began = exc is None or isinstance(exc, zcsend.SendfileError)
        if res[0] != "ok" and job.s_pos == 0 and g == 0 and job.call_off:
            began = False  # cancelled or failed before a byte went: left alone, as asyncio does
            self.c["positions left alone"] += 1
        by_position = None if job.s_pos is None or not began else job.s_pos - job.call_off
        if by_position is not None and res[0] != "cancelled" and reported is not None and by_position != reported:
            self.fail("count", job, f"file position says {by_position} sent, sendfile said {reported}")
        if reported is None:
            reported = by_position
        if reported is None:
            if exc is not None and g > 0:
                self.fail("unreported", job, f"{type(exc).__name__} ({exc}) without bytes_sent after "
                          f"the client got {g} file bytes")
            return
        if res[0] == "ok":
            what = f"sendfile returned {reported}"
        elif exc is not None:
            what = f"sendfile reported {reported} ({type(exc).__name__}: {exc})"
        else:
            what = f"cancelled sendfile reported {reported} (file position)"
        if reported < g:
            self.fail("count", job, f"{what}, the client got {g} file bytes")
        elif reported > g:
            if not lost:
                self.fail("count", job, f"{what}, the client got {g} file bytes and read to the end")
            elif job.small and reported - g > IN_FLIGHT_BOUND:
                self.fail("count", job, f"{what}, the client got {g} file bytes: more than "
                          f"{IN_FLIGHT_BOUND} B can't have been in flight")

    # -- the run
    def _loop_exception(self, loop, context):
        """What the loop reports (an exception in a callback, a task's error nobody
        retrieved) is a failure: zcsend's or the soak's."""
        exc = context.get("exception")
        where = "" if exc is None else f" at {_where(exc)}"
        self.fail("loop exception", None, f"{context.get('message')}: {exc!r}{where}")

    async def main(self):
        self.loop = asyncio.get_running_loop()
        self.loop.set_exception_handler(self._loop_exception)
        self.churn = Churn(self)
        sctx = None
        if self.tls:
            sctx, self.cctx = self.corpus.tls_contexts()
        if self.net == "unix":
            self.tmp = tempfile.mkdtemp(prefix="zcs-soak-sock-")
            self.port, self.idle_port = os.path.join(self.tmp, "s"), os.path.join(self.tmp, "i")
            srv = await asyncio.start_unix_server(self.on_conn, self.port, backlog=1024)
            idle = await asyncio.start_unix_server(self.on_idle_conn, self.idle_port, backlog=1024)
        else:
            srv = await asyncio.start_server(self.on_conn, "127.0.0.1", 0, ssl=sctx, backlog=1024)
            idle = await asyncio.start_server(self.on_idle_conn, "127.0.0.1", 0, ssl=sctx, backlog=1024)
            self.port = srv.sockets[0].getsockname()[1]
            self.idle_port = idle.sockets[0].getsockname()[1]
        stop = threading.Event()
        churner = threading.Thread(target=self.churn.run_thread, args=(stop, self.seed), daemon=True)
        churner.start()
        self.deadline = time.monotonic() + self.seconds
        seeds = self.seed * 1000
        workers = [self.loop.create_task(self.client_worker(seeds + i)) for i in range(self.concurrency)]
        workers += [self.loop.create_task(self.client_worker(seeds + 300 + i, True)) for i in range(self.quiet)]
        workers += [self.loop.create_task(self.idle_worker(seeds + 500 + i)) for i in range(4)]
        try:
            bound = self.seconds + self.overtime + self.read_timeout + self.hang_timeout + 10
            _, pending = await asyncio.wait(workers, timeout=bound)
            if pending:
                self.fail("hang", None, f"{len(pending)} client workers still busy long after the end")
                for w in pending:
                    w.cancel()
                await asyncio.wait(pending, timeout=5)
        finally:
            stop.set()
            srv.close()
            idle.close()
            if self.handlers:
                _, pending = await asyncio.wait(set(self.handlers), timeout=self.hang_timeout + 5)
                for h in pending:
                    h.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=5)
            await asyncio.sleep(0.05)  # bursts scheduled by the last faults
            churner.join(10)
            self.churn.release_all()
            await srv.wait_closed()
            await idle.wait_closed()
            if self.net == "unix":
                shutil.rmtree(self.tmp, ignore_errors=True)
        for job in list(self.jobs.values()):  # never served: the client went first
            if job.s_state == "running":
                self.fail("hang", job, "the server never finished this request")
            elif job.s_state is None:
                self.c["requests the server never read"] += 1
            else:
                job.c_done = True
                self._maybe_check(job)
        self.c["churn fds opened"] += self.churn.opened
        self.jobs.clear()
        self.server_transports.clear()

    def run(self):
        raise_fd_limit()
        warm_up(self.loop_kind)
        gc.collect()
        fds0, stats0, t0 = fd_count(), zcsend.stats(), time.monotonic()
        run_loop(self.loop_kind, self.main())
        self.loop = self.churn = None  # the loop, and zcsend's channel with it, may go
        self.elapsed = time.monotonic() - t0
        gc.collect()
        # the loop's completion channel closes when the loop is collected
        for _ in range(50):
            if fd_count() <= fds0:
                break
            time.sleep(0.02)
            gc.collect()
        self.fds = (fds0, fd_count())
        stats1 = zcsend.stats()
        self.active = stats1["active"]
        self.zc_stats = {k: stats1[k] - stats0[k] for k in stats1 if k != "active"}
        self.rss = rss_kib()
        self.peak_rss = rss_kib("VmHWM")
        if self.fds[1] > self.fds[0]:  # fewer: something from before this run went
            self.fail("fds", None, f"{self.fds[0]} fds open before, {self.fds[1]} after")
        if self.active != stats0["active"]:
            self.fail("active", None, f"zcsend.stats()['active'] is {self.active}, was {stats0['active']}")
        return self

    # -- report
    _MAIN = {"client connections", "idle connections", "transfers started", "transfers completed",
             "transfers errored", "transfers cancelled", "bytes verified", "churn fds opened"}

    def figures(self):
        c = self.c
        faults = {k[6:]: v for k, v in c.items() if k.startswith("fault ")}
        faults.update({"client " + k[13:]: v for k, v in c.items() if k.startswith("client fault ")})
        other = {k: v for k, v in c.items()
                 if k not in self._MAIN and not k.startswith(("fault ", "client fault "))}
        return {
            "mode": self.mode, "backend": zcsend.backend(), "seed": self.seed, "seconds": round(self.elapsed, 1),
            "connections": c["client connections"], "idle connections": c["idle connections"],
            "transfers": c["transfers started"], "completed": c["transfers completed"],
            "errored": c["transfers errored"], "cancelled": c["transfers cancelled"],
            "bytes verified": c["bytes verified"], "faults": faults, "churn fds": c["churn fds opened"],
            "failures": dict(self.failures), "failure kinds": dict(self.kinds),
            "fds before/after": self.fds, "active": self.active,
            "rss MiB": round(self.rss / 1024, 1), "peak RSS MiB": round(self.peak_rss / 1024, 1),
            "zcsend stats": self.zc_stats, "other": other,
        }

    def summary(self):
        f = self.figures()
        bad = sum(self.failures.values())
        lines = [f"{self.mode} ({f['backend']}, seed {self.seed}): {f['transfers']:,} transfers in "
                 f"{f['seconds']} s over {f['connections']:,} connections: {f['completed']:,} completed, "
                 f"{f['errored']:,} errored, {f['cancelled']:,} cancelled; {f['bytes verified']:,} bytes verified",
                 "  faults: " + ", ".join(f"{k} {v:,}" for k, v in sorted(f["faults"].items())),
                 f"  failures: {bad} {dict(self.failures) if bad else ''}; fds {f['fds before/after']}, "
                 f"active {f['active']}, RSS {f['rss MiB']} MiB",
                 "  " + ", ".join(f"{k} {v:,}" for k, v in sorted(f["other"].items()))]
        if self.kinds:
            lines.append("  failure kinds: " + "; ".join(f"{k} ×{v}" for k, v in self.kinds.most_common()))
        lines += ["  " + s for s in self.samples]
        return "\n".join(lines)


def run_mode(mode, corpus, seconds, **kw):
    return Soak(mode, corpus, seconds, **kw).run()


def table(figs):
    """Figures (Soak.figures() dicts) as a Markdown table: a row per mode, a total."""
    head = ["mode", "backend", "s", "transfers", "completed", "errored", "cancelled", "MiB verified",
            "faults", "failures", "fds before→after", "active", "peak RSS MiB"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tot = collections.Counter()
    faults = collections.Counter()
    failures = collections.Counter()
    for f in figs:
        nf = sum(f["faults"].values())
        bad = sum(f["failures"].values())
        out.append("| " + " | ".join([
            f["mode"], f["backend"], f"{f['seconds']:.0f}", f"{f['transfers']:,}", f"{f['completed']:,}",
            f"{f['errored']:,}", f"{f['cancelled']:,}", f"{f['bytes verified'] / 2**20:,.0f}", f"{nf:,}",
            str(bad), "%d→%d" % tuple(f["fds before/after"]), str(f["active"]), str(f["peak RSS MiB"])]) + " |")
        for k in ("transfers", "completed", "errored", "cancelled", "bytes verified", "seconds",
                  "connections", "idle connections", "churn fds"):
            tot[k] += f[k]
        tot["faults"] += nf
        tot["failures"] += bad
        faults.update(f["faults"])
        failures.update(f["failures"])
    out.append("| " + " | ".join([
        "**total**", "", f"{tot['seconds']:.0f}", f"**{tot['transfers']:,}**", f"{tot['completed']:,}",
        f"{tot['errored']:,}", f"{tot['cancelled']:,}", f"{tot['bytes verified'] / 2**20:,.0f}",
        f"{tot['faults']:,}", f"**{tot['failures']}**", "", "", ""]) + " |")
    out.append("")
    out.append(f"connections {tot['connections']:,} (+{tot['idle connections']:,} idle); "
               f"fds opened and closed by the churn {tot['churn fds']:,}")
    out.append("faults injected: " + ", ".join(f"{k} {v:,}" for k, v in sorted(faults.items())))
    out.append("failures: " + (", ".join(f"{k} {v:,}" for k, v in sorted(failures.items())) or "none"))
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="total run time, shared by the modes (default 60)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, from: " + ", ".join(MODES))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=None, help="client connections at once (48; 24 on TLS)")
    ap.add_argument("--quiet", type=int, default=None,
                    help="more connections, without faults and with many small requests (a third as many)")
    ap.add_argument("--fault-rate", type=float, default=0.35, help="share of requests with a server fault")
    ap.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                    help="server faults to inject, from: " + ", ".join(SERVER_FAULTS))
    ap.add_argument("--rounds", type=int, default=1, help="go through the modes this many times")
    ap.add_argument("--samples", type=int, default=40, help="failures described in full, per mode (40)")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="only print the table of earlier runs' figures")
    args = ap.parse_args(argv)
    if args.merge:
        figs = []
        for path in args.merge:
            with open(path) as f:
                figs += json.load(f)
        print(table(figs))
        bad = sum(sum(f["failures"].values()) for f in figs)
        print(f"\n{'FAILED' if bad else 'OK'}: {bad} failures")
        return 1 if bad else 0
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}")
    faults = [k for k in args.faults.split(",") if k]
    for k in faults:
        if k not in SERVER_FAULTS:
            ap.error(f"unknown fault {k}")
    corpus = Corpus()
    results = []
    seed = random.randrange(1 << 30) if args.seed is None else args.seed
    print(f"zcsend soak: backend {zcsend.backend()}, modes {', '.join(modes)}, {args.seconds:.0f} s, seed {seed}",
          flush=True)
    try:
        per = args.seconds / (len(modes) * args.rounds)
        for rnd in range(args.rounds):
            for i, mode in enumerate(modes):
                r = run_mode(mode, corpus, per, seed=seed + 7919 * (rnd * len(modes) + i),
                             concurrency=args.concurrency, fault_rate=args.fault_rate, server_faults=faults,
                             max_samples=args.samples, quiet=args.quiet)
                results.append(r)
                print(r.summary(), flush=True)
    finally:
        corpus.close()
    print()
    figs = [r.figures() for r in results]
    print(table(figs))
    bad = sum(sum(r.failures.values()) for r in results)
    print(f"\n{'FAILED' if bad else 'OK'}: {bad} failures", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figs, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
