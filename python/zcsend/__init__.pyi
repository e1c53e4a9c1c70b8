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
) -> int: ...
def stats() -> dict[str, int]: ...
def backend() -> str: ...
