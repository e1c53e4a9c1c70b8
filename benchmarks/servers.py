"""The Python servers zcsend is measured against, each one process on one event
loop, started by benchmarks/run.py:

    python benchmarks/servers.py KIND ROOT PORT [--tls CERT KEY]

KIND:
  loop-sendfile      stock asyncio, body by `loop.sendfile` (zero-copy on TCP; on
                     TLS asyncio's own 16 KiB fallback through the executor)
  readwrite          stock asyncio, body by a 64 KiB read + write + drain loop
  uvloop-readwrite   uvloop, body by a 256 KiB read + write + drain loop (what
                     aiohttp does there: uvloop has no loop.sendfile)
  aiofastnet         stock asyncio patched by aiofastnet, body by its `loop.sendfile`
  aiohttp            aiohttp `web.FileResponse`, stock asyncio
  aiohttp-zcsend     the same after `zcsend.install()`

The first four are zcsend's own `python -m zcsend serve` HTTP code
(zcsend.server.FileServer) with only the body-sending coroutine swapped, so
they differ from zcsend in one thing: how the response leaves (they write the
head, then the body; zcsend sends the head with the body's first bytes). The reads in the read + write loops are
plain blocking `f.read` calls: with the file in the page cache that is the
fastest way to read in Python (an executor round trip costs more).
"""
import asyncio
import os
import ssl
import sys

from zcsend.server import FileServer, serve


class LoopSendfile(FileServer):
    async def send_body(self, writer, f, start, count, head):
        writer.write(head)
        await writer.drain()
        return await asyncio.get_running_loop().sendfile(writer.transport, f, start, count)


class AiofastnetSendfile(FileServer):
    async def send_body(self, writer, f, start, count, head):
        writer.write(head)
        await writer.drain()
        await asyncio.get_running_loop().sendfile(writer.transport, f, start, count)
        return count  # aiofastnet returns None once it is all sent


def read_write(chunk):
    class ReadWrite(FileServer):
        async def send_body(self, writer, f, start, count, head):
            writer.write(head)
            f.seek(start)
            sent = 0
            while sent < count:
                data = f.read(min(chunk, count - sent))
                if not data:
                    break
                writer.write(data)
                sent += len(data)
                await writer.drain()
            return sent
    return ReadWrite


async def aiohttp_server(root, port, ctx):
    from aiohttp import web

    async def handler(request):
        name = request.match_info["name"]
        if "/" in name or name.startswith("."):
            raise web.HTTPForbidden()
        return web.FileResponse(os.path.join(root, name))

    app = web.Application()
    app.router.add_get("/{name}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx, backlog=1024).start()
    print(f"aiohttp: serving {root} on port {port}", flush=True)
    await asyncio.Event().wait()


def main(argv):
    kind, root, port = argv[0], argv[1], int(argv[2])
    ctx = None
    if argv[3:4] == ["--tls"]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(argv[4], argv[5])
    factory = asyncio.new_event_loop
    if kind == "loop-sendfile":
        main_coro = serve(root, port=port, ssl_context=ctx, server_class=LoopSendfile)
    elif kind == "readwrite":
        main_coro = serve(root, port=port, ssl_context=ctx, server_class=read_write(64 << 10))
    elif kind == "uvloop-readwrite":
        import uvloop
        factory = uvloop.new_event_loop
        main_coro = serve(root, port=port, ssl_context=ctx, server_class=read_write(256 << 10))
    elif kind == "aiofastnet":
        import aiofastnet
        factory = aiofastnet.loop_factory()
        main_coro = serve(root, port=port, ssl_context=ctx, server_class=AiofastnetSendfile)
    elif kind in ("aiohttp", "aiohttp-zcsend"):
        if kind == "aiohttp-zcsend":
            import zcsend
            zcsend.install()  # patches the loop classes before the loop exists
        main_coro = aiohttp_server(root, port, ctx)
    else:
        raise SystemExit(f"servers.py: unknown kind {kind!r}")
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(main_coro)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv[1:])
