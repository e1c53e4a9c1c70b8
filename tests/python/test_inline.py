"""Issue 13 §1: a small file costs one C call. A send that ends in its first step
makes no Transfer object (no job, no lock), makes only the syscalls it needs,
and still never lets SIGPIPE kill the process. Checked by what happened (a
debug count, strace), not by timing."""
import asyncio
import errno
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

import zcsend
from zcsend import _core, _zcsend
from conftest import Pair, make_file, run

HERE = os.path.dirname(os.path.abspath(__file__))


def child(code, *args, strace=None, timeout=60, threads=False):
    """Runs code in a fresh Python (zcsend importable as here); its result.
    strace: a file for the main thread's syscalls (every thread's: threads)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(zcsend.__file__)), HERE]))
    argv = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if strace:
        argv = ["strace", *(["-f"] if threads else []), "-o", strace, *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_small_send_that_ends_inline_makes_no_transfer_object(tmp_path):
    path = str(tmp_path / "small.bin")
    make_file(path, 16 << 10, seed=3)

    async def main():
        async with Pair() as p:
            before, stats0 = _zcsend.debug_counts()["transfers"], zcsend.stats()
            with open(path, "rb") as f:
                for _ in range(20):
                    assert await zcsend.sendfile(p.server, f, 0) == 16 << 10
                    assert f.tell() == 16 << 10
            made = _zcsend.debug_counts()["transfers"] - before
            stats = zcsend.stats()
            p.server.close()
            return made, stats["completed"] - stats0["completed"], await p.read_all()

    made, completed, (sha, n) = run(main())
    assert made == 0  # every one ended in the one call
    assert completed == 20  # and each still counts as a transfer
    with open(path, "rb") as f:
        assert (sha, n) == (hashlib.sha1(f.read() * 20).hexdigest(), 20 * (16 << 10))


@pytest.mark.parametrize("head", [b"", b"H" * 9000], ids=["no-head", "head-past-the-buffer"])
def test_a_small_send_the_socket_takes_part_of_goes_on_from_there(tmp_path, head):
    """One read and one send (zcs_transfer_start), the socket taking part (a Unix
    socket with a 4 KiB buffer): the rest, read already, goes as a transfer,
    head once, every byte in order, the call's count and the file's position
    asyncio's; one transfer counted."""
    path = str(tmp_path / "small.bin")
    make_file(path, 16 << 10, seed=8)

    async def main():
        async with Pair("unix", sndbuf=4096) as p:
            before, s0 = _zcsend.debug_counts(), zcsend.stats()
            reader = asyncio.get_running_loop().create_task(p.read_all())
            with open(path, "rb") as f:
                for _ in range(3):
                    assert await zcsend.sendfile(p.server, f, 0, head=head or None) == 16 << 10
                    assert f.tell() == 16 << 10
            after, s1 = _zcsend.debug_counts(), zcsend.stats()
            p.server.close()
            return after["transfers"] - before["transfers"], s1, s0, await reader

    made, s1, s0, got = run(main())
    assert made == 3  # each went on as a transfer object
    assert s1["completed"] - s0["completed"] == 3 and s1["started"] - s0["started"] == 3
    assert s1["bytes_fallback"] - s0["bytes_fallback"] == 3 * (16 << 10)  # read once, copied
    with open(path, "rb") as f:
        assert got == (hashlib.sha1((head + f.read()) * 3).hexdigest(), 3 * (len(head) + (16 << 10)))


def test_a_send_that_must_go_on_becomes_a_transfer_where_it_stood(tmp_path):
    """The socket fills mid-file: the stack transfer moves into an object and
    goes on from its byte, with the head sent once."""
    path = str(tmp_path / "big.bin")
    make_file(path, 8 << 20, seed=4)

    async def main():
        async with Pair(sndbuf=65536) as p:
            before = _zcsend.debug_counts()["transfers"]
            reader = asyncio.get_running_loop().create_task(p.read_all())
            with open(path, "rb") as f:
                assert await zcsend.sendfile(p.server, f, 0, head=b"HEAD\r\n") == 8 << 20
                assert f.tell() == 8 << 20
            made = _zcsend.debug_counts()["transfers"] - before
            p.server.close()
            return made, await reader

    made, got = run(main())
    assert made == 1
    with open(path, "rb") as f:
        assert got == (hashlib.sha1(b"HEAD\r\n" + f.read()).hexdigest(), 6 + (8 << 20))


