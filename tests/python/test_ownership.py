"""A transfer only ever touches the fds it was given, for as long as they are
its own; forks, closed loops and dropped loops leave nothing running; errors
and stats say the same thing on every path (issue 10)."""
import asyncio
import errno
import gc
import io
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref

import pytest

import zcsend
from conftest import LOOP, Pair, file_sha1, held, make_file, run, until


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _drain_socketpairs(pairs):
    """Bytes that arrived on the far ends of socketpairs made to catch reused fds."""
    got = 0
    for near, far in pairs:
        far.setblocking(False)
        try:
            while True:
                b = far.recv(1 << 20)
                if not b:
                    break
                got += len(b)
        except BlockingIOError:
            pass
        near.close()
        far.close()
    return got


def _link(n):
    try:
        return os.readlink(f"/proc/self/fd/{n}")
    except OSError:
        return None


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _grab_numbers(n=8):
    """Socketpairs opened at once: they take the lowest free fd numbers, the
    ones a close just freed."""
    return [socket.socketpair() for _ in range(n)]


async def _read_exact(reader, n):
    data = await reader.readexactly(n)
    return data


async def _known_transport_socket(p, path):
    """p.server's socket object, once a send of path (1800 bytes) has made the
    transport's kind known to the one-call path."""
    with open(path, "rb") as f:
        assert await zcsend.sendfile(p.server, f) == 1800
    await _read_exact(p.reader, 1800)
    return p.server.transport._sock


# ---- bytes to the wrong peer --------------------------------------------------------
@pytest.mark.asyncio_only("the hook that frees the fd number at the worst moment is asyncio's Server")
@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_close_during_drain_wait_never_reaches_the_fd_reuser(kind, tmp_path):
    """close() while sendfile waits for earlier writes to drain: asyncio closes
    the socket right as the drain ends, and (here, deterministically, from the
    Server's detach right after that close) a new socket takes its number
    before sendfile resumes. Before: the whole file went to that socket and
    sendfile returned success or a raw EBADF."""
    path = tmp_path / "f"
    make_file(path, 2 << 20)

    async def main():
        async with Pair(kind) as p:
            t = p.server.transport
            grabbed = []
            detach = p.srv._detach

            def detach_then_reuse(*args):  # runs just after the transport's socket.close()
                detach(*args)  # (3.13 passes the transport)
                grabbed.extend(_grab_numbers())
            p.srv._detach = detach_then_reuse
            old = t.get_extra_info("socket").fileno()
            p.server.write(b"x" * (8 << 20))  # the peer reads nothing yet: the drain waits
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                await until(lambda: held(t), what="sendfile waits for the drain")
                assert not task.done()
                t.close()
                head = await _read_exact(p.reader, 8 << 20)
                with pytest.raises(zcsend.SendfileConnectionError) as ei:
                    await asyncio.wait_for(task, 5)
                assert ei.value.errno == errno.ECONNABORTED
                assert ei.value.bytes_sent == 0
                assert "transport was closed during sendfile (after 0 bytes)" in str(ei.value)
                assert f.tell() == 0
            assert head == b"x" * (8 << 20)
            assert await p.reader.read() == b""  # nothing of the file after the close
            # the setup did what it says: a new socket holds the old number
            assert any(old in (a.fileno(), b.fileno()) for a, b in grabbed)
            assert _drain_socketpairs(grabbed) == 0
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_read_only_source_closed_transport_fd_reused(kind):
    """A source with only read(): close() during a slow read(), then new
    sockets take the freed number. Before: the later chunks went to them and
    sendfile returned the full count."""
    chunk = 256 << 10

    class Slow:
        def __init__(self):
            self.n = 0

        def read(self, size):
            time.sleep(0.1)
            self.n += 1
            return b"a" * min(size, chunk) if self.n <= 8 else b""

    async def main():
        async with Pair(kind) as p:
            t = p.server.transport
            old = t.get_extra_info("socket").fileno()
            task = asyncio.ensure_future(zcsend.sendfile(p.server, Slow(), count=8 * chunk))
            first = await _read_exact(p.reader, chunk)  # the first chunk is out
            t.close()
            await until(lambda: not _fd_open(old), what="the transport lets go of its number")
            grabbed = _grab_numbers()
            assert any(old in (a.fileno(), b.fileno()) for a, b in grabbed)  # the setup did what it says
            with pytest.raises(zcsend.SendfileConnectionError) as ei:
                await asyncio.wait_for(task, 10)
            assert ei.value.errno == errno.ECONNABORTED
            assert chunk <= ei.value.bytes_sent < 8 * chunk
            rest = b""
            try:
                while True:
                    b = await asyncio.wait_for(p.reader.read(1 << 20), 5)
                    if not b:
                        break
                    rest += b
            except (ConnectionError, OSError):
                pass
            assert first == b"a" * chunk and set(rest) <= {ord("a")}
            assert _drain_socketpairs(grabbed) == 0
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_source_closed_and_number_reused_by_another_file(kind, tmp_path):
    """Another task closes the source mid-transfer and opens file B, which gets
    the same fd number. Before (TLS): the peer got A's first 6 MB then 27.5 MB
    of B, and sendfile returned success. Now every byte is A's."""
    a, b = tmp_path / "a", tmp_path / "b"
    size = 16 << 20
    make_file(a, size, seed=1)
    make_file(b, size, seed=2)
    want = a.read_bytes()

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            f = open(a, "rb")
            number = f.fileno()
            task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
            got = bytearray(await _read_exact(p.reader, 1 << 20))
            f.close()
            fb = open(b, "rb")
            assert fb.fileno() == number  # B now has A's old number
            while len(got) < size:
                chunk = await asyncio.wait_for(p.reader.read(1 << 20), 10)
                if not chunk:
                    break
                got += chunk
            assert await asyncio.wait_for(task, 10) == size
            assert bytes(got) == want  # A's bytes, all of them, and only them
            assert fb.tell() == 0
            fb.close()
    run(main())


