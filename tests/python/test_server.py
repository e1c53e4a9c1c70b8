"""python -m zcsend serve, with curl as the client."""
import hashlib
import os
import re
import socket
import subprocess
import sys

import pytest

import ssl

from conftest import make_file, tls_files

pytestmark = pytest.mark.skipif(not __import__("shutil").which("curl"), reason="curl is required")


@pytest.fixture
def loop_kind():
    """The server runs in its own process: the site fixture's params pick its loop."""
    return "subprocess"


@pytest.fixture(scope="module", params=["asyncio", "uvloop", "asyncio-tls", "uvloop-tls"])
def site(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("site")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("secret\n")
    digest = make_file(root / "big.bin", (5 << 20) + 3)
    (root / "hello.txt").write_text("hello world\n")
    (root / "page.html").write_text("<p>hi</p>\n")
    (root / "ten.bin").write_bytes(b"0123456789")
    (root / "empty.bin").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_text("index\n")
    (root / "empty").mkdir()
    os.symlink(outside / "secret.txt", root / "escape.txt")
    os.symlink(root / "hello.txt", root / "inside.txt")
    loop, _, tls = request.param.partition("-")
    args = ["--loop", loop]
    if tls:
        args += ["--tls-cert", tls_files()[0], "--tls-key", tls_files()[1]]
    proc = subprocess.Popen([sys.executable, "-m", "zcsend", "serve", str(root), "--port", "0", *args],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    scheme = "https" if tls else "http"
    assert line.startswith("zcsend: serving ") and f" on {scheme}://127.0.0.1:" in line, line
    port = int(re.search(r":(\d+)/$", line.strip()).group(1))
    yield {"root": root, "url": f"{scheme}://127.0.0.1:{port}", "port": port, "digest": digest,
           "tls": bool(tls)}
    proc.terminate()
    proc.wait(10)


# curl is the peer, not the code under test: keep a sanitizer preload off it
CURL_ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def curl(*args):
    r = subprocess.run(["curl", "-s", "-S", "--max-time", "30", "--cacert", tls_files()[0], *args],
                       capture_output=True, timeout=60, env=CURL_ENV)
    return r


def headers_and_body(*args):
    r = curl("-i", *args)
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.lower(): v for k, _, v in (l.partition(": ") for l in lines[1:])}
    return status, hdrs, body


def test_whole_file(site, tmp_path):
    out = tmp_path / "out"
    r = curl("-o", str(out), "-w", "%{http_code} %{size_download}", site["url"] + "/big.bin")
    assert r.stdout.decode() == f"200 {(5 << 20) + 3}"
    assert hashlib.sha1(out.read_bytes()).hexdigest() == site["digest"]


def test_headers(site):
    status, h, body = headers_and_body(site["url"] + "/page.html")
    assert status == 200
    assert h["content-type"] == "text/html"
    assert h["content-length"] == "10"
    assert h["accept-ranges"] == "bytes"
    assert re.match(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", h["last-modified"])
    assert body == b"<p>hi</p>\n"
    status, h, body = headers_and_body(site["url"] + "/sub/")
    assert (status, body) == (200, b"index\n")


@pytest.mark.parametrize("path,location,status", [
    ("/sub", "/sub/", 200), ("/sub?a=1&b", "/sub/?a=1&b", 200), ("/empty", "/empty/", 404),
    ("/s%75b", "/s%75b/", 200),  # the target as it came
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_directory_without_its_slash_is_a_redirect_to_it(site, path, location, status, method):
    """As nginx: 301 to the directory with its slash (its index page's relative
    links are relative to the directory), the query kept; then its index."""
    got, h, body = headers_and_body("-X", method, site["url"] + path) if method == "GET" else \
        headers_and_body("-I", site["url"] + path)
    assert got == 301
    assert h["location"] == location
    assert body == (b"301 Moved Permanently\n" if method == "GET" else b"")
    got, _, body = headers_and_body(site["url"] + location)
    assert got == status
    assert body == (b"index\n" if status == 200 else b"404 Not Found\n")


def test_a_redirect_keeps_no_fragment_and_escapes_what_a_header_cannot_hold(site):
    """A fragment (no client should send one) is dropped as the path's lookup
    drops it; a byte past ASCII in the target is escaped in the Location, as
    the lookup reads an escape back (UTF-8): following it finds the directory."""
    os.makedirs(site["root"] / "d\xe9", exist_ok=True)
    out = _raw(site, b"GET /sub?q#frag HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /d\xe9?\x01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 301 Moved Permanently") == 2, out
    assert b"\r\nLocation: /sub/?q\r\n" in out
    assert b"\r\nLocation: /d%C3%A9/?%01\r\n" in out
    (site["root"] / "d\xe9" / "index.html").write_text("e\n")
    assert headers_and_body(site["url"] + "/d%C3%A9/?%01")[::2] == (200, b"e\n")


def test_answers_to_head_never_carry_a_body(site):
    """Pipelined HEADs that get an error, a redirect or a 416, then a GET: every
    answer to HEAD is its head alone (RFC 9110 §9.3.2: a client reads none, so
    a body would be taken for the next answer's start), with the
    Content-Length a GET would have had."""
    heads = [b"HEAD /missing.txt HTTP/1.1\r\nHost: x\r\n\r\n",
             b"HEAD /sub HTTP/1.1\r\nHost: x\r\n\r\n",
             b"HEAD /ten.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=20-\r\n\r\n",
             b"HEAD /../x HTTP/1.1\r\nHost: x\r\n\r\n",
             b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"]
    out = _raw(site, b"".join(heads) + b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = out.split(b"\r\n\r\n")
    statuses = [a.split(b"\r\n")[0] for a in answers[:6]]
    assert statuses == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 301 Moved Permanently",
                        b"HTTP/1.1 416 Range Not Satisfiable", b"HTTP/1.1 403 Forbidden",
                        b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"], out
    assert b"Content-Length: 14\r\n" in answers[0]  # what a GET's "404 Not Found\n" has
    assert answers[6] == b"hello world\n"


@pytest.mark.parametrize("rng,start,end", [("0-4", 0, 4), ("6-", 6, 11), ("-6", 6, 11), ("3-100", 3, 11)])
def test_ranges(site, rng, start, end):
    status, h, body = headers_and_body("-r", rng, site["url"] + "/hello.txt")
    assert status == 206
    assert h["content-range"] == f"bytes {start}-{end}/12"
    assert body == b"hello world\n"[start:end + 1]


def test_range_on_big_file(site, tmp_path):
    out = tmp_path / "part"
    r = curl("-r", "1000000-3999999", "-o", str(out), "-w", "%{http_code}", site["url"] + "/big.bin")
    assert r.stdout == b"206"
    with open(site["root"] / "big.bin", "rb") as f:
        f.seek(1000000)
        assert out.read_bytes() == f.read(3000000)


def test_unsatisfiable_range(site):
    status, h, _ = headers_and_body("-r", "100-200", site["url"] + "/hello.txt")
    assert status == 416
    assert h["content-range"] == "bytes */12"


# RFC 9110 §14, and nginx where the RFC leaves a choice (test_hostile.py compares)
@pytest.mark.parametrize("name,rng,status,crange,body", [
    ("ten.bin", "bytes=10-", 416, "bytes */10", None),      # first-pos at the end
    ("ten.bin", "bytes=0-1_0", 416, "bytes */10", None),    # digits only
    ("ten.bin", "bytes=5-2", 416, "bytes */10", None),
    ("ten.bin", "bytes=-0", 416, "bytes */10", None),
    ("ten.bin", "bytes=+1-2", 416, "bytes */10", None),
    ("ten.bin", "bytes=0-99999999999999999999999", 416, "bytes */10", None),  # as nginx: overflow
    ("ten.bin", "bytes=0-9223372036854775807", 206, "bytes 0-9/10", b"0123456789"),  # off_t's max
    ("ten.bin", "bytes=0-9223372036854775808", 416, "bytes */10", None),  # past it, as nginx
    ("ten.bin", "bytes=-9223372036854775807", 206, "bytes 0-9/10", b"0123456789"),
    ("ten.bin", "bytes=9223372036854775808-", 416, "bytes */10", None),
    ("ten.bin", "bytes=-1", 206, "bytes 9-9/10", b"9"),
    ("ten.bin", "bytes=-20", 206, "bytes 0-9/10", b"0123456789"),
    ("ten.bin", "bytes=9-9", 206, "bytes 9-9/10", b"9"),
    ("ten.bin", "BYTES=2-3", 206, "bytes 2-3/10", b"23"),   # units are case-insensitive
    ("ten.bin", "bytes = 2-3", 200, None, b"0123456789"),  # no unit "bytes ": ignored, as nginx
    ("ten.bin", "bytes= 2-3 ", 206, "bytes 2-3/10", b"23"),
    ("ten.bin", "items=0-1", 200, None, b"0123456789"),
    ("ten.bin", "bytes=0-1,3-4", 200, None, b"0123456789"),  # one range only: the whole file
    ("empty.bin", "bytes=-1", 200, None, b""),   # satisfiable, but no 206 can say so
    ("empty.bin", "bytes=0-", 416, "bytes */0", None),
])
def test_ranges_rfc9110(site, name, rng, status, crange, body):
    got, h, data = headers_and_body("-H", f"Range: {rng}", site["url"] + "/" + name)
    assert (got, h.get("content-range")) == (status, crange)
    if body is not None:
        assert data == body


def test_etag_and_if_none_match(site):
    st = os.stat(site["root"] / "hello.txt")
    status, h, _ = headers_and_body(site["url"] + "/hello.txt")
    etag = f'"{int(st.st_mtime):x}-{st.st_size:x}"'  # nginx's
    assert h["etag"] == etag
    for value in (etag, f"W/{etag}", '"nope", ' + etag, "*"):
        status, h304, body = headers_and_body("-H", f"If-None-Match: {value}", site["url"] + "/hello.txt")
        assert (status, body, h304["etag"]) == (304, b"", etag), value
    # a tag that doesn't match wins over a date that does (RFC 9110 §13.2.2)
    status, _, body = headers_and_body("-H", 'If-None-Match: "nope"', "-H",
                                       f"If-Modified-Since: {h['last-modified']}", site["url"] + "/hello.txt")
    assert (status, body) == (200, b"hello world\n")


def test_if_range(site):
    status, h, _ = headers_and_body(site["url"] + "/hello.txt")
    for value, want in ((h["etag"], 206), (h["last-modified"], 206), (f"W/{h['etag']}", 200),
                        ('"stale"', 200), ("Mon, 01 Jan 2001 00:00:00 GMT", 200)):
        status, _, body = headers_and_body("-r", "0-4", "-H", f"If-Range: {value}",
                                           site["url"] + "/hello.txt")
        assert (status, body) == (want, b"hello" if want == 206 else b"hello world\n"), value


def test_head(site):
    r = curl("-I", site["url"] + "/big.bin")
    text = r.stdout.decode()
    assert text.startswith("HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {(5 << 20) + 3}\r\n" in text
    assert text.endswith("\r\n\r\n")  # no body


def test_keep_alive_reuses_connection(site, tmp_path):
    r = curl("-v", "-o", str(tmp_path / "a"), site["url"] + "/big.bin",
             "-o", str(tmp_path / "b"), site["url"] + "/hello.txt")
    assert r.returncode == 0
    assert b"Re-using existing connection" in r.stderr
    assert hashlib.sha1((tmp_path / "a").read_bytes()).hexdigest() == site["digest"]
    assert (tmp_path / "b").read_bytes() == b"hello world\n"


def test_if_modified_since(site):
    status, h, _ = headers_and_body(site["url"] + "/hello.txt")
    status, _, body = headers_and_body("-H", f"If-Modified-Since: {h['last-modified']}", site["url"] + "/hello.txt")
    assert (status, body) == (304, b"")
    status, _, body = headers_and_body("-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT",
                                       site["url"] + "/hello.txt")
    assert (status, body) == (200, b"hello world\n")


@pytest.mark.parametrize("path,status", [
    ("/missing.txt", 404),
    ("/empty/", 404),
    ("/../outside/secret.txt", 403),
    ("/sub/../../secret.txt", 403),
    ("/%2e%2e/secret.txt", 403),
    ("/sub/%2E%2E/%2e%2e/x", 403),
    ("/escape.txt", 403),
    ("/%ff", 400),
])
def test_refusals(site, path, status):
    got, _, _ = headers_and_body("--path-as-is", site["url"] + path)
    assert got == status


def test_symlink_inside_is_served(site):
    assert headers_and_body(site["url"] + "/inside.txt")[2] == b"hello world\n"


def test_absolute_path_stays_inside(site):
    assert headers_and_body("--path-as-is", site["url"] + "//etc/passwd")[0] == 404
    assert headers_and_body(site["url"] + "/%2Fetc%2Fpasswd")[0] == 404


def test_method_not_allowed(site):
    status, h, _ = headers_and_body("-X", "POST", "-d", "x=1", site["url"] + "/hello.txt")
    assert status == 405
    assert h["allow"] == "GET, HEAD"


def _raw(site, data):
    with socket.create_connection(("127.0.0.1", site["port"]), timeout=10) as s:
        if site["tls"]:
            s = ssl.create_default_context(cafile=tls_files()[0]).wrap_socket(s, server_hostname="127.0.0.1")
        s.sendall(data)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /hello.txt HTTP/9.9\r\n\r\n",
    b"GET hello.txt HTTP/1.1\r\n\r\n",
    b"GET /hello.txt HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",  # '\xb2'.isdigit()
    b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
    b"GET /hello.txt HTTP/1.1\r\n\r\n",  # no Host
])
def test_bad_request(site, request_bytes):
    assert _raw(site, request_bytes).startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_http10_closes(site):
    out = _raw(site, b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello world\n")


def test_long_path_component_is_404(site):
    assert headers_and_body(site["url"] + "/" + "a" * 300)[0] == 404


@pytest.mark.parametrize("request_bytes", [
    b"GET /hello.txt HTTP/1.1\nHost: x\nConnection: close\n\n",
    b"GET /hello.txt HTTP/1.1\r\nHost: x\nConnection: close\r\n\n",
    b"\r\nGET /hello.txt HTTP/1.0\n\n",  # an empty line before the request line is ignored
])
def test_bare_lf_line_ends_are_accepted(site, request_bytes):
    # RFC 9112 §2.2 lets a recipient take a bare LF for CRLF (nginx does)
    out = _raw(site, request_bytes)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello world\n")


def test_help_documents_every_limit():
    r = subprocess.run([sys.executable, "-m", "zcsend", "serve", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag, default in (("--header-timeout", "default 60"), ("--keepalive-timeout", "default 75"),
                          ("--send-timeout", "default 60"), ("--max-body", "default 1048576"),
                          ("--max-connections", "default 1024")):
        assert flag in text and default in text[text.index(flag):], flag
    for fixed in ("64 KiB", "100 header lines", "RLIMIT_NOFILE"):
        assert fixed in text, fixed