UNDER_SANITIZER = any(lib in os.environ.get("LD_PRELOAD", "") for lib in ("libasan", "libtsan"))


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.skipif(zcsend.backend() != "linux-sendfile", reason="the copy is the sendfile backend's")
def test_a_small_send_to_a_full_socket_reads_the_file_once(tmp_path):
    """The socket full when a cached 16 KiB send starts: the start's read is
    held and sent once the peer reads, never read again (it was: the start
    gave up, then the readiness check read the range, and a step sent it
    to the full socket, again in vain), in any thread."""
    path = str(tmp_path / "small.bin")
    make_file(path, 16 << 10, seed=7)
    trace = str(tmp_path / "trace.txt")
    r = child("""
        import asyncio, os, socket, sys
        import zcsend
        async def main():
            loop = asyncio.get_running_loop()
            a, b = socket.socketpair()
            _, w = await asyncio.open_connection(sock=a)
            with open(sys.argv[1], "rb") as f:
                want = f.read()
                assert await zcsend.sendfile(w, f, 0, 100) == 100  # imports, the engine
                filled = 0
                while True:  # the transport's socket full (its own buffer is empty)
                    try:
                        filled += a.send(bytes(65536))
                    except BlockingIOError:
                        break
                os.write(2, b"MARK\\n")
                task = asyncio.ensure_future(zcsend.sendfile(w, f, 0, len(want)))
                await asyncio.sleep(0.1)
                assert not task.done()
                b.setblocking(False)
                got = bytearray()
                while len(got) < 100 + filled + len(want):
                    got += await loop.sock_recv(b, 1 << 20)
                assert await task == len(want)
                os.write(2, b"MARK\\n")
                assert got[100 + filled:] == want
            w.close()
            b.close()
        asyncio.run(main())
    """, path, strace=trace, threads=True)
    assert r.returncode == 0, r.stderr
    lines = open(trace).read().split("MARK")[1].strip().splitlines()
    reads = [line for line in lines if "preadv2(" in line and "RWF_NOWAIT" in line]
    assert len(reads) == 1 and f"iov_len={16 << 10}" in reads[0], lines


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.skipif(UNDER_SANITIZER, reason="a sanitizer's allocator makes syscalls of its own")
@pytest.mark.parametrize("size", [1000, 4096, 16 << 10, 64 << 10])
@pytest.mark.parametrize("counted", [False, True], ids=["to-eof", "count"])
def test_syscalls_of_a_small_send(tmp_path, size, counted):
    """Per send of a cached small file: for at most 16 KiB (ZCS_SMALL_COPY) on
    the sendfile backend, zcs_transfer_start: one preadv2(RWF_NOWAIT) of the whole
    range (it fails or reads short where a page is not read in, or where the
    fd can't be read: no fcntl asks), one sendmsg with MSG_NOSIGNAL (no look
    at SIGPIPE), an fstat only where no count says the size, and the lseek
    that puts the file's position where asyncio's contract says. Past 16 KiB
    (and on the emulated backend), a transfer: fstat, one fcntl (the fd, not
    the file object, says whether it is readable), cachestat, preadv2
    (RWF_NOWAIT) probes of the first and last byte (pages still being read in
    are not ready), one look at SIGPIPE's disposition (CPython ignores it: no
    mask), and sendfile (emulated: pread + send). No check of the socket's
    flags, no signal masks."""
    path = str(tmp_path / "small.bin")
    make_file(path, size, seed=6)
    trace = str(tmp_path / "trace.txt")
    r = child("""
        import asyncio, os, socket, sys
        import zcsend
        count = int(sys.argv[2]) or None
        async def main():
            a, b = socket.socketpair()
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            _, w = await asyncio.open_connection(sock=a)
            with open(sys.argv[1], "rb") as f:
                f.read()
                await zcsend.sendfile(w, f, 0, count)  # first use: imports, the engine's setup
                os.write(2, b"MARK\\n")
                for _ in range(5):
                    await zcsend.sendfile(w, f, 0, count)
                os.write(2, b"MARK\\n")
            w.close()
            b.close()
        asyncio.run(main())
    """, path, str(size if counted else 0), strace=trace)
    assert r.returncode == 0, r.stderr
    lines = open(trace).read().split("MARK")[1].strip().splitlines()[1:]
    names = [line.split("(")[0] for line in lines if "(" in line]
    counts = {n: names.count(n) for n in set(names)}
    cachestat = [n for n in counts if n in ("cachestat", "syscall_0x1c3")]
    fstats = sum(counts.get(n, 0) for n in ("newfstatat", "fstat", "statx"))
    assert counts.get("lseek") == 5, lines
    copy = zcsend.backend() == "linux-sendfile" and size <= _zcsend.SMALL_COPY
    if copy:
        moving = ["preadv2", "sendmsg"]
        assert fstats == (0 if counted else 5), lines
        reads = [line for line in lines if line.startswith("preadv2(")]
        assert len(reads) == 5 and all(f"iov_len={size}" in line and "RWF_NOWAIT" in line and
                                       line.endswith(f"= {size}") for line in reads), reads
        sends = [line for line in lines if line.startswith("sendmsg(")]
        assert all("MSG_NOSIGNAL" in line and line.endswith(f"= {size}") for line in sends), sends
        assert counts.get("sendmsg") == 5 and cachestat == [], lines
        assert not {"rt_sigaction", "sendfile", "fcntl", "sendto"} & set(counts), lines
    else:
        moving = ["sendfile"] if zcsend.backend() == "linux-sendfile" else ["pread64", "sendto"]
        assert fstats == 5 and counts.get("fcntl") == 5, lines
        for name in moving:
            assert counts.get(name) == 5, lines
        assert counts.get("rt_sigaction") == 5, lines
        if size <= 4096:
            assert cachestat == [], lines
        else:
            assert len(cachestat) == 1 and counts[cachestat[0]] == 5, lines
        # a page's first byte; past one page also the range's last byte's
        assert counts.get("preadv2") == (5 if size <= 4096 else 10), lines
    # the rest may only be asyncio's own (get_running_loop's getpid)
    assert set(counts) - {*moving, "lseek", "rt_sigaction", "newfstatat", "fstat", "statx",
                          "getpid", "write", "fcntl", "preadv2", *cachestat} == set(), lines