@pytest.mark.asyncio_only("the socket object closed under the transport is asyncio's (uvloop's is a view)")
def test_a_file_whose_fileno_runs_python_code_never_sends_to_a_reused_number(tmp_path):
    """A BufferedReader over a raw of Python code: its fileno() runs bytecode,
    where another thread may close the transport's socket and a new socket take
    the number. Before: the one-call path had read the socket's number first,
    and the file's bytes went to the new socket, the call saying all were sent."""
    path = tmp_path / "f"
    path.write_bytes(b"S" * 1800)
    grabbed = []

    class Raw(io.RawIOBase):
        def __init__(self, fd, sock):
            self.fd, self.sock = fd, sock

        def readable(self):
            return True

        def readinto(self, b):
            return os.readv(self.fd, [b])

        def fileno(self):
            if self.sock is not None:  # "another thread", once: the close, and a reuse
                sock, self.sock = self.sock, None
                sock.close()
                grabbed.extend(_grab_numbers())
            return self.fd

    async def main():
        async with Pair("tcp") as p:
            sock = await _known_transport_socket(p, path)
            old = sock.fileno()
            fd = os.open(path, os.O_RDONLY)
            f = io.BufferedReader(Raw(fd, sock))
            try:
                with pytest.raises(OSError):
                    await zcsend.sendfile(p.server, f)
            finally:
                f.close()
                os.close(fd)
            assert any(old in (a.fileno(), b.fileno()) for a, b in grabbed)  # the setup did what it says
            assert _drain_socketpairs(grabbed) == 0
    run(main())


@pytest.mark.asyncio_only("the socket object closed under the transport is asyncio's (uvloop's is a view)")
@pytest.mark.parametrize("on", ["reader", "raw"])
def test_an_instances_fileno_attribute_never_runs_between_the_numbers_and_the_step(on, tmp_path):
    """open(path, "rb")'s objects take attributes: a fileno set on the reader or
    its FileIO shadows the type's. Before: the one-call path called it after
    reading the socket's number, and where it closed the socket and a new one
    took the number, the file went there, reported sent. Now the path calls
    FileIO's own fileno(): the file goes to the transport's peer."""
    path = tmp_path / "f"
    path.write_bytes(b"S" * 1800)
    grabbed = []

    async def main():
        async with Pair("tcp") as p:
            sock = await _known_transport_socket(p, path)
            f = open(path, "rb")
            target = f if on == "reader" else f.raw
            real = f.raw.fileno()

            def fileno():  # "another thread", once: the close, and a reuse
                if not grabbed:
                    sock.close()
                    grabbed.extend(_grab_numbers())
                return real
            target.fileno = fileno
            try:
                assert await zcsend.sendfile(p.server, f) == 1800
            finally:
                f.close()
            assert await _read_exact(p.reader, 1800) == b"S" * 1800
            assert _drain_socketpairs(grabbed) == 0
    run(main())


def test_a_file_closed_by_another_thread_during_the_send_is_no_error(tmp_path):
    """Another thread closes the file while the inline step sends it (a step of
    more than 64 KiB lets go of the GIL, and works on dups). Before: every byte
    went, and then the seek of the closed file raised ValueError. Now the call
    returns the count where the bytes went, and raises only where none did."""
    path = tmp_path / "f"
    size = 200_000
    make_file(path, size)

    async def main():
        async with Pair("tcp") as p:
            expected = 0
            reading = asyncio.ensure_future(p.reader.read())
            for _ in range(10):
                f = open(path, "rb")
                go = threading.Event()
                th = threading.Thread(target=lambda: (go.wait(), f.close()))
                th.start()
                go.set()  # it closes f as soon as it has the GIL: at the step's release, or before the call
                try:
                    expected += await zcsend.sendfile(p.server, f, 0, size)
                except ValueError:  # closed before the call looked at it: nothing went
                    pass
                th.join()
            p.server.close()
            assert len(await asyncio.wait_for(reading, 30)) == expected
    run(main())


@pytest.mark.parametrize("size", [100_000, 8 << 20])
def test_a_file_closed_between_the_check_and_the_seek_is_no_error(size, tmp_path):
    """Another thread closes the file after the call saw it open and before its
    seek (here the seek itself closes it first, where a GIL switch could).
    Before: ValueError, every byte gone. Now the count, the bytes all there."""
    path = tmp_path / "f"
    make_file(path, size)

    class ClosedAtSeek(io.BufferedReader):
        def seek(self, *args):
            if self.closed_at_seek:
                self.close()
            return super().seek(*args)

    async def main():
        async with Pair("tcp") as p:
            f = ClosedAtSeek(io.FileIO(path, "rb"))
            f.closed_at_seek = True
            task = asyncio.ensure_future(p.read_all(size))
            assert await zcsend.sendfile(p.server, f) == size
            assert f.closed
            assert await task == file_sha1(path)
            g = ClosedAtSeek(io.FileIO(path, "rb"))
            g.closed_at_seek = False
            g.seek = lambda *a: (_ for _ in ()).throw(ValueError("not a close"))
            with pytest.raises(ValueError, match="not a close"):  # others still raise
                await zcsend.sendfile(p.server, g, 0, 10)
            g.close()
    run(main())


