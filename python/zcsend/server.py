"""A small static HTTP/1.1 file server on zcsend.sendfile: GET and HEAD,
keep-alive, one byte range, Last-Modified/If-Modified-Since, and no way out of
the served directory."""
import asyncio
import email.utils
import mimetypes
import os
import stat
import time
import urllib.parse

from . import sendfile

MAX_HEAD = 64 << 10
REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           416: "Range Not Satisfiable", 500: "Internal Server Error"}


class Request:
    def __init__(self, method, target, version, headers):
        self.method, self.target, self.version, self.headers = method, target, version, headers

    @property
    def keep_alive(self):
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn


def parse_head(raw):
    """Request from the bytes up to the blank line; None if malformed."""
    try:
        lines = raw.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if version not in ("HTTP/1.0", "HTTP/1.1") or not method.isalpha():
        return None
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        headers[name.lower()] = value.strip()
    return Request(method, target, version, headers)


def resolve_path(root, target):
    """(status, path): 400 for a malformed target, 403 for anything that leaves
    root (.., encoded or not; symlinks pointing out), else 200 and the real path."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return 400, None
    path = urllib.parse.unquote(path, errors="strict") if "%" in path else path
    if "\0" in path:
        return 400, None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return 403, None
    full = os.path.realpath(os.path.join(root, *parts))
    if full != root and not full.startswith(root + os.sep):
        return 403, None
    return 200, full


def parse_range(value, size):
    """(start, end) inclusive for one 'bytes=' range; None to ignore the header;
    'unsatisfiable' for a range past the end."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges: send the whole file
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _Dates:
    """HTTP dates, formatted once: the Date header once a second, file times
    once per distinct mtime (bounded)."""

    def __init__(self):
        self.second, self.now_text = None, ""
        self.mtimes = {}

    def now(self):
        second = int(time.time())
        if second != self.second:
            self.second, self.now_text = second, email.utils.formatdate(second, usegmt=True)
        return self.now_text

    def of(self, mtime):
        text = self.mtimes.get(mtime)
        if text is None:
            if len(self.mtimes) >= 4096:
                self.mtimes.clear()
            text = self.mtimes[mtime] = email.utils.formatdate(mtime, usegmt=True)
        return text


def content_type(path, _cache={}):
    ext = os.path.splitext(path)[1].lower()
    ctype = _cache.get(ext)
    if ctype is None:
        ctype = _cache[ext] = mimetypes.guess_type("x" + ext)[0] or "application/octet-stream"
    return ctype


class FileServer:
    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.dates = _Dates()

    def head(self, status, headers, keep_alive):
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Date: {self.dates.now()}", "Server: zcsend"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def error(self, writer, status, keep_alive, extra=None):
        body = f"{status} {REASONS[status]}\n".encode()
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": len(body)}
        headers.update(extra or {})
        writer.write(self.head(status, headers, keep_alive) + body)

    async def send_body(self, writer, f, start, count, head):
        """Sends the response head, then count bytes of f from start; returns how
        many of f's went out. The one place a benchmark's baseline server differs
        from this one. The head rides with the file's first bytes."""
        return await sendfile(writer, f, start, count, head=head)

    async def handle(self, reader, writer):
        try:
            while await self.one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def one(self, reader, writer):
        """Serves one request; True to keep the connection."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            self.error(writer, 400, False)
            return False
        req = parse_head(raw[:-4])
        if req is None:
            self.error(writer, 400, False)
            return False
        keep = req.keep_alive
        length = req.headers.get("content-length", "0")
        if not length.isdigit() or "transfer-encoding" in req.headers:
            self.error(writer, 400, False)
            return False
        if int(length):
            await reader.readexactly(int(length))  # a body we ignore
        if req.method not in ("GET", "HEAD"):
            self.error(writer, 405, keep, {"Allow": "GET, HEAD"})
            return keep
        try:
            status, path = resolve_path(self.root, req.target)
        except UnicodeDecodeError:
            status, path = 400, None
        if status != 200:
            keep = keep and status != 400  # a malformed request ends the connection
            self.error(writer, status, keep)
            return keep
        try:
            try:
                f = open(path, "rb")
            except IsADirectoryError:
                f = open(os.path.join(path, "index.html"), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self.error(writer, 404, keep)
            return keep
        except PermissionError:
            self.error(writer, 403, keep)
            return keep
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                self.error(writer, 404, keep)
                return keep
            return await self.send(writer, req, f, st, keep)

    async def send(self, writer, req, f, st, keep):
        size = st.st_size
        mtime = int(st.st_mtime)
        headers = {"Last-Modified": self.dates.of(mtime), "Accept-Ranges": "bytes"}
        ims = req.headers.get("if-modified-since")
        if ims:
            try:
                since = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                since = None
            if since is not None and mtime <= since:
                writer.write(self.head(304, headers, keep))
                return keep
        headers["Content-Type"] = content_type(f.name)
        status, start, count = 200, 0, size
        rng = req.headers.get("range")
        if rng:
            r = parse_range(rng, size)
            if r == "unsatisfiable":
                self.error(writer, 416, keep, {"Content-Range": f"bytes */{size}"})
                return keep
            if r is not None:
                status, start, count = 206, r[0], r[1] - r[0] + 1
                headers["Content-Range"] = f"bytes {r[0]}-{r[1]}/{size}"
        headers["Content-Length"] = count
        head = self.head(status, headers, keep)
        if req.method == "GET" and count:
            sent = await self.send_body(writer, f, start, count, head)
            if sent != count:  # the file shrank before we began: the length was a lie
                return False
        else:
            writer.write(head)
        return keep


async def serve(root, host="127.0.0.1", port=8000, ready=None, ssl_context=None,
                server_class=FileServer):
    if not os.path.isdir(root):
        raise SystemExit(f"zcsend serve: {root}: not a directory")
    fs = server_class(root)
    server = await asyncio.start_server(fs.handle, host, port, limit=MAX_HEAD, backlog=1024,
                                        ssl=ssl_context)
    addr = server.sockets[0].getsockname()
    scheme = "https" if ssl_context else "http"
    print(f"zcsend: serving {fs.root} on {scheme}://{addr[0]}:{addr[1]}/", flush=True)
    async with server:
        await server.serve_forever()
