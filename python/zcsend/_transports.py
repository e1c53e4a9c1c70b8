"""How zcsend takes hold of a transport for the length of a transfer.

Three kinds of transport, three holds (which one a transport gets is decided
once per transport type, by _classify below):
- ``SelectorHold``: asyncio's TCP and Unix socket transports. Zero-copy on the
  socket; ``write()`` refuses to interleave (asyncio's own ``_empty_waiter``).
- ``FlushHold``: uvloop's TCP and Unix transports. Zero-copy on the socket once
  uvloop's write buffer is empty. uvloop's transports are extension types, so
  ``write()`` can't be made to refuse during the transfer: don't write meanwhile.
- ``WriteHold``: every other stream transport, TLS ones above all (asyncio's
  ``sslproto`` and uvloop's): no socket to send on, so the file goes through
  ``transport.write()`` in bounded chunks, honouring flow control.

While held, reading is paused and the protocol is wrapped so a close or a lost
connection stops the transfer at once; everything is restored afterwards, on
success, error and cancellation alike.

Ownership: a zero-copy hold sends on a dup() of the socket taken when the hold
is taken, with no await since the transport was seen open, so the number was
the transport's. A close() or abort() meanwhile frees the transport's number
for reuse by anything; the dup still names this connection, and the hold sees
the close and stops. A forked child touches nothing of the parent's (the
transport, the loop's selector and the dups are shared with the parent)."""
import asyncio
import io
import os
import socket
import weakref

from . import _zcsend
from ._errors import SendfileConnectionError, SendfileError

import errno as _errno

_held = set()  # ids of transports held now: one transfer per transport
# what _zcsend.fast_send checks sendfile's common case against
_zcsend.fast_setup(_held, io.BufferedReader, io.FileIO, asyncio.StreamWriter, asyncio._get_running_loop)


# ---- what a transport is, to zcsend: decided once per type ----------------------
# By capability wherever asyncio offers one:
# - asyncio's selector socket transport says ``_sendfile_compatible =
#   _SendfileMode.TRY_NATIVE`` (its loop may sendfile on the socket itself; TLS
#   transports say FALLBACK, pipes and UDP nothing), and SelectorHold uses the
#   ``_make_empty_waiter``/``_reset_empty_waiter`` pair its loop.sendfile uses;
# - none for UDP or read-only transports: a DatagramTransport, or no ``write``;
# - WriteHold needs ``set_protocol``, ``get_protocol``, ``get_write_buffer_size``.
# What can change per instance stays per call: is_closing(), the socket (and its
# type: UDP through asyncio 3.11's datagram transport, which isn't a
# DatagramTransport), the transport being held, the empty-waiter in use.
#
# The only names zcsend matches, here and nowhere else: uvloop's transports are
# extension types outside asyncio's class tree with no _sendfile_compatible, so
# their module says they are uvloop's (uvloop need not be installed) and the
# class name which ones sit on a stream socket (TCP, Unix) rather than TLS
# (_SSLProtocolTransport), a pipe (Read/WriteUnixTransport), UDP or a process.
_UVLOOP_MODULE = "uvloop.loop"
_UVLOOP_SOCKET_STREAMS = frozenset({"TCPTransport", "UnixTransport"})

try:
    from asyncio.constants import _SendfileMode
    _TRY_NATIVE = _SendfileMode.TRY_NATIVE
except ImportError:  # gone from some later asyncio: its transports take the write path
    _TRY_NATIVE = object()


class _Kind:
    """What zcsend makes of one transport type. ``transport``: it is one
    (asyncio's or uvloop's); ``hold``: the hold class for it, None when zcsend
    can't send on it (UDP, a read-only or non-transport type)."""

    __slots__ = ("transport", "hold", "_ref")

    def __init__(self, transport, hold):
        self.transport = transport
        self.hold = hold

    def __repr__(self):
        return f"_Kind(transport={self.transport}, hold={getattr(self.hold, '__name__', None)})"


