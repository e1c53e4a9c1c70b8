import asyncio
from typing import BinaryIO, Optional, Union

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

# Importing zcsend adds this method to asyncio.Transport and asyncio.StreamWriter
# (uvloop's transports are extension types: use zcsend.sendfile or a StreamWriter).
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
