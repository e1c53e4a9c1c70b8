"""zcsend.sendfile on asyncio's TCP and Unix transports: data, contract, sources."""
import asyncio
import errno
import hashlib
import io
import os
import socket
import threading
import time

import pytest

import zcsend
from conftest import LOOP, Pair, file_sha1, make_file, run, zero_copy_expected



def test_whole_file(kind, datafile):
    path, size, digest = datafile

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(size))
                before = zcsend.stats()
                assert await zcsend.sendfile(p.server, f) == size
                assert f.tell() == size
                assert await reading == (digest, size)
                after = zcsend.stats()
                zc = after["bytes_zero_copy"] - before["bytes_zero_copy"]
                fb = after["bytes_fallback"] - before["bytes_fallback"]
                assert (zc, fb) == ((size, 0) if zero_copy_expected(kind) else (0, size))
                assert after["completed"] - before["completed"] == 1
    run(main())


@pytest.mark.parametrize("offset,count", [(0, 1), (1, None), (4095, 4097), (1 << 20, 3 << 20),
                                          (123457, None), (0, 100 << 20)])
def test_offset_and_count(kind, datafile, offset, count):
    path, size, _ = datafile
    want_digest, want_len = file_sha1(path, offset, count)

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                f.seek(17)
                reading = asyncio.ensure_future(p.read_all(want_len))
                assert await zcsend.sendfile(p.server, f, offset, count) == want_len
                assert f.tell() == offset + want_len
                assert await reading == (want_digest, want_len)
    run(main())


def test_transport_method_and_raw_transport(kind, datafile):
    path, size, digest = datafile

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(3 * size))
                if LOOP["kind"] == "asyncio":
                    assert await p.server.transport.sendfile_zc(f) == size
                else:  # uvloop's transports are extension types: no new methods
                    assert not hasattr(p.server.transport, "sendfile_zc")
                    assert await zcsend.sendfile(p.server.transport, f) == size
                assert await p.server.sendfile_zc(f, 0) == size  # StreamWriter, any loop
                assert await zcsend.sendfile(p.server.transport, f, 0) == size
                h = hashlib.sha1()
                data = open(path, "rb").read()
                h.update(data + data + data)
                assert await reading == (h.hexdigest(), 3 * size)
    run(main())


def test_earlier_writes_go_first_and_nothing_interleaves(kind, datafile):
    path, size, _ = datafile
    head = b"H" * (6 << 20)  # more than the socket holds: it sits in the transport's buffer
    tail = b"T" * 1000

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                p.server.write(head)
                if kind != "tls":  # TLS counts only what it has not encrypted yet
                    assert p.server.transport.get_write_buffer_size() > 0
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                await asyncio.sleep(0)
                if LOOP["kind"] == "asyncio":  # uvloop's extension types can't be told to refuse
                    with pytest.raises(RuntimeError, match="unable to write; sendfile is in progress"):
                        p.server.write(b"interleaved")
                with pytest.raises(RuntimeError, match="sendfile is already in progress on this transport"):
                    await zcsend.sendfile(p.server, f)
                data = await p.reader.readexactly(len(head) + size)
                assert await task == size
                p.server.write(tail)  # writable again afterwards
                assert await p.reader.readexactly(len(tail)) == tail
                assert data[:len(head)] == head
                assert data[len(head):] == open(path, "rb").read()
    run(main())


def test_reading_paused_and_protocol_restored(kind, datafile):
    path, size, digest = datafile

    async def main():
        async with Pair(kind, sndbuf=4096) as p:
            t = p.server.transport
            proto = t.get_protocol()
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                await asyncio.sleep(0)
                assert not t.is_reading()
                assert t.get_protocol() is not proto
                p.writer.write(b"ping")  # arrives while reading is paused
                await p.writer.drain()
                assert await p.read_all(size) == (digest, size)
                assert await task == size
            assert t.is_reading()
            assert t.get_protocol() is proto
            assert await asyncio.wait_for(p.server_reader.readexactly(4), 5) == b"ping"
    run(main())