def test_a_file_closed_by_another_thread_while_the_send_goes_on_is_sent_whole(tmp_path):
    """The same close, once the first bytes are out and the send must go on past
    its inline step (8 MiB: more than the step and the socket take). Before: the
    call went on to check the (closed) file and raised ValueError, the first MiB
    gone, the transfer dropped. Now the transfer goes on over its dups."""
    path = tmp_path / "f"
    size = 8 << 20
    make_file(path, size)

    async def one():
        a, b = socket.socketpair()
        r, w = await asyncio.open_connection(sock=a)
        f = open(path, "rb")
        got = [0]

        def peer():  # closes the file as the first bytes arrive, then reads it all
            select.select([b], [], [], 10)
            f.close()
            b.settimeout(5)  # (a dropped transfer's dup may keep the end from coming)
            try:
                while True:
                    d = b.recv(1 << 20)
                    if not d:
                        break
                    got[0] += len(d)
            except socket.timeout:
                pass

        th = threading.Thread(target=peer)
        th.start()
        try:
            assert await zcsend.sendfile(w, f) == size
        finally:
            w.close()
            await w.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, th.join)
            b.close()
        assert got[0] == size

    async def main():
        for _ in range(10):
            await one()
    run(main())


def test_a_cancelled_read_of_a_pipe_never_takes_a_reused_numbers_bytes():
    """Over TLS a pipe is read in the default executor. A call cancelled just
    as the executor's thread is about to read (the worker has taken the job,
    so the cancel can't stop it) closed its dup of the pipe; a new pipe took
    the number. Before: the read ran on the number and took the new pipe's
    bytes (another connection's, say), lost to it. Now the read runs on a dup
    of its own, closed when it is done."""
    from concurrent.futures import ThreadPoolExecutor

    def dups_of(r, w, pipe):
        """pipe's numbers other than r and w (both ends name its inode)."""
        return {int(n) for n in os.listdir("/proc/self/fd")
                if int(n) not in (r, w) and _link(n) == pipe}

    reading, go = threading.Event(), threading.Event()

    def hold_reads(frame, event, arg):
        """In the worker: each os.read or os.pread waits, about to run, for go."""
        if event == "c_call" and arg in (os.read, os.pread):
            reading.set()
            go.wait(10)

    async def main():
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1)
        loop.set_default_executor(pool)
        await loop.run_in_executor(None, sys.setprofile, hold_reads)
        r, w = os.pipe()
        os.write(w, b"old pipe's bytes")
        pipe = _link(r)
        try:
            async with Pair("tls") as p:
                src = io.FileIO(r, "rb", closefd=True)
                task = asyncio.ensure_future(zcsend.sendfile(p.server, src))
                await until(reading.is_set, what="the read about to run")
                dups = dups_of(r, w, pipe)
                assert dups  # the call's own dup of the pipe
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                closed = dups - dups_of(r, w, pipe)
                assert closed  # the call's dup of the pipe, at least
                nr, nw = os.pipe()
                os.set_blocking(nr, False)
                os.write(nw, b"another's bytes")
                for n in closed:  # each number the call closed: the new pipe's now
                    os.dup2(nr, n)
                go.set()
                await loop.run_in_executor(None, sys.setprofile, None)  # the read has run
                assert os.read(nr, 100) == b"another's bytes"
                for n in closed | {nr, nw}:
                    os.close(n)
                src.close()
        finally:
            go.set()
        os.close(w)
        await until(lambda: not dups_of(r, w, pipe), what="every dup closed")
    run(main())


def _pipe_read_queued(body):
    """body(loop, pool, task, r, w) once a TLS send of a pipe (holding a byte)
    has its read queued behind a busy job in a one-worker default executor."""
    from concurrent.futures import ThreadPoolExecutor
    busy = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1)
        loop.set_default_executor(pool)
        pool.submit(busy.wait, 10)  # the only worker is busy
        r, w = os.pipe()
        os.write(w, b"x")  # readable: the send goes to its read
        try:
            async with Pair("tls") as p:
                src = io.FileIO(r, "rb", closefd=False)
                task = asyncio.ensure_future(zcsend.sendfile(p.server, src))
                await until(lambda: pool._work_queue.qsize() == 1, what="the read queued")
                await body(busy, pool, task, r, w)
                src.close()
        finally:
            busy.set()
            os.close(r)
            os.close(w)
            pool.shutdown(wait=True)
    run(main())


def test_a_send_cancelled_before_its_pipe_read_began_reads_nothing_of_the_pipe():
    """The pipe's next bytes are the caller's once its call is over. Cancelled
    while its read waited in the executor's queue, the send must not read after
    all (a read kept alive past the cancel ate them)."""
    async def body(busy, pool, task, r, w):
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.write(w, b"the caller's next bytes")
        busy.set()
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)  # the queued read's turn came
        os.set_blocking(r, False)
        assert os.read(r, 1000) == b"xthe caller's next bytes"
    _pipe_read_queued(body)


def test_a_send_closed_before_its_pipe_read_began_reads_nothing_of_the_pipe():
    """The same where the call ends by other than a cancel: its coroutine
    closed (GeneratorExit, as a KeyboardInterrupt would end it too)."""
    async def body(busy, pool, task, r, w):
        task.get_coro().close()  # GeneratorExit at the await; the task never hears
        os.write(w, b"the caller's next bytes")
        busy.set()
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)  # the queued read's turn came
        os.set_blocking(r, False)
        assert os.read(r, 1000) == b"xthe caller's next bytes"
        await asyncio.wait([task], timeout=5)  # (it fails: its coroutine is gone)
        task.exception() if task.done() else task.cancel()
    _pipe_read_queued(body)


def test_a_pipe_read_the_executor_drops_unrun_closes_its_dup_and_fails_the_send():
    """shutdown(cancel_futures=True) drops the queued read: its dup is closed
    all the same, and the send fails with a SendfileError (not a CancelledError
    in a task nobody cancelled)."""
    async def body(busy, pool, task, r, w):
        pipe = _link(r)
        pool.shutdown(wait=False, cancel_futures=True)  # the application's own teardown, say
        busy.set()
        with pytest.raises(zcsend.SendfileError, match="the executor dropped the read"):
            await asyncio.wait_for(task, 5)
        assert [n for n in os.listdir("/proc/self/fd")
                if int(n) not in (r, w) and _link(n) == pipe] == []
    _pipe_read_queued(body)