def _classify(cls):
    """The _Kind of type cls: the one place that decides it."""
    uvloop = getattr(cls, "__module__", None) == _UVLOOP_MODULE
    if not (uvloop or issubclass(cls, asyncio.BaseTransport)):
        return _Kind(False, None)
    if issubclass(cls, asyncio.DatagramTransport) or not hasattr(cls, "write"):
        return _Kind(True, None)  # UDP, read-only pipes
    if uvloop and cls.__name__ in _UVLOOP_SOCKET_STREAMS:
        return _Kind(True, FlushHold)
    if (getattr(cls, "_sendfile_compatible", None) is _TRY_NATIVE
            and hasattr(cls, "_make_empty_waiter") and hasattr(cls, "_reset_empty_waiter")):
        return _Kind(True, SelectorHold)
    if all(hasattr(cls, name) for name in ("set_protocol", "get_protocol", "get_write_buffer_size")):
        return _Kind(True, WriteHold)  # TLS (asyncio's and uvloop's), write pipes, others
    return _Kind(True, None)


# id(type) -> its _Kind; an entry goes with its type (a Mock's every instance
# is a class of its own: a dict keyed by the types would keep them all alive)
_kinds = {}


def _kind_of_type(cls):
    kind = _kinds.get(id(cls))
    if kind is None:
        kind = _classify(cls)
        if kind.hold is SelectorHold or kind.hold is FlushHold:
            # sendfile's common case may then go whole in one C call (_zcsend.fast_send)
            _zcsend.fast_type(cls, 1 if kind.hold is SelectorHold else 2)
        key = id(cls)
        kind._ref = weakref.ref(cls, lambda _, key=key, kinds=_kinds: kinds.pop(key, None))
        _kinds[key] = kind
    return kind


def kind_of(transport):
    """The _Kind of ``transport``'s type: a dict lookup (classified on first sight)."""
    kind = _kinds.get(id(type(transport))) or _kind_of_type(type(transport))
    if kind.transport:
        return kind
    claimed = transport.__class__  # a Mock(spec=...) or a proxy: isinstance() sees this
    if claimed is not type(transport) and isinstance(claimed, type) and issubclass(claimed, asyncio.BaseTransport):
        return _kind_of_type(claimed)
    return kind


def resolve(transport):
    """The transport behind ``transport`` (a transport or StreamWriter)."""
    if isinstance(transport, asyncio.StreamWriter):
        transport = transport.transport
    if not kind_of(transport).transport:
        raise TypeError(
            f"expected an asyncio transport or StreamWriter, got {type(transport).__name__}")
    return transport


class _NotForZcsend(RuntimeError):
    """A transport zcsend can't send on (UDP, one that can't swap protocols):
    loop.sendfile, after install(), hands it to the loop's own."""


def _unsupported(transport):
    return _NotForZcsend(f"sendfile is not supported for transport {transport!r}")


def hold_for(loop, transport):
    """The hold for this transport; RuntimeError when zcsend can't send on it now."""
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    hold = kind_of(transport).hold
    if hold is None:
        raise _unsupported(transport)
    if hold is SelectorHold:
        # a stream by its type (asyncio makes one only of a SOCK_STREAM socket),
        # and its fd is the transport's own while it is not closing: no socket
        # object and no SocketKind conversion per call
        if id(transport) in _held or transport._empty_waiter is not None:
            raise RuntimeError("sendfile is already in progress on this transport")
        # the socket object's number, not _sock_fd: asyncio never clears that one,
        # and a socket closed under the transport (by whoever holds the object)
        # frees its number for reuse by another connection; fileno() says -1
        sock = transport._sock
        if sock.fileno() < 0:
            raise OSError(_errno.EBADF, os.strerror(_errno.EBADF))
        return SelectorHold(loop, transport, sock)
    sock = transport.get_extra_info("socket")
    stream = sock is not None and sock.type == socket.SOCK_STREAM
    if sock is not None and not stream:
        raise _unsupported(transport)  # UDP (asyncio 3.11's datagram transport isn't a DatagramTransport)
    if id(transport) in _held:
        raise RuntimeError("sendfile is already in progress on this transport")
    if hold is WriteHold:
        return WriteHold(loop, transport)
    if not stream:
        raise _unsupported(transport)
    if hold is SelectorHold and transport._empty_waiter is not None:
        raise RuntimeError("sendfile is already in progress on this transport")
    return hold(loop, transport, sock)