def test_sigpipe_at_its_default_never_kills_the_process(tmp_path):
    """Where the application set SIGPIPE back to the default (CLI tools do), the
    one-call path masks it for the step: the peer gone is an error, not death."""
    path = str(tmp_path / "small.bin")
    make_file(path, 64 << 10, seed=7)
    r = child("""
        import asyncio, signal, socket, sys
        import zcsend
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        async def main():
            a, b = socket.socketpair()
            _, w = await asyncio.open_connection(sock=a)
            b.close()  # the peer is gone before a byte
            with open(sys.argv[1], "rb") as f:
                try:
                    await zcsend.sendfile(w, f, 0)
                except zcsend.SendfileConnectionError as exc:
                    print("raised", exc.errno, exc.bytes_sent)
        asyncio.run(main())
        print("alive", signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL)
    """, path)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.split() == ["raised", "32", "0", "alive", "True"]


def assert_nothing_reached(victim):
    """The connection that took a closed socket's number got no byte."""
    victim.setblocking(False)
    try:
        leaked = victim.recv(1 << 20)
    except BlockingIOError:
        leaked = b""
    assert leaked == b"", f"{len(leaked)} bytes went to another connection"


@pytest.mark.asyncio_only("SelectorHold: asyncio's selector transport")
def test_a_raw_socket_closed_under_its_transport_sends_nothing_to_the_number_reused(tmp_path):
    """Another task closes the socket object the transport was made of; the
    number is reused by another connection at once. The number comes from the
    socket object (fileno() -1 once closed: EBADF), never from asyncio's
    _sock_fd, which is never cleared: no byte reaches the other connection."""
    path = str(tmp_path / "secret.bin")
    make_file(path, 6000, seed=1)

    async def main():
        a, b = socket.socketpair()
        _, w = await asyncio.open_connection(sock=a)
        num = a.fileno()
        a.close()  # the transport is not closing: asyncio doesn't know
        x, y = socket.socketpair()  # lowest free number: a's
        try:
            assert num in (x.fileno(), y.fileno())
            victim = y if x.fileno() == num else x
            with open(path, "rb") as f:
                with pytest.raises(OSError):
                    await zcsend.sendfile(w, f)
            assert_nothing_reached(victim)
        finally:
            for s in (x, y, b):
                s.close()
            w.transport.abort()

    run(main())