# ---- sources ------------------------------------------------------------------------
def _pipe_with(data, buffered=True):
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as out:
            for i in range(0, len(data), 100_000):
                out.write(data[i:i + 100_000])
    th = threading.Thread(target=feed)
    th.start()
    return os.fdopen(r, "rb", buffering=-1 if buffered else 0), th


@pytest.mark.parametrize("buffered", [False, True], ids=["raw", "buffered"])
def test_pipe_to_eof_with_count_none(kind, buffered):
    """A pipe to its end: spliced from a raw file; read through the object
    where it is a buffered reader (its buffer may hold the next bytes)."""
    data = os.urandom(5 << 20)

    async def main():
        async with Pair(kind) as p:
            src, th = _pipe_with(data, buffered)
            with src:
                reading = asyncio.ensure_future(p.read_all(len(data)))
                before = zcsend.stats()
                assert await zcsend.sendfile(p.server, src) == len(data)
                after = zcsend.stats()
                assert await reading == (hashlib.sha1(data).hexdigest(), len(data))
                zc = after["bytes_zero_copy"] - before["bytes_zero_copy"]
                assert zc == (len(data) if zero_copy_expected(kind) and not buffered else 0)
            th.join()
    run(main())


@pytest.mark.parametrize("fifo", [False, True], ids=["pipe", "fifo-path"])
def test_a_buffered_readers_buffer_goes_first(kind, tmp_path, fifo):
    """A reader of a pipe that was read from holds the stream's next bytes in
    its buffer: they go first, then the rest (the fd alone skipped them: the
    peer got a stream with a 4 KiB hole, and the call said success). open()
    of a FIFO's path is the one-C-call path's kind of file."""
    data = os.urandom(300_000)
    if fifo:
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
        def feed():
            with open(path, "wb") as out:
                out.write(data)
        th = threading.Thread(target=feed)
        th.start()
        src = open(path, "rb")
    else:
        src, th = _pipe_with(data)

    async def main():
        async with Pair(kind) as p:
            with src:
                first = src.readline()  # the reader now holds bytes past the line
                rest = data[len(first):]
                reading = asyncio.ensure_future(p.read_all(len(rest)))
                assert await zcsend.sendfile(p.server, src) == len(rest)
                assert await reading == (hashlib.sha1(rest).hexdigest(), len(rest))
            th.join()
    run(main())


def test_a_buffered_stream_of_its_own_without_fileno(kind):
    """An io.BufferedIOBase subclass of the user's that only reads (no fileno(),
    no seek()): read through read(), as any object (the path for buffered pipe
    readers must not ask it for an fd)."""
    class Gen(io.BufferedIOBase):
        def __init__(self):
            self.left = 3

        def readable(self):
            return True

        def read(self, n=-1):
            if not self.left:
                return b""
            self.left -= 1
            return b"z" * 1000

    async def main():
        async with Pair(kind) as p:
            reading = asyncio.ensure_future(p.read_all(3000))
            assert await zcsend.sendfile(p.server, Gen()) == 3000
            assert (await reading)[1] == 3000
    run(main())


@pytest.mark.parametrize("opener", ["bz2", "lzma"])
def test_a_decompressing_stream_sends_what_it_reads(kind, tmp_path, opener):
    """bz2.BZ2File, lzma.LZMAFile: binary, seekable, and their fileno() is the
    compressed file's. The peer got the compressed bytes (as from asyncio's own
    loop.sendfile); it gets what read() gives."""
    mod = __import__(opener)
    data = os.urandom(100_000)
    path = tmp_path / "f.z"
    with mod.open(path, "wb") as out:
        out.write(data)

    async def main():
        async with Pair(kind) as p:
            with mod.open(path, "rb") as src:
                reading = asyncio.ensure_future(p.read_all(len(data)))
                assert await zcsend.sendfile(p.server, src) == len(data)
                assert await reading == (hashlib.sha1(data).hexdigest(), len(data))
    run(main())


def test_a_buffered_pipe_readers_bytes_go_as_they_come(kind):
    """A buffered reader of a live pipe: what its producer wrote goes out at
    once. Its read(256 KiB) waited for 256 KiB or the pipe's end, holding the
    bytes back, in a thread nothing could free."""
    r, w = os.pipe()

    async def main():
        async with Pair(kind) as p:
            with open(r, "rb") as src:
                os.write(w, b"hello\n")
                task = asyncio.ensure_future(zcsend.sendfile(p.server, src))
                assert await asyncio.wait_for(p.reader.readexactly(6), 5) == b"hello\n"
                os.close(w)
                assert await asyncio.wait_for(task, 5) == 6
    run(main())


