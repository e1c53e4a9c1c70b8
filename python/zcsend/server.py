"""A small static HTTP/1.1 file server on zcsend.sendfile: GET and HEAD,
keep-alive and pipelining, one byte range, ETag and Last-Modified validators,
and no way out of the served directory.

It faces hostile clients the way nginx does: every wait has a deadline (header,
keep-alive and send timeouts), every buffer a bound (request heads, discarded
bodies, queued responses), the number of connections a cap, and no request can
block the loop (a FIFO's open) or leave the root (a symlink, an index file's
included)."""
import asyncio
import contextlib
import email.utils
import errno
import inspect
import mimetypes
import os
import re
import socket
import stat
import sys
import time
import urllib.parse

from . import sendfile

# Fixed limits (the settable ones are FileServer's keywords, defaults nginx's).
MAX_HEAD = 64 << 10      # request line and headers, bytes: more gets 400
MAX_HEADERS = 100        # header lines: more gets 400
LINGER = 5.0             # seconds an error answer waits for the client to stop sending
FDS_PER_CONNECTION = 6   # sending: its socket and file, and their dups for the engine (measured)
RESERVED_FDS = 32        # the listener, the loop's and the engine's own, stdio

REASONS = {200: "OK", 206: "Partial Content", 301: "Moved Permanently", 304: "Not Modified",
           400: "Bad Request",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 416: "Range Not Satisfiable",
           500: "Internal Server Error", 503: "Service Unavailable"}

# zcsend.sendfile(timeout=...) ends a transfer that makes no progress for that
# long (SendfileConnectionError, errno ETIMEDOUT); without it the server bounds
# the whole transfer instead.
_SENDFILE_TIMEOUT = "timeout" in inspect.signature(sendfile).parameters

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*")
_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only ('²'.isdigit() is True), int64-sized
_RANGE = re.compile(r"[ \t]*([0-9]{0,19})-([0-9]{0,19})[ \t]*")
_OFF_MAX = (1 << 63) - 1  # a range's numbers past it are unsatisfiable, as nginx's off_t
_NO_REPEAT = ("content-length", "host", "transfer-encoding")  # request smuggling material


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
    """Request from the head's bytes (its lines, each ending in LF, without the
    blank line); None if malformed. A bare LF ends a line as CRLF does (RFC 9112
    §2.2 lets a recipient accept it; nginx does); any other CR is refused."""
    text = raw.decode("latin-1").replace("\r\n", "\n")
    if "\r" in text:
        return None
    lines = text.split("\n")[:-1]
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        return None
    if version not in ("HTTP/1.0", "HTTP/1.1") or not _TOKEN.fullmatch(method):
        return None
    headers = {}
    for line in lines[1:]:
        m = _FIELD.fullmatch(line)
        if m is None:
            return None
        name, value = m.group(1).lower(), m.group(2)
        if name in headers:
            if name in _NO_REPEAT:
                return None
            value = headers[name] + ", " + value
        headers[name] = value
    if version == "HTTP/1.1" and "host" not in headers:
        return None  # RFC 9112 §3.2
    return Request(method, target, version, headers)


def inside(root, path):
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def split_target(target):
    """(path, query) of a request target, a fragment dropped (a client sends
    none; one that does meant none of it for the server)."""
    path, _, query = target.split("#", 1)[0].partition("?")
    return path, query


def resolve_path(root, target):
    """(status, path): 400 for a malformed target, 403 for anything that leaves
    root (.., encoded or not; symlinks pointing out), else 200 and the real path."""
    path = split_target(target)[0]
    if not path.startswith("/"):
        return 400, None
    path = urllib.parse.unquote(path, errors="strict") if "%" in path else path
    if "\0" in path:
        return 400, None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return 403, None
    full = os.path.realpath(os.path.join(root, *parts))
    if not inside(root, full):
        return 403, None
    return 200, full