@pytest.mark.asyncio_only("the inline path of a selector transport")
def test_a_write_only_fd_behind_an_rb_file_fails_before_the_head_goes_out(tmp_path):
    """open(fd, "rb") trusts the mode string: readable() is True on an O_WRONLY
    fd. The core's own check (one fcntl) fails it at init, before the head or a
    byte, with a plain OSError and nothing counted."""
    path = str(tmp_path / "w.bin")
    make_file(path, 4000, seed=2)

    async def main():
        a, b = socket.socketpair()
        _, w = await asyncio.open_connection(sock=a)
        b.setblocking(False)
        fd = os.open(path, os.O_WRONLY)
        s0 = zcsend.stats()
        try:
            with open(fd, "rb") as f:
                assert f.readable()
                with pytest.raises(OSError) as ei:
                    await zcsend.sendfile(w, f, head=b"HTTP/1.1 200 OK\r\n\r\n")
            try:
                got = b.recv(1 << 20)
            except BlockingIOError:
                got = b""
            s1 = zcsend.stats()
            assert got == b"", f"the peer got {got!r} for a source that can't be read"
            assert type(ei.value) is OSError  # as before: not a SendfileError after a head
            assert s1["started"] == s0["started"]
        finally:
            w.transport.abort()
            b.close()

    run(main())


def test_send_now_does_not_move_bytes_when_a_flag_has_no_truth(tmp_path):
    """A flag whose truth raises ends the call before a byte (sendfile() calls
    bool(fallback) first; send_now itself must not send and then raise)."""
    path = str(tmp_path / "s.bin")
    make_file(path, 100, seed=3)

    class NoTruth:
        def __bool__(self):
            raise ZeroDivisionError("no truth")

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    fd = os.open(path, os.O_RDONLY)
    try:
        for i in (4, 7):
            args = [a.fileno(), fd, 0, None, True, None, 1 << 20, True]
            args[i] = NoTruth()
            with pytest.raises(ZeroDivisionError):
                _zcsend.send_now(*args)
        try:
            got = b.recv(1000)
        except BlockingIOError:
            got = b""
        assert got == b"", f"{len(got)} bytes sent by calls that raised"
    finally:
        os.close(fd)
        a.close()
        b.close()


# ---- sendfile()'s common case whole in one C call (_zcsend.fast_send) ----------
@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("on_writer", [True, False])
def test_the_common_case_ends_in_one_c_call(tmp_path, kind, on_writer):
    """A StreamWriter or its transport, idle; open(path, "rb"); plain ints: after
    the first call (which classifies the transport's type), each send is one
    fast_send that ends all sent: no Transfer, the position where asyncio puts
    it, a head in front when given as bytes."""
    path = str(tmp_path / "small.bin")
    make_file(path, 16 << 10, seed=8)

    async def main():
        async with Pair(kind) as p:
            dest = p.server if on_writer else p.server.transport
            with open(path, "rb") as f:
                assert await zcsend.sendfile(dest, f, 0) == 16 << 10
                c0 = _zcsend.debug_counts()
                for i in range(10):
                    assert await zcsend.sendfile(dest, f, 100, 1000 + i, head=b"H" * i) == 1000 + i
                    assert f.tell() == 1100 + i
                c1 = _zcsend.debug_counts()
            p.server.close()
            return c0, c1, await p.read_all()

    c0, c1, got = run(main())
    assert c1["fast_sends"] - c0["fast_sends"] == 10
    assert c1["transfers"] == c0["transfers"]
    with open(path, "rb") as f:
        data = f.read()
    want = data + b"".join(b"H" * i + data[100:1100 + i] for i in range(10))
    assert got == (hashlib.sha1(want).hexdigest(), len(want))


