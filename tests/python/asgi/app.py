"""The ASGI app tests/python/test_asgi.py serves with uvicorn (and the benchmark
with FastAPI): FastAPI and Starlette file responses, and raw ASGI routes that
send the extension messages themselves. ZCS_ASGI_ROOT names the files' folder."""
import asyncio
import json
import os
import urllib.parse

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

import zcsend
import zcsend.starlette

ROOT = os.environ.get("ZCS_ASGI_ROOT", ".")
EVENTS = []  # what the raw /watch route saw

app = FastAPI()


def _path(name):
    return os.path.join(ROOT, name)


@app.api_route("/file/{name}", methods=["GET", "HEAD"])
async def file(name: str):
    return FileResponse(_path(name))  # FastAPI's (Starlette's) own


@app.api_route("/zc/{name}", methods=["GET", "HEAD"])
async def zc_file(name: str):
    return zcsend.starlette.FileResponse(_path(name))


@app.get("/stats")
async def stats():
    return JSONResponse({"stats": zcsend.stats(), "backend": zcsend.backend()})


@app.get("/fds")
async def fds():
    """The sockets and files open (not the engine's eventfds, made once)."""
    kinds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            kinds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return JSONResponse({"fds": sum(k.startswith(("socket:", "/")) for k in kinds)})


@app.get("/events")
async def events():
    return JSONResponse({"events": EVENTS})


async def _ext(scope, receive, send):
    body = json.dumps({"extensions": sorted(scope.get("extensions", {})),
                       "pathsend": scope.get("extensions", {}).get("http.response.pathsend"),
                       "client": list(scope["client"]), "spec": scope["asgi"].get("spec_version")}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


# -- raw ASGI: the extension messages as an app would send them ----------------

def _query(scope):
    return {k: v[-1] for k, v in urllib.parse.parse_qs(scope["query_string"].decode()).items()}


async def _zerocopysend(scope, receive, send):
    """?name=&offset=&count=&parts=N&cl=1&prefix=text&seek=1&tail=1: the file
    (or a part) in N zerocopysend messages, the last with more_body false (with
    tail, an empty body message ends the response instead); with a Content-Length
    when cl=1, else chunked; prefix: a body message first; seek: offsets left
    out, the file's position used."""
    q = _query(scope)
    size = os.path.getsize(_path(q["name"]))
    offset = int(q.get("offset", 0))
    count = int(q.get("count", size - offset))
    parts = int(q.get("parts", 1))
    prefix = q.get("prefix", "").encode()
    headers = [(b"content-type", b"application/octet-stream")]
    if q.get("cl") == "1":
        headers.append((b"content-length", b"%d" % (len(prefix) + count)))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if prefix:
        await send({"type": "http.response.body", "body": prefix, "more_body": True})
    with open(_path(q["name"]), "rb") as f:
        step = -(-count // parts)
        at, left = offset, count
        for i in range(parts):
            n = min(step, left)
            more = i < parts - 1 or "tail" in q
            message = {"type": "http.response.zerocopysend", "file": f, "count": n, "more_body": more}
            if "seek" in q:
                f.seek(at)
            else:
                message["offset"] = at
            await send(message)
            at, left = at + n, left - n
    if "tail" in q:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pathsend(scope, receive, send):
    """?path=&cl=N: a pathsend of any path, after a head that says Content-Length N."""
    q = _query(scope)
    headers = [(b"content-length", q["cl"].encode())] if "cl" in q else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.pathsend", "path": q["path"]})


BAD = {
    "path-type": lambda f: {"type": "http.response.pathsend", "path": 42},
    "path-bytes": lambda f: {"type": "http.response.pathsend", "path": b"/etc/hostname"},
    "pathsend-more": lambda f: {"type": "http.response.pathsend", "path": f.name, "more_body": True},
    "offset-negative": lambda f: {"type": "http.response.zerocopysend", "file": f, "offset": -1},
    "offset-type": lambda f: {"type": "http.response.zerocopysend", "file": f, "offset": "0"},
    "count-type": lambda f: {"type": "http.response.zerocopysend", "file": f, "count": 1.5},
    "count-bool": lambda f: {"type": "http.response.zerocopysend", "file": f, "count": True},
    "count-past-eof": lambda f: {"type": "http.response.zerocopysend", "file": f, "count": 11},
    "offset-past-eof": lambda f: {"type": "http.response.zerocopysend", "file": f, "offset": 11},
    "more-body-type": lambda f: {"type": "http.response.zerocopysend", "file": f, "more_body": "yes"},
    "no-file": lambda f: {"type": "http.response.zerocopysend"},
    "file-no-fileno": lambda f: {"type": "http.response.zerocopysend", "file": b"0123456789"},
    "file-closed": lambda f: {"type": "http.response.zerocopysend", "file": _closed(f.name)},
    "file-directory": lambda f: {"type": "http.response.zerocopysend", "file": _Dir()},
    "all": lambda f: {"type": "http.response.zerocopysend", "file": f},
}


def _closed(path):
    f = open(path, "rb")
    f.close()
    return f


class _Dir:
    def __init__(self):
        self.fd = os.open(ROOT, os.O_RDONLY)

    def fileno(self):
        return self.fd

    def __del__(self):
        os.close(self.fd)


async def _bad(scope, receive, send):
    """?case=: a malformed message after the head; the error goes out as the body.
    ?case=&cl=N: after a head with Content-Length N; the error goes to EVENTS."""
    q = _query(scope)
    headers = [(b"content-length", q["cl"].encode())] if "cl" in q else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    with open(_path("ten.bin"), "rb") as f:
        try:
            await send(BAD[q["case"]](f))
            text = "accepted"
        except Exception as exc:  # what uvicorn's own checks raise into the app
            text = f"{type(exc).__name__}: {exc}"
            if "cl" in q:
                EVENTS.append(text)
                raise
    await send({"type": "http.response.body", "body": text.encode()})


async def _watch(scope, receive, send):
    """?name=: a pathsend of the file while a task waits for http.disconnect."""
    q = _query(scope)
    got = asyncio.Event()

    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass
        got.set()
    task = asyncio.ensure_future(watch())
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % os.path.getsize(_path(q["name"])))]})
    await send({"type": "http.response.pathsend", "path": _path(q["name"])})
    try:
        await asyncio.wait_for(got.wait(), 5)
        EVENTS.append("http.disconnect")
    except asyncio.TimeoutError:
        EVENTS.append("no http.disconnect")
    task.cancel()


