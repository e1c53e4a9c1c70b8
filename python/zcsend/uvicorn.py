"""uvicorn's HTTP/1.1 protocols, with file bodies sent by zcsend.

    uvicorn app:app --http zcsend.uvicorn:HttpToolsProtocol      (or :H11Protocol)
    uvicorn.run(app, http=zcsend.uvicorn.HttpToolsProtocol)
    gunicorn app:app -k zcsend.uvicorn.UvicornWorker

(uvicorn's command line takes `--http module:Class` from 0.36 on; before that,
uvicorn.run(..., http=<the class>) and the gunicorn worker do.)

Every HTTP scope lists two ASGI extensions:

- ``http.response.pathsend`` — ``{"type": "http.response.pathsend", "path": str}``:
  the server opens the file and sends all of it (Starlette's FileResponse sends
  this for whole files). zcsend's own addition: optional ``offset`` and ``count``
  (ints), a part of the file; the extension's dict says so with
  ``"zcsend.ranges": True`` (zcsend.starlette.FileResponse sends ranges this way,
  as every Starlette middleware passes pathsend messages on).
- ``http.response.zerocopysend`` — ``{"type": ..., "file": <object with fileno()>,
  "offset": int (optional: else the file's position), "count": int (optional:
  else to the end), "more_body": bool}``: a part of a file the app opened.

Those bodies go out with ``zcsend.sendfile``: sendfile(2) on TCP and Unix
sockets, the response head in the same packets as the file's first bytes
(``head=``); bounded chunks through ``transport.write`` on TLS. Everything else
is uvicorn's own code: every other message, keep-alive, HEAD, chunked encoding,
access logs, flow control, disconnects, timeouts, shutdown.

How: the protocol wraps the app it calls; the wrapper adds the extensions and
puts a sender in front of uvicorn's ``send``. The response head uvicorn builds
is held (uvicorn writes it to a stand-in for the transport) until the next
message or the end of this turn of the loop, whichever comes first: a file
message takes it as ``head=``, anything else finds it written first.

Errors: a malformed file message raises RuntimeError into the app, as uvicorn's
own checks do. A file that can't be sent (missing, a directory, unreadable,
shorter than the range or than the Content-Length sent, shrinking during the
send) and a client that goes away end the connection (the head may have
promised a length already): one log line on ``uvicorn.error`` names the path,
and the app sees what it sees when a client disconnects (further sends are
dropped, ``receive()`` says ``http.disconnect``).
"""
from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import stat
import warnings

import uvicorn as _uvicorn

from . import FileShrunkError, SendfileConnectionError, SendfileError, sendfile

__all__ = ["HttpToolsProtocol", "H11Protocol", "UvicornWorker", "PATHSEND", "ZEROCOPYSEND"]

PATHSEND = "http.response.pathsend"
ZEROCOPYSEND = "http.response.zerocopysend"

# uvicorn versions whose protocol internals this module was checked against:
# tests/python/test_asgi.py passes with 0.30.6, 0.34.3, 0.40.0, 0.47.0 and 0.54.0.
SUPPORTED = ((0, 30), (0, 54))
_UNCHECKED_ENV = "ZCSEND_UVICORN_ANY_VERSION"


def _version(text):
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return None


def _check_version():
    v = _version(_uvicorn.__version__)
    lo, hi = SUPPORTED
    if v is not None and lo <= v <= hi or os.environ.get(_UNCHECKED_ENV):
        return
    raise ImportError(
        f"zcsend.uvicorn supports uvicorn {lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}, found "
        f"{_uvicorn.__version__!r}: it subclasses uvicorn's protocol internals, which may "
        f"differ. Install a supported uvicorn, or set {_UNCHECKED_ENV}=1 to try anyway "
        f"(the shape of the internals is still checked).")


def _check_shape(module, cycle_attrs):
    """The internals the sender relies on, by the names uvicorn's code uses:
    the protocol calls self.app; the cycle keeps these attributes and sends
    through self.transport. A uvicorn where that changed fails here, clearly,
    and not mid-response."""
    missing = []
    proto = [c for c in vars(module).values()
             if isinstance(c, type) and issubclass(c, asyncio.Protocol) and c.__module__ == module.__name__]
    cycle = getattr(module, "RequestResponseCycle", None)
    if len(proto) != 1 or cycle is None:
        missing.append("one protocol class and RequestResponseCycle")
    else:
        missing += [f"{proto[0].__name__}.{a}" for a in ("app", "loop")
                    if a not in proto[0].__init__.__code__.co_names]
        names = set(cycle.__init__.__code__.co_names)
        missing += [f"RequestResponseCycle.{a}" for a in cycle_attrs if a not in names]
        send = cycle.send.__code__
        if "transport" not in send.co_names or "http.response.start" not in send.co_consts:
            missing.append("RequestResponseCycle.send writing to self.transport")
    if missing:
        raise ImportError(f"zcsend.uvicorn: uvicorn {_uvicorn.__version__} ({module.__name__}) does not "
                          f"have the internals it was written for: {', '.join(missing)}")


