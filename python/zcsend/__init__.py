"""zcsend: zero-copy file sending for asyncio.

    await zcsend.sendfile(transport_or_writer, file, offset=0, count=None)
    await transport.sendfile_zc(file)        # on asyncio transports, once imported
    await writer.sendfile_zc(file)           # on any StreamWriter, uvloop's too
    zcsend.install()                         # loop.sendfile() goes through zcsend

What importing zcsend changes in asyncio: ``asyncio.Transport.sendfile_zc`` and
``asyncio.StreamWriter.sendfile_zc`` are set (the method below), and nothing
else; ``SupportsSendfileZc`` declares that method for type checkers.
"""
import asyncio as _asyncio
import typing as _typing

from ._core import backend, sendfile, stats, _sendfile_zc
from ._errors import FileShrunkError, SendfileConnectionError, SendfileError
from ._install import install, uninstall

__all__ = ["sendfile", "install", "uninstall", "stats", "backend", "SendfileError", "SendfileConnectionError",
           "FileShrunkError", "SupportsSendfileZc"]
from ._version import __version__  # written in _version.py only


class SupportsSendfileZc(_typing.Protocol):
    """What importing zcsend adds to ``asyncio.Transport`` (so to every asyncio
    transport) and ``asyncio.StreamWriter`` (on any loop): a type checker can't
    see a method set at run time, so ``typing.cast(zcsend.SupportsSendfileZc,
    writer)`` types the call. uvloop's transports don't have it (extension
    types take no new attributes): use their StreamWriter or zcsend.sendfile."""

    async def sendfile_zc(self, file, offset=0, count=None, *, fallback=True, head=None, timeout=None):
        """``await x.sendfile_zc(file, offset, count)``: ``zcsend.sendfile(x, file, offset, count)``."""


# asyncio's transports and every StreamWriter (on any loop, uvloop's too) get
# `await x.sendfile_zc(file, offset, count)`. uvloop's transports are extension
# types that take no new attributes: use zcsend.sendfile(transport, f) there.
# The stubs (__init__.pyi) and README's "What importing zcsend changes" say so;
# tests/python/test_transport_kinds.py checks these two are all that changes in asyncio.
_asyncio.Transport.sendfile_zc = _sendfile_zc
_asyncio.StreamWriter.sendfile_zc = _sendfile_zc