async def _cancel(scope, receive, send):
    """?name=&t=: a pathsend the app gives up on after t seconds (wait_for
    around send), then the response's end, as an app with a send timeout does."""
    q = _query(scope)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % os.path.getsize(_path(q["name"])))]})
    try:
        await asyncio.wait_for(send({"type": "http.response.pathsend", "path": _path(q["name"])}),
                               float(q["t"]))
    except asyncio.TimeoutError:
        EVENTS.append("cancelled")
    await send({"type": "http.response.body", "body": b"", "more_body": False})


RAW = {"/zerocopysend": _zerocopysend, "/pathsend": _pathsend, "/bad": _bad, "/watch": _watch, "/ext": _ext,
       "/cancel": _cancel}


async def raw(scope, receive, send):
    await RAW[scope["path"][len(scope.get("root_path", "")):] or "/"](scope, receive, send)


# -- middleware that knows only some message types ------------------------------

async def _zc_route(request):
    return zcsend.starlette.FileResponse(_path(request.path_params["name"]))


def _sub(*middleware):
    return Starlette(routes=[Route("/{name}", _zc_route, methods=["GET", "HEAD"])], middleware=list(middleware))


class _PassThrough(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        return await call_next(request)


def _no_ranges(inner):
    """As a server would be that offers zerocopysend but not zcsend's pathsend ranges."""
    async def app(scope, receive, send):
        ext = scope.get("extensions")
        if ext and "http.response.pathsend" in ext:
            ext["http.response.pathsend"] = {}
        await inner(scope, receive, send)
    return app


app.mount("/raw", raw)
app.mount("/static", StaticFiles(directory=ROOT))
app.mount("/zstatic", zcsend.starlette.StaticFiles(directory=ROOT, html=True))
app.mount("/gzip", _sub(Middleware(GZipMiddleware, minimum_size=1)))
app.mount("/base", _sub(Middleware(_PassThrough)))
app.mount("/noranges", _no_ranges(_sub()))
app.mount("/noranges-gzip", _no_ranges(_sub(Middleware(GZipMiddleware, minimum_size=1))))
