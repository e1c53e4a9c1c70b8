"""zcsend.install(): loop.sendfile() through zcsend, on stock asyncio and uvloop.

aiohttp's FileResponse and every other caller of ``loop.sendfile`` then send
through zcsend unchanged: zero-copy on plain TCP/Unix (uvloop's included, which
has no sendfile of its own), bounded chunks on TLS."""
import asyncio

from ._core import sendfile as _zc_sendfile

_MARK = "__zcsend_installed__"


def _make_sendfile(original):
    async def sendfile(self, transport, file, offset=0, count=None, *, fallback=True):
        """loop.sendfile() through zcsend: asyncio's signature, checks and results."""
        try:
            return await _zc_sendfile(transport, file, offset, count, fallback=fallback)
        except RuntimeError as exc:
            # a transport zcsend can't take: the loop's own way (uvloop's raises
            # NotImplementedError, which aiohttp and others expect)
            if not str(exc).startswith("sendfile is not supported for transport"):
                raise
            impl = original or asyncio.AbstractEventLoop.sendfile
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
