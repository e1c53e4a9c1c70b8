"""python -m zcsend serve against hostile clients: slowloris, clients that never
read, body and pipelining floods, malformed requests, symlink and FIFO tricks;
and, where nginx is installed, the same answers as nginx to the simple ones.

Every server under test is its own process (so its RSS and fds are its own), on
the loop the autouse loop_kind fixture picks, killed at teardown. Timeouts are
set small (1-2 s) so that the tests that wait for them stay quick."""
import os
import random
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

MiB = 1 << 20
# under ASan freed memory sits in its quarantine: RSS says nothing there
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("secret\n")
    (root / "hello.txt").write_text("hello world\n")
    (root / "ten.bin").write_bytes(b"0123456789")
    (root / "empty.bin").write_bytes(b"")
    with open(root / "big.bin", "wb") as f:  # sparse: more than socket buffers hold
        f.truncate(64 * MiB)
    (root / "evil").mkdir()
    os.symlink(outside / "secret.txt", root / "evil" / "index.html")
    os.symlink(outside / "secret.txt", root / "escape.txt")
    (root / "inner").mkdir()
    os.symlink(root / "hello.txt", root / "inner" / "index.html")
    os.mkfifo(root / "fifo")
    (root / "pipedir").mkdir()
    os.mkfifo(root / "pipedir" / "index.html")
    return root


