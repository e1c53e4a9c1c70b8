"""zcsend.install(): loop.sendfile through zcsend, and aiohttp served by it unchanged."""
import asyncio
import hashlib

import aiohttp
import pytest
from aiohttp import web

import zcsend
from zcsend import _zcsend
from conftest import Pair, Runner, file_sha1, make_file, run, tls_contexts, zero_copy_expected


def test_loop_sendfile_goes_through_zcsend(kind, datafile):
    path, size, digest = datafile

    async def main():
        loop = asyncio.get_running_loop()
        zcsend.install(loop)
        zcsend.install(loop)  # harmless twice
        try:
            async with Pair(kind) as p:
                with open(path, "rb") as f:
                    reading = asyncio.ensure_future(p.read_all(size - 1000))
                    before = zcsend.stats()
                    assert await loop.sendfile(p.server.transport, f, 1000) == size - 1000
                    assert f.tell() == size
                    after = zcsend.stats()
                    assert await reading == file_sha1(path, 1000)
                    zc = after["bytes_zero_copy"] - before["bytes_zero_copy"]
                    fb = after["bytes_fallback"] - before["bytes_fallback"]
                    want = size - 1000
                    assert (zc, fb) == ((want, 0) if zero_copy_expected(kind) else (0, want))
                    # asyncio's checks and messages
                    with pytest.raises(ValueError, match=r"^offset must be a non-negative integer \(got -1\)$"):
                        await loop.sendfile(p.server.transport, f, -1)
                    with pytest.raises(TypeError, match=r"^count must be a positive integer \(got 'x'\)$"):
                        await loop.sendfile(p.server.transport, f, 0, "x")
                    if kind == "tls":  # no native path on TLS: asyncio's words for fallback=False
                        with pytest.raises(RuntimeError, match="^fallback is disabled and native sendfile is not supported for transport"):
                            await loop.sendfile(p.server.transport, f, fallback=False)
        finally:
            zcsend.uninstall(loop)
        assert "sendfile" not in vars(loop)
    run(main())


def test_install_without_a_running_loop_covers_new_loops(datafile):
    path, size, digest = datafile
    zcsend.install()
    try:
        async def main():
            async with Pair("tcp") as p:
                with open(path, "rb") as f:
                    reading = asyncio.ensure_future(p.read_all(size))
                    before = zcsend.stats()["completed"]
                    assert await asyncio.get_running_loop().sendfile(p.server.transport, f) == size
                    assert zcsend.stats()["completed"] == before + 1
                    assert await reading == (digest, size)
        run(main())
    finally:
        zcsend.uninstall()
    import uvloop
    assert "sendfile" not in vars(asyncio.BaseEventLoop) or not hasattr(
        vars(asyncio.BaseEventLoop)["sendfile"], "__zcsend_installed__")
    assert "sendfile" not in vars(uvloop.Loop)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_aiohttp_file_response(tmp_path, tls):
    """aiohttp's FileResponse calls loop.sendfile: with install() it is zcsend's
    (on uvloop, where loop.sendfile otherwise raises NotImplementedError)."""
    files = {}
    for name, size in (("big", (16 << 20) + 7), ("small", 1000), ("empty", 0)):
        files[name] = (tmp_path / name, size, make_file(tmp_path / name, size, seed=size % 97))

    async def main():
        loop = asyncio.get_running_loop()
        zcsend.install(loop)
        app = web.Application()
        async def serve(req):
            return web.FileResponse(files[req.match_info["name"]][0])
        app.router.add_get("/{name}", serve)
        runner = web.AppRunner(app)
        await runner.setup()
        sctx, cctx = tls_contexts() if tls else (None, None)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        try:
            before = zcsend.stats()
            async with aiohttp.ClientSession() as s:
                for _ in range(3):  # keep-alive: several responses on one connection
                    for name, (path, size, digest) in files.items():
                        async with s.get(f"{base}/{name}", ssl=cctx) as r:
                            assert r.status == 200
                            body = await r.read()
                            assert len(body) == size and hashlib.sha1(body).hexdigest() == digest
                async with s.get(f"{base}/big", ssl=cctx, headers={"Range": "bytes=1000-2000000"}) as r:
                    assert r.status == 206
                    body = await r.read()
                    assert hashlib.sha1(body).hexdigest() == file_sha1(files["big"][0], 1000, 1999001)[0]
            after = zcsend.stats()
            sent = 3 * sum(size for _, size, _ in files.values()) + 1999001
            zc = after["bytes_zero_copy"] - before["bytes_zero_copy"]
            fb = after["bytes_fallback"] - before["bytes_fallback"]
            if tls or zcsend.backend() == "emulated":
                assert (zc, fb) == (0, sent)
            else:
                # a file of at most SMALL_COPY bytes sent inline is one copy (cheaper
                # than the zero-copy step's checks); the engine's sends go zero-copy
                small = 3 * sum(size for _, size, _ in files.values() if size <= _zcsend.SMALL_COPY)
                assert zc + fb == sent and fb <= small, (zc, fb, small)
            assert after["failed"] == before["failed"]
        finally:
            await runner.cleanup()
            zcsend.uninstall(loop)
    run(main())


