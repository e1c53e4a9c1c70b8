"""Issue 13 §2: the loop thread never waits for the disk. A range that is not
in the page cache is never stepped inline on the loop: the engine takes the
transfer before a byte moves. Checked by what happened (cachestat's answer,
which calls were made), not by timing."""
import asyncio
import os
import shutil
import socket
import tempfile

import pytest

import zcsend
from zcsend import _core, _zcsend
from conftest import Pair, file_sha1, make_file, run

MiB = 1 << 20


def evict(path):
    """Drops the file's pages from the page cache (clean pages: fsync first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path):
    with open(path, "rb") as f:
        while f.read(MiB):
            pass


@pytest.fixture
def diskfile():
    # /var/tmp, not tmp_path: /tmp may be a tmpfs, whose pages can't be evicted
    d = tempfile.mkdtemp(prefix="zcs-cold-", dir="/var/tmp")
    path = os.path.join(d, "cold.bin")
    sha = make_file(path, 8 * MiB, seed=5)
    yield path, sha
    shutil.rmtree(d, ignore_errors=True)


def cached(path, offset=0, n=MiB):
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        with open(path, "rb") as f:
            t = _zcsend.Transfer(a.fileno(), f.fileno(), offset, -1, True)
            return t.cached(n)
    finally:
        a.close()
        b.close()


def test_cached_tells_a_cold_range_from_a_warm_one(diskfile):
    path, _ = diskfile
    evict(path)
    assert cached(path) is False
    warm(path)
    assert cached(path) is True
    evict(path)
    with open(path, "rb") as f:
        f.seek(2 * MiB)
        f.read(MiB)  # only [2, 3) MiB comes back
    assert cached(path, 2 * MiB, MiB) is True
    assert cached(path, 2 * MiB, MiB + 4096) is False  # one page past it is cold
    assert cached(path, 0, 4096) is False


def test_cached_is_true_where_no_disk_wait_can_happen(tmp_path):
    a, b = socket.socketpair()
    a.setblocking(False)
    r, w = os.pipe()
    try:
        t = _zcsend.Transfer(a.fileno(), r, 0, -1, True)  # a pipe: no page cache
        assert t.cached(MiB) is True
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        with open(empty, "rb") as f:  # nothing to read
            assert _zcsend.Transfer(a.fileno(), f.fileno(), 0, -1, True).cached(MiB) is True
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


@pytest.fixture
def submits(monkeypatch):
    """(bytes sent inline before the engine took it) for each transfer submitted."""
    seen = []
    real = _core._Channel.submit

    def submit(self, transfer, loop):
        seen.append(transfer.sent)
        return real(self, transfer, loop)

    monkeypatch.setattr(_core._Channel, "submit", submit)
    return seen


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_cold_file_goes_to_the_engine_before_a_byte_moves(diskfile, submits, kind):
    path, sha = diskfile
    evict(path)
    assert cached(path) is False

    async def main():
        async with Pair(kind) as p:
            with open(path, "rb") as f:
                reading = asyncio.ensure_future(p.read_all(8 * MiB))
                assert await zcsend.sendfile(p.server, f) == 8 * MiB
                assert await reading == (sha, 8 * MiB)

    run(main())
    assert submits == [0]  # the engine took it whole: nothing was stepped on the loop


def test_a_warm_small_file_still_ends_inline(tmp_path, submits):
    path = str(tmp_path / "small.bin")
    sha = make_file(path, 64 << 10, seed=6)
    warm(path)

    async def main():
        async with Pair("tcp") as p:
            with open(path, "rb") as f:
                assert await zcsend.sendfile(p.server, f) == 64 << 10
            assert await p.read_all(64 << 10) == file_sha1(path)

    run(main())
    assert submits == []  # one inline step, no engine
    assert file_sha1(path)[0] == sha
