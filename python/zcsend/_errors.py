"""Exceptions: every failure says how many bytes went out before it."""
import errno as _errno


class SendfileError(OSError):
    """A transfer failed after ``bytes_sent`` bytes were delivered to the socket."""

    bytes_sent: int = 0

    def __init__(self, code, message, bytes_sent=0):
        super().__init__(code, message)
        self.bytes_sent = bytes_sent


class SendfileConnectionError(SendfileError, ConnectionError):
    """The peer went away, or the transport was closed, during the transfer."""


class FileShrunkError(SendfileError):
    """The file ended before the requested byte count was sent (it shrank)."""


_CONNECTION_ERRNOS = {_errno.EPIPE, _errno.ECONNRESET, _errno.ENOTCONN, _errno.ESHUTDOWN,
                      _errno.ECONNABORTED, _errno.ETIMEDOUT}


def error_for(code, message, sent, total):
    """The exception for a negative core error code ``code``."""
    from . import _zcsend

    num = -code
    of = f" of {total}" if total is not None and total >= 0 else ""
    text = f"{message} (after {sent}{of} bytes)"
    if code == _zcsend.ETRUNCATED:
        return FileShrunkError(_errno.EIO, text, sent)
    if num in _CONNECTION_ERRNOS:
        return SendfileConnectionError(num, text, sent)
    return SendfileError(num if num < 4000 else _errno.EIO, text, sent)
