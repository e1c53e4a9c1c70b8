"""zcsend: zero-copy file sending for asyncio.

    await zcsend.sendfile(transport_or_writer, file, offset=0, count=None)
    await transport.sendfile_zc(file)        # on asyncio transports, once imported
    await writer.sendfile_zc(file)           # on any StreamWriter, uvloop's too
    zcsend.install()                         # loop.sendfile() goes through zcsend
"""
import asyncio as _asyncio

from ._core import backend, sendfile, stats, _sendfile_zc
from ._errors import FileShrunkError, SendfileConnectionError, SendfileError
from ._install import install, uninstall

__all__ = ["sendfile", "install", "uninstall", "stats", "backend", "SendfileError", "SendfileConnectionError",
           "FileShrunkError"]
from ._version import __version__  # written in _version.py only

# asyncio's transports and every StreamWriter (on any loop, uvloop's too) get
# `await x.sendfile_zc(file, offset, count)`. uvloop's transports are extension
# types that take no new attributes: use zcsend.sendfile(transport, f) there.
_asyncio.Transport.sendfile_zc = _sendfile_zc
_asyncio.StreamWriter.sendfile_zc = _sendfile_zc