def test_a_timed_out_buffered_pipe_read_frees_its_thread_and_takes_nothing(kind):
    """timeout= on a buffered reader of a silent pipe: the call ends, its
    executor thread is free at once (read() held it until the pipe's end,
    and enough such calls starved the default executor), and the pipe's next
    bytes are still the caller's (the abandoned read took them)."""
    r, w = os.pipe()

    async def main():
        loop = asyncio.get_running_loop()
        async with Pair(kind) as p:
            with open(r, "rb") as src:
                for _ in range(3):
                    with pytest.raises(zcsend.SendfileConnectionError) as ei:
                        await zcsend.sendfile(p.server, src, timeout=0.2)
                    assert ei.value.errno == errno.ETIMEDOUT and ei.value.bytes_sent == 0
                os.write(w, b"the rest of the stream")
                os.close(w)
                await asyncio.sleep(0.2)  # a read left running would take them now
                assert await asyncio.wait_for(loop.run_in_executor(None, src.read), 5) == \
                    b"the rest of the stream"
    run(main())


@pytest.mark.parametrize("buffered", [False, True], ids=["raw", "buffered"])
def test_an_offset_on_a_pipe_is_espipe(kind, buffered):
    """A source that can't seek reads where it stands: an offset was ignored,
    and the stream's first bytes went as the ones asked for. Now OSError
    (ESPIPE) before a byte, on every path, the same exception (over TLS it
    was a SendfileError); the pipe is left unread."""
    r, w = os.pipe()
    os.write(w, b"0123456789")

    async def main():
        async with Pair(kind) as p:
            with os.fdopen(r, "rb", buffering=-1 if buffered else 0) as src:
                with pytest.raises(OSError) as ei:
                    await zcsend.sendfile(p.server, src, 5, 3, head=b"HEAD")
                assert ei.value.errno == errno.ESPIPE
                assert type(ei.value) is OSError, repr(ei.value)
                os.close(w)
                assert src.read() == b"0123456789"
            p.server.close()
            assert await p.reader.read() == b""
    run(main())


@pytest.mark.parametrize("tls", [False, True], ids=["socket", "tls"])
def test_a_non_blocking_pipe_is_waited_for(tls):
    """A pipe left O_NONBLOCK (by its producer, say) is waited for on every
    transport, as on a socket: over TLS its read failed with EAGAIN."""
    data = os.urandom(200_000)
    r, w = os.pipe()
    os.set_blocking(r, False)

    def feed():
        for i in range(0, len(data), 10_000):
            os.write(w, data[i:i + 10_000])
            time.sleep(0.002)
        os.close(w)

    async def main():
        async with Pair("tls" if tls else "tcp") as p:
            th = threading.Thread(target=feed)
            th.start()
            with open(r, "rb", buffering=0) as src:
                reading = asyncio.ensure_future(p.read_all(len(data)))
                assert await zcsend.sendfile(p.server, src) == len(data)
                assert await reading == (hashlib.sha1(data).hexdigest(), len(data))
            th.join()
    run(main())


def test_an_object_with_fileno_and_no_seek(kind, tmp_path):
    """Only fileno() and read(), on a regular file: every byte, and no
    AttributeError at the end from the position set after a send."""
    path = tmp_path / "f"
    digest = make_file(path, 300_000)

    class Source:
        def __init__(self, f):
            self.f = f

        def fileno(self):
            return self.f.fileno()

        def read(self, n):
            return self.f.read(n)

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(300_000))
                assert await zcsend.sendfile(p.server, Source(f)) == 300_000
                assert await reading == (digest, 300_000)
    run(main())