_check_version()

_COMMON = ("transport", "flow", "scope", "logger", "message_event", "keep_alive", "disconnected",
           "response_started", "response_complete")


# -- the sender ---------------------------------------------------------------

class _HeldTransport:
    """Stands in for the transport while uvicorn writes a response head: keeps
    the bytes, passes anything else on."""

    __slots__ = ("transport", "data")

    def __init__(self, transport):
        self.transport = transport
        self.data = []

    def write(self, data):
        self.data.append(bytes(data))

    def __getattr__(self, name):
        return getattr(self.transport, name)


def _opener(path, flags):
    # O_NONBLOCK: a FIFO's open must not wait for a writer on the loop thread
    # (nothing changes for a regular file); CLOEXEC as Python's open() does
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))


class _FileProblem(Exception):
    """A file that can't be sent as the message asks: the connection ends."""


def _int_field(message, key):
    value = message.get(key)
    if value is None:
        return None
    if type(value) is not int:
        raise RuntimeError(f"ASGI message '{message['type']}': '{key}' must be an int, "
                           f"got {type(value).__name__}.")
    if value < 0:
        raise RuntimeError(f"ASGI message '{message['type']}': '{key}' must not be negative, got {value}.")
    return value


def _parse(message, kind):
    """(path or None, file or None, offset, count, more_body) of a file message;
    RuntimeError if malformed."""
    offset, count = _int_field(message, "offset"), _int_field(message, "count")
    more_body = message.get("more_body", False)
    if type(more_body) is not bool:
        raise RuntimeError(f"ASGI message '{kind}': 'more_body' must be a bool, got {type(more_body).__name__}.")
    if kind == PATHSEND:
        path = message.get("path")
        if not isinstance(path, str):
            raise RuntimeError(f"ASGI message '{kind}': 'path' must be a str, got {type(path).__name__}.")
        if more_body:
            raise RuntimeError(f"ASGI message '{kind}' ends the response: 'more_body' can't be true.")
        return path, None, offset, count, False
    file = message.get("file")
    try:
        fd = file.fileno()
        if type(fd) is not int:
            raise TypeError
        st = os.fstat(fd)
    except (AttributeError, TypeError, ValueError, OSError, io.UnsupportedOperation):
        raise RuntimeError(f"ASGI message '{kind}': 'file' must be an open file with a fileno(), "
                           f"got {type(file).__name__}.") from None
    if not stat.S_ISREG(st.st_mode):
        raise RuntimeError(f"ASGI message '{kind}': 'file' must be a regular file.")
    if offset is None:  # the file's position, as the spec says
        offset = file.tell() if hasattr(file, "tell") else os.lseek(fd, 0, os.SEEK_CUR)
    size = st.st_size
    if offset > size or (count is not None and offset + count > size):
        raise RuntimeError(f"ASGI message '{kind}': offset {offset} and count {count} go past the end "
                           f"of the file ({size} bytes).")
    return None, file, offset, size - offset if count is None else count, more_body


def _content_length(head):
    """The Content-Length a response head declares, or None."""
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return None
    end = head.find(b"\r\n", at + 2)
    try:
        return int(head[at + 17:end])
    except ValueError:
        return None