def test_fast_send_does_nothing_where_the_case_is_not_the_common_one(tmp_path):
    """Every way a call can differ from the common case makes fast_send return
    None before it touches a socket or counts a transfer: the Python path then
    checks and raises, or sends, as it always did. The peer gets no byte."""
    path = str(tmp_path / "s.bin")
    make_file(path, 4000, seed=9)
    from zcsend import _transports

    async def main():
        async with Pair() as p:
            w = p.server
            t = w.transport
            with open(path, "rb") as f:
                await zcsend.sendfile(w, f)  # its type is registered now
                assert await p.reader.readexactly(4000)
                s0, c0 = zcsend.stats(), _zcsend.debug_counts()
                unbuffered = open(path, "rb", buffering=0)
                text = open(path, "r")
                closed = open(path, "rb")
                closed.close()
                B = 1 << 20
                cases = {
                    "FileIO": (w, unbuffered, 0, None, True, None, B),
                    "text file": (w, text, 0, None, True, None, B),
                    "closed file": (w, closed, 0, None, True, None, B),
                    "negative offset": (w, f, -1, None, True, None, B),
                    "bool offset": (w, f, True, None, True, None, B),
                    "float offset": (w, f, 1.0, None, True, None, B),
                    "huge offset": (w, f, 1 << 64, None, True, None, B),
                    "zero count": (w, f, 0, 0, True, None, B),
                    "negative count": (w, f, 0, -5, True, None, B),
                    "bool count": (w, f, 0, True, True, None, B),
                    "huge count": (w, f, 0, 1 << 64, True, None, B),
                    "fallback False": (w, f, 0, None, False, None, B),
                    "fallback 1": (w, f, 0, None, 1, None, B),
                    "bytearray head": (w, f, 0, None, True, bytearray(b"x"), B),
                    "str head": (w, f, 0, None, True, "x", B),
                    "zero budget": (w, f, 0, None, True, None, 0),
                    "not a transport": (object(), f, 0, None, True, None, B),
                    "a socket": (t.get_extra_info("socket"), f, 0, None, True, None, B),
                }
                out = {name: _zcsend.fast_send(*args) for name, args in cases.items()}
                _transports._held.add(id(t))  # another transfer holds it
                try:
                    out["held"] = _zcsend.fast_send(w, f, 0, None, True, None, B)
                finally:
                    _transports._held.discard(id(t))
                loop = asyncio.get_running_loop()
                out["no running loop"] = await loop.run_in_executor(
                    None, _zcsend.fast_send, w, f, 0, None, True, None, B)
                t.pause_reading()  # nothing read by the peer: fill the socket, then queue
                p.reader._transport.pause_reading()
                while not t.get_write_buffer_size():
                    t.write(b"q" * 65536)
                out["bytes queued"] = _zcsend.fast_send(w, f, 0, None, True, None, B)
                t.close()
                out["closing"] = _zcsend.fast_send(w, f, 0, None, True, None, B)
                s1, c1 = zcsend.stats(), _zcsend.debug_counts()
                for g in (unbuffered, text):
                    g.close()
                assert f.tell() == 4000  # untouched
            return out, s0, s1, c0, c1

    out, s0, s1, c0, c1 = run(main())
    assert {name: r for name, r in out.items() if r is not None} == {}
    assert s1["started"] == s0["started"] and c1 == c0


