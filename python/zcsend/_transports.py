"""How zcsend takes hold of an asyncio transport for the length of a transfer.

While held: bytes written before are flushed first, ``write()`` refuses to
interleave, reading is paused, and the protocol is wrapped so a close or a lost
connection stops the transfer at once. Everything is restored afterwards, on
success, error and cancellation alike (asyncio's own native path forgets to when
cancelled during the drain)."""
import asyncio
import socket

from ._errors import SendfileConnectionError

import errno as _errno


def resolve(transport):
    """The transport behind ``transport`` (a transport or StreamWriter)."""
    if isinstance(transport, asyncio.StreamWriter):
        transport = transport.transport
    if not isinstance(transport, asyncio.BaseTransport):
        raise TypeError(
            f"expected an asyncio transport or StreamWriter, got {type(transport).__name__}")
    return transport


def check_usable(transport):
    """RuntimeError unless zcsend can send on this transport now; returns its socket fd."""
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    sock = transport.get_extra_info("socket")
    if (isinstance(transport, asyncio.DatagramTransport) or sock is None
            or sock.type != socket.SOCK_STREAM
            or not hasattr(transport, "_make_empty_waiter")):
        raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
    if transport._empty_waiter is not None:
        raise RuntimeError("sendfile is already in progress on this transport")
    return sock.fileno()


class _GuardProtocol(asyncio.Protocol):
    """Stands in for the user's protocol during a transfer: forwards every
    callback, and stops the transfer first when the connection goes."""

    def __init__(self, hold, inner):
        self._hold = hold
        self._inner = inner

    def connection_lost(self, exc):
        self._hold.lost(exc)
        self._inner.connection_lost(exc)

    def pause_writing(self):
        self._inner.pause_writing()

    def resume_writing(self):
        self._inner.resume_writing()

    def data_received(self, data):  # reading is paused; only in-flight data
        self._inner.data_received(data)

    def eof_received(self):
        return self._inner.eof_received()


class SelectorHold:
    """Holds an asyncio selector socket transport (TCP or Unix)."""

    def __init__(self, loop, transport):
        self.loop = loop
        self.transport = transport
        self.transfer = None  # the running core transfer, stopped on connection loss
        self.sent = 0  # bytes delivered by the transfers that have ended
        self.closed = False
        self._waiter = None

    def lost(self, exc):
        self.closed = True
        if self.transfer is not None:
            self.transfer.cancel()  # synchronous: nothing more is written after this

    async def __aenter__(self):
        t = self.transport
        self._inner = t.get_protocol()
        self._reading = t.is_reading()
        t.pause_reading()
        t.set_protocol(_GuardProtocol(self, self._inner))
        try:
            await t._make_empty_waiter()  # earlier writes go first
        except BaseException as exc:
            t._reset_empty_waiter()
            self._restore()
            if isinstance(exc, ConnectionError):
                raise SendfileConnectionError(
                    _errno.ECONNRESET, "connection lost before sendfile began (after 0 bytes)", 0) from exc
            raise
        # keep write() refusing, and give a close a pending future to fail
        self._waiter = self.loop.create_future()
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

    def _restore(self):
        t = self.transport
        if not self.closed:
            t.set_protocol(self._inner)
            if self._reading and not t.is_closing():
                t.resume_reading()