class _Sender:
    """ASGI send for one response, in front of uvicorn's own cycle.send."""

    __slots__ = ("cycle", "send", "loop", "timeout", "head", "flush", "declared", "bodies")

    def __init__(self, cycle, loop, timeout):
        self.cycle = cycle
        self.send = cycle.send
        self.loop = loop
        self.timeout = timeout
        self.head = None  # the response head, held for the next message
        self.flush = None  # the call that writes it at the end of this turn
        self.declared = None  # the head as written: its Content-Length
        self.bodies = False  # a body message went before the file

    def __call__(self, message):
        cycle = self.cycle
        if cycle.response_started and not cycle.response_complete:
            kind = message["type"]
            if kind == PATHSEND or kind == ZEROCOPYSEND:
                return self._file(message, kind)
            if self.head is not None:
                self._write_head()
            self.bodies = True
        elif (not cycle.response_started and not cycle.disconnected and not cycle.flow.write_paused
              and message.get("type") == "http.response.start"):
            return self._start(message)
        return self.send(message)

    async def _start(self, message):
        cycle = self.cycle
        transport = cycle.transport
        held = _HeldTransport(transport)
        cycle.transport = held
        try:
            await self.send(message)  # uvicorn builds the head (and validates, logs)
        finally:
            cycle.transport = transport
        if held.data:
            self.head = self.declared = b"".join(held.data)
            self.flush = self.loop.call_soon(self._write_head)

    def _write_head(self):
        head, self.head = self.head, None
        self.flush.cancel()  # harmless when this is that call
        transport = self.cycle.transport
        if not transport.is_closing():
            transport.write(head)

    def _take_head(self):
        head, self.head = self.head, None
        if head is not None:
            self.flush.cancel()
        return head

    def _end(self, level, what, why):
        """The connection ends: one log line, and the app sees a disconnect."""
        cycle = self.cycle
        cycle.logger.log(level, "zcsend: could not send %s for %s %s: %s; connection closed", what,
                         cycle.scope["method"], cycle.scope.get("path", ""), why)
        self._take_head()  # never sent
        cycle.disconnected = True
        cycle.message_event.set()
        # abort: nothing queued is worth delivering, and a TLS close would wait
        # for the client's close_notify with reading paused (uvicorn pauses it
        # for pipelined requests)
        cycle.transport.abort()

    async def _file(self, message, kind):
        cycle = self.cycle
        path, file, offset, count, more_body = _parse(message, kind)
        if cycle.disconnected:
            return  # as uvicorn does with any message once the client is gone
        transport = cycle.transport
        if cycle.scope["method"] == "HEAD":  # the head only, as uvicorn does with bodies
            head = self._take_head()
            if head is not None and not transport.is_closing():
                transport.write(head)
            return await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})
        what = path if path is not None else f"file {getattr(file, 'name', file.fileno())!r}"
        own = None
        begun = False  # the head is taken and the framing counted the file: ours to end
        try:
            if path is not None:
                own = file = self._open(path)
                size = os.fstat(file.fileno()).st_size
                offset = offset or 0
                whole = count is None
                if whole:
                    count = max(0, size - offset)
                if offset + count > size:
                    raise _FileProblem(f"the file has {size} bytes, the range ends at {offset + count}")
                if whole and not self.bodies and self.declared is not None:
                    declared = _content_length(self.declared)
                    if declared is not None and declared != count:
                        raise _FileProblem(f"the file has {count} bytes, the Content-Length sent said {declared}")
            # framing; raises into the app as uvicorn's own checks do (the head stays held)
            prefix, suffix = self._frame(count)
            head = self._take_head()
            begun = True
            if head is not None or prefix:
                head = prefix if head is None else head + prefix
            if transport.is_closing():  # the client went: as uvicorn would, send nothing
                cycle.disconnected = True
                cycle.message_event.set()
                return
            if count:
                sent = await sendfile(transport, file, offset, count, head=head, timeout=self.timeout)
                if sent != count:
                    # the file ended first (shorter at the open than its size said: a
                    # pseudo file, a truncation): the framing promised count bytes, and
                    # the next response would be read as the rest of this body
                    raise _FileProblem(f"the file ended after {sent} of {count} bytes")
            elif head:
                transport.write(head)
            if suffix:
                transport.write(suffix)
        except _FileProblem as exc:
            return self._end(logging.ERROR, what, exc)
        except SendfileConnectionError as exc:
            gone = "stopped reading" if exc.errno == errno.ETIMEDOUT else "went away"
            return self._end(logging.INFO, what, f"the client {gone}: {exc.strerror}")
        except FileShrunkError as exc:
            return self._end(logging.ERROR, what, f"the file shrank: {exc.strerror}")
        except SendfileError as exc:
            return self._end(logging.ERROR, what, exc.strerror or str(exc))
        except BaseException as exc:
            if begun:  # cancelled (a wait_for around send), interrupted: part of the
                # body may be out, and the framing counted all of it: the connection
                # can't carry another response
                self._end(logging.INFO, what, f"the send ended with {type(exc).__name__}")
            raise
        finally:
            if own is not None:
                own.close()
        # the rest is uvicorn's: Content-Length checks, the chunked end, keep-alive
        await self.send({"type": "http.response.body", "body": b"", "more_body": more_body})

    @staticmethod
    def _open(path):
        """The file at path, open for reading; _FileProblem if it can't be sent."""
        try:
            file = open(path, "rb", buffering=0, opener=_opener)
        except OSError as exc:
            raise _FileProblem(exc.strerror or str(exc)) from None
        try:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise _FileProblem("not a regular file")
        except BaseException:
            file.close()
            raise
        return file