class _GuardProtocol(asyncio.Protocol):
    """Stands in for the user's protocol during a transfer: forwards every
    callback, and tells the hold first (a lost connection stops the transfer)."""

    def __init__(self, hold, inner):
        self._hold = hold
        self._inner = inner

    def connection_lost(self, exc):
        self._hold.lost(exc)
        self._inner.connection_lost(exc)

    def pause_writing(self):
        self._hold.writing_paused(True)
        self._inner.pause_writing()

    def resume_writing(self):
        self._hold.writing_paused(False)
        self._inner.resume_writing()

    def data_received(self, data):  # reading is paused; only in-flight data
        self._inner.data_received(data)

    def eof_received(self):
        # an EOF after our own close() began is the peer's answer to it (TLS
        # close_notify), not the peer closing first
        if not self._hold.transport.is_closing():
            self._hold.peer_eof = True
        return self._inner.eof_received()

    def buffer_updated(self, nbytes):  # never called: get_buffer isn't offered
        raise AssertionError("unreachable")


class _Hold:
    """What every hold shares: protocol swap, reading paused, flow-control state."""

    zero_copy = False  # True when the transfer may send on the socket itself
    # per-hold state, with its starting values here (one sendfile of a small file
    # ends before a hold is taken: it pays for two attributes, not eleven)
    transfer = None  # the running core transfer, stopped on connection loss
    sent = 0  # bytes delivered by the transfers that have ended
    closed = False
    lost_exc = None  # what connection_lost() said
    peer_eof = False
    closed_locally = False  # close() or abort() was called during the hold
    replaced = False  # someone else's set_protocol() took the guard's place
    _guard = None  # the protocol standing in for the user's while the hold is taken
    _watching_close = False
    paused = False  # the transport asked us to stop writing
    _wake = None
    _timer = None
    sock_fd = -1  # the hold's own dup of the socket, while taken (zero-copy holds)
    src_fd = -1  # sendfile's own dup of the file, while it sends from it
    timeout = None  # seconds without progress that end the transfer (sendfile's timeout=)
    timed_out = False
    _progress_at = 0.0  # loop time of the last sign of progress
    _buffered = 0  # the transport's write-buffer size when last looked at

    pid = None  # the process that took the hold (set when taken: no await before)

    def __init__(self, loop, transport):
        self.loop = loop
        self.transport = transport

    # -- called by the guard
    def lost(self, exc):
        self.closed = True
        self.lost_exc = exc
        if self.transfer is not None:
            self.transfer.cancel(self.loss_code())  # synchronous: nothing more is written after this
        self._notify()

    def local_close(self):
        """Whether the connection's end (so far) is this process's close()/abort()."""
        if self._watching_close:
            return self.closed_locally
        return self.lost_exc is None and not self.peer_eof

    def loss_code(self):
        """The negative errno a transfer the connection's end stopped ends with:
        -ECANCELED for a local close (counted as cancelled, on every path), else
        what the connection said (counted as failed)."""
        exc = self.lost_exc
        if isinstance(exc, OSError) and exc.errno:
            return -exc.errno
        return -_errno.ECANCELED if self.replaced or self.local_close() else -_errno.EPIPE

    def writing_paused(self, paused):
        self.paused = paused
        self._notify()

    def _notify(self):
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def writable(self, flushed=False):
        """Waits while flow control says stop (flushed: until the transport's
        buffer is empty); False once the connection went, the transport started
        closing (a TLS close() drains first and reports nothing to the protocol
        until then, so closing is checked for too), or timeout seconds passed
        with the buffer never shrinking."""
        self._progress_at = self.loop.time()
        self._buffered = None
        # flushed: the buffer's size alone says (a TLS transport pauses at once
        # on a high-water mark of zero, even empty, and says resume only when
        # it next writes)
        while (self.buffered() if flushed else self.paused) and not self.ending():
            if self._stalled():
                self.timed_out = True
                return False
            self._wake = self.loop.create_future()
            if self._timer is None:  # one check every 50 ms at most, not a timer per pause
                self._timer = self.loop.call_later(0.05, self._tick)
            try:
                await self._wake
            finally:
                self._wake = None
        return not self.ending()

    def buffered(self):
        """The transport's write-buffer size; 0 once it has let go of its buffer
        (asyncio 3.11's TLS transport drops its protocol on a second close())."""
        try:
            return self.transport.get_write_buffer_size()
        except AttributeError:
            return 0

    def _stalled(self):
        """True once timeout seconds went by with the write buffer never shrinking."""
        if self.timeout is None:
            return False
        size = self.buffered()
        now = self.loop.time()
        if self._buffered is None or size < self._buffered:
            self._progress_at = now
        self._buffered = size
        return now - self._progress_at >= self.timeout

    def _tick(self):
        self._timer = None
        if self._wake is not None:  # still waiting: look at is_closing() again, and again later
            self._notify()
            self._timer = self.loop.call_later(0.05, self._tick)

    async def wait(self, fut, progress):
        """Awaits fut; False if timeout seconds go by in which progress() (a
        number that grows while bytes go out) stays the same. Where the
        transport can't refuse set_protocol (uvloop's), it also looks every
        0.25 s for a protocol put in the guard's place, which would hear the
        transport's close instead of the guard: the transfer is stopped then."""
        if self.timeout is None and self._watching_close:
            await fut
            return True
        period = 0.25 if self.timeout is None else max(0.01, self.timeout / 4)
        last, since = progress(), self.loop.time()
        while not fut.done():
            await asyncio.wait((fut,), timeout=period)
            if not fut.done() and self.ending() and self.transfer is not None:
                self.transfer.cancel(self.loss_code())  # fut ends soon: waited for
                continue
            if self.timeout is None:
                continue
            now = progress()
            if now != last:
                last, since = now, self.loop.time()
            elif not fut.done() and self.loop.time() - since >= self.timeout:
                self.timed_out = True
                return False
        fut.result()
        return True

    def timeout_error(self, sent):
        return SendfileConnectionError(
            _errno.ETIMEDOUT, f"no progress for {self.timeout:g} s (after {sent} bytes)", sent)

    def forked(self):
        """True in a child forked during the hold: nothing here is its own."""
        return self.pid is not None and self.pid != os.getpid()

    def ending(self):
        if not self.closed:
            if self.transport.is_closing():
                self.closed = True  # closed locally: no more writes
            elif self._guard is not None and self.transport.get_protocol() is not self._guard:
                # a transport that can't refuse set_protocol (uvloop's): its close,
                # loss and flow control now go to another protocol, unheard
                self.closed = self.replaced = True
        return self.closed

    # -- taking and giving back
    def _take(self):
        try:
            self._take_it()
        except BaseException:  # not taken after all: nothing of it left behind
            self._unwatch()
            self._drop_fd()  # our dup, or the one handed over: ours either way
            _held.discard(id(self.transport))
            raise

    def _take_it(self):
        t = self.transport
        self.pid = os.getpid()
        # before any await: the number is still the transport's (unless the
        # inline step's dup was handed over already: _core sets sock_fd then)
        if self.zero_copy and self.sock_fd < 0:
            try:
                # the number read, dup'ed and stored in one C call: no thread
                # between, and no signal handler's exception to lose the dup
                _zcsend.dup_into(self, "sock_fd", self.raw_sock)
            except OSError as exc:
                raise SendfileError(exc.errno, f"{exc.strerror} (after {self.sent} bytes)",
                                    self.sent) from None
        _held.add(id(t))
        self._inner = t.get_protocol()
        # a write-only transport (a pipe) has no reading to pause
        try:
            self._reading = t.is_reading()
            if self._reading:
                t.pause_reading()
        except (AttributeError, NotImplementedError):
            self._reading = False
        if hasattr(t, "__dict__"):  # a Python object: see a local close() for what it is
            def closing(method):
                def call(*args, **kwargs):
                    self.closed_locally = True
                    return getattr(type(t), method)(t, *args, **kwargs)
                return call
            t.close, t.abort = closing("close"), closing("abort")
            t.set_protocol = _refuse_set_protocol  # the guard must hear of the end
            self._watching_close = True
        try:
            self._guard = _GuardProtocol(self, self._inner)
            type(t).set_protocol(t, self._guard)
        except NotImplementedError:  # a transport that can't swap protocols: no way to guard it
            if self._reading:
                t.resume_reading()
            self._unwatch()
            self._drop_fd()
            _held.discard(id(t))
            raise _unsupported(t) from None

    def _drop_fd(self):
        if self.sock_fd >= 0:
            if not self.forked():  # a child may have reused the number: leave it (CLOEXEC)
                os.close(self.sock_fd)
            self.sock_fd = -1

    def _unwatch(self):
        if self._watching_close:
            vars(self.transport).pop("close", None)
            vars(self.transport).pop("abort", None)
            vars(self.transport).pop("set_protocol", None)
            self._watching_close = False

    def _restore(self):
        t = self.transport
        _held.discard(id(t))
        self._drop_fd()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unwatch()
        if self.forked() or self.loop.is_closed():
            return  # the transport and its selector are the parent's, or gone
        if not self.closed and t.get_protocol() is self._guard:  # (not where replaced)
            type(t).set_protocol(t, self._inner)
        # reading as it was: also for a protocol put in the guard's place (it
        # would hear nothing), and for asyncio's TLS transport that got the
        # peer's FIN (it finishes its shutdown only once reading resumes: it
        # kept the connection and its fd for good)
        if self._reading and (not self.closed or self.replaced or self.peer_eof) and not t.is_closing():
            t.resume_reading()

    def closed_error(self):
        """The error for a transfer the connection's end cut short."""
        exc, sent = self.lost_exc, self.sent
        if self.replaced:
            return SendfileError(_errno.ECANCELED, "the transport's protocol was replaced during "
                                 f"sendfile (after {sent} bytes)", sent)
        # who closed: seen directly where close() could be wrapped (asyncio's
        # transports); else a clean connection_lost(None) means a local close
        local = self.local_close()
        if isinstance(exc, OSError) and exc.errno:
            code, why = exc.errno, f"connection lost: {exc.strerror or exc}"
        elif local:
            code, why = _errno.ECONNABORTED, "transport was closed during sendfile"
        else:
            code, why = _errno.EPIPE, "the peer closed the connection"
        return SendfileConnectionError(code, f"{why} (after {sent} bytes)", sent)

    def lost_error(self, what):
        return SendfileConnectionError(
            _errno.ECONNRESET, f"connection lost {what} (after {self.sent} bytes)", self.sent)

    async def __aenter__(self):
        self._take()
        return self

    async def __aexit__(self, *exc_info):
        self._restore()