def test_a_pipe_read_dropped_unrun_after_its_loop_closed_closes_its_dup():
    """The loop closed with the send pending, then the executor dropped its
    queued read: no done-callback runs for a closed loop, and the read's dup
    was left open for the process's life. Let go of, the read closes it."""
    from concurrent.futures import ThreadPoolExecutor
    busy = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(busy.wait, 10)  # the only worker is busy
    r, w = os.pipe()
    os.write(w, b"x")  # readable: the send goes to its read
    pipe = _link(r)
    loop = (__import__("uvloop").new_event_loop() if LOOP["kind"] == "uvloop"
            else asyncio.new_event_loop())
    loop.set_default_executor(pool)

    async def start():
        p = await Pair("tls").__aenter__()
        task = asyncio.ensure_future(zcsend.sendfile(p.server, io.FileIO(r, "rb", closefd=False)))
        await until(lambda: pool._work_queue.qsize() == 1, what="the read queued")
        return p, task

    try:
        p, task = loop.run_until_complete(start())
        loop.close()  # the send still pending (its sockets go with the transports)
        pool.shutdown(wait=False, cancel_futures=True)  # the application's teardown
        del p, task
        gc.collect()
        assert [n for n in os.listdir("/proc/self/fd")
                if int(n) not in (r, w) and _link(n) == pipe] == []
    finally:
        busy.set()
        pool.shutdown(wait=True)
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("rep", range(3))
def test_tls_peer_reset_is_never_success(rep, tmp_path):
    """The peer resets after 200 kB of a 3 MB file: a ConnectionError, never the
    full count (before, uvloop's TLS returned 3 MB in 1 of 3 runs)."""
    path = tmp_path / "f"
    make_file(path, 3 << 20)

    async def main():
        async with Pair("tls", sndbuf=65536) as p:
            sock = p.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                got = 0
                while got < 200_000:
                    got += len(await p.reader.read(65536))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                p.writer.transport.abort()  # RST
                with pytest.raises(ConnectionError) as ei:
                    await asyncio.wait_for(task, 10)
                assert isinstance(ei.value, zcsend.SendfileConnectionError)
                assert ei.value.bytes_sent < 3 << 20
                assert f.tell() == ei.value.bytes_sent
    run(main())


def test_tls_peer_half_close_is_never_success(tmp_path):
    """The peer sends its TCP FIN (no close_notify) and keeps reading. asyncio's
    TLS transport (3.11 on), its reading paused for the transfer, goes to
    FLUSHING, tells nobody, and drops every later write: the call returned
    success for 25 of 32 MiB the peer never got. Now it is an error, and the
    count is what the transport took before."""
    path = tmp_path / "f"
    size = 32 << 20
    make_file(path, size)

    async def main():
        async with Pair("tls") as p:
            got = [0]

            async def drain():
                while True:
                    data = await p.reader.read(1 << 20)
                    if not data:
                        return
                    got[0] += len(data)

            reading = asyncio.ensure_future(drain())
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                await until(lambda: got[0] > 1 << 20, what="the peer reading")
                sock = p.writer.get_extra_info("socket")
                with socket.socket(fileno=os.dup(sock.fileno())) as d:
                    d.shutdown(socket.SHUT_WR)  # the peer: no more requests
                try:
                    sent = await asyncio.wait_for(task, 20)
                except ConnectionError as exc:
                    assert isinstance(exc, zcsend.SendfileConnectionError), exc
                    assert exc.bytes_sent < size and f.tell() == exc.bytes_sent
                    # asyncio: what the transport took before reaches the peer.
                    # uvloop's TLS goes down at the FIN, dropping what it still
                    # held (.bytes_sent counts what the transport took: README)
                    if LOOP["kind"] == "asyncio":
                        await until(lambda: got[0] >= exc.bytes_sent, what="the counted bytes")
                    last = -1
                    while last != got[0]:
                        last = got[0]
                        await asyncio.sleep(0.3)
                    assert got[0] <= exc.bytes_sent
                    reading.cancel()
                    # and the connection goes: asyncio's TLS transport finishes its
                    # shutdown only once reading resumes (it kept the fd for good)
                    p.server.close()
                    p.writer.transport.abort()
                    await asyncio.wait_for(p.server.wait_closed(), 10)
                else:
                    await asyncio.wait_for(reading, 10)
                    assert sent == size and got[0] == size, (sent, got[0])
    run(main())


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_protocol_set_during_a_transfer_never_outlives_its_end(tmp_path, tls):
    """Another task sets the transport's protocol mid-transfer (an upgrade, a
    proxy taking over). Before, the guard was gone unseen: on TCP a close()
    no longer stopped the engine (the file kept going out), on TLS the call
    waited for ever for a resume_writing the new protocol got, and at the end
    the old protocol was put back over the new one. asyncio's transports now
    refuse it, as they refuse write(); where the transport can't (uvloop's),
    the call ends with SendfileError(ECANCELED) and the new protocol stands."""
    path = tmp_path / "f"
    size = 16 << 20
    make_file(path, size)

    class Other(asyncio.Protocol):
        heard = b""

        def data_received(self, data):
            self.heard += data

        def connection_lost(self, exc):
            pass

    async def main():
        async with Pair("tls" if tls else "tcp", sndbuf=65536) as p:
            t = p.server.transport
            before = t.get_protocol()
            p.writer.transport.pause_reading()  # the peer stalls: the transfer waits
            other = Other()
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                await until(lambda: held(t), what="the transfer holds the transport")
                await asyncio.sleep(0.1)
                if LOOP["kind"] == "asyncio":
                    with pytest.raises(RuntimeError, match="unable to set the protocol; sendfile is in progress"):
                        t.set_protocol(other)
                    p.writer.transport.resume_reading()
                    reading = asyncio.ensure_future(p.read_all(size))
                    assert await asyncio.wait_for(task, 30) == size
                    assert (await reading)[1] == size
                    assert t.get_protocol() is before and "set_protocol" not in vars(t)
                    return
                t.set_protocol(other)
                with pytest.raises(zcsend.SendfileError) as ei:
                    await asyncio.wait_for(task, 5)  # the peer still stalls
                assert ei.value.errno == errno.ECANCELED
                assert "the transport's protocol was replaced" in str(ei.value)
                assert f.tell() == ei.value.bytes_sent < size
                assert t.get_protocol() is other  # the swap stands, and hears the peer
                p.writer.write(b"hello")
                await until(lambda: other.heard == b"hello", what="the new protocol hearing the peer")
                sent = ei.value.bytes_sent
            t.close()
            p.writer.transport.resume_reading()
            got = (await asyncio.wait_for(p.read_all(), 10))[1]
            assert got <= sent  # nothing after the end
    run(main())


