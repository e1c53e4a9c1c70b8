"""Starlette's FileResponse and StaticFiles, with single ranges sent without copying.

    from zcsend.starlette import FileResponse, StaticFiles    # drop-in replacements

Starlette sends a whole file as one ``http.response.pathsend`` message when the
server offers that extension (zcsend.uvicorn does), but a single Range as 64 KiB
body chunks read in a thread. These send that range as one message too:

- on zcsend.uvicorn (its pathsend extension says ``"zcsend.ranges": True``): a
  pathsend message with ``offset`` and ``count``. Every Starlette middleware
  passes pathsend messages on (GZipMiddleware, BaseHTTPMiddleware);
- on another server that offers ``http.response.zerocopysend``: that message,
  with the file opened here. Should a middleware drop it (GZipMiddleware drops
  message types it doesn't know), the range goes as Starlette sends it;
- anywhere else (Starlette's TestClient too): exactly Starlette's behaviour.

Whole files, HEAD, multiple ranges, 304s and everything else are Starlette's own.
"""
from __future__ import annotations

import inspect

import anyio
from starlette import responses as _responses
from starlette import staticfiles as _staticfiles
from starlette.datastructures import Headers, MutableHeaders

__all__ = ["FileResponse", "StaticFiles"]

PATHSEND = "http.response.pathsend"
ZEROCOPYSEND = "http.response.zerocopysend"

# Starlette's single-range step, as this module overrides it (Starlette 0.39 on;
# checked with 1.10): where it is missing or different, ranges stay Starlette's.
_RANGE_STEP = ["self", "send", "start", "end", "file_size", "send_header_only"]
RANGES = list(inspect.signature(getattr(_responses.FileResponse, "_handle_single_range", lambda: None))
              .parameters) == _RANGE_STEP


class _Send:
    """The ASGI send, marked with how this server takes a range."""

    __slots__ = ("send", "zcsend_mode")

    def __init__(self, send, mode):
        self.send = send
        self.zcsend_mode = mode

    def __call__(self, message):
        return self.send(message)


class _Probe:
    """The range's file, noting whether the server took its fileno()."""

    __slots__ = ("file", "taken")

    def __init__(self, file):
        self.file = file
        self.taken = False

    def fileno(self):
        self.taken = True
        return self.file.fileno()

    def __getattr__(self, name):
        return getattr(self.file, name)


def _mode(scope):
    ext = scope.get("extensions")
    if not ext:
        return None
    pathsend = ext.get(PATHSEND)
    if isinstance(pathsend, dict) and pathsend.get("zcsend.ranges"):
        return "path"
    if ZEROCOPYSEND in ext:
        return "file"
    return None


class FileResponse(_responses.FileResponse):
    """starlette.responses.FileResponse (same arguments), sending a single
    range with one server message where the server can take it."""

    async def __call__(self, scope, receive, send):
        if RANGES and scope["type"] == "http":
            mode = _mode(scope)
            if mode is not None:
                send = _Send(send, mode)
        await super().__call__(scope, receive, send)

    async def _handle_single_range(self, send, start, end, file_size, send_header_only):
        mode = getattr(send, "zcsend_mode", None)
        if mode is None or send_header_only:
            return await super()._handle_single_range(send, start, end, file_size, send_header_only)
        send = send.send
        headers = MutableHeaders(raw=list(self.raw_headers))
        headers["content-range"] = f"bytes {start}-{end - 1}/{file_size}"
        headers["content-length"] = str(end - start)
        start_message = {"type": "http.response.start", "status": 206, "headers": headers.raw}
        if mode == "path":
            await send(start_message)
            await send({"type": PATHSEND, "path": str(self.path), "offset": start, "count": end - start})
            return
        file = await anyio.open_file(self.path, mode="rb")
        try:
            await send(start_message)
            probe = _Probe(file.wrapped)
            await send({"type": ZEROCOPYSEND, "file": probe, "offset": start, "count": end - start,
                        "more_body": False})
            if probe.taken:
                return
            # a middleware dropped the message: the range as Starlette sends it
            await file.seek(start)
            more_body = True
            while more_body:
                chunk = await file.read(min(self.chunk_size, end - start))
                start += len(chunk)
                more_body = len(chunk) == self.chunk_size and start < end
                await send({"type": "http.response.body", "body": chunk, "more_body": more_body})
        finally:
            with anyio.CancelScope(shield=True):  # the file is closed, cancelled or not
                await file.aclose()


class StaticFiles(_staticfiles.StaticFiles):
    """starlette.staticfiles.StaticFiles (same arguments), answering with
    zcsend.starlette.FileResponse."""

    def file_response(self, full_path, stat_result, scope, status_code=200):
        response = FileResponse(full_path, status_code=status_code, stat_result=stat_result)
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return _staticfiles.NotModifiedResponse(response.headers)
        return response