class _Waiter(asyncio.Future):
    """A transport's empty-waiter that takes a second settling quietly: asyncio
    3.11 sets a result when a close lands during the drain, then an exception
    as the connection goes, and logs InvalidStateError from its own callback."""

    def set_result(self, result):
        if not self.done():
            super().set_result(result)

    def set_exception(self, exc):
        if not self.done():
            super().set_exception(exc)


class SelectorHold(_Hold):
    """Holds an asyncio selector socket transport (TCP or Unix)."""

    zero_copy = True
    _waiter = None

    def __init__(self, loop, transport, raw_sock):  # made per call: _Hold's, inlined
        self.loop = loop
        self.transport = transport
        # the transport's socket object: its fileno() is read only in C, at the
        # dup or the inline step, before the first await
        self.raw_sock = raw_sock

    def idle(self):
        """Nothing queued in the transport: the socket may be written now."""
        return not self.transport.get_write_buffer_size()

    async def __aenter__(self):
        self._take()
        t = self.transport
        try:  # earlier writes go first (asyncio's _make_empty_waiter, with a _Waiter)
            drained = t._empty_waiter = _Waiter(loop=self.loop)
            if not t.get_write_buffer_size():
                drained.set_result(None)
            if not await self.wait(drained, lambda: -t.get_write_buffer_size()):
                raise self.timeout_error(0)
        except BaseException as exc:
            t._reset_empty_waiter()
            self._restore()
            if isinstance(exc, ConnectionError) and not isinstance(exc, SendfileError):
                raise self.lost_error("before sendfile began") from exc
            raise
        # keep write() refusing, and give a close a pending future to fail
        self._waiter = _Waiter(loop=self.loop)
        t._empty_waiter = self._waiter
        return self

    async def __aexit__(self, *exc_info):
        t = self.transport
        if t._empty_waiter is self._waiter:
            t._reset_empty_waiter()
        if self._waiter.done():
            self._waiter.exception()  # retrieved: asyncio set it when the connection went
        else:
            self._waiter.cancel()
        self._restore()