@pytest.mark.parametrize("bad", [None, "text"], ids=["none", "str"])
def test_a_read_that_returns_no_bytes_is_a_sendfile_error(kind, bad):
    """read() returning None (a non-blocking source) or a str after some bytes
    went: a SendfileError that says how many (a bare TypeError said nothing)."""
    class Source:
        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            return b"x" * 1000 if self.calls == 1 else bad

    async def main():
        async with Pair(kind) as p:
            reading = asyncio.ensure_future(p.read_all(1000))
            with pytest.raises(zcsend.SendfileError) as ei:
                await zcsend.sendfile(p.server, Source())
            assert ei.value.errno == errno.EIO and ei.value.bytes_sent == 1000
            assert f"read() returned {type(bad).__name__}, not bytes" in str(ei.value)
            assert (await reading)[1] == 1000
    run(main())


def test_pipe_with_count(kind):
    data = os.urandom(1 << 20)

    async def main():
        async with Pair(kind) as p:
            src, th = _pipe_with(data)
            with src:
                reading = asyncio.ensure_future(p.read_all(300_001))
                assert await zcsend.sendfile(p.server, src, count=300_001) == 300_001
                assert await reading == (hashlib.sha1(data[:300_001]).hexdigest(), 300_001)
                src.read()
            th.join()
    run(main())


def test_a_read_only_source_counts_as_one_transfer(kind):
    """One call, one transfer in the stats, on every transport: a BytesIO of
    2 MiB on a socket counted 8 started and 8 completed (one per chunk), and
    a read() that failed after some chunks counted them completed, never the
    call failed."""
    class Failing:
        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 3:
                raise OSError(errno.EIO, "the disk said no")
            return b"y" * n

    async def main():
        async with Pair(kind) as p:
            reading = asyncio.ensure_future(p.read_all(2 << 20))
            before = zcsend.stats()
            assert await zcsend.sendfile(p.server, io.BytesIO(b"x" * (2 << 20))) == 2 << 20
            after = zcsend.stats()
            await reading
            assert (after["started"] - before["started"], after["completed"] - before["completed"],
                    after["failed"] - before["failed"]) == (1, 1, 0)
            before = after
            from zcsend._core import CHUNK
            reading = asyncio.ensure_future(p.read_all(3 * CHUNK))
            with pytest.raises(zcsend.SendfileError):
                await zcsend.sendfile(p.server, Failing())
            after = zcsend.stats()
            assert (await reading)[1] == 3 * CHUNK
            assert (after["started"] - before["started"], after["completed"] - before["completed"],
                    after["failed"] - before["failed"]) == (1, 0, 1)
            assert after["active"] == before["active"]
    run(main())


def test_bytesio_goes_chunked(kind):
    data = os.urandom((3 << 20) + 7)

    async def main():
        async with Pair(kind) as p:
            src = io.BytesIO(data)
            reading = asyncio.ensure_future(p.read_all(len(data) - 10))
            before = zcsend.stats()
            assert await zcsend.sendfile(p.server, src, 10) == len(data) - 10
            assert src.tell() == len(data)
            assert zcsend.stats()["bytes_fallback"] - before["bytes_fallback"] == len(data) - 10
            assert await reading == (hashlib.sha1(data[10:]).hexdigest(), len(data) - 10)
    run(main())


class ReadOnly:
    """An object with read() and nothing else: read off the loop thread."""
    def __init__(self, data):
        self.f = io.BytesIO(data)

    def read(self, n=-1):
        return self.f.read(n)


def test_reader_object_goes_chunked(kind):
    data = os.urandom(1 << 20)

    async def main():
        async with Pair(kind) as p:
            reading = asyncio.ensure_future(p.read_all(len(data)))
            assert await zcsend.sendfile(p.server, ReadOnly(data)) == len(data)
            assert await reading == (hashlib.sha1(data).hexdigest(), len(data))
    run(main())


def test_fallback_false(kind):
    async def main():
        async with Pair(kind) as p:
            with pytest.raises(asyncio.SendfileNotAvailableError,
                               match="file has no file descriptor to send from"):
                await zcsend.sendfile(p.server, io.BytesIO(b"x"), fallback=False)
            with open("/dev/zero", "rb") as z:
                with pytest.raises(asyncio.SendfileNotAvailableError, match="not a regular file or pipe"):
                    await zcsend.sendfile(p.server, z, count=10, fallback=False)
                # with fallback a character device is copied
                reading = asyncio.ensure_future(p.read_all(100_000))
                assert await zcsend.sendfile(p.server, z, count=100_000) == 100_000
                assert (await reading)[1] == 100_000
            p.server.write(b"ok")  # the transport is intact after the refusals
            assert await p.reader.readexactly(2) == b"ok"
    run(main())