# ---- lifetimes ----------------------------------------------------------------------------
def _sink_thread(sock, out):
    def sink():
        n = 0
        try:
            while True:
                b = sock.recv(1 << 20)
                if not b:
                    break
                n += len(b)
                out[0] = n
        except OSError:
            pass
        out[0] = n
    th = threading.Thread(target=sink, daemon=True)
    th.start()
    return th


_FORK_SCRIPT = r"""
import asyncio, os, socket, sys, threading, time
import zcsend

path, size, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
child = {}


async def main():
    loop = asyncio.get_running_loop()
    srv_sock, cli = socket.socketpair()
    srv_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    srv_sock.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, srv_sock)
    received = [0]
    slow = threading.Event()

    def sink():  # slow at first, so the transfer is in the engine at the fork
        n = 0
        while True:
            if not slow.is_set():
                time.sleep(0.01)
            b = cli.recv(1 << 16)
            if not b:
                break
            n += len(b)
            received[0] = n
    th = threading.Thread(target=sink, daemon=True)
    th.start()
    f = open(path, "rb")
    task = asyncio.ensure_future(zcsend.sendfile(transport, f))
    while received[0] < (1 << 20):
        await asyncio.sleep(0.01)
    pid = os.fork()
    if pid == 0:  # the child returns with the task pending: asyncio.run cancels it
        child["task"] = task
        return "child"
    slow.set()
    sent = await asyncio.wait_for(task, 60)
    _, status = os.waitpid(pid, 0)
    transport.close()
    await asyncio.sleep(0.05)
    th.join(10)
    print(f"parent sent={sent} received={received[0]} child_status={status}", flush=True)
    return "parent"


if kind == "uvloop":
    import uvloop
    who = uvloop.run(main())
else:
    who = asyncio.run(main())
if who == "child":
    t = child["task"]
    outcome = "cancelled" if t.cancelled() else repr(t.exception()) if t.done() else "pending"
    print(f"child task={outcome}", flush=True)
    os._exit(0)
"""


def test_fork_during_engine_transfer(tmp_path):
    """os.fork() while a transfer is in the engine, and the child lets
    asyncio.run clean up the inherited task: the child exits cleanly (before:
    SIGSEGV in transfer.cancel(), both loops) and the parent's transfer ends
    whole."""
    import subprocess
    import sys
    path = tmp_path / "f"
    size = 64 << 20
    make_file(path, size)
    script = tmp_path / "fork.py"
    script.write_text(_FORK_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(path), str(size), LOOP["kind"]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.split("\n"))
    assert f"parent sent={size} received={size} child_status=0" in lines, r.stdout + r.stderr
    assert any(line.startswith("child task=") for line in lines), r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def _rss_kib():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def test_loops_are_freed():
    """200 × asyncio.run() each with one engine transfer: loops freed, fds and
    RSS flat (before: no loop was ever freed, fds 9 → 209, RSS +9 MiB; uvloop
    +60 MiB)."""
    runner = __import__("uvloop").run if LOOP["kind"] == "uvloop" else asyncio.run
    data = b"z" * (4 << 20)
    src = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"zcs-loops-{os.getpid()}")
    with open(src, "wb") as f:
        f.write(data)
    refs = []

    async def one():
        loop = asyncio.get_running_loop()
        refs.append(weakref.ref(loop))
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        a.setblocking(False)
        t, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        out = [0]
        th = _sink_thread(b, out)
        with open(src, "rb") as f:
            assert await zcsend.sendfile(t, f) == len(data)
        t.close()
        await asyncio.sleep(0)
        th.join(5)
        b.close()

    try:
        for _ in range(5):
            runner(one())
        gc.collect()
        fds0, rss0 = _fds(), _rss_kib()
        for _ in range(200):
            runner(one())
        gc.collect()
        assert _fds() == fds0
        assert _rss_kib() - rss0 < 6 * 1024
        alive = sum(1 for r in refs if r() is not None)
        assert alive == 0, f"{alive} of {len(refs)} loops still alive"
    finally:
        os.unlink(src)


def test_closed_loop_stops_the_engine():
    """loop.close() with a transfer pending and every reference dropped: the
    engine stops writing (before: it sent /dev/zero for ever, active=1)."""
    before = zcsend.stats()["active"]
    loop = (__import__("uvloop").new_event_loop() if LOOP["kind"] == "uvloop"
            else asyncio.new_event_loop())
    a, b = socket.socketpair()
    a.setblocking(False)
    out = [0]
    th = _sink_thread(b, out)
    src = open("/dev/zero", "rb")

    async def start():
        t, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
        task = asyncio.ensure_future(zcsend.sendfile(t, src))
        await until(lambda: out[0] > 0 and zcsend.stats()["active"] == before + 1,
                    what="the engine is sending")
        return task

    task = loop.run_until_complete(start())
    assert out[0] > 0 and zcsend.stats()["active"] == before + 1
    loop.close()  # the task is still pending
    del task
    gc.collect()
    time.sleep(0.1)
    n1 = out[0]
    time.sleep(0.3)
    assert out[0] == n1, "the engine still writes for a closed loop"
    assert zcsend.stats()["active"] == before
    src.close()
    a.close()
    th.join(5)
    b.close()