class FlushHold(_Hold):
    """Holds a uvloop TCP or Unix transport: waits until uvloop's own buffer is
    empty (write-buffer limits of zero make it say so through resume_writing),
    then the core sends on the socket. The engine works on a dup of the fd."""

    zero_copy = True

    def __init__(self, loop, transport, raw_sock):
        super().__init__(loop, transport)
        self.raw_sock = raw_sock  # the transport's socket object: as SelectorHold's

    idle = SelectorHold.idle

    async def __aenter__(self):
        self._take()
        t = self.transport
        low, high = t.get_write_buffer_limits()
        try:
            t.set_write_buffer_limits(high=0, low=0)  # resume_writing once all is out
            # already paused for the user's protocol, uvloop won't say it again
            self.paused = t.get_write_buffer_size() > 0
            if not await self.writable():
                if self.timed_out:
                    raise self.timeout_error(0)
                raise self.closed_error()
        except BaseException:
            self._restore()
            raise
        finally:
            if not t.is_closing() and not self.forked():
                t.set_write_buffer_limits(high=high, low=low)
        return self


def _refuse_write(*args, **kwargs):
    raise RuntimeError("unable to write; sendfile is in progress")


def _refuse_set_protocol(*args, **kwargs):
    raise RuntimeError("unable to set the protocol; sendfile is in progress")