# O_NONBLOCK: opening a FIFO must not wait for a writer (it would block the loop);
# it changes nothing for a regular file. O_NOFOLLOW: the path is a realpath, so a
# symlink at its end was swapped in since; refuse it (ELOOP).
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# EINVAL: realpath's readlink of a symlink swapped for a directory since it looked
_OPEN_STATUS = {errno.ENOENT: 404, errno.ENOTDIR: 404, errno.ENAMETOOLONG: 404, errno.EISDIR: 404,
                errno.EINVAL: 404,
                errno.EACCES: 403, errno.EPERM: 403, errno.ELOOP: 403,
                errno.EMFILE: 503, errno.ENFILE: 503}


def _opener(path, flags):
    return os.open(path, _OPEN_FLAGS)


_FD_PATHS = "/proc/self/fd"


def _opened_inside(root, f, path):
    """Whether the file opened is inside root. realpath and open() each walk the
    path: a directory on it swapped for a symlink between the two (anyone who
    may rename entries under root can) sent the open outside, past O_NOFOLLOW,
    which guards the last name only. So the opened file's own path is asked of
    the kernel; without /proc, its identity is compared with what the path
    resolves to now (narrower, not closed)."""
    try:
        return inside(root, os.readlink(f"{_FD_PATHS}/{f.fileno()}"))
    except FileNotFoundError:
        if os.path.isdir(_FD_PATHS):
            raise
    now = os.path.realpath(path)
    st, there = os.fstat(f.fileno()), os.stat(now)
    return inside(root, now) and (st.st_dev, st.st_ino) == (there.st_dev, there.st_ino)


def open_inside(root, path, slash=True):
    """(status, file, stat) for path, a realpath inside root. A directory stands
    for its index.html, which must resolve inside root too; asked for without
    its slash (slash False), it is 301, as in nginx (its page's relative links
    are relative to the directory). Anything but a regular file is 404, as in
    nginx; a file the open found outside root (a race) 403. Raises OSError (see
    _OPEN_STATUS)."""
    try:
        f = open(path, "rb", opener=_opener)
    except IsADirectoryError:  # open() refuses directories (after opening them)
        if not slash:
            return 301, None, None
        path = os.path.realpath(os.path.join(path, "index.html"))
        if not inside(root, path):
            return 403, None, None
        f = open(path, "rb", opener=_opener)
    try:
        if not _opened_inside(root, f, path):
            f.close()
            return 403, None, None
    except BaseException:
        f.close()
        raise
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):
        f.close()
        return 404, None, None
    return 200, f, st


# what a Location may hold as it came: RFC 3986's pchar, "/" and "%" (escapes stay
# as they are); anything else (a control character, a byte past ASCII) is escaped
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"


def _location(target, query):
    """A directory's target (as the request had it, without its query) with the
    slash its page's relative links need, and the query. A character escaped
    here is escaped as UTF-8, which is how resolve_path reads an escape back."""
    loc = urllib.parse.quote(target, safe=_PATH_SAFE) + "/"
    return loc + "?" + urllib.parse.quote(query, safe=_PATH_SAFE + "?") if query else loc


def parse_range(value, size):
    """(start, end) inclusive for one 'bytes=' range; None to ignore the header
    (send it all); 'unsatisfiable' for 416. RFC 9110 §14.1-14.2, with nginx
    where the RFC leaves a choice: other units and range lists are ignored; a
    malformed range (digits only), a first-pos at or past the end, a last-pos
    before the first and a zero suffix are unsatisfiable; a last-pos past the end
    is clipped; a suffix on an empty file is ignored (it is satisfiable, but no
    206 can say so)."""
    unit, _, spec = value.partition("=")
    if unit.lower() != "bytes" or "," in spec:
        return None
    m = _RANGE.fullmatch(spec)
    if m is None or m.group(0).strip() == "-":
        return "unsatisfiable"
    first, last = m.groups()
    if any(int(n) > _OFF_MAX for n in (first, last) if n):
        return "unsatisfiable"
    if first == "":
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1) if size else None
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


