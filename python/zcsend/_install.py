"""zcsend.install(): loop.sendfile() through zcsend, on stock asyncio and uvloop.

aiohttp's FileResponse and every other caller of ``loop.sendfile`` then send
through zcsend unchanged: zero-copy on plain TCP/Unix (uvloop's included, which
has no sendfile of its own), bounded chunks on TLS."""
import asyncio
from asyncio import base_events, selector_events

from . import _transports
from ._transports import _NotForZcsend
from ._core import sendfile as _zc_sendfile

_MARK = "__zcsend_installed__"

# asyncio's own _sendfile_native methods: a loop with any other (a subclass's,
# or one set on the loop itself, as CPython's tests do) gets its own sendfile,
# which calls that one
_STOCK_NATIVE = {base_events.BaseEventLoop._sendfile_native,
                 selector_events.BaseSelectorEventLoop._sendfile_native}
try:
    from asyncio import proactor_events
    _STOCK_NATIVE.add(proactor_events.BaseProactorEventLoop._sendfile_native)
except (ImportError, AttributeError):
    pass


def _for_zcsend(loop, transport):
    """Whether loop.sendfile(transport, ...) goes to zcsend: a real transport
    (asyncio's or uvloop's, which aren't BaseTransports) on a loop that sends
    the stock way. Anything else (a Mock, a StreamWriter, a loop whose
    _sendfile_native is its own) gets the loop's own answer, errors included."""
    if not _transports.kind_of(transport).transport:
        return False
    native = getattr(loop, "_sendfile_native", None)
    return native is None or getattr(native, "__func__", native) in _STOCK_NATIVE


def _make_sendfile(original):
    impl = original or asyncio.AbstractEventLoop.sendfile  # uvloop: NotImplementedError

    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """loop.sendfile() through zcsend: asyncio's signature, checks and results."""
        if not _for_zcsend(self, transport):
            return await impl(self, transport, file, offset, count, fallback=fallback)
        try:
            return await _zc_sendfile(transport, file, offset, count, fallback=fallback)
        except _NotForZcsend:
            pass  # a transport zcsend can't take: the loop's own way (uvloop's raises
            # NotImplementedError, which aiohttp and others expect)
        return await impl(self, transport, file, offset, count, fallback=fallback)
    setattr(sendfile, _MARK, original)
    return sendfile


def _loop_classes():
    classes = [asyncio.BaseEventLoop]
    try:
        import uvloop
        classes.append(uvloop.Loop)
    except ImportError:
        pass
    return classes


def _target(loop):
    """The loop to patch, or None for every loop class (no loop given, none running)."""
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def install(loop=None):
    """Makes ``loop.sendfile`` go through zcsend. ``loop``: that loop; None: the
    running loop, or, with none running, every stock asyncio and uvloop loop
    (their classes). Installing twice is harmless."""
    loop = _target(loop)
    if loop is None:
        for cls in _loop_classes():
            current = cls.__dict__.get("sendfile")
            if not hasattr(current, _MARK):
                cls.sendfile = _make_sendfile(current)
    elif "sendfile" not in vars(loop) and not hasattr(getattr(type(loop), "sendfile", None), _MARK):
        loop.sendfile = _make_sendfile(getattr(type(loop), "sendfile", None)).__get__(loop)


def uninstall(loop=None):
    """Undoes install(loop) (the same argument)."""
    loop = _target(loop)
    if loop is not None:
        vars(loop).pop("sendfile", None)
        return
    for cls in _loop_classes():
        current = cls.__dict__.get("sendfile")
        if hasattr(current, _MARK):
            original = getattr(current, _MARK)
            if original is None:
                del cls.sendfile
            else:
                cls.sendfile = original
