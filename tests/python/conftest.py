"""Shared helpers: real sockets (loopback TCP and Unix), real files, real peers."""
import asyncio
import functools
import hashlib
import os
import socket
import ssl
import subprocess
import tempfile

import pytest
import uvloop

# Every test runs once per event loop (the autouse fixture below), as uvloop's
# own suite does with its mixins; run() builds the loop the current test asks for.
LOOP = {"kind": "asyncio"}


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def loop_kind(request):
    if request.param == "uvloop" and request.node.get_closest_marker("asyncio_only"):
        pytest.skip(request.node.get_closest_marker("asyncio_only").args[0])
    LOOP["kind"] = request.param
    yield request.param
    LOOP["kind"] = "asyncio"


def pytest_configure(config):
    config.addinivalue_line("markers", "asyncio_only(why): the behaviour tested is stock asyncio's")


if hasattr(asyncio, "Runner"):
    Runner = asyncio.Runner
else:
    class Runner:
        """asyncio.Runner (3.11+) for Python 3.9 and 3.10, as much of it as run()
        uses: the same loop setup (a loop_factory's loop is not made current),
        debug, and the same teardown (cancel what is left, async generators,
        the default executor, close)."""

        def __init__(self, *, debug=None, loop_factory=None):
            self._debug, self._factory = debug, loop_factory
            self._loop, self._set_event_loop = None, False

        def __enter__(self):
            if self._factory is None:
                self._loop = asyncio.new_event_loop()
                asyncio.set_event_loop(self._loop)
                self._set_event_loop = True
            else:
                self._loop = self._factory()
            if self._debug is not None:
                self._loop.set_debug(self._debug)
            return self

        def run(self, coro):
            return self._loop.run_until_complete(self._loop.create_task(coro))

        def __exit__(self, *exc):
            loop = self._loop
            try:
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                for t in tasks:
                    if not t.cancelled() and t.exception() is not None:
                        loop.call_exception_handler({"message": "unhandled exception during asyncio.run() shutdown",
                                                     "exception": t.exception(), "task": t})
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                if self._set_event_loop:
                    asyncio.set_event_loop(None)
                loop.close()


def run(coro, timeout=120):
    """Runs a test coroutine on a fresh loop of the current kind (debug mode
    follows PYTHONASYNCIODEBUG), failing it if it outlives timeout."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    factory = uvloop.new_event_loop if LOOP["kind"] == "uvloop" else None
    debug = bool(os.environ.get("PYTHONASYNCIODEBUG"))
    with Runner(loop_factory=factory, debug=debug) as runner:
        return runner.run(bounded())


async def until(predicate, timeout=10, what=None):
    """Waits until predicate() is true, looking at it every turn of the loop
    (at most every millisecond): for the event itself, not a guessed sleep."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.001)


def held(transport):
    """Whether a zcsend transfer holds transport now (its drain or its sending began)."""
    from zcsend import _transports
    return id(transport) in _transports._held


@functools.lru_cache(maxsize=None)
def tls_files():
    """A self-signed certificate and key for 127.0.0.1, made once per session."""
    d = tempfile.mkdtemp(prefix="zcs-tls-")
    crt, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", crt],
                   check=True, capture_output=True)
    return crt, key


def tls_contexts():
    crt, key = tls_files()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(crt, key)
    client = ssl.create_default_context(cafile=crt)
    return server, client


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
        self.kind = kind  # tcp, unix, or tls (over TCP)
        self.sndbuf = sndbuf

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()

        async def on_conn(r, w):
            accepted.set_result((r, w))

        if self.kind in ("tcp", "tls"):
            sctx, cctx = tls_contexts() if self.kind == "tls" else (None, None)
            self.srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=sctx)
            port = self.srv.sockets[0].getsockname()[1]
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
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


@pytest.fixture(params=["tcp", "unix", "tls"])
def kind(request):
    return request.param


def zero_copy_expected(kind):
    """Whether a transfer on this kind of pair should go zero-copy here."""
    import zcsend
    return kind != "tls" and zcsend.backend() != "emulated"


@pytest.fixture
def datafile(tmp_path):
    """(path, size, sha1) of an 8 MiB random file."""
    path = tmp_path / "data.bin"
    size = 8 << 20 | 12345
    return str(path), size, make_file(path, size)
