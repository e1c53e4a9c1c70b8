"""Issue 13 §1: a small file costs one C call. A send that ends in its first step
makes no Transfer object (no job, no lock), makes only the syscalls it needs,
and still never lets SIGPIPE kill the process. Checked by what happened (a
debug count, strace), not by timing."""
import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

import zcsend
from zcsend import _zcsend
from conftest import Pair, make_file, run

HERE = os.path.dirname(os.path.abspath(__file__))


def child(code, *args, strace=None, timeout=60):
    """Runs code in a fresh Python (zcsend importable as here); its result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(zcsend.__file__)), HERE]))
    argv = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if strace:
        argv = ["strace", "-o", strace, *argv]
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
@pytest.mark.skipif(UNDER_SANITIZER, reason="a sanitizer's allocator makes syscalls of its own")
def test_syscalls_of_a_small_send(tmp_path):
    """Per send of a cached small file: fstat, one fcntl (the fd, not the file
    object, says whether it is readable), cachestat, one look at SIGPIPE's
    disposition (CPython ignores it: no mask), sendfile (the emulated backend:
    pread + send), and the lseek that puts the file's position where asyncio's
    contract says. No check of the socket's flags, no signal masks."""
    path = str(tmp_path / "small.bin")
    make_file(path, 4096, seed=6)
    trace = str(tmp_path / "trace.txt")
    r = child("""
        import asyncio, os, socket, sys
        import zcsend
        async def main():
            a, b = socket.socketpair()
            _, w = await asyncio.open_connection(sock=a)
            with open(sys.argv[1], "rb") as f:
                f.read()
                await zcsend.sendfile(w, f, 0)  # first use: imports, the engine's setup
                os.write(2, b"MARK\\n")
                for _ in range(5):
                    await zcsend.sendfile(w, f, 0)
                os.write(2, b"MARK\\n")
            w.close()
            b.close()
        asyncio.run(main())
    """, path, strace=trace)
    assert r.returncode == 0, r.stderr
    lines = open(trace).read().split("MARK")[1].strip().splitlines()[1:]
    names = [line.split("(")[0] for line in lines if "(" in line]
    counts = {n: names.count(n) for n in set(names)}
    cachestat = [n for n in counts if n in ("cachestat", "syscall_0x1c3")]
    moving = ["sendfile"] if zcsend.backend() == "linux-sendfile" else ["pread64", "sendto"]
    for name in moving:
        assert counts.get(name) == 5, lines
    assert counts.get("lseek") == 5, lines
    assert counts.get("rt_sigaction") == 5, lines
    assert sum(counts.get(n, 0) for n in ("newfstatat", "fstat", "statx")) == 5, lines
    assert len(cachestat) == 1 and counts[cachestat[0]] == 5, lines
    assert counts.get("fcntl") == 5, lines
    # the rest may only be asyncio's own (get_running_loop's getpid)
    assert set(counts) - {*moving, "lseek", "rt_sigaction", "newfstatat", "fstat", "statx",
                          "getpid", "write", "fcntl", cachestat[0]} == set(), lines


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
            victim.setblocking(False)
            with open(path, "rb") as f:
                with pytest.raises(OSError):
                    await zcsend.sendfile(w, f)
            try:
                leaked = victim.recv(1 << 20)
            except BlockingIOError:
                leaked = b""
            assert leaked == b"", f"{len(leaked)} bytes went to another connection"
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