def not_modified(headers, etag, mtime):
    """RFC 9110 §13.2.2 for GET and HEAD: If-None-Match (weak comparison), and
    only without it If-Modified-Since."""
    inm = headers.get("if-none-match")
    if inm is not None:
        return inm.strip() == "*" or etag in (t.strip().removeprefix("W/") for t in inm.split(","))
    ims = headers.get("if-modified-since")
    if ims:
        try:
            return mtime <= email.utils.parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError, OverflowError):
            pass
    return False


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
            try:
                text = email.utils.formatdate(mtime, usegmt=True)
            except (ValueError, OverflowError, OSError):  # past year 9999, or before 1
                text = email.utils.formatdate(_LAST_DATE if mtime > 0 else 0, usegmt=True)
            self.mtimes[mtime] = text
        return text


_LAST_DATE = 253402300799  # 9999-12-31 23:59:59 UTC: the last an HTTP date can say


def content_type(path, _cache={}):
    ext = os.path.splitext(path)[1].lower()
    ctype = _cache.get(ext)
    if ctype is None:
        ctype = _cache[ext] = mimetypes.guess_type("x" + ext)[0] or "application/octet-stream"
    return ctype


class FileServer:
    """Serves root. Limits (seconds, bytes; defaults nginx's): header_timeout for
    a request's head and body (from the accept, or from the first byte on a
    kept-alive connection), keepalive_timeout for an idle connection's next
    request, send_timeout for a response that makes no progress, max_body for a
    request body (discarded; a longer one gets 413), max_connections open at once."""

    def __init__(self, root, *, header_timeout=60.0, keepalive_timeout=75.0, send_timeout=60.0,
                 max_body=1 << 20, max_connections=1024):
        self.root = os.path.realpath(root)
        self.dates = _Dates()
        self.header_timeout, self.keepalive_timeout = header_timeout, keepalive_timeout
        self.send_timeout, self.max_body, self.max_connections = send_timeout, max_body, max_connections
        # Deadlines, writer -> loop time, checked by one sweeper task (cheaper than a
        # timer per request): `waiting` holds connections waiting for a request (idle,
        # or its head or body coming in), oldest first, the ones closed to make room at
        # the connection cap; `sending` those whose response is stuck in a full buffer.
        self.waiting, self.sending = {}, {}
        self.active = 0
        self.room = asyncio.Event()  # at the cap: set when a connection ends or starts waiting

    def head(self, status, headers, keep_alive):
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Date: {self.dates.now()}", "Server: zcsend"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def error(self, writer, status, keep_alive, extra=None, method="GET"):
        """An answer with a short text body; to HEAD, its head alone (a body
        there would be read as the next response's start)."""
        body = f"{status} {REASONS[status]}\n".encode()
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": len(body)}
        headers.update(extra or {})
        writer.write(self.head(status, headers, keep_alive) + (body if method != "HEAD" else b""))

    @contextlib.contextmanager
    def deadline(self, writer, seconds):
        """The connection is aborted if the block lasts longer than seconds."""
        self.sending[writer] = asyncio.get_running_loop().time() + seconds
        try:
            yield
        finally:
            self.sending.pop(writer, None)

    async def flush(self, writer):
        """Backpressure for responses written whole (heads, errors, pipelined
        HEADs): waits while the transport holds more than its high-water mark, for
        up to the send timeout."""
        if writer.transport.get_write_buffer_size():
            with self.deadline(writer, self.send_timeout):
                await writer.drain()

    async def reply(self, writer, status, keep, extra=None, method="GET"):
        self.error(writer, status, keep, extra, method)
        await self.flush(writer)
        return keep

    async def refuse(self, reader, writer, status):
        """Answers a request that ends its connection (malformed, too large) and
        returns False. The client may still be sending, and closing on unread input
        makes the kernel send a reset that can destroy the answer before it is read:
        so shut our side first and discard input until the client closes, for up
        to LINGER seconds (nginx's lingering close). TLS can't half-close: no linger."""
        self.error(writer, status, False)
        if writer.can_write_eof():
            writer.write_eof()
            self.waiting[writer] = asyncio.get_running_loop().time() + LINGER
            while await reader.read(1 << 16):
                pass
        return False

    async def send_body(self, writer, f, start, count, head):
        """Sends the response head, then count bytes of f from start; returns how
        many of f's went out. The one place a benchmark's baseline server differs
        from this one. The head rides with the file's first bytes. A transfer
        stalled for the send timeout raises (OSError) and the connection is aborted."""
        if _SENDFILE_TIMEOUT:
            return await sendfile(writer, f, start, count, head=head, timeout=self.send_timeout)
        with self.deadline(writer, self.send_timeout):  # older zcsend: bound it all
            return await sendfile(writer, f, start, count, head=head)

    async def handle(self, reader, writer):
        """Serves one connection until it ends; the transport is closed after."""
        clean = False
        try:
            first = True
            while await self.one(reader, writer, first):
                first = False
            clean = True
        except (OSError, EOFError):
            pass  # the peer went, or a deadline or the connection cap closed it
        finally:
            self.waiting.pop(writer, None)
            if clean and not writer.transport.is_closing():
                writer.close()  # then wait until what is queued is sent, or the send timeout
                with self.deadline(writer, self.send_timeout):
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            writer.transport.abort()  # harmless once closed

    async def read_head(self, reader, data):
        """The request head's lines (after data, its first byte), without the blank
        line that ends it; None if it is longer than MAX_HEAD or MAX_HEADERS."""
        lines, size = [], 0
        while True:
            line = data if data == b"\n" else data + await reader.readuntil(b"\n")
            data = b""
            size += len(line)
            if size > MAX_HEAD:
                return None
            if line in (b"\r\n", b"\n"):
                if lines:
                    return b"".join(lines)
                continue  # empty lines before a request line are ignored (RFC 9112 §2.2)
            lines.append(line)
            if len(lines) > 1 + MAX_HEADERS:
                return None

    async def one(self, reader, writer, first):
        """Serves one request; True to keep the connection."""
        loop = asyncio.get_running_loop()
        # A new connection has the header timeout from its accept for its first
        # request; a kept-alive one the keep-alive timeout until a first byte, then
        # the header timeout.
        self.waiting[writer] = loop.time() + (self.header_timeout if first else self.keepalive_timeout)
        if self.active >= self.max_connections:
            self.room.set()  # a new connection may take this one's place
        data = await reader.read(1)
        if not data:
            return False
        if not first:
            self.waiting[writer] = loop.time() + self.header_timeout
        try:
            raw = await self.read_head(reader, data)
        except asyncio.LimitOverrunError:  # a line longer than MAX_HEAD
            raw = None
        req = parse_head(raw) if raw is not None else None
        if req is None:
            return await self.refuse(reader, writer, 400)
        length = req.headers.get("content-length", "0")
        if "transfer-encoding" in req.headers or not _LENGTH.fullmatch(length):
            return await self.refuse(reader, writer, 400)
        length = int(length)
        if length > self.max_body:
            return await self.refuse(reader, writer, 413)
        while length:  # a body we ignore, discarded in bounded pieces
            data = await reader.read(min(length, 1 << 16))
            if not data:
                return False
            length -= len(data)
        if self.waiting.pop(writer, None) is None or writer.transport.is_closing():
            return False  # timed out or evicted meanwhile, or the peer is gone: nothing to answer
        keep = req.keep_alive
        if req.method not in ("GET", "HEAD"):
            return await self.reply(writer, 405, keep, {"Allow": "GET, HEAD"}, req.method)
        target, query = split_target(req.target)
        try:
            status, path = resolve_path(self.root, req.target)
            if status == 200:
                status, f, st = open_inside(self.root, path, target.endswith("/"))
        except UnicodeDecodeError:
            status = 400
        except OSError as exc:
            status = _OPEN_STATUS.get(exc.errno, 500)
        if status == 301:  # a directory without its slash: to it, with the slash
            return await self.reply(writer, 301, keep, {"Location": _location(target, query)},
                                    req.method)
        if status != 200:
            # 400: malformed, close
            return await self.reply(writer, status, keep and status != 400, None, req.method)
        with f:
            return await self.send(writer, req, f, st, keep)

    async def send(self, writer, req, f, st, keep):
        size = st.st_size
        mtime = int(st.st_mtime)
        etag = f'"{mtime:x}-{size:x}"'  # nginx's
        headers = {"Last-Modified": self.dates.of(mtime), "ETag": etag, "Accept-Ranges": "bytes"}
        if not_modified(req.headers, etag, mtime):
            writer.write(self.head(304, headers, keep))
            await self.flush(writer)
            return keep
        headers["Content-Type"] = content_type(f.name)
        status, start, count = 200, 0, size
        rng = req.headers.get("range")
        # If-Range: the range only if the file is still the one the client has
        # (strong comparison: our ETag exactly, or the exact Last-Modified date).
        if rng and req.headers.get("if-range", etag) in (etag, headers["Last-Modified"]):
            r = parse_range(rng, size)
            if r == "unsatisfiable":
                return await self.reply(writer, 416, keep, {"Content-Range": f"bytes */{size}"},
                                        req.method)
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
            await self.flush(writer)
        return keep

    async def sweep(self):
        """Aborts connections past their deadline, checking a few times per
        shortest timeout (at most once a second)."""
        loop = asyncio.get_running_loop()
        tick = min(1.0, max(0.05, min(self.header_timeout, self.keepalive_timeout, self.send_timeout) / 8))
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for table in (self.waiting, self.sending):
                for writer in [w for w, when in table.items() if when <= now]:
                    del table[writer]
                    writer.transport.abort()

    async def connection(self, sock, ssl_context):
        loop = asyncio.get_running_loop()
        try:
            reader = asyncio.StreamReader(limit=MAX_HEAD)
            protocol = asyncio.StreamReaderProtocol(reader)
            tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.header_timeout} if ssl_context else {}
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, **tls)
            except OSError:  # a failed TLS handshake, a peer gone
                sock.close()
                return
            await self.handle(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
        except Exception as exc:
            loop.call_exception_handler({"message": "zcsend serve: connection handler failed",
                                         "exception": exc})
        finally:
            self.active -= 1
            self.room.set()

    async def accept(self, listener, ssl_context):
        """Accepts connections, up to max_connections open at once. Past the cap
        it closes the connection that has waited longest for a request to make
        room: idle keep-alive ones (as nginx does) and slow heads too. With none
        to close, the new one waits (the kernel's backlog holds the next) until a
        connection ends or one can be closed."""
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and its kind: wait for a connection to end
                print(f"zcsend: accept: {exc}", file=sys.stderr, flush=True)
                self.room.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.room.wait(), 0.5)
                continue
            while self.active >= self.max_connections:
                if self.waiting:
                    writer = next(iter(self.waiting))
                    del self.waiting[writer]
                    writer.transport.abort()
                self.room.clear()
                await self.room.wait()  # set when a connection ends or starts waiting
            self.active += 1
            task = loop.create_task(self.connection(sock, ssl_context))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def connection_cap(wanted):
    """wanted, or fewer if the fd limit can't hold that many connections (after
    raising the soft limit toward the hard one)."""
    try:
        import resource
    except ImportError:
        return wanted
    need = wanted * FDS_PER_CONNECTION + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY or soft >= need:
        return wanted
    return max(1, (soft - RESERVED_FDS) // FDS_PER_CONNECTION)


async def serve(root, host="127.0.0.1", port=8000, ready=None, ssl_context=None,
                server_class=FileServer, **limits):
    """Serves root until cancelled; limits are FileServer's keywords."""
    if not os.path.isdir(root):
        raise SystemExit(f"zcsend serve: {root}: not a directory")
    fs = server_class(root, **limits)
    cap = connection_cap(fs.max_connections)
    if cap < fs.max_connections:
        print(f"zcsend: the open file limit allows {cap} connections, not {fs.max_connections}",
              file=sys.stderr, flush=True)
        fs.max_connections = cap
    family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                               flags=socket.AI_PASSIVE)[0]
    listener = socket.create_server(addr, family=family, backlog=1024)
    listener.setblocking(False)
    addr = listener.getsockname()
    scheme = "https" if ssl_context else "http"
    print(f"zcsend: serving {fs.root} on {scheme}://{addr[0]}:{addr[1]}/", flush=True)
    with listener:
        sweeper = asyncio.ensure_future(fs.sweep())
        try:
            await fs.accept(listener, ssl_context)
        finally:
            sweeper.cancel()