class _HttpToolsSender(_Sender):
    __slots__ = ()

    def _frame(self, count):
        cycle = self.cycle
        if cycle.chunked_encoding:
            return (b"%x\r\n" % count, b"\r\n") if count else (b"", b"")
        if count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")  # uvicorn's words
        cycle.expected_content_length -= count
        return b"", b""


class _Length:
    """Stands for count bytes of file in h11's Data (h11's documented way to
    frame a body sent by sendfile: it only takes its len())."""

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class _H11Sender(_Sender):
    __slots__ = ()

    def _frame(self, count):
        placeholder = _Length(count)
        pieces = self.cycle.conn.send_with_data_passthrough(_h11.Data(data=placeholder))
        at = next((i for i, p in enumerate(pieces) if p is placeholder), len(pieces))
        return b"".join(pieces[:at]), b"".join(pieces[at + 1:])


class _App:
    """What the protocol calls instead of the app: adds the extensions to HTTP
    scopes and puts a sender in front of uvicorn's send."""

    __slots__ = ("app", "sender", "cycle", "loop", "timeout")

    def __init__(self, app, sender, cycle, loop, timeout):
        self.app, self.sender, self.cycle, self.loop, self.timeout = app, sender, cycle, loop, timeout

    def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            cycle = getattr(send, "__self__", None)
            if type(cycle) is self.cycle:
                ext = scope.get("extensions")
                if ext is None:
                    ext = scope["extensions"] = {}
                ext[PATHSEND] = {"zcsend.ranges": True}
                ext[ZEROCOPYSEND] = {}
                send = self.sender(cycle, self.loop, self.timeout)
        return self.app(scope, receive, send)


def _install(protocol, sender, cycle):
    protocol.app = _App(protocol.app, sender, cycle, protocol.loop, protocol.sendfile_timeout)


# -- the protocols ------------------------------------------------------------

import h11 as _h11  # noqa: E402  (uvicorn depends on it)
from uvicorn.protocols.http import h11_impl as _h11_impl  # noqa: E402

_check_shape(_h11_impl, _COMMON + ("conn",))


class H11Protocol(_h11_impl.H11Protocol):
    """uvicorn's h11 protocol, with pathsend and zerocopysend sent by zcsend."""

    sendfile_timeout = None  # seconds without progress that end a file body (None: never)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _install(self, _H11Sender, _h11_impl.RequestResponseCycle)


try:
    from uvicorn.protocols.http import httptools_impl as _httptools_impl
except ImportError as exc:  # httptools is optional for uvicorn
    _httptools_missing = exc
else:
    _httptools_missing = None
    _check_shape(_httptools_impl, _COMMON + ("chunked_encoding", "expected_content_length"))

    class HttpToolsProtocol(_httptools_impl.HttpToolsProtocol):
        """uvicorn's httptools protocol, with pathsend and zerocopysend sent by zcsend."""

        sendfile_timeout = None  # seconds without progress that end a file body (None: never)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _install(self, _HttpToolsSender, _httptools_impl.RequestResponseCycle)


_worker = None


def __getattr__(name):
    global _worker
    if name == "HttpToolsProtocol":
        raise ImportError(f"zcsend.uvicorn.HttpToolsProtocol needs httptools ({_httptools_missing}): "
                          f"pip install httptools, or use zcsend.uvicorn:H11Protocol")
    if name == "UvicornWorker":  # gunicorn -k zcsend.uvicorn.UvicornWorker
        if _worker is None:
            with warnings.catch_warnings():  # uvicorn.workers says it is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                from uvicorn.workers import UvicornWorker as _Base

            class UvicornWorker(_Base):
                """uvicorn's gunicorn worker, with zcsend's httptools protocol (h11's
                where httptools is missing)."""
                # the class itself: uvicorn before 0.36 takes no "module:Class" string here
                CONFIG_KWARGS = dict(_Base.CONFIG_KWARGS,
                                     http=H11Protocol if _httptools_missing else HttpToolsProtocol)
            UvicornWorker.__module__ = __name__
            UvicornWorker.__qualname__ = "UvicornWorker"
            _worker = UvicornWorker
        return _worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