def test_a_loop_collected_unclosed_logs_no_error():
    """A loop that had a transfer through the engine, dropped without close():
    BaseEventLoop.__del__ calls close(), zcsend's wrapper, whose weak reference
    is cleared by then; it raised AttributeError, logged for every such loop."""
    if LOOP["kind"] != "asyncio":
        pytest.skip("uvloop's loop takes no wrapper (its close is its own)")
    errors = []
    hook, sys.unraisablehook = sys.unraisablehook, errors.append
    try:
        a, b = socket.socketpair()
        a.setblocking(False)
        out = [0]
        th = _sink_thread(b, out)
        loop = asyncio.new_event_loop()
        src = open("/dev/zero", "rb")

        async def start():
            t, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # the engine's, then
            assert await zcsend.sendfile(t, src, 0, 8 << 20) == 8 << 20
            t.close()
            await asyncio.sleep(0)

        loop.run_until_complete(start())
        ref = weakref.ref(loop)
        del start, loop  # dropped without close(), as a thread that forgot it would
        gc.collect()
        assert ref() is None, "the loop was not collected"
        assert [e for e in errors if not isinstance(e.exc_value, ResourceWarning)] == [], \
            [f"{e.exc_type.__name__}: {e.exc_value}" for e in errors]
        src.close()
        a.close()
        th.join(5)
        b.close()
    finally:
        sys.unraisablehook = hook