def test_small_socket_buffers(kind, datafile):
    path, size, digest = datafile

    async def main():
        async with Pair(kind, sndbuf=4096) as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(size, chunk=4096))
                assert await zcsend.sendfile(p.server, f) == size
                assert await reading == (digest, size)
    run(main())


def test_sparse_file_past_4gib(tmp_path):
    path = tmp_path / "sparse"
    off = (4 << 30) + 4097
    data = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.seek(off)
        f.write(data)
        f.truncate(5 << 30)

    async def main():
        async with Pair("tcp") as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(len(data)))
                assert await zcsend.sendfile(p.server, f, off, len(data)) == len(data)
                assert f.tell() == off + len(data)
                assert await reading == (hashlib.sha1(data).hexdigest(), len(data))
    run(main())


def test_streamwriter_from_real_client_socket(datafile):
    """The peer is a plain blocking socket in a thread, not asyncio."""
    path, size, digest = datafile

    async def main():
        done = asyncio.get_running_loop().create_future()

        async def handle(r, w):
            with open(path, "rb") as f:
                done.set_result(await zcsend.sendfile(w, f))
            w.close()
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]

        def client():
            h = hashlib.sha1()
            n = 0
            with socket.create_connection(("127.0.0.1", port)) as s:
                while True:
                    b = s.recv(1 << 16)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
            return h.hexdigest(), n
        got = await asyncio.get_running_loop().run_in_executor(None, client)
        assert got == (digest, size)
        assert await done == size
        srv.close()
        await srv.wait_closed()
    run(main())


def test_write_pipe_transport(tmp_path, datafile):
    """A write-only transport (a pipe, on either loop) takes the write path."""
    path, size, digest = datafile

    async def main():
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb"))
        got = hashlib.sha1()
        n = 0

        def drain():
            nonlocal n
            while True:
                b = os.read(r, 1 << 20)
                if not b:
                    return
                got.update(b)
                n += len(b)
        reader = loop.run_in_executor(None, drain)
        try:
            with open(path, "rb") as f:
                assert await zcsend.sendfile(transport, f) == size
        finally:
            transport.close()  # the reader sees EOF either way
            await reader
        os.close(r)
        assert (got.hexdigest(), n) == (digest, size)
    run(main())


def test_chunks_binding(tmp_path):
    """The core's chunk source, as the write path uses it: sized by the core's
    rule, each chunk checked against the range (ETRUNCATED where the file
    shrank), and the transfer counted in the stats exactly once."""
    from zcsend import _zcsend
    path = tmp_path / "f"
    make_file(path, 70000, seed=11)
    data = open(path, "rb").read()
    fd = os.open(path, os.O_RDONLY)
    try:
        s0 = zcsend.stats()
        c = _zcsend.Chunks(fd, 1000, 100000)  # past the end: the rest of the file
        assert (c.sized, c.offset, c.remaining) == (True, 1000, 69000)
        assert c.want(1 << 20) == 69000
        buf = c.read_cached(4096)
        if buf is not None:  # in the page cache (just written)
            assert buf == data[1000:5096] and c.offset == 5096
        else:
            assert c.offset == 1000 and c.take(4096, 4096) == 0  # a read job read it
        c.wrote(4096)
        with pytest.raises(ValueError):
            c.take(5, 4)  # more than asked
        os.truncate(path, 6000)  # the file shrinks
        assert c.take(904, 4096) == _zcsend.ETRUNCATED
        assert c.result == _zcsend.ETRUNCATED and c.remaining == 0
        c.wrote(904)
        c.end(0)  # the first outcome stands
        c.close()
        d = _zcsend.Chunks(-1, 0, 10)  # a source with no fd: the caller reads it
        assert (d.sized, d.offset, d.want(4)) == (False, -1, 4)
        del d  # never ended: cancelled
        s1 = zcsend.stats()
        assert s1["started"] - s0["started"] == 2
        assert s1["failed"] - s0["failed"] == 1
        assert s1["cancelled"] - s0["cancelled"] == 1
        assert s1["active"] == s0["active"]
        assert s1["bytes_fallback"] - s0["bytes_fallback"] == 5000
        os.mkdir(tmp_path / "d")
        dfd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(IsADirectoryError):
                _zcsend.Chunks(dfd, 0, -1)
        finally:
            os.close(dfd)
    finally:
        os.close(fd)


