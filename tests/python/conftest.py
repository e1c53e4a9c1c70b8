"""Shared helpers: real sockets (loopback TCP and Unix), real files, real peers."""
import asyncio
import hashlib
import os
import socket
import tempfile

import pytest


def run(coro, timeout=120):
    """Runs a test coroutine on a fresh stock asyncio loop (debug mode follows
    PYTHONASYNCIODEBUG), failing it if it outlives timeout."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def make_file(path, size, seed=1):
    """A file of size pseudo-random bytes; returns its sha1."""
    rnd = __import__("random").Random(seed)
    h = hashlib.sha1()
    with open(path, "wb") as f:
        left = size
        block = rnd.randbytes(1 << 20)
        i = 0
        while left:
            chunk = block[:left] if left < len(block) else block
            chunk = bytes([i & 0xFF]) + chunk[1:] if chunk else chunk
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return h.hexdigest()


def file_sha1(path, offset=0, count=None):
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read() if count is None else f.read(count)
    return hashlib.sha1(data).hexdigest(), len(data)


class Pair:
    """A connected pair on loopback TCP or a Unix socket: ``server`` is the
    StreamWriter zcsend sends on, ``reader`` the peer's StreamReader."""

    def __init__(self, kind="tcp", sndbuf=None):
        self.kind = kind
        self.sndbuf = sndbuf

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()

        async def on_conn(r, w):
            accepted.set_result((r, w))

        if self.kind == "tcp":
            self.srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
            port = self.srv.sockets[0].getsockname()[1]
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            self.tmp = tempfile.mkdtemp(prefix="zcs-")
            path = os.path.join(self.tmp, "s")
            self.srv = await asyncio.start_unix_server(on_conn, path)
            self.reader, self.writer = await asyncio.open_unix_connection(path)
        self.server_reader, self.server = await accepted
        if self.sndbuf:
            self.server.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        return self

    async def read_all(self, n=None, chunk=1 << 20, delay=0):
        """Reads n bytes (or to EOF), slowly if delay; returns (sha1, length)."""
        h = hashlib.sha1()
        got = 0
        while n is None or got < n:
            data = await self.reader.read(chunk if n is None else min(chunk, n - got))
            if not data:
                break
            h.update(data)
            got += len(data)
            if delay:
                await asyncio.sleep(delay)
        return h.hexdigest(), got

    async def __aexit__(self, *exc):
        for w in (self.server, self.writer):
            w.close()
        self.srv.close()
        await self.srv.wait_closed()
        if self.kind == "unix":
            import shutil
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(params=["tcp", "unix"])
def kind(request):
    return request.param


@pytest.fixture
def datafile(tmp_path):
    """(path, size, sha1) of an 8 MiB random file."""
    path = tmp_path / "data.bin"
    size = 8 << 20 | 12345
    return str(path), size, make_file(path, size)
