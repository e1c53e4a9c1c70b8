"""zcsend: zero-copy file sending for asyncio.

    await zcsend.sendfile(transport_or_writer, file, offset=0, count=None)
    await transport.sendfile_zc(file)        # on asyncio transports, once imported
"""
import asyncio as _asyncio

from ._core import backend, sendfile, stats, _sendfile_zc
from ._errors import FileShrunkError, SendfileConnectionError, SendfileError

__all__ = ["sendfile", "stats", "backend", "SendfileError", "SendfileConnectionError",
           "FileShrunkError"]
__version__ = "0.1.0"

# asyncio's transports get `await transport.sendfile_zc(file, offset, count)`.
_asyncio.Transport.sendfile_zc = _sendfile_zc