def test_read_cached_binding(tmp_path):
    """The core's page-cache read, as the TLS path uses it: all the bytes or None,
    never a wait; errors as OSError with the errno."""
    from zcsend import _zcsend
    path = tmp_path / "f"
    make_file(path, 70000, seed=9)
    data = open(path, "rb").read()
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _zcsend.read_cached(fd, 0, 70000) == data
        assert _zcsend.read_cached(fd, 1234, 4096) == data[1234:1234 + 4096]
        assert _zcsend.read_cached(fd, 69990, 100) is None  # the file ends sooner
        with pytest.raises(ValueError):
            _zcsend.read_cached(fd, 0, 0)
        r, w = os.pipe()
        try:
            with pytest.raises(OSError) as ei:
                _zcsend.read_cached(r, 0, 10)
            assert ei.value.errno == errno.ESPIPE
        finally:
            os.close(r)
            os.close(w)
    finally:
        os.close(fd)


def test_head_goes_first(kind, datafile):
    """head= leaves before the file's bytes (in their packets on a socket; through
    write() on TLS), on every path; the result and the position count the file's
    bytes only."""
    path, size, _ = datafile
    content = open(path, "rb").read()
    head = b"HTTP/1.1 200 OK\r\n" + b"h" * 70000 + b"\r\n\r\n"  # more than a send buffer

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                n, got = await asyncio.gather(
                    zcsend.sendfile(p.server, f, 10, 3 << 20, head=head),
                    p.reader.readexactly(len(head) + (3 << 20)))
                assert n == 3 << 20 and f.tell() == 10 + (3 << 20)
            assert got[:len(head)] == head and got[len(head):] == content[10:10 + (3 << 20)]
            # after bytes the transport still holds: those, the head, the file
            p.server.write(b"before")
            with open(path, "rb") as f:
                n, got = await asyncio.gather(
                    zcsend.sendfile(p.server, f, size - 5, head=bytearray(b"HEAD")),
                    p.reader.readexactly(6 + 4 + 5))
            assert n == 5 and got == b"beforeHEAD" + content[-5:]
            # nothing to send from the file (offset at its end): the head alone
            with open(path, "rb") as f:
                assert await zcsend.sendfile(p.server, f, size, head=b"only") == 0
            assert await p.reader.readexactly(4) == b"only"
            # a source with no fd: chunks through the core, the head with the first
            src = io.BytesIO(b"abc" * 100000)
            n, got = await asyncio.gather(zcsend.sendfile(p.server, src, 1, head=memoryview(b"M")),
                                          p.reader.readexactly(1 + 299999))
            assert n == 299999 and got == b"M" + (b"abc" * 100000)[1:]
            src = io.BytesIO(b"")
            assert await zcsend.sendfile(p.server, src, head=b"empty") == 0
            assert await p.reader.readexactly(5) == b"empty"
    run(main())


def test_head_must_be_bytes(datafile):
    async def main():
        async with Pair() as p:
            with open(datafile[0], "rb") as f:
                with pytest.raises(TypeError, match="head must be a bytes-like object \\(got str\\)"):
                    await zcsend.sendfile(p.server, f, head="text")
                with pytest.raises(TypeError, match="head must be a bytes-like object \\(got int\\)"):
                    await zcsend.sendfile(p.server, f, head=5)
                assert f.tell() == 0
    run(main())


