"""Bad input, lost peers, close and cancellation: clear errors, nothing lost."""
import asyncio
import errno
import io
import os
import socket
import struct

import pytest

import zcsend
from conftest import Pair, held, make_file, run, until


def _expect(exc_type, match, coro_factory, kind="tcp"):
    async def main():
        async with Pair(kind) as p:
            with pytest.raises(exc_type, match=match):
                await coro_factory(p)
            p.server.write(b"ok")  # nothing was held or broken by the refusal
            assert await p.reader.readexactly(2) == b"ok"
    run(main())


def test_text_mode(datafile):
    path = datafile[0]
    with open(path, "r") as f:
        _expect(ValueError, "^file should be opened in binary mode$", lambda p: zcsend.sendfile(p.server, f))
    _expect(ValueError, "^file should be opened in binary mode$",
            lambda p: zcsend.sendfile(p.server, io.StringIO("x")))


@pytest.mark.parametrize("offset,exc,msg", [
    (-1, ValueError, r"^offset must be a non-negative integer \(got -1\)$"),
    ("1", TypeError, r"^offset must be a non-negative integer \(got '1'\)$"),
    (1.5, TypeError, r"^offset must be a non-negative integer \(got 1.5\)$"),
])
def test_bad_offset(datafile, offset, exc, msg):
    with open(datafile[0], "rb") as f:
        _expect(exc, msg, lambda p: zcsend.sendfile(p.server, f, offset))


@pytest.mark.parametrize("count,exc,msg", [
    (0, ValueError, r"^count must be a positive integer \(got 0\)$"),
    (-5, ValueError, r"^count must be a positive integer \(got -5\)$"),
    ("10", TypeError, r"^count must be a positive integer \(got '10'\)$"),
    (2.0, TypeError, r"^count must be a positive integer \(got 2.0\)$"),
])
def test_bad_count(datafile, count, exc, msg):
    with open(datafile[0], "rb") as f:
        _expect(exc, msg, lambda p: zcsend.sendfile(p.server, f, 0, count))


def test_closed_file(datafile):
    f = open(datafile[0], "rb")
    f.close()
    _expect(ValueError, r"^I/O operation on closed file\.$", lambda p: zcsend.sendfile(p.server, f))


def test_write_only_file(tmp_path):
    with open(tmp_path / "w", "wb") as f:
        _expect(io.UnsupportedOperation, "^File not open for reading$", lambda p: zcsend.sendfile(p.server, f))


class DirSource:
    """A binary 'file' whose descriptor is a directory."""
    mode = "rb"

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def fileno(self):
        return self.fd


def test_directory(tmp_path):
    d = DirSource(tmp_path)
    try:
        _expect(IsADirectoryError, "Is a directory", lambda p: zcsend.sendfile(p.server, d))
    finally:
        os.close(d.fd)


def test_offset_past_eof_returns_zero(datafile):
    path, size, _ = datafile

    async def main():
        async with Pair() as p:
            with open(path, "rb") as f:
                assert await zcsend.sendfile(p.server, f, size + 10) == 0
                assert f.tell() == size + 10
                assert await zcsend.sendfile(p.server, f, size) == 0
    run(main())


def test_not_a_transport():
    async def main():
        with pytest.raises(TypeError, match="^expected an asyncio transport or StreamWriter, got socket$"):
            await zcsend.sendfile(socket.socket(), io.BytesIO(b"x"))
    run(main())


def test_closing_transport(datafile):
    async def main():
        async with Pair() as p:
            p.server.close()
            with open(datafile[0], "rb") as f, pytest.raises(RuntimeError, match="^Transport is closing$"):
                await zcsend.sendfile(p.server, f)
    run(main())


def test_udp_transport(datafile):
    async def main():
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            with open(datafile[0], "rb") as f, pytest.raises(RuntimeError, match="^sendfile is not supported for transport"):
                await zcsend.sendfile(t, f)
        finally:
            t.close()
    run(main())


async def _wait_sent(p, at_least, chunk=65536):
    """Reads until at_least bytes arrived; returns how many."""
    got = 0
    while got < at_least:
        got += len(await p.reader.read(chunk))
    return got


async def _drain_rest(p):
    got = 0
    while True:
        b = await p.reader.read(1 << 20)
        if not b:
            return got
        got += len(b)


def test_file_shrinks_mid_transfer(kind, tmp_path):
    path = tmp_path / "big"
    make_file(path, 32 << 20)

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f, 1000))
                got = await _wait_sent(p, 1 << 20)
                os.truncate(path, 4 << 20)
                reading = asyncio.ensure_future(_drain_rest(p))
                with pytest.raises(zcsend.FileShrunkError) as ei:
                    await task
                e = ei.value
                assert isinstance(e, zcsend.SendfileError) and isinstance(e, OSError)
                assert e.bytes_sent == (4 << 20) - 1000
                assert f"after {e.bytes_sent} of {(32 << 20) - 1000} bytes" in str(e)
                assert f.tell() == 1000 + e.bytes_sent
                p.server.close()
                assert got + await reading == e.bytes_sent
    run(main())


