import asyncio
from typing import BinaryIO, Optional, Protocol, Union

__version__: str

class SendfileError(OSError):
    bytes_sent: int
    def __init__(self, code: int, message: str, bytes_sent: int = ...) -> None: ...

class SendfileConnectionError(SendfileError, ConnectionError): ...
class FileShrunkError(SendfileError): ...

async def sendfile(
    transport: Union[asyncio.BaseTransport, asyncio.StreamWriter],
    file: BinaryIO,
    offset: int = ...,
    count: Optional[int] = ...,
    *,
    fallback: bool = ...,
    head: Optional[bytes] = ...,
    timeout: Optional[float] = ...,
) -> int: ...

# ---- What importing zcsend changes ------------------------------------------
# `import zcsend` sets exactly two attributes in asyncio, both the method below
# (tests/python/test_transport_kinds.py checks that nothing else in asyncio changes), and
# registers an os.register_at_fork child handler (transfers of a forked child's
# inherited loops fail at once there; the parent's go on):
#     asyncio.Transport.sendfile_zc      every asyncio transport class inherits it
#     asyncio.StreamWriter.sendfile_zc   every StreamWriter, on any loop (uvloop's too)
# uvloop's transports are extension types that take no new attributes: no
# sendfile_zc there (zcsend.sendfile(transport, f), or the StreamWriter's).
# zcsend.install() changes loop.sendfile, and only when called.
# A stub can't add a method to asyncio's classes for a type checker, so the
# method is declared by a Protocol: `typing.cast(zcsend.SupportsSendfileZc, writer)`.

class SupportsSendfileZc(Protocol):
    """What importing zcsend adds to asyncio.Transport and asyncio.StreamWriter."""
    async def sendfile_zc(
        self,
        file: BinaryIO,
        offset: int = ...,
        count: Optional[int] = ...,
        *,
        fallback: bool = ...,
        head: Optional[bytes] = ...,
        timeout: Optional[float] = ...,
    ) -> int:
        """``await x.sendfile_zc(file, offset, count)``: ``zcsend.sendfile(x, file, offset, count)``."""
        ...

# The function set as asyncio.Transport.sendfile_zc and asyncio.StreamWriter.sendfile_zc.
async def _sendfile_zc(
    self: Union[asyncio.BaseTransport, asyncio.StreamWriter],
    file: BinaryIO,
    offset: int = ...,
    count: Optional[int] = ...,
    *,
    fallback: bool = ...,
    head: Optional[bytes] = ...,
    timeout: Optional[float] = ...,
) -> int: ...
def install(loop: Optional[asyncio.AbstractEventLoop] = ...) -> None: ...
def uninstall(loop: Optional[asyncio.AbstractEventLoop] = ...) -> None: ...
def stats() -> dict[str, int]: ...
def backend() -> str: ...