# ---- consistent errors and stats ----------------------------------------------------------
def test_a_pipe_read_whose_dup_failed_leaves_nothing_to_close():
    """No fd left for the pipe read's dup (EMFILE): its __del__ found no fd
    attribute and printed 'Exception ignored ... AttributeError'."""
    r = subprocess.run([sys.executable, "-c", """
import gc, os, resource
from zcsend._core import _OwnRead
r, w = os.pipe()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
top = max(int(n) for n in os.listdir("/proc/self/fd"))
fillers = []
try:
    while True:
        fd = os.dup(r)
        fillers.append(fd)
        if fd >= top:
            break
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    try:
        _OwnRead(r)
    except OSError as exc:
        print("dup failed:", exc.errno)
    gc.collect()
finally:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
"""], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "dup failed: 24" in r.stdout and "Exception ignored" not in r.stderr, r.stderr


def test_emfile_at_handoff_is_a_sendfile_error(tmp_path):
    """No fd left for the dups the hand-off takes: SendfileError(EMFILE) with
    bytes_sent, counted as failed (before: a raw OSError(24), counted cancelled)."""
    path = tmp_path / "f"
    make_file(path, 32 << 20)

    async def main():
        async with Pair("tcp", sndbuf=65536) as p:
            with open(path, "rb") as f:
                before = zcsend.stats()
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                fillers = []
                try:  # fill every hole below the highest open fd, then cap there
                    top = max(int(x) for x in os.listdir("/proc/self/fd"))
                    while True:
                        fd = os.open("/dev/null", os.O_RDONLY)
                        if fd > top:
                            os.close(fd)
                            break
                        fillers.append(fd)
                    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
                    with pytest.raises(zcsend.SendfileError) as ei:
                        await zcsend.sendfile(p.server, f)
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    for fd in fillers:
                        os.close(fd)
                e = ei.value
                assert e.errno == errno.EMFILE
                assert not isinstance(e, zcsend.SendfileConnectionError)
                assert 0 < e.bytes_sent < 32 << 20  # the inline step's bytes
                # the inline step's own end: "(after N of M bytes)"
                assert f"(after {e.bytes_sent} of {32 << 20} bytes)" in str(e)
                assert f.tell() == e.bytes_sent
                after = zcsend.stats()
                assert after["failed"] - before["failed"] == 1
                assert after["cancelled"] == before["cancelled"]
                assert after["active"] == before["active"]
                got = 0
                while got < e.bytes_sent:
                    got += len(await p.reader.read(1 << 20))
                assert got == e.bytes_sent
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_read_that_ignores_its_size_is_clamped(kind):
    class Greedy:
        def read(self, size):
            return b"0123456789" * 10  # always 100 bytes

    async def main():
        async with Pair(kind) as p:
            assert await zcsend.sendfile(p.server, Greedy(), count=10) == 10
            p.server.write(b"|")
            assert await p.reader.readexactly(11) == b"0123456789|"
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_sources_whose_size_is_not_their_length(kind):
    """The same answer on every transport, as asyncio's loop.sendfile gives:
    /dev/null with a count sends 0 (before: FileShrunkError on TCP, 0 on TLS);
    a sysfs file (st_size 4096) sends what it holds; a procfs file (st_size 0)
    too; a count up to 2**64 is taken as 'to the end'."""
    sysfs = "/sys/kernel/mm/transparent_hugepage/enabled"
    if not os.path.exists(sysfs):
        sysfs = "/sys/kernel/uevent_seqnum"
    cases = [("/dev/null", 10, b""), (sysfs, None, open(sysfs, "rb").read()),
             ("/proc/self/limits", None, None), ("/proc/version", 1 << 64, open("/proc/version", "rb").read())]

    async def main():
        async with Pair(kind) as p:
            for path, count, want in cases:
                with open(path, "rb") as f:
                    assert os.fstat(f.fileno()).st_size != len(want or b"x")
                    sent = await zcsend.sendfile(p.server, f, 0, count)
                    p.server.write(b"|")
                    got = await p.reader.readuntil(b"|")
                    if want is None:  # changes between reads: its length and form only
                        assert sent == len(got) - 1 and got.startswith(b"Limit")
                    else:
                        assert got == want + b"|" and sent == len(want)
    run(main())


@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_local_close_counts_cancelled_peer_reset_failed(kind, tmp_path):
    """One outcome per transfer, the same on every path: a close() of our own
    is cancelled, the peer going away is failed (before: TLS close = failed)."""
    path = tmp_path / "f"
    make_file(path, 64 << 20)

    async def one(reset):
        async with Pair(kind, sndbuf=65536) as p:
            with open(path, "rb") as f:
                before = zcsend.stats()
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                got = 0
                while got < (1 << 20):
                    got += len(await p.reader.read(1 << 16))
                if reset:
                    sock = p.writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    p.writer.transport.abort()
                else:
                    p.server.transport.close()
                with pytest.raises(zcsend.SendfileConnectionError) as ei:
                    await asyncio.wait_for(task, 10)
                if not reset:
                    assert ei.value.errno == errno.ECONNABORTED
                after = zcsend.stats()
                d = {k: after[k] - before[k] for k in ("cancelled", "failed", "completed", "started")}
                assert d["started"] == 1 and d["completed"] == 0
                assert (d["cancelled"], d["failed"]) == ((0, 1) if reset else (1, 0)), d
                assert after["active"] == before["active"]

    async def main():
        await one(reset=False)
        await one(reset=True)
    run(main())


# ---- timeout= -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tcp", "unix", "tls"])
def test_timeout_ends_a_stalled_send(kind, tmp_path):
    """A peer that never reads: sendfile(timeout=) ends the call with
    SendfileConnectionError(ETIMEDOUT), the bytes that went out said, the
    engine stopped, the transport still the caller's to close."""
    path = tmp_path / "f"
    make_file(path, 32 << 20)

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            with open(path, "rb") as f:
                before = zcsend.stats()
                t0 = time.monotonic()
                with pytest.raises(zcsend.SendfileConnectionError) as ei:
                    await zcsend.sendfile(p.server, f, timeout=0.4)
                took = time.monotonic() - t0
                e = ei.value
                assert e.errno == errno.ETIMEDOUT
                assert f"no progress for 0.4 s (after {e.bytes_sent} bytes)" == e.strerror
                assert 0 < e.bytes_sent < 32 << 20 and f.tell() == e.bytes_sent
                assert 0.4 <= took < 3
                after = zcsend.stats()
                assert after["failed"] - before["failed"] == 1 and after["active"] == before["active"]
                p.server.transport.abort()
    run(main())


@pytest.mark.parametrize("source", ["pipe", "object"])
@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_timeout_ends_a_stalled_source(kind, source):
    """A source that gives nothing (a pipe nobody writes, a read() that
    blocks): no byte goes out, so timeout= ends the call as for a stalled
    peer. Over TLS, and from a read()-only object on a socket, the read was
    awaited with no timeout, for ever."""
    release = threading.Event()

    class Stalled:
        def read(self, n):
            release.wait(10)
            return b""

    r, w = os.pipe()
    os.write(w, b"x" * 1000)

    async def main():
        async with Pair(kind) as p:
            src = open(r, "rb", buffering=0, closefd=False) if source == "pipe" else Stalled()
            t0 = time.monotonic()
            with pytest.raises(zcsend.SendfileConnectionError) as ei:
                await zcsend.sendfile(p.server, src, timeout=0.3)
            assert ei.value.errno == errno.ETIMEDOUT
            assert ei.value.bytes_sent == (1000 if source == "pipe" else 0)
            assert time.monotonic() - t0 < 3
            release.set()
            p.server.transport.abort()
    try:
        run(main())
    finally:
        release.set()
        os.close(w)
        os.close(r)


@pytest.mark.parametrize("source", ["pipe", "object"])
@pytest.mark.parametrize("kind", ["tcp", "tls"])
def test_a_read_cancelled_while_polled_leaves_no_unretrieved_error(kind, source):
    """A call cancelled while its read runs in a thread (the hold polling it:
    timeout=, or uvloop), the read then failing: its error is nobody's, and
    the loop never logs "Future exception was never retrieved" (the soak saw
    it: a read of a file a fault closed)."""
    release, started = threading.Event(), threading.Event()

    def failing(n=-1):  # the read (an object's read, a pipe reader's read1): begun, then failing
        started.set()
        release.wait(10)
        raise ValueError("read of closed file")

    class Failing:
        read = staticmethod(failing)

    r, w = os.pipe()
    errors = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, ctx: errors.append(ctx.get("message")))
        async with Pair(kind) as p:
            if source == "pipe":
                src = io.BufferedReader(io.FileIO(r, "rb", closefd=False))
                src.read1 = failing  # polled readable, then fails in its thread
                os.write(w, b"x")
            else:
                src = Failing()
            task = asyncio.ensure_future(zcsend.sendfile(p.server, src, timeout=30))
            for _ in range(500):
                if started.is_set():
                    break
                await asyncio.sleep(0.01)
            assert started.is_set()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await asyncio.sleep(0.2)  # the read fails now, in its thread
            p.server.transport.abort()
        del task
        gc.collect()
        await asyncio.sleep(0.05)
    try:
        run(main())
    finally:
        release.set()
        os.close(w)
        os.close(r)
    assert errors == []


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_timeout_in_the_drain_wait(kind, tmp_path):
    path = tmp_path / "f"
    make_file(path, 1 << 20)

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            p.server.write(b"x" * (8 << 20))  # never read: the drain never ends
            with open(path, "rb") as f:
                with pytest.raises(zcsend.SendfileConnectionError) as ei:
                    await zcsend.sendfile(p.server, f, timeout=0.3)
                assert ei.value.errno == errno.ETIMEDOUT and ei.value.bytes_sent == 0
                assert f.tell() == 0
            p.server.transport.abort()
    run(main())