# asyncio's TLS transport (3.11 on) drops every write, with a log line at most,
# once its protocol is past WRAPPED: after a close() began, or after the peer's
# TCP FIN arrived while reading was paused, which it then tells nobody of
_DROPPING = frozenset(("FLUSHING", "SHUTDOWN", "UNWRAPPED"))


def _drops_writes(transport):
    state = getattr(getattr(transport, "_ssl_protocol", None), "_state", None)
    return getattr(state, "name", None) in _DROPPING


class WriteHold(_Hold):
    """Holds any other stream transport (TLS): the file goes through write().
    Where the transport is a Python object (asyncio's TLS transport), write()
    and writelines() refuse for the length of the transfer, as asyncio's do;
    uvloop's extension types can't be told to."""

    async def __aenter__(self):
        self._take()
        t = self.transport
        self._write = type(t).write
        self._refusing = hasattr(t, "__dict__")
        if self._refusing:
            t.write = t.writelines = _refuse_write
        try:  # already over the high-water mark: wait for resume_writing like the user would
            self.paused = t.get_write_buffer_size() > t.get_write_buffer_limits()[1]
        except (AttributeError, TypeError, IndexError, NotImplementedError):
            self.paused = False  # a transport that can't say: resume_writing will
        return self

    def write(self, data):
        self._write(self.transport, data)

    def ending(self):
        """Also where the transport would drop what is written: its peer's EOF
        came while the transfer kept reading paused (the hold's own close()
        watch tells a local close apart)."""
        if not _Hold.ending(self) and _drops_writes(self.transport):
            self.closed = self.peer_eof = True
        return self.closed

    async def flushed(self):
        """Waits until the transport's buffer is empty (the bytes it took went on
        to the socket): False if the connection went first, or timed out. Its
        limits drop to zero meanwhile, so resume_writing says when."""
        t = self.transport
        if not self.buffered() or self.ending():
            return not self.ending()
        try:
            limits = t.get_write_buffer_limits()
            t.set_write_buffer_limits(high=0, low=0)
        except (AttributeError, TypeError, NotImplementedError):
            limits = None  # the 50 ms check sees the buffer empty
        try:
            return await self.writable(flushed=True)
        finally:
            if limits is not None and not t.is_closing() and not self.forked():
                t.set_write_buffer_limits(high=limits[1], low=limits[0])

    async def __aexit__(self, *exc_info):
        if self._refusing:
            t = self.transport
            del t.write, t.writelines
        self._restore()