def test_peer_reset_mid_transfer(kind, tmp_path):
    path = tmp_path / "big"
    make_file(path, 64 << 20)

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                await _wait_sent(p, 1 << 20)
                sock = p.writer.get_extra_info("socket")
                if kind == "tcp":  # an RST, not a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                p.writer.transport.abort()
                with pytest.raises(ConnectionError) as ei:
                    await task
                assert isinstance(ei.value, zcsend.SendfileConnectionError)
                assert ei.value.errno in (errno.EPIPE, errno.ECONNRESET)
                assert 0 < ei.value.bytes_sent < 64 << 20
                assert f.tell() == ei.value.bytes_sent
                assert zcsend.stats()["active"] == 0
    run(main())


def test_close_during_transfer_ends_task_promptly(kind, tmp_path):
    """asyncio's own native sendfile hangs for ever here."""
    path = tmp_path / "big"
    make_file(path, 64 << 20)

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            with open(path, "rb") as f:
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f))
                got = await _wait_sent(p, 1 << 20)
                p.server.transport.close()
                with pytest.raises(ConnectionError) as ei:
                    await asyncio.wait_for(task, 5)
                e = ei.value
                assert isinstance(e, zcsend.SendfileConnectionError)
                assert e.errno == errno.ECONNABORTED
                assert "transport was closed during sendfile" in str(e)
                rest = await asyncio.wait_for(_drain_rest(p), 5)  # EOF comes: the socket is closed
                assert got + rest == e.bytes_sent == f.tell()  # nothing after the close
    run(main())


def test_cancel_during_drain_leaves_transport_usable(kind, datafile):
    """asyncio's own native sendfile leaves write() raising and reading paused for ever."""
    async def main():
        async with Pair(kind) as p:
            t = p.server.transport
            p.server.write(b"x" * (32 << 20))  # the peer reads nothing yet: the drain waits
            with open(datafile[0], "rb") as f:
                f.seek(5)
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f, 100))
                await until(lambda: held(t), what="the transfer holds the transport")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                # zero-copy paths were still draining: nothing sent. The TLS write
                # path has no drain (the transport keeps order) and may have
                # handed chunks over; the position says how many, exactly.
                sent = f.tell() - 100
                assert sent == 0 or (kind == "tls" and sent > 0)
            assert t.is_reading()
            p.server.write(b"END")  # no RuntimeError
            data = await p.reader.readexactly((32 << 20) + sent + 3)
            assert data[:32 << 20] == b"x" * (32 << 20)
            assert data[32 << 20:] == open(datafile[0], "rb").read()[100:100 + sent] + b"END"
            p.writer.write(b"hi")
            assert await asyncio.wait_for(p.server_reader.readexactly(2), 5) == b"hi"
    run(main())


def test_cancel_mid_send_stops_at_exact_position(kind, tmp_path):
    path = tmp_path / "big"
    make_file(path, 64 << 20)

    async def main():
        async with Pair(kind, sndbuf=65536) as p:
            with open(path, "rb") as f:
                before = zcsend.stats()
                task = asyncio.ensure_future(zcsend.sendfile(p.server, f, 3))
                got = await _wait_sent(p, 2 << 20)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                pos = f.tell()
                assert 3 + got <= pos < 3 + (64 << 20)
                p.server.close()
                rest = await asyncio.wait_for(_drain_rest(p), 10)
                assert 3 + got + rest == pos  # no byte after the cancellation was delivered
                after = zcsend.stats()
                assert after["cancelled"] - before["cancelled"] == 1
                assert after["active"] == 0
    run(main())


def test_bad_backend_env():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import zcsend"], env={**os.environ, "ZCSEND_BACKEND": "bogus"},
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "ValueError: ZCSEND_BACKEND=bogus: unknown ZCSEND_BACKEND value (use 'auto' or 'emulated')" in r.stderr


def test_every_errno_has_its_name():
    """The core names every errno the platform has (a step passes on whatever the
    kernel said), as Python's errno module does; an alias gets its value's name."""
    from zcsend import _zcsend
    for code, name in errno.errorcode.items():
        got = _zcsend.errname(-code)
        assert got != "EUNKNOWN", (code, name)
        assert getattr(errno, got) == code, (code, name, got)
    assert _zcsend.errname(-errno.EWOULDBLOCK) == "EAGAIN"
    assert _zcsend.errname(_zcsend.ETRUNCATED) == "ETRUNCATED"
    assert _zcsend.errname(0) == _zcsend.errname(errno.EPIPE) == "EUNKNOWN"