def _nowait_reads(path):
    """Whether the file's filesystem takes preadv2(RWF_NOWAIT) (tmpfs refuses it:
    then no rest is copied, everything goes zero-copy)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
        return True
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [1, 1000, 4096, zcsend._zcsend.SMALL_COPY, zcsend._zcsend.SMALL_COPY + 1])
@pytest.mark.parametrize("head", [None, b"HTTP/1.1 200 OK\r\n\r\n"], ids=["no-head", "head"])
def test_a_small_file_is_one_copy(kind, tmp_path, size, head):
    """At most SMALL_COPY (16 KiB) bytes of a cached file go as one copy
    (read with RWF_NOWAIT, sent with the head in one sendmsg): fewer syscalls
    than the zero-copy step for so few bytes. Every byte in order, the position
    after them, counted as copied; one byte more goes zero-copy."""
    path = tmp_path / "small.bin"
    digest = make_file(path, size + 3, seed=size % 89)
    copied = size <= zcsend._zcsend.SMALL_COPY and _nowait_reads(path)

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                before = zcsend.stats()
                n, got = await asyncio.gather(
                    zcsend.sendfile(p.server, f, 2, size, head=head),
                    p.reader.readexactly(len(head or b"") + size))
                after = zcsend.stats()
                assert n == size and f.tell() == 2 + size
            assert got == (head or b"") + open(path, "rb").read()[2:2 + size]
            zc = after["bytes_zero_copy"] - before["bytes_zero_copy"]
            fb = after["bytes_fallback"] - before["bytes_fallback"]
            if not zero_copy_expected(kind):
                assert (zc, fb) == (0, size)
            else:
                assert (zc, fb) == ((0, size) if copied else (size, 0))
    assert digest
    run(main())


def test_a_small_copy_cut_short_goes_on_from_what_it_read(tmp_path):
    """The copy's send is partial or refused (the socket's buffer filled first,
    the peer not reading): the transfer goes on in the engine with the bytes it
    read, sent before any other, exactly once; the call returns once they all
    went."""
    path = tmp_path / "small.bin"
    make_file(path, 4096, seed=5)
    data = open(path, "rb").read()
    head = b"H" * 3000

    async def main():
        async with Pair("unix", sndbuf=4096) as p:
            p.writer.transport.pause_reading()  # the peer reads nothing
            sock = p.server.get_extra_info("socket")
            filled = 0
            for room in (65536, 1):  # big writes, then bytes: the buffer full to the last one
                while True:
                    try:
                        filled += os.write(sock.fileno(), b"p" * room)
                    except BlockingIOError:
                        break
            with open(path, "rb") as f:
                before, made = zcsend.stats(), zcsend._zcsend.debug_counts()["transfers"]
                send = asyncio.ensure_future(zcsend.sendfile(p.server, f, 0, head=head))
                await asyncio.sleep(0.2)
                assert not send.done()  # it waits for the peer
                p.writer.transport.resume_reading()
                assert await p.reader.readexactly(filled) == b"p" * filled
                got = await p.reader.readexactly(len(head) + len(data))
                assert await send == len(data) and f.tell() == len(data)
                after = zcsend.stats()
            assert got == head + data
            if zero_copy_expected("unix") and _nowait_reads(path):
                assert after["bytes_fallback"] - before["bytes_fallback"] == len(data)
                assert after["bytes_zero_copy"] == before["bytes_zero_copy"]
            assert after["completed"] - before["completed"] == 1
            assert zcsend._zcsend.debug_counts()["transfers"] - made == 1  # it went on
    run(main())


def test_a_small_file_with_fallback_false_stays_zero_copy(tmp_path):
    """fallback=False asks for zero-copy only: a small file too goes by sendfile."""
    path = tmp_path / "small.bin"
    make_file(path, 1000, seed=4)

    async def main():
        async with Pair("tcp") as p:
            with open(path, "rb") as f:
                before = zcsend.stats()
                n, got = await asyncio.gather(zcsend.sendfile(p.server, f, fallback=False),
                                              p.reader.readexactly(1000))
                after = zcsend.stats()
            assert n == 1000 and got == open(path, "rb").read()
            zc = after["bytes_zero_copy"] - before["bytes_zero_copy"]
            fb = after["bytes_fallback"] - before["bytes_fallback"]
            assert (zc, fb) == ((1000, 0) if zcsend.backend() != "emulated" else (0, 1000))
    run(main())