class Server:
    """A `python -m zcsend serve` process, with its /proc numbers."""

    def __init__(self, root, loop, *flags, nofile=None):
        self.err = tempfile.TemporaryFile()
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zcsend", "serve", str(root), "--port", "0", "--loop", loop, *flags],
            stdout=subprocess.PIPE, stderr=self.err, text=True, preexec_fn=limit)
        self.pid = self.proc.pid
        ready = select.select([self.proc.stdout], [], [], 30)[0]
        line = self.proc.stdout.readline() if ready else ""
        m = re.search(r"^zcsend: serving .* on http://127\.0\.0\.1:(\d+)/$", line.strip())
        if m is None:
            self.stop()
            raise AssertionError(f"server did not start: {line!r} {self.stderr()!r}")
        self.port = int(m.group(1))

    def stderr(self):
        self.err.seek(0)
        return self.err.read().decode(errors="replace")

    def _status(self, field):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    def rss(self):
        return self._status("VmRSS")

    def peak_rss(self):
        return self._status("VmHWM")

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_ticks(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def wait_quiet(self, limit=60):
        """Waits until the process stops using CPU (it has done all it will do)."""
        end = time.monotonic() + limit
        last = self.cpu_ticks()
        while time.monotonic() < end:
            time.sleep(0.3)
            now = self.cpu_ticks()
            if now == last:
                return
            last = now
        raise AssertionError(f"server still busy after {limit} s")

    def wait_fds(self, most, limit):
        """Seconds until the process holds at most `most` fds; fails after limit."""
        t0 = time.monotonic()
        while self.fds() > most:
            if time.monotonic() - t0 > limit:
                raise AssertionError(f"{self.fds()} fds after {limit} s, wanted <= {most}")
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def start(site, loop_kind):
    """start(*flags, nofile=None): a fresh server on this test's loop."""
    servers = []

    def go(*flags, nofile=None):
        servers.append(Server(site, loop_kind, *flags, nofile=nofile))
        return servers[-1]
    yield go
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def _shared():
    servers = {}
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def shared(site, loop_kind, _shared):
    """One server per loop for the request-level tests (default limits, shorter timeouts)."""
    if loop_kind not in _shared or _shared[loop_kind].proc.poll() is not None:
        _shared[loop_kind] = Server(site, loop_kind, "--header-timeout", "5", "--keepalive-timeout", "5",
                                    "--send-timeout", "5")
    return _shared[loop_kind]


def read_response(s, head=False):
    """(status, headers, body) of the next response on socket s (body by
    Content-Length, none if head; bytes past it stay for the next call)."""
    f = _files.get(s)
    if f is None:
        f = _files[s] = s.makefile("rb")
    line = f.readline()
    if not line:
        raise AssertionError("connection closed, no response")
    status = int(line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode("latin-1").rstrip("\r\n").partition(": ")
        headers[k.lower()] = v
    n = 0 if head or status == 304 else int(headers.get("content-length", 0))
    return status, headers, f.read(n)


_files = __import__("weakref").WeakKeyDictionary()


def exchange(port, data, timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_response(s)


def get(port, path, timeout=5.0):
    return exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), timeout)


def wait_closed_by_peer(s, limit):
    """Seconds until the peer closes or resets s (without reading from it)."""
    t0 = time.monotonic()
    p = select.poll()
    p.register(s, select.POLLRDHUP)
    assert p.poll(limit * 1000), f"still open after {limit} s"
    return time.monotonic() - t0


# -- symlinks and FIFOs ------------------------------------------------------

@pytest.mark.parametrize("path", ["/evil/", "/evil/index.html", "/escape.txt"])
def test_symlinks_out_of_root_are_refused(shared, path):
    status, _, body = get(shared.port, path)
    assert status == 403 and b"secret" not in body


def test_symlinked_index_inside_root_is_served(shared):
    assert get(shared.port, "/inner/")[::2] == (200, b"hello world\n")


def test_file_dates_past_year_9999():
    """A file whose mtime is past year 9999 (anyone who may touch files under
    root can set it): its Last-Modified raised ValueError, and every request
    for it was a reset connection and an error in the loop's handler."""
    from zcsend.server import _Dates
    d = _Dates()
    assert d.of(10 ** 12) == "Fri, 31 Dec 9999 23:59:59 GMT"
    assert d.of(2 ** 62) == "Fri, 31 Dec 9999 23:59:59 GMT"
    assert d.of(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_inside_a_root_of_slash():
    """`serve /` refused every file: the root's prefix was "//"."""
    from zcsend.server import inside
    assert inside("/", "/etc/hostname") and inside("/", "/")
    assert inside("/srv", "/srv/a") and not inside("/srv", "/srvx/a") and not inside("/srv", "/")


def test_a_directory_swapped_for_a_symlink_never_opens_outside(tmp_path):
    """realpath's walk and open()'s walk are two lookups: someone who may
    rename entries under root (an upload area) swaps a directory on the path
    for a symlink out between them, and the open lands outside, past
    O_NOFOLLOW, which guards the last name only (the file outside was opened
    in about 1 of 3 tries). The opened file's own path decides now."""
    import ctypes
    from zcsend import server
    root = tmp_path / "root"
    (root / "uploads" / "d").mkdir(parents=True)
    (root / "uploads" / "d" / "secret.txt").write_text("inside\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("outside\n")
    os.symlink(tmp_path / "outside", root / "uploads" / "l")
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = str(root / "uploads" / "d").encode(), str(root / "uploads" / "l").encode()
    if libc.syscall(316, -100, a, -100, b, 2) != 0:  # renameat2(RENAME_EXCHANGE)
        pytest.skip("no renameat2(RENAME_EXCHANGE) here")
    pid = os.fork()
    if pid == 0:  # the swapper: uploads/d <-> uploads/l, as fast as it can
        try:
            while True:
                libc.syscall(316, -100, a, -100, b, 2)
        finally:
            os._exit(0)
    seen = {}
    try:
        real = os.path.realpath(root)
        deadline = time.monotonic() + 5
        for _ in range(3000):
            try:
                status, path = server.resolve_path(real, "/uploads/d/secret.txt")
                if status == 200:
                    status, f, _ = server.open_inside(real, path)
                    if f is not None:
                        with f:
                            assert f.read() == b"inside\n"
            except OSError as exc:
                assert exc.errno in server._OPEN_STATUS, exc  # never a 500
                status = server._OPEN_STATUS[exc.errno]
            seen[status] = seen.get(status, 0) + 1
            if time.monotonic() > deadline:
                break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert len(seen) > 1, seen  # the swaps raced the lookups


@pytest.mark.parametrize("path", ["/fifo", "/pipedir/", "/pipedir/index.html"])
def test_fifo_is_not_served_and_does_not_block(shared, path):
    # open() of a FIFO with no writer blocks: the whole loop would stop with it
    assert get(shared.port, path, timeout=5)[0] == 404
    assert get(shared.port, "/hello.txt", timeout=5)[0] == 200


# -- malformed requests: 4xx, never a traceback -------------------------------

H = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n"
MALFORMED = {
    "content-length-superscript-two": (H + b"Content-Length: \xb2\r\n\r\n", 400),
    "content-length-superscript-utf8": (H + "Content-Length: ²\r\n\r\n".encode(), 400),
    "content-length-20-digits": (H + b"Content-Length: 99999999999999999999\r\n\r\n", 400),
    "content-length-negative": (H + b"Content-Length: -1\r\n\r\n", 400),
    "content-length-twice": (H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
    "transfer-encoding": (H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "long-path-component": (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "long-path": (b"GET /" + b"a/" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "line-over-64-KiB": (H + b"X: " + b"a" * (70 << 10) + b"\r\n\r\n", 400),
    "head-over-64-KiB": (H + (b"X: " + b"a" * 1000 + b"\r\n") * 70 + b"\r\n", 400),
    "100-headers": (H + b"X: y\r\n" * 99 + b"\r\n", 200),  # Host and 99 more
    "101-headers": (H + b"X: y\r\n" * 100 + b"\r\n", 400),
    "range-of-60000-digits": (H + b"Range: bytes=0-" + b"9" * 60000 + b"\r\n\r\n", 416),
    "bare-CR": (H + b"X: a\rb\r\n\r\n", 400),
    "folded-header": (H + b"X: a\r\n b\r\n\r\n", 400),
    "no-colon": (H + b"Bad Header\r\n\r\n", 400),
    "NUL-in-path": (b"GET /%00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "bad-escape": (b"GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "no-Host-in-1.1": (b"GET /hello.txt HTTP/1.1\r\n\r\n", 400),
    "bad-version": (b"GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n", 400),
    "bad-date": (H + b"If-Modified-Since: Mon, 99 Foo 99999999 99:99:99 GMT\r\n\r\n", 200),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_request_gets_4xx_and_no_traceback(shared, name):
    data, status = MALFORMED[name]
    log = len(shared.stderr())
    assert exchange(shared.port, data)[0] == status
    assert get(shared.port, "/hello.txt")[0] == 200
    assert "Traceback" not in shared.stderr()[log:]


def test_bare_lf_pipelined(shared):
    with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as s:
        s.sendall(b"GET /ten.bin HTTP/1.1\nHost: x\n\nHEAD /hello.txt HTTP/1.1\nHost: x\r\n\n")
        assert read_response(s)[::2] == (200, b"0123456789")
        status, h, _ = read_response(s, head=True)
        assert (status, h["content-length"]) == (200, "12")


# -- timeouts -------------------------------------------------------------------

@pytest.mark.parametrize("trickle", [True, False], ids=["trickled-head", "silent"])
def test_head_ends_at_header_timeout(start, trickle):
    srv = start("--header-timeout", "1", "--keepalive-timeout", "10")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        t0 = time.monotonic()
        p = select.poll()
        p.register(s, select.POLLRDHUP)
        for byte in (b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100) if trickle else b"":
            try:
                s.send(bytes([byte]))  # a byte every 0.1 s: the deadline is for the whole head
            except OSError:
                break
            if p.poll(100):
                break
        else:
            wait_closed_by_peer(s, 10)
        elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed <= 2.5, elapsed


def test_idle_keepalive_ends_at_keepalive_timeout(start):
    srv = start("--header-timeout", "1", "--keepalive-timeout", "2")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[0] == 200
        elapsed = wait_closed_by_peer(s, 10)
    assert 1.7 <= elapsed <= 3.5, elapsed  # the keep-alive timeout, not the header one


def test_stalled_send_ends_at_send_timeout(start):
    srv = start("--send-timeout", "1")
    assert len(get(srv.port, "/big.bin")[2]) == 64 * MiB  # after one transfer the engine's fds are open
    base = srv.fds()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(5)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")  # 64 MiB, and never read
        t0 = time.monotonic()
        while srv.fds() <= base + 1:  # the connection and the file it sends are open
            assert time.monotonic() - t0 < 5
            time.sleep(0.01)
        elapsed = srv.wait_fds(base, 10)  # then both closed
    assert 0.5 <= elapsed <= 3.0, elapsed


# -- connection floods -----------------------------------------------------------

@pytest.mark.parametrize("limit", ["fd-limit-128", "max-connections-20"])
def test_slowloris_does_not_lock_out_normal_clients(start, limit):
    if limit == "fd-limit-128":
        srv = start("--header-timeout", "2", nofile=128)
        m = re.search(r"allows (\d+) connections", srv.stderr())
        assert m, srv.stderr()
        cap = int(m.group(1))
    else:
        srv = start("--header-timeout", "2", "--max-connections", "20")
        cap = 20
    base = srv.fds()
    loris = []
    try:
        for _ in range(200):  # each sends part of a head and stops: held until evicted or timed out
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            c.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            loris.append(c)
        t0 = time.monotonic()
        status, _, body = get(srv.port, "/hello.txt", timeout=5)
        elapsed = time.monotonic() - t0
        fds = srv.fds()
    finally:
        for c in loris:
            c.close()
    print(f"\nslowloris {limit}: GET served in {elapsed:.3f} s; {fds} fds (base {base}, cap {cap})")
    assert (status, body) == (200, b"hello world\n")
    assert elapsed < 2.0  # within the header timeout: slow heads give way to a whole one
    assert fds <= base + cap + 2  # and one accepted, waiting for room; one closing
    assert "accept" not in srv.stderr()  # the cap kept the server clear of EMFILE


def _rss_report(what, srv, base):
    peak = srv.peak_rss() - base
    print(f"\n{what}: RSS {base / MiB:.1f} MiB before, peak +{peak / MiB:.1f} MiB, {srv.fds()} fds")
    return peak


def test_body_flood_gets_413_in_bounded_memory(start):
    srv = start()
    assert get(srv.port, "/hello.txt")[0] == 200
    base = srv.rss()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 400000000\r\n\r\n")
        status, h, _ = read_response(s)  # answered on the head alone
        assert (status, h["connection"]) == (413, "close")
        sent = 0
        chunk = b"x" * MiB
        try:
            while sent < 64 * MiB:  # the body comes anyway: discarded
                s.sendall(chunk)
                sent += MiB
        except OSError:
            pass
    srv.wait_quiet()
    peak = _rss_report(f"body flood ({sent // MiB} MiB sent)", srv, base)
    if not ASAN:
        assert peak < 16 * MiB
    assert get(srv.port, "/hello.txt")[0] == 200


def test_small_body_is_discarded_and_connection_kept(shared):
    with socket.create_connection(("127.0.0.1", shared.port), timeout=5) as s:
        s.sendall(b"GET /ten.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n" + b"y" * 500000
                  + b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s)[::2] == (200, b"0123456789")
        assert read_response(s)[::2] == (200, b"hello world\n")


def test_pipelined_flood_from_a_client_that_never_reads(start):
    srv = start("--send-timeout", "2")
    assert get(srv.port, "/hello.txt")[0] == 200
    base, base_fds = srv.rss(), srv.fds()
    data = b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n" * 200_000  # 7.4 MiB of requests
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.setblocking(False)
        view, sent, end = memoryview(data), 0, time.monotonic() + 30
        while sent < len(data) and time.monotonic() < end:
            try:
                sent += s.send(view[sent:sent + 65536])
            except BlockingIOError:
                if not select.select([], [s], [], 0.5)[1]:
                    break  # the server has stopped reading
        srv.wait_quiet()
        peak = _rss_report(f"pipelined HEADs ({sent // 38} sent, none read)", srv, base)
        fds = srv.fds()
        # the server then gives up on the client: the send timeout
        srv.wait_fds(base_fds, 10)
    if not ASAN:
        assert peak < 16 * MiB
    assert fds <= base_fds + 2  # the connection and the file it was answering for


# -- the same answers as nginx ---------------------------------------------------

def _free_port():
    for port in random.sample(range(21000, 22000), 50):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port in 21000-21999")


@pytest.fixture(scope="module")
def nginx(site, tmp_path_factory):
    """A private nginx on site (its own prefix and config), refusing symlinks
    (disable_symlinks on: its default follows them out of the root)."""
    if NGINX is None:
        yield None
        return
    prefix = tmp_path_factory.mktemp("nginx")
    for attempt in range(3):
        port = _free_port()
        temps = " ".join(f"{k}_temp_path {prefix}/{k};" for k in ("client_body", "proxy", "fastcgi",
                                                                  "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(f"""
            daemon off; master_process off; worker_processes 1;
            pid {prefix}/nginx.pid; error_log {prefix}/error.log;
            events {{ worker_connections 64; }}
            http {{ access_log off; {temps}
                server {{ listen 127.0.0.1:{port}; root {site}; disable_symlinks on; }} }}
        """)
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-e", str(prefix / "error.log")], stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
    else:
        raise RuntimeError(f"nginx did not start: {(prefix / 'error.log').read_text()}")
    yield port
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _req(path, *headers):
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


LIKE_NGINX = {
    "range-from-the-end": (_req("/ten.bin", b"Range: bytes=10-"), 416, "bytes */10"),
    "range-past-the-end": (_req("/ten.bin", b"Range: bytes=100-200"), 416, "bytes */10"),
    "range-with-underscore": (_req("/ten.bin", b"Range: bytes=0-1_0"), 416, "bytes */10"),
    "range-backwards": (_req("/ten.bin", b"Range: bytes=5-2"), 416, "bytes */10"),
    "range-zero-suffix": (_req("/ten.bin", b"Range: bytes=-0"), 416, "bytes */10"),
    "range-suffix": (_req("/ten.bin", b"Range: bytes=-1"), 206, "bytes 9-9/10"),
    "range-clipped": (_req("/ten.bin", b"Range: BYTES=8-20"), 206, "bytes 8-9/10"),
    "range-suffix-on-empty-file": (_req("/empty.bin", b"Range: bytes=-1"), 200, None),
    "range-other-unit": (_req("/ten.bin", b"Range: items=0-1"), 200, None),
    "range-last-pos-off_t-max": (_req("/ten.bin", b"Range: bytes=0-9223372036854775807"), 206,
                                 "bytes 0-9/10"),
    "range-last-pos-past-off_t": (_req("/ten.bin", b"Range: bytes=0-9223372036854775808"), 416,
                                  "bytes */10"),
    "directory-without-slash": (_req("/inner?x=1"), 301, None),
    "body-over-1-MiB": (_req("/hello.txt", b"Content-Length: 400000000"), 413, None),
    "body-under-1-MiB": (_req("/hello.txt", b"Content-Length: 3") + b"abc", 200, None),
    "symlinked-index-out-of-root": (_req("/evil/"), 403, None),
    "symlink-out-of-root": (_req("/escape.txt"), 403, None),
    "fifo": (_req("/fifo"), 404, None),
    "long-path-component": (_req("/" + "a" * 300), 404, None),
    "content-length-superscript": (_req("/hello.txt", b"Content-Length: \xb2"), 400, None),
    "content-length-twice": (_req("/hello.txt", b"Content-Length: 0", b"Content-Length: 0"), 400, None),
    "no-Host": (b"GET /hello.txt HTTP/1.1\r\n\r\n", 400, None),
    "bare-LF": (b"GET /hello.txt HTTP/1.1\nHost: x\n\n", 200, None),
    "POST": (b"POST /hello.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 405, None),
}


@pytest.mark.parametrize("peer", ["zcsend", "nginx"])
@pytest.mark.parametrize("case", LIKE_NGINX)
def test_same_answer_as_nginx(shared, nginx, peer, case):
    if peer == "nginx" and nginx is None:
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    data, status, content_range = LIKE_NGINX[case]
    got, h, _ = exchange(shared.port if peer == "zcsend" else nginx, data)
    assert (got, h.get("content-range")) == (status, content_range)


def test_same_etag_as_nginx(shared, nginx, site):
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: nginx-light)")
    ours, theirs = get(shared.port, "/hello.txt")[1], get(nginx, "/hello.txt")[1]
    assert ours["etag"] == theirs["etag"]
    for port in (shared.port, nginx):
        inm = f"If-None-Match: W/{ours['etag']}".encode()
        assert exchange(port, _req("/hello.txt", inm))[0] == 304