def test_timeout_keeps_a_slow_reader(tmp_path):
    """Progress resets the clock: a reader slower than the timeout per
    transfer, but never stalled that long, gets everything."""
    path = tmp_path / "f"
    make_file(path, 3 << 20)

    async def main():
        async with Pair("tcp", sndbuf=65536) as p:
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f, timeout=0.3))
                got = await p.read_all(3 << 20, chunk=256 << 10, delay=0.05)
                assert got[1] == 3 << 20
                assert await task == 3 << 20
    run(main())


@pytest.mark.parametrize("timeout,exc,msg", [
    (0, ValueError, r"^timeout must be a positive number of seconds or None \(got 0\)$"),
    (-1.5, ValueError, r"^timeout must be a positive number of seconds or None \(got -1.5\)$"),
    (float("nan"), ValueError, r"^timeout must be a positive number of seconds or None \(got nan\)$"),
    ("1", TypeError, r"^timeout must be a positive number of seconds or None \(got '1'\)$"),
    (True, TypeError, r"^timeout must be a positive number of seconds or None \(got True\)$"),
])
def test_bad_timeout(timeout, exc, msg):
    async def main():
        async with Pair("tcp") as p:
            with pytest.raises(exc, match=msg):
                await zcsend.sendfile(p.server, io.BytesIO(b"x"), timeout=timeout)
    run(main())


def test_a_waiting_handler_is_not_collected(tmp_path):
    """A server handler waiting on an engine transfer is referenced by nothing
    but that transfer (its transport paused reading, so the selector lets go of
    it): the gc must not collect it half-way ("Task was destroyed but it is
    pending", its result lost)."""
    path = tmp_path / "f"
    make_file(path, 16 << 20)

    async def main():
        done = asyncio.Event()
        results = []

        async def handle(r, w):
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
            with open(path, "rb") as f:
                results.append(await zcsend.sendfile(w, f))
            w.close()
            done.set()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        got = 0
        while True:
            b = await r.read(1 << 20)
            if not b:
                break
            got += len(b)
            gc.collect()
        await asyncio.wait_for(done.wait(), 10)
        assert results == [16 << 20] and got == 16 << 20
        w.close()
        srv.close()
        await srv.wait_closed()
    run(main())


def _links():
    """fd number -> what it names (/proc/self/fd), this process's"""
    out = {}
    for n in os.listdir("/proc/self/fd"):
        try:
            out[int(n)] = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            pass  # listdir's own fd, gone already
    return out


@pytest.mark.parametrize("hook", ["take_fds_into", "dup_into"])
def test_a_signal_handlers_exception_as_the_dups_are_taken_leaks_none(hook, tmp_path, monkeypatch):
    """A signal whose Python handler raises (a SIGTERM handler's SystemExit, an
    alarm's timeout) runs at the first bytecode after the C call that hands the
    dups over. Before: they were returned, the exception came before they were
    stored, and nothing closed them (the aborted connection's socket stayed
    open). Now the C call stores them in the hold, whose end closes them."""
    path = tmp_path / "f"
    make_file(path, 8 << 20)
    if hook == "dup_into":  # no inline step, whose transfer would hand its own dups over
        monkeypatch.setattr(zcsend._core, "INLINE_BUDGET", 0)

    class Boom(Exception):
        pass

    def boom(*_):
        raise Boom()

    def prof(frame, event, arg):
        if event == "c_return" and getattr(arg, "__name__", "") in (hook, "take_fds"):
            os.kill(os.getpid(), signal.SIGUSR1)  # as if it came during the call

    async def main():
        async with Pair("tcp", sndbuf=65536) as p:  # the peer reads nothing: the send must go on
            before = _links()
            old = signal.signal(signal.SIGUSR1, boom)
            try:
                with open(path, "rb") as f:
                    sys.setprofile(prof)
                    try:
                        with pytest.raises(Boom):
                            await asyncio.wait_for(zcsend.sendfile(p.server, f), 10)
                    finally:
                        sys.setprofile(None)
            finally:
                signal.signal(signal.SIGUSR1, old)
            assert _links() == before  # no dup of the socket or the file left open
    run(main())


def test_untaken_dups_are_closed_only_by_the_process_that_took_them(tmp_path):
    """A send that must go on comes back from the one C call as a Transfer that
    holds dups of both fds until take_fds_into(). Dropped untaken, it closes them in
    the process that took them. A forked child that drops its copy closes
    nothing: its numbers may name other files by then (here the child closed
    them and opened two files, which got the same numbers)."""
    from zcsend import _zcsend
    path = str(tmp_path / "goes-on.bin")
    make_file(path, 4 << 20, seed=61)
    a, b = socket.socketpair()
    a.setblocking(False)
    fd = os.open(path, os.O_RDONLY)
    try:
        named = {os.readlink(f"/proc/self/fd/{a.fileno()}"), os.readlink(f"/proc/self/fd/{fd}")}

        def dups():
            return {n for n, what in _links().items() if what in named and n not in (a.fileno(), fd)}

        assert dups() == set()
        t = _zcsend.send_now(a.fileno(), fd, 0, None, True, None, 1 << 20, True)
        assert not isinstance(t, tuple), t  # the socket filled: it goes on
        assert t.owns_fds
        taken = dups()
        assert len(taken) == 2
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for n in taken:
                    os.close(n)
                others = [os.open(path, os.O_RDONLY) for _ in taken]
                code = 2 if set(others) != taken else 3  # 2: the numbers not reused, nothing shown
                del t
                gc.collect()
                for n in others:
                    os.fstat(n)  # still open: the dealloc closed nothing of the child's
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert dups() == taken  # the child's drop closed nothing here either
        del t
        gc.collect()
        assert dups() == set()  # the process that took them closed them
    finally:
        os.close(fd)
        a.close()
        b.close()
