"""zcsend.uvicorn's protocols with a sendfile timeout, as a user would subclass them."""
import zcsend.uvicorn


class HttpToolsProtocol(zcsend.uvicorn.HttpToolsProtocol):
    sendfile_timeout = 0.5


class H11Protocol(zcsend.uvicorn.H11Protocol):
    sendfile_timeout = 0.5