def test_loop_sendfile_gives_the_loops_own_answers_for_what_zcsend_doesnt_take(loop_kind, tmp_path):
    """Not a transport (a Mock), or a transport zcsend can't send on (UDP):
    the loop's own sendfile answers, asyncio's RuntimeError and uvloop's
    NotImplementedError (which aiohttp expects) alike; zcsend starts nothing."""
    from unittest import mock
    path = tmp_path / "f"
    make_file(path, 1000)

    async def main():
        loop = asyncio.get_running_loop()
        zcsend.install(loop)
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            before = zcsend.stats()["started"]
            not_a_transport = mock.Mock()
            not_a_transport.is_closing.side_effect = lambda: False
            from asyncio import constants
            not_a_transport._sendfile_compatible = constants._SendfileMode.FALLBACK
            with open(path, "rb") as f:
                if loop_kind == "uvloop":
                    for transport in (not_a_transport, udp):
                        with pytest.raises(NotImplementedError):
                            await loop.sendfile(transport, f)
                else:
                    with pytest.raises(RuntimeError, match="^fallback is disabled and native sendfile is not supported"):
                        await loop.sendfile(not_a_transport, f, fallback=False)
                    with pytest.raises(RuntimeError, match="^sendfile is not supported for transport <_SelectorDatagramTransport"):
                        await loop.sendfile(udp, f)
                assert f.tell() == 0
            assert zcsend.stats()["started"] == before
        finally:
            udp.close()
            zcsend.uninstall(loop)
    run(main())


@pytest.mark.asyncio_only("_sendfile_native is stock asyncio's hook")
def test_a_loops_own_sendfile_native_is_honoured(tmp_path):
    """install() for every loop class: a loop subclass with its own
    _sendfile_native, or a loop given one, sends through it (asyncio's
    sendfile, which calls it), while a stock loop's transfer is zcsend's."""
    path = tmp_path / "f"
    size = 300_000
    digest = make_file(path, size)
    calls = []

    class OwnNativeLoop(asyncio.SelectorEventLoop):
        async def _sendfile_native(self, transp, file, offset, count):
            calls.append("class")
            return await super()._sendfile_native(transp, file, offset, count)

    async def send(own=None):
        loop = asyncio.get_running_loop()
        if own:
            async def native(transp, file, offset, count):
                calls.append("instance")
                raise asyncio.SendfileNotAvailableError("not supported, use the fallback")
            loop._sendfile_native = native
        async with Pair("tcp") as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(size))
                before = zcsend.stats()["started"]
                assert await loop.sendfile(p.server.transport, f) == size
                assert f.tell() == size
                assert await reading == (digest, size)
                return zcsend.stats()["started"] - before

    zcsend.install()
    try:
        with Runner(loop_factory=OwnNativeLoop) as runner:
            assert runner.run(send()) == 0 and calls == ["class"]
        with Runner() as runner:
            assert runner.run(send(own=True)) == 0 and calls == ["class", "instance"]
        with Runner() as runner:
            assert runner.run(send()) == 1 and calls == ["class", "instance"]
    finally:
        zcsend.uninstall()
