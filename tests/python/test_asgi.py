"""zcsend.uvicorn and zcsend.starlette: uvicorn with zcsend's protocol classes
serving FastAPI/Starlette file responses to real clients (curl, httpx, raw
sockets), on both loops, both protocol classes, plain and TLS."""
import functools
import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

for _mod in ("uvicorn", "starlette", "fastapi", "httpx", "h11"):
    pytest.importorskip(_mod)

import httpx  # noqa: E402

import conftest  # noqa: E402
from conftest import make_file, tls_contexts, tls_files  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ASGI = os.path.join(HERE, "asgi")
HAVE_CURL = __import__("shutil").which("curl") is not None
# curl and the clients are the peers, not the code under test: keep a sanitizer preload off them
PEER_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}

BIG = (5 << 20) + 3  # big.bin
HUGE = 16 << 20  # huge.bin: more than the socket buffers hold, so a transfer is under way
# `uvicorn --http module:Class` from uvicorn 0.36 on; uvicorn.run(http=Class) before
CLI_TAKES_CLASS = tuple(int(x) for x in __import__("uvicorn").__version__.split(".")[:2]) >= (0, 36)


@pytest.fixture
def loop_kind():
    """The servers run in their own processes: the server fixture picks their loop."""
    return "subprocess"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("asgi-root")
    digests = {"big.bin": make_file(d / "big.bin", BIG), "huge.bin": make_file(d / "huge.bin", HUGE, seed=2),
               "one.bin": make_file(d / "one.bin", 1 << 20, seed=3),
               "odd.bin": make_file(d / "odd.bin", (64 << 10) + 1, seed=4)}
    (d / "ten.bin").write_bytes(b"0123456789")
    (d / "empty.bin").write_bytes(b"")
    (d / "hello.txt").write_text("hello world\n")
    (d / "index.html").write_text("<p>index</p>\n")
    (d / "adir").mkdir()
    os.mkfifo(d / "fifo")
    return d, digests