def test_fast_send_knows_a_few_transport_types_for_good(tmp_path):
    """fast_type keeps at most 8 types (each held for good: a few asyncio and
    uvloop classes in practice); past that a type simply isn't fast. Modes are
    1 (asyncio selector) and 2 (uvloop)."""
    r = child("""
        from zcsend import _zcsend
        kinds = [type("T%d" % i, (), {}) for i in range(9)]
        print([_zcsend.fast_type(k, 1 + i % 2) for i, k in enumerate(kinds)], _zcsend.fast_type(kinds[0], 1))
        try:
            _zcsend.fast_type(kinds[0], 3)
        except ValueError as exc:
            print(exc)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[True, True, True, True, True, True, True, True, False] True",
                                     "fast_type: mode is 1 (selector) or 2 (uvloop)"]


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.skipif(UNDER_SANITIZER, reason="a sanitizer's allocator makes syscalls of its own")
def test_a_long_inline_step_works_on_dups(tmp_path):
    """A step of more than 64 KiB lets other threads run (the GIL goes); one of
    them could close the file or the socket and reuse its number. So that step
    works on dups taken first: no sendfile of it names the caller's fds."""
    path = str(tmp_path / "big.bin")
    make_file(path, 512 << 10, seed=10)
    trace = str(tmp_path / "trace.txt")
    r = child("""
        import asyncio, os, socket, sys, threading
        import zcsend
        async def main():
            a, b = socket.socketpair()
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            _, w = await asyncio.open_unix_connection(sock=a)
            got = []
            th = threading.Thread(target=lambda: got.append(len(b.recv(1 << 30, socket.MSG_WAITALL))))
            with open(sys.argv[1], "rb") as f:
                await zcsend.sendfile(w, f, 0, 4096)
                th.start()
                os.write(2, b"MARK %d %d\\n" % (a.fileno(), f.fileno()))
                n = await zcsend.sendfile(w, f, 0)
                os.write(2, b"MARK\\n")
            w.close()
            print(n)
        asyncio.run(main())
    """, path, strace=trace)
    assert r.returncode == 0, r.stderr
    parts = open(trace).read().split("MARK")
    sock_fd, file_fd = map(int, re.match(r" (\d+) (\d+)", parts[1]).groups())
    # the moving calls: sendfile(out, in), or the emulated backend's pread64(in) + sendto(out)
    moving = {"sendfile": (sock_fd, file_fd), "pread64": (file_fd,), "sendto": (sock_fd,)}
    calls = [line for line in parts[1].splitlines() if line.split("(")[0] in moving]
    assert calls, parts[1]
    for line in calls:
        name, args = line.split("(", 1)
        fds = [int(x) for x in args.split(",")[:len(moving[name])]]
        assert all(fd != own for fd, own in zip(fds, moving[name])), line
    assert r.stdout.strip() == str(512 << 10)


# ---- found by review: what the one-call path must never do ----------------------
# for child code: reads socket b on loop into got until EOF
COLLECT = """
        async def collect(loop, b, got):
            while True:
                x = await loop.sock_recv(b, 1 << 20)
                if not x:
                    return
                got.extend(x)
"""
def test_an_allocation_failing_after_the_step_never_sends_twice(tmp_path):
    """Each allocation of a one-call send fails in turn (_testcapi.set_nomemory):
    where bytes went out before the failure, the call raises (MemoryError); it
    never says "nothing done" and sends the head and the file a second time."""
    path = str(tmp_path / "f.bin")
    make_file(path, 4096, seed=11)
    r = child("""
        import asyncio, socket, sys
        import _testcapi
        import zcsend
        HEAD = b"HEAD\\r\\n"
        DATA = open(sys.argv[1], "rb").read()
        def drain(s):
            out = b""
            while True:
                try:
                    x = s.recv(1 << 20)
                except BlockingIOError:
                    return out
                if not x:
                    return out
                out += x
        async def main():
            bad = []
            for n in range(80):
                a, b = socket.socketpair()
                b.setblocking(False)
                _, w = await asyncio.open_unix_connection(sock=a)
                with open(sys.argv[1], "rb") as f:
                    await zcsend.sendfile(w, f, 0, 1)
                    drain(b)
                    err = None
                    _testcapi.set_nomemory(n, n + 1)
                    try:
                        got_n = await zcsend.sendfile(w, f, 0, head=HEAD)
                    except BaseException as exc:
                        got_n, err = None, exc
                    finally:
                        _testcapi.remove_mem_hooks()
                got, want = drain(b), HEAD + DATA
                if not want.startswith(got) or (err is None and got != want):
                    bad.append((n, len(got), repr(err)))
                w.close()
                b.close()
                await asyncio.sleep(0)
            print(bad)
        asyncio.run(main())
    """, path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.asyncio_only("asyncio's transport methods are Python code a handler can run in")
def test_a_signal_handler_s_exception_in_a_getter_goes_on(tmp_path):
    """A SIGTERM whose handler raises SystemExit lands while the one-call path
    asks the transport a question (asyncio's methods are Python code: handlers
    run there). It propagates, as from the Python path, and nothing is sent."""
    path = str(tmp_path / "f.bin")
    make_file(path, 4096, seed=12)
    r = child("""
        import asyncio, signal, socket, sys
        from asyncio import selector_events
        import zcsend
        T = selector_events._SelectorSocketTransport
        orig = T.get_write_buffer_size
        def on_term(*_):
            raise SystemExit("SIGTERM")
        signal.signal(signal.SIGTERM, on_term)
        async def main():
            a, b = socket.socketpair()
            b.setblocking(False)
            _, w = await asyncio.open_unix_connection(sock=a)
            with open(sys.argv[1], "rb") as f:
                await zcsend.sendfile(w, f, 0, 1)
                assert b.recv(10) == b"\\x00"[:0] or True
                armed = [True]
                def gwbs(self):
                    if armed[0]:
                        armed[0] = False
                        signal.raise_signal(signal.SIGTERM)
                    return orig(self)
                T.get_write_buffer_size = gwbs
                try:
                    n = await zcsend.sendfile(w, f, 0)
                    print("returned", n)
                except SystemExit as exc:
                    print("SystemExit", exc)
                finally:
                    T.get_write_buffer_size = orig
                try:
                    print("peer got", len(b.recv(1 << 20)))
                except BlockingIOError:
                    print("peer got 0")
            w.close()
            b.close()
        asyncio.run(main())
    """, path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["SystemExit SIGTERM", "peer got 0"]


def test_a_file_number_reused_by_another_thread_never_feeds_the_rest(tmp_path):
    """A 1 MiB send can't end in its inline step (64 KiB socket buffer); another
    thread closes the file's number and opens another file, which takes it. The
    rest of the transfer still comes from the first file: it goes on over the
    dups the step took, never over the numbers again. (Before: the peer got
    file B after the first 128 KiB of A in about 2 of 3 runs, and success.)"""
    a_path, b_path = str(tmp_path / "A"), str(tmp_path / "B")
    N = 1 << 20
    with open(a_path, "wb") as f:
        f.write(b"A" * N)
    with open(b_path, "wb") as f:
        f.write(b"B" * N)
    r = child(COLLECT + """
        import asyncio, os, socket, sys, threading
        import zcsend
        A, B, N = sys.argv[1], sys.argv[2], 1 << 20
        for p in (A, B):
            open(p, "rb").read()  # cached: the inline step is taken
        async def trial(spin):
            loop = asyncio.get_running_loop()
            a, b = socket.socketpair()
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            b.setblocking(False)
            _, w = await asyncio.open_unix_connection(sock=a)
            nr = os.open(A, os.O_RDONLY | os.O_CLOEXEC)
            f = open(nr, "rb", closefd=False)  # the thread closes it, once
            await zcsend.sendfile(w, f, 0, 1)
            assert await loop.sock_recv(b, 10) == b"A"
            go, opened = threading.Event(), []
            def other():
                go.wait()
                for _ in range(spin):
                    pass
                os.close(nr)
                opened.append(os.open(B, os.O_RDONLY))  # takes the number, most often
            th = threading.Thread(target=other)
            th.start()
            got = bytearray()
            rt = asyncio.ensure_future(collect(loop, b, got))
            go.set()
            try:
                res = await zcsend.sendfile(w, f, 0)
            except Exception as exc:
                res = exc
            th.join()
            os.close(opened[0])
            w.close()
            await rt
            b.close()
            data, failed = bytes(got), isinstance(res, Exception)
            if b"A" in data and b"B" in data:
                return "MIXED"  # the bug: bytes from a file nobody asked for
            if not failed and res != len(data):
                return "success for lost bytes"
            if data and set(data) == {ord("B")}:
                return "B-only"  # closed before the call: the caller's own fault
            # all of A; or an error (the end's seek of a file object whose number is gone)
            return "A" if data == b"A" * N or failed else "short"
        async def main():
            sys.setswitchinterval(1e-6)
            seen = {}
            for i in range(150):
                kind = await trial((i * 37) % 3000)
                seen[kind] = seen.get(kind, 0) + 1
            print(sorted(seen))
        asyncio.run(main())
    """, a_path, b_path, timeout=300)
    assert r.returncode == 0, r.stderr
    kinds = eval(r.stdout.strip())
    assert set(kinds) <= {"A", "B-only"}, kinds
    assert "A" in kinds


def test_no_fd_for_the_dups_ends_it_never_over_the_numbers(tmp_path):
    """The inline step can't end (64 KiB socket buffer) and no fd is left for its
    dups: the call ends with EMFILE and the bytes it sent, never going on over
    the numbers. (Before: the Python layer dup'ed the file's number later, after
    another thread could have closed it and opened another file under it; here
    that thread is played at a point where Python code runs: the peer got file B
    after A, and success.)"""
    N = 1 << 20
    a_path, b_path = str(tmp_path / "A"), str(tmp_path / "B")
    for p, c in ((a_path, b"A"), (b_path, b"B")):
        with open(p, "wb") as f:
            f.write(c * N)
    r = child(COLLECT + """
        import asyncio, os, socket, sys
        import zcsend
        from zcsend import _core
        A, B = sys.argv[1], sys.argv[2]
        for p in (A, B):
            open(p, "rb").read()
        async def main():
            loop = asyncio.get_running_loop()
            a, b = socket.socketpair()
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            b.setblocking(False)
            _, w = await asyncio.open_unix_connection(sock=a)
            f = open(A, "rb")
            await zcsend.sendfile(w, f, 0, 1)
            assert await loop.sock_recv(b, 10) == b"A"
            fillers = []
            while True:  # no fd left
                try:
                    fillers.append(os.open("/dev/null", os.O_RDONLY))
                except OSError:
                    break
            real = _core.resolve
            def resolve(t):  # "another thread": frees some, reuses the file's number
                nr = f.fileno()
                for _ in range(8):
                    os.close(fillers.pop())
                os.close(nr)
                assert os.open(B, os.O_RDONLY) == nr
                _core.resolve = real
                return real(t)
            _core.resolve = resolve
            got = bytearray()
            rt = asyncio.ensure_future(collect(loop, b, got))
            try:
                res = await zcsend.sendfile(w, f, 0)
            except Exception as exc:
                res = exc
            for fd in fillers:
                os.close(fd)
            w.close()
            await rt
            data = bytes(got)
            print(type(res).__name__, getattr(res, "errno", None), getattr(res, "bytes_sent", None),
                  len(data), data.count(b"B"))
        asyncio.run(main())
    """, a_path, b_path)
    assert r.returncode == 0, r.stderr
    kind, err, sent, received, bs = r.stdout.split()
    assert (kind, err, bs) == ("SendfileError", "24", "0"), r.stdout
    assert sent == received != "0", r.stdout  # the bytes it sent, said


@pytest.mark.parametrize("size", [4096, 1 << 20])
def test_no_fd_for_the_channel_is_an_error_with_the_bytes_sent(tmp_path, monkeypatch, size):
    """The engine's channel can't be made (no fd for its eventfd) when a transfer
    must go to the engine, before or after an inline step: the call ends with
    that error and the bytes sent (before: a ValueError from cancel(1))."""
    path = str(tmp_path / "f.bin")
    make_file(path, 1 << 20, seed=13)
    if size == 4096:
        monkeypatch.setattr(_core, "INLINE_BUDGET", 0)  # no inline step: the engine at once

    def no_channel(loop):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(_core, "_channel", no_channel)

    async def main():
        async with Pair("unix", sndbuf=65536) as p:
            with open(path, "rb") as f:
                with pytest.raises(zcsend.SendfileError) as ei:
                    await zcsend.sendfile(p.server, f)
            return ei.value

    exc = run(main())
    assert exc.errno == errno.EMFILE
    assert exc.bytes_sent == (0 if size == 4096 else exc.bytes_sent) and exc.bytes_sent < 1 << 20


@pytest.mark.asyncio_only("the selector transport's socket object")
def test_a_socket_closed_between_the_checks_and_the_step_sends_nothing_elsewhere(tmp_path, monkeypatch):
    """The Python path (a bytearray head: not the one-call case) reads the
    socket's number only in C, at the step: a socket object closed after the
    transport was looked at, its number taken by another connection at once
    (another thread, played here in hold.idle(), the last Python code before the
    step), gets EBADF; the other connection gets no byte."""
    from zcsend import _transports
    path = str(tmp_path / "secret.bin")
    make_file(path, 6000, seed=14)
    real_idle = _transports.SelectorHold.idle
    swapped = {}

    def idle(hold):
        sock = hold.transport._sock
        num = sock.fileno()
        sock.close()  # the number is free: the next socket takes it
        x, y = socket.socketpair()
        victim = y if x.fileno() == num else x
        assert num in (x.fileno(), y.fileno())
        swapped.update(pair=(x, y), victim=victim)
        return real_idle(hold)

    async def main():
        a, b = socket.socketpair()
        _, w = await asyncio.open_connection(sock=a)
        monkeypatch.setattr(_transports.SelectorHold, "idle", idle)
        try:
            with open(path, "rb") as f:
                with pytest.raises(OSError):
                    await zcsend.sendfile(w, f, head=bytearray(b"HEAD "))
            assert_nothing_reached(swapped["victim"])
        finally:
            for s in swapped.get("pair", ()):
                s.close()
            b.close()
            w.transport.abort()

    run(main())