class Server:
    """uvicorn in a subprocess on a socket bound here (--fd; with bind=True, on
    a port it binds itself), logging to a file."""

    def __init__(self, root, loop="asyncio", protocol="HttpToolsProtocol", tls=False, args=(), cmd=None,
                 bind=False, http=None):
        self.root, self.tls = root, tls
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if bind:  # (uvicorn before 0.36 can't hand a --fd to its --workers)
            self.sock.close()
            where = ["--host", "127.0.0.1", "--port", str(self.port)]
        else:
            self.sock.listen(128)
            where = ["--fd", str(self.sock.fileno())]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        fd = self.sock.fileno()
        if cmd is None:
            cmd = [sys.executable, "-m", "uvicorn", "app:app"] if CLI_TAKES_CLASS else \
                [sys.executable, os.path.join(ASGI, "launch.py"), "app:app"]
            cmd += ["--app-dir", ASGI, *where, "--http", http or f"zcsend.uvicorn:{protocol}", "--loop", loop,
                    *args]
            if tls:
                cmd += ["--ssl-certfile", tls_files()[0], "--ssl-keyfile", tls_files()[1]]
        else:
            cmd = [c.replace("{fd}", str(fd)) for c in cmd]
        self.log_path = os.path.join(str(root), f"log-{self.port}.txt")
        self.log = open(self.log_path, "w+")
        env = dict(os.environ, ZCS_ASGI_ROOT=str(root), PYTHONPATH=os.pathsep.join(
            [ASGI] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.proc = subprocess.Popen(cmd, pass_fds=[] if bind else [fd], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ASGI)
        self.wait_ready()

    def wait_ready(self):
        deadline = time.monotonic() + 60
        while True:
            try:
                with self.client() as c:
                    c.get("/stats", timeout=5)
                return
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"the server did not start: {self.logs()}")
                time.sleep(0.1)

    def client(self, **kwargs):
        return httpx.Client(base_url=self.url, verify=tls_contexts()[1] if self.tls else True, timeout=30,
                            **kwargs)

    def logs(self):
        with open(self.log_path) as f:
            return f.read()

    def stats(self):
        with self.client() as c:
            return c.get("/stats").json()

    def fds(self):
        with self.client(headers={"connection": "close"}) as c:
            return c.get("/fds").json()["fds"]

    def connect(self, rcvbuf=None):
        """A raw client socket (TLS-wrapped on a TLS server) and its reader."""
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(30)
        s.connect(("127.0.0.1", self.port))
        if self.tls:
            s = tls_contexts()[1].wrap_socket(s, server_hostname="127.0.0.1")
        return s, s.makefile("rb")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.sock.close()
        self.log.close()


VARIANTS = ["asyncio-httptools", "uvloop-httptools", "asyncio-h11", "uvloop-h11",
            "asyncio-h11-tls", "uvloop-httptools-tls"]
PROTOCOLS = {"httptools": "HttpToolsProtocol", "h11": "H11Protocol"}


@pytest.fixture(scope="module", params=VARIANTS)
def server(request, root):
    loop, proto, *tls = request.param.split("-")
    srv = Server(root[0], loop, PROTOCOLS[proto], bool(tls))
    srv.digests = root[1]
    yield srv
    srv.stop()


def sha1(data):
    return hashlib.sha1(data).hexdigest()


def file_bytes(root, name, offset=0, count=None):
    with open(os.path.join(str(root), name), "rb") as f:
        f.seek(offset)
        return f.read() if count is None else f.read(count)


def read_head(f):
    """(status, headers) of one HTTP/1.1 response's head from a buffered reader;
    None at EOF."""
    line = f.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def read_response(f, method="GET"):
    """(status, headers, body) of one HTTP/1.1 response from a buffered reader."""
    head = read_head(f)
    if head is None:
        return None
    status, headers = head
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            n = int(f.readline().split(b";")[0], 16)
            if n == 0:
                assert f.readline() == b"\r\n"
                break
            body += f.read(n)
            assert f.readline() == b"\r\n"
    else:
        body = f.read()
    return status, headers, body


def request(path, method="GET", headers=()):
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def curl(server, *args):
    r = subprocess.run(["curl", "-s", "-S", "--max-time", "30", "--cacert", tls_files()[0], *args],
                       capture_output=True, timeout=60, env=PEER_ENV)
    return r


def zero_copy(server):
    return not server.tls and server.stats()["backend"] != "emulated"


# -- bodies ---------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_CURL, reason="curl is required")
def test_whole_file_with_curl(server, tmp_path):
    out = tmp_path / "out"
    before = server.stats()["stats"]
    r = curl(server, "-o", str(out), "-w", "%{http_code} %{size_download}", f"{server.url}/file/big.bin")
    assert r.stdout.decode() == f"200 {BIG}", r.stderr
    assert hashlib.sha1(out.read_bytes()).hexdigest() == server.digests["big.bin"]
    after = server.stats()["stats"]
    key = "bytes_zero_copy" if zero_copy(server) else "bytes_fallback"
    assert after[key] - before[key] >= BIG  # every byte went through zcsend
    assert after["failed"] == before["failed"]


def test_small_and_odd_sizes(server):
    with server.client() as c:
        for name in ["ten.bin", "empty.bin", "hello.txt", "odd.bin", "one.bin"]:
            r = c.get(f"/file/{name}")
            assert r.status_code == 200
            assert r.content == file_bytes(server.root, name)
            assert int(r.headers["content-length"]) == len(r.content)
            assert r.headers["accept-ranges"] == "bytes"


def test_extensions_offered(server):
    with server.client() as c:
        ext = c.get("/raw/ext").json()
    assert ext["extensions"] == ["http.response.pathsend", "http.response.zerocopysend"]
    assert ext["pathsend"] == {"zcsend.ranges": True}


def test_head(server):
    s, f = server.connect()
    with s:
        s.sendall(request("/file/big.bin", "HEAD") + request("/zc/hello.txt", "HEAD") + request("/file/ten.bin"))
        status, headers, body = read_response(f, "HEAD")
        assert (status, headers["content-length"], body) == (200, str(BIG), b"")
        status, headers, body = read_response(f, "HEAD")
        assert (status, headers["content-length"], body) == (200, "12", b"")
        assert read_response(f)[2] == b"0123456789"  # no stray body bytes before it


def test_keep_alive_reuse(server):
    """One connection (httpx's pool) for files, ranges, HEAD and JSON, in turn."""
    with server.client() as c:
        port = c.get("/raw/ext").json()["client"][1]
        for _ in range(3):
            assert sha1(c.get("/file/big.bin").content) == server.digests["big.bin"]
            assert c.get("/zc/big.bin", headers={"range": "bytes=10-19"}).content == \
                file_bytes(server.root, "big.bin", 10, 10)
            assert c.head("/file/one.bin").headers["content-length"] == str(1 << 20)
            assert c.get("/file/empty.bin").content == b""
            assert c.get("/raw/ext").json()["client"][1] == port


def test_pipelined_requests(server):
    """Requests sent back to back on one connection are answered in order."""
    names = ["ten.bin", "one.bin", "hello.txt", "empty.bin", "odd.bin"]
    s, f = server.connect()
    with s:
        s.sendall(b"".join(request(f"/file/{n}") for n in names))
        for n in names:
            status, _, body = read_response(f)
            assert status == 200 and body == file_bytes(server.root, n), n


def test_http10_closes(server):
    s, f = server.connect()
    with s:
        s.sendall(b"GET /file/ten.bin HTTP/1.0\r\n\r\n")
        status, headers, body = read_response(f)
        assert (status, body) == (200, b"0123456789")
        assert f.read() == b""  # and the server closed


# -- ranges -----------------------------------------------------------------------

RANGES = [("bytes=0-0", 0, 1), ("bytes=100-200099", 100, 200000), ("bytes=-1000", BIG - 1000, 1000),
          ("bytes=5000000-", 5000000, BIG - 5000000), ("bytes=1-99999999", 1, BIG - 1)]


@pytest.mark.parametrize("prefix", ["/zc", "/file", "/zstatic", "/gzip", "/base", "/noranges",
                                    "/noranges-gzip"])
def test_single_range(server, prefix):
    """/zc, /zstatic: zcsend.starlette's FileResponse (a pathsend with a range);
    /file: Starlette's own (body chunks); behind GZip and BaseHTTPMiddleware;
    /noranges: as on a server with zerocopysend only (behind GZip, which drops
    that message, the response sees it was not taken and sends chunks)."""
    with server.client() as c:
        for rng, start, count in RANGES:
            r = c.get(f"{prefix}/big.bin", headers={"range": rng})
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes {start}-{start + count - 1}/{BIG}"
            assert r.headers["content-length"] == str(count)
            assert r.content == file_bytes(server.root, "big.bin", start, count), rng


def test_range_goes_zero_copy(server):
    before = server.stats()["stats"]
    with server.client() as c:
        for prefix in ("/zc", "/gzip", "/base", "/noranges"):
            r = c.get(f"{prefix}/huge.bin", headers={"range": "bytes=1000-4001000"})
            assert r.status_code == 206 and len(r.content) == 4000001
    after = server.stats()["stats"]
    key = "bytes_zero_copy" if zero_copy(server) else "bytes_fallback"
    assert after[key] - before[key] >= 4 * 4000001


def test_range_edge_cases(server):
    with server.client() as c:
        multi = c.get("/zc/big.bin", headers={"range": "bytes=0-9,100-109"})  # Starlette's multipart
        assert multi.status_code == 206 and multi.headers["content-type"].startswith("multipart/byteranges")
        assert file_bytes(server.root, "big.bin", 100, 10) in multi.content
        assert c.get("/zc/big.bin", headers={"range": f"bytes={BIG}-"}).status_code == 416
        head = c.head("/zc/big.bin", headers={"range": "bytes=0-99"})
        assert head.status_code == 206 and head.headers["content-length"] == "100" and head.content == b""
        etag = c.head("/zc/big.bin").headers["etag"]
        r = c.get("/zc/big.bin", headers={"range": "bytes=0-99", "if-range": etag})
        assert r.status_code == 206 and len(r.content) == 100
        r = c.get("/zc/big.bin", headers={"range": "bytes=0-99", "if-range": '"stale"'})
        assert r.status_code == 200 and sha1(r.content) == server.digests["big.bin"]


# -- FastAPI / Starlette static files ------------------------------------------------

@pytest.mark.parametrize("prefix", ["/static", "/zstatic"])
def test_static_files(server, prefix):
    with server.client() as c:
        r = c.get(f"{prefix}/big.bin")
        assert r.status_code == 200 and sha1(r.content) == server.digests["big.bin"]
        assert c.get(f"{prefix}/nothing.bin").status_code == 404
        r304 = c.get(f"{prefix}/big.bin", headers={"if-none-match": r.headers["etag"]})
        assert r304.status_code == 304 and r304.content == b""
        assert c.get(f"{prefix}/hello.txt").text == "hello world\n"
    if prefix == "/zstatic":
        with server.client() as c:
            assert c.get("/zstatic/").text == "<p>index</p>\n"


# -- the extension messages, sent by an app ---------------------------------------------

ZEROCOPYSEND = [
    ("", 0, BIG), ("&cl=1", 0, BIG), ("&offset=7&count=100000", 7, 100000),
    ("&offset=7&count=100000&cl=1", 7, 100000), ("&parts=3", 0, BIG), ("&parts=3&cl=1", 0, BIG),
    ("&parts=2&prefix=hello", 0, BIG), ("&parts=2&prefix=hello&cl=1", 0, BIG), ("&tail=1", 0, BIG),
    ("&tail=1&cl=1&parts=2", 0, BIG), ("&seek=1&offset=1000&count=5000", 1000, 5000),
    ("&count=0&cl=1", 0, 0), ("&count=0", 0, 0)]


def test_zerocopysend(server):
    """zerocopysend with and without Content-Length (chunked), in parts, after a
    body, from the file's position, empty; ended by itself or by a body."""
    s, f = server.connect()
    with s:
        for query, start, count in ZEROCOPYSEND:
            s.sendall(request(f"/raw/zerocopysend?name=big.bin{query}") + request("/file/ten.bin"))
            status, headers, body = read_response(f)
            prefix = b"hello" if "prefix" in query else b""
            assert status == 200
            assert ("content-length" in headers) == ("cl=1" in query)
            assert ("transfer-encoding" in headers) == ("cl=1" not in query)
            assert body == prefix + file_bytes(server.root, "big.bin", start, count), query
            assert read_response(f)[2] == b"0123456789"  # the connection is still in step


MALFORMED = [
    ("path-type", "'path' must be a str"), ("path-bytes", "'path' must be a str"),
    ("pathsend-more", "'more_body' can't be true"),
    ("offset-negative", "'offset' must not be negative"), ("offset-type", "'offset' must be an int"),
    ("count-type", "'count' must be an int"), ("count-bool", "'count' must be an int"),
    ("count-past-eof", "go past the end of the file"), ("offset-past-eof", "go past the end of the file"),
    ("more-body-type", "'more_body' must be a bool"), ("no-file", "'file' must be an open file"),
    ("file-no-fileno", "'file' must be an open file"), ("file-closed", "'file' must be an open file"),
    ("file-directory", "'file' must be a regular file")]


def test_malformed_messages_raise_into_the_app(server):
    with server.client() as c:
        for case, words in MALFORMED:
            r = c.get(f"/raw/bad?case={case}")
            assert r.status_code == 200
            assert r.text.startswith("RuntimeError: ") and words in r.text, (case, r.text)


def test_count_past_content_length_raises_into_the_app(server):
    """uvicorn's own check (httptools) or h11's, as for a body message."""
    with server.client() as c:
        seen = len(c.get("/events").json()["events"])
    s, f = server.connect()
    with s:
        s.sendall(request("/raw/bad?case=all&cl=5"))
        assert f.read() == b""  # the app raised: uvicorn closed the connection
    with server.client() as c:
        error = c.get("/events").json()["events"][seen]
    assert error in ("RuntimeError: Response content longer than Content-Length",
                     "LocalProtocolError: Too much data for declared Content-Length"), error


def test_head_with_extension_messages(server):
    """HEAD: the head only, as uvicorn does with body messages."""
    ten = os.path.join(str(server.root), "ten.bin")
    s, f = server.connect()
    with s:
        s.sendall(request("/raw/zerocopysend?name=big.bin&cl=1", "HEAD") +
                  request(f"/raw/pathsend?path={ten}&cl=10", "HEAD") + request("/file/ten.bin"))
        status, headers, _ = read_response(f, "HEAD")
        assert (status, headers["content-length"]) == (200, str(BIG))
        status, headers, _ = read_response(f, "HEAD")
        assert (status, headers["content-length"]) == (200, "10")
        assert read_response(f)[2] == b"0123456789"


# -- what goes wrong: the connection closes, one log line, the server goes on ------------

def log_lines(server, needle):
    return [line for line in server.logs().splitlines() if "zcsend: could not send" in line and needle in line]


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def unreadable_path(root):
    if os.geteuid() == 0:  # root reads any file; a write-only sysctl refuses it
        return "/proc/sys/vm/drop_caches" if os.path.exists("/proc/sys/vm/drop_caches") else None
    path = os.path.join(str(root), "secret.bin")
    with open(path, "wb") as f:
        f.write(b"x")
    os.chmod(path, 0)
    return path


def test_pathsend_file_errors(server):
    """A missing file, a directory, a FIFO, an unreadable file, a file shorter or
    longer than the Content-Length sent: each closes its connection, logs one
    line with the path, and leaves no fd open; the server goes on."""
    root = str(server.root)
    ten = os.path.join(root, "ten.bin")
    cases = [(os.path.join(root, "missing.bin"), 10, "No such file"), (os.path.join(root, "adir"), 10, ""),
             (os.path.join(root, "fifo"), 10, "not a regular file"), (ten, 11, "Content-Length sent said 11"),
             (ten, 9, "Content-Length sent said 9")]
    if unreadable_path(root):
        cases.append((unreadable_path(root), 10, "Permission denied"))
    fds = server.fds()
    for path, cl, words in cases:
        logged = len(log_lines(server, path))
        s, f = server.connect()
        with s:
            s.sendall(request(f"/raw/pathsend?path={path}&cl={cl}"))
            assert f.read() == b""  # closed, with nothing sent: the head was still held
        assert wait_for(lambda: len(log_lines(server, path)) > logged), server.logs()[-3000:]
        assert words in log_lines(server, path)[-1]
        with server.client() as c:  # it goes on serving
            assert c.get("/file/ten.bin").content == b"0123456789"
        assert len(log_lines(server, path)) == logged + 1  # once
    assert wait_for(lambda: server.fds() == fds), (server.fds(), fds)


def test_file_shrinks_mid_send(server, tmp_path):
    """The length was promised: the connection closes early, one log line."""
    name = f"shrink-{server.port}.bin"
    path = os.path.join(str(server.root), name)
    make_file(path, HUGE, seed=5)
    fds = server.fds()
    s, f = server.connect(rcvbuf=64 << 10)
    with s:
        s.sendall(request(f"/file/{name}"))
        line = f.readline()
        assert b" 200 " in line
        got = len(f.read(256 << 10))
        os.truncate(path, 1 << 20)
        while True:
            data = f.read1(1 << 20) if hasattr(f, "read1") else f.read(1 << 20)
            if not data:
                break
            got += len(data)
        assert got < HUGE
    assert wait_for(lambda: len(log_lines(server, name)) >= 1), server.logs()[-3000:]
    assert "the file shrank" in log_lines(server, name)[0]
    # the handler is over once its file and socket are closed (its finally:
    # after the one log line): a second line would be there by now
    assert wait_for(lambda: server.fds() == fds), (server.fds(), fds)
    assert len(log_lines(server, name)) == 1
    assert server.stats()["stats"]["active"] == 0
    os.unlink(path)


def _declared_then_eof(f):
    """(Content-Length, the body bytes read until the server closed)."""
    status, headers = read_head(f)
    assert status == 200, status
    return int(headers["content-length"]), f.read()


@pytest.mark.skipif(not os.path.exists("/sys/devices/system/cpu/online"), reason="no sysfs")
def test_a_file_shorter_than_its_size_closes_the_connection(server):
    """A pseudo file whose st_size (4096 on sysfs) is more than it holds, or
    one truncated after the open: sendfile returns fewer bytes than the framing
    counted. The connection must end there, as stock uvicorn ends it ("Response
    content shorter than Content-Length"). Before, it was taken as complete and
    the next pipelined response went out as the rest of the body."""
    path = "/sys/devices/system/cpu/online"
    content = open(path, "rb").read()
    s, f = server.connect()
    with s:
        s.sendall(request(f"/raw/pathsend?path={path}&cl=4096") + request("/file/ten.bin"))
        declared, body = _declared_then_eof(f)
    assert declared == 4096 and body == content  # and then the close: no second response
    assert wait_for(lambda: log_lines(server, path)), server.logs()[-3000:]
    assert f"the file ended after {len(content)} of 4096 bytes" in log_lines(server, path)[-1]


def test_a_send_the_app_cancels_closes_the_connection(server):
    """The app gives up on a pathsend (wait_for around send) and ends the
    response: part of the body is out and the framing counted all of it, so
    the connection must close. Before, it stayed open and the next pipelined
    response went out inside the first one's declared body."""
    s, f = server.connect(rcvbuf=64 << 10)
    with s:
        s.sendall(request("/raw/cancel?name=huge.bin&t=0.3") + request("/file/ten.bin"))
        time.sleep(1)  # not reading: the send stalls and the app's wait_for fires
        declared, body = _declared_then_eof(f)
    assert declared == HUGE and len(body) < HUGE
    assert body == file_bytes(server.root, "huge.bin", 0, len(body))  # the file's bytes only
    path = os.path.join(str(server.root), "huge.bin")
    assert wait_for(lambda: log_lines(server, path)), server.logs()[-3000:]
    assert "the send ended with CancelledError" in log_lines(server, path)[-1]


def test_client_reset_mid_send(server):
    """The app sees http.disconnect; one log line; no fd left behind."""
    fds = server.fds()
    with server.client() as c:
        seen = len(c.get("/events").json()["events"])
    s, f = server.connect(rcvbuf=64 << 10)
    s.sendall(request("/raw/watch?name=huge.bin"))
    assert b" 200 " in f.readline()
    f.read(128 << 10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    f.close()
    s.close()  # RST: unread data and linger 0
    with server.client() as c:
        assert wait_for(lambda: len(c.get("/events").json()["events"]) > seen)
        assert c.get("/events").json()["events"][seen] == "http.disconnect"
    path = os.path.join(str(server.root), "huge.bin")
    assert wait_for(lambda: len(log_lines(server, path)) >= 1), server.logs()[-3000:]
    assert "the client went away" in log_lines(server, path)[-1]
    assert wait_for(lambda: server.fds() == fds), (server.fds(), fds)
    assert server.stats()["stats"]["active"] == 0


def test_access_log_and_no_errors(server):
    """uvicorn's access log lines are there; the only app errors logged are the
    ones a test caused on purpose (a count past the Content-Length)."""
    with server.client() as c:
        c.get("/file/hello.txt")
    logs = server.logs()
    assert re.search(r'"GET /file/hello.txt HTTP/1.1" 200', logs)
    for error in logs.split("Exception in ASGI application")[1:]:
        assert "data for declared Content-Length" in error or "content longer than Content-Length" in error, error
    assert logs.count("Traceback") == logs.count("Exception in ASGI application")


# -- one-off setups: timeouts, shutdown, workers, gunicorn, uvicorn.run ----------------------

@pytest.mark.parametrize("variant", ["asyncio-HttpToolsProtocol", "uvloop-H11Protocol"])
def test_timeouts(root, variant):
    """A subclass's sendfile_timeout ends a transfer to a client that stopped
    reading; uvicorn's keep-alive timeout still closes idle connections."""
    loop, proto = variant.split("-")
    srv = Server(root[0], loop, args=["--timeout-keep-alive", "1"], http=f"protocols:{proto}")
    try:
        fds = srv.fds()
        s, f = srv.connect(rcvbuf=64 << 10)
        with s:
            s.sendall(request("/file/huge.bin"))
            assert b" 200 " in f.readline()
            path = os.path.join(str(root[0]), "huge.bin")
            assert wait_for(lambda: log_lines(srv, path), 10), srv.logs()[-2000:]
            assert "the client stopped reading: no progress for 0.5 s" in log_lines(srv, path)[0]
        s, f = srv.connect()
        with s:
            s.sendall(request("/file/ten.bin"))
            assert read_response(f)[2] == b"0123456789"
            t0 = time.monotonic()
            assert f.read() == b""  # closed by the server, idle
            assert 0.5 < time.monotonic() - t0 < 5
        assert wait_for(lambda: srv.fds() == fds), (srv.fds(), fds)
    finally:
        srv.stop()


def download_slowly(srv, path, size):
    """Starts a download, reads a little; returns (socket, reader, bytes read)."""
    s, f = srv.connect(rcvbuf=64 << 10)
    s.sendall(request(path))
    status, headers = f.readline(), None
    assert b" 200 " in status
    while f.readline() != b"\r\n":
        pass
    return s, f, len(f.read(64 << 10))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_graceful_shutdown_waits_for_the_transfer(root, loop):
    srv = Server(root[0], loop)
    try:
        s, f, got = download_slowly(srv, "/file/huge.bin", HUGE)
        with s:
            srv.proc.send_signal(signal.SIGTERM)
            # uvicorn took the signal and waits for this connection: still sending
            assert wait_for(lambda: "Waiting for connections to close" in srv.logs() or srv.proc.poll() is not None,
                            15), srv.logs()[-2000:]
            assert srv.proc.poll() is None
            h = hashlib.sha1(file_bytes(root[0], "huge.bin", 0, got))
            while True:
                data = f.read1(1 << 20)
                if not data:
                    break
                h.update(data)
                got += len(data)
            assert got == HUGE and h.hexdigest() == root[1]["huge.bin"]
        assert srv.proc.wait(15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    finally:
        srv.stop()


def test_workers(root):
    """uvicorn --workers 2: each worker imports the protocol class by its name."""
    srv = Server(root[0], args=["--workers", "2"], bind=True)
    try:
        with srv.client() as c:
            for _ in range(4):
                assert sha1(c.get("/file/one.bin").content) == root[1]["one.bin"]
    finally:
        srv.stop()


def test_gunicorn_worker(root):
    pytest.importorskip("gunicorn")
    srv = Server(root[0], cmd=[sys.executable, "-m", "gunicorn", "app:app", "--bind", "fd://{fd}", "-w", "1",
                               "-k", "zcsend.uvicorn.UvicornWorker", "--chdir", ASGI])
    try:
        before = srv.stats()["stats"]
        with srv.client() as c:
            assert sha1(c.get("/file/big.bin").content) == root[1]["big.bin"]
        after = srv.stats()["stats"]
        assert after["bytes_zero_copy"] + after["bytes_fallback"] - \
            before["bytes_zero_copy"] - before["bytes_fallback"] >= BIG
    finally:
        srv.stop()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("protocol", ["HttpToolsProtocol", "H11Protocol"])
def test_in_process_uvicorn_server(root, loop, protocol):
    """uvicorn.Server(Config(app, http=<class>)) in this process, on a socket of
    its own, with zcsend.stats() read here."""
    import asyncio

    import uvicorn

    import zcsend
    import zcsend.uvicorn
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    path = os.path.join(str(root[0]), "big.bin")
    app = Starlette(routes=[Route("/big", lambda request: FileResponse(path))])

    async def main():
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, http=getattr(zcsend.uvicorn, protocol), lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        before = zcsend.stats()
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(request("/big") * 2)
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"200 OK" in head and b"content-length: %d" % BIG in head.lower()
            assert hashlib.sha1(await reader.readexactly(BIG)).hexdigest() == root[1]["big.bin"]
        writer.close()
        after = zcsend.stats()
        key = "bytes_zero_copy" if zcsend.backend() != "emulated" else "bytes_fallback"
        assert after[key] - before[key] == 2 * BIG
        server.should_exit = True
        await task
        sock.close()

    conftest.LOOP["kind"] = loop
    try:
        conftest.run(main(), timeout=60)
    finally:
        conftest.LOOP["kind"] = "asyncio"


def test_version_and_shape_checks(monkeypatch):
    import uvicorn
    from uvicorn.protocols.http import h11_impl

    import zcsend.uvicorn as zu
    monkeypatch.delenv(zu._UNCHECKED_ENV, raising=False)
    for bad in ("0.29.0", "1.0.0", "2024.1", "dev"):
        monkeypatch.setattr(uvicorn, "__version__", bad)
        with pytest.raises(ImportError, match=r"zcsend.uvicorn supports uvicorn 0\.30 to 0\.54, found"):
            zu._check_version()
    monkeypatch.setenv(zu._UNCHECKED_ENV, "1")
    zu._check_version()
    zu._check_shape(h11_impl, zu._COMMON + ("conn",))
    with pytest.raises(ImportError, match="does not have the internals it was written for: "
                                          "RequestResponseCycle.zcsend_nothing"):
        zu._check_shape(h11_impl, ("conn", "zcsend_nothing"))


# -- Starlette's own FileResponse tests, against zcsend.starlette.FileResponse ---------------

def _starlette_suite():
    """Starlette's tests/test_responses.py (tests/python/asgi/, from its sdist),
    its FileResponse tests with zcsend.starlette.FileResponse in place."""
    try:
        sys.path.insert(0, ASGI)
        import starlette_test_responses as suite
    except ImportError as exc:  # httpx2, python-multipart: Starlette's test dependencies
        return {"test_starlette_suite_needs": pytest.mark.skip(reason=str(exc))(lambda: None)}
    finally:
        sys.path.remove(ASGI)
    import zcsend.starlette
    suite.FileResponse = zcsend.starlette.FileResponse
    names = [n for n in vars(suite) if n.startswith("test_") and "file_response" in n]
    fixtures = ["file_path", "scope", "readme_file", "file_response_client"]

    def test_starlette_suite_runs_zcsend_file_response():
        assert len(names) >= 40
        assert suite.FileResponse is zcsend.starlette.FileResponse
        assert zcsend.starlette.RANGES  # the range step is overridden on this Starlette

    return {**{f"test_starlette_{n[5:]}": getattr(suite, n) for n in names},
            **{n: getattr(suite, n) for n in fixtures},
            "test_starlette_suite_runs_zcsend_file_response": test_starlette_suite_runs_zcsend_file_response}


@pytest.fixture
def test_client_factory():
    from starlette.testclient import TestClient
    return functools.partial(TestClient, backend="asyncio")


@pytest.fixture
def anyio_backend():
    return "asyncio"


globals().update(_starlette_suite())
