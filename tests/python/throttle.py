"""Helpers for processes that read their disk through a throttled cgroup
(test_cold.py's throttled scripts, benchmarks/cold.py --read-mbps's server),
and the page-cache helpers both use."""
import asyncio
import ctypes
import os
import resource
import struct
import time

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def join_throttled(cgroup):
    """Moves this process (and the threads it starts) into cgroup, a blkio/io
    cgroup whose disk reads are throttled, after mlock(2)ing its own
    file-backed readable mappings (the interpreter, its libraries and modules:
    import what will run first). Otherwise a page of them the kernel had
    reclaimed (a disk busy with writes, DAMON's proactive reclaim) is faulted
    back in at the throttle's pace, queued behind the reads under test: the
    loop thread then stalls on its own code, whatever the code under test does
    (test_cold.py saw 4.2 s in filemap_fault, sampled from /proc/PID/stack while
    CI-like writes ran). File-backed only: under ASan, mlockall would lock the
    shadow. RLIMIT_MEMLOCK is raised first where it may be (a root without
    CAP_IPC_LOCK stops at it). Returns the bytes locked; raises OSError, before
    joining, where any mapping could not be locked (or none was found): the
    stalls measured after it would be its own."""
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass  # then as much as the limit lets
    locked, failed = 0, []
    with open("/proc/self/maps") as maps:
        for line in maps:
            f = line.split()
            if len(f) >= 6 and f[5].startswith("/") and not f[5].startswith("/dev/") and f[1][0] == "r":
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                if _libc.mlock(lo, hi - lo) == 0:
                    locked += hi - lo
                else:
                    failed.append((f[5], os.strerror(ctypes.get_errno())))
    if failed or not locked:
        raise OSError(f"join_throttled: {locked} bytes locked; not locked: {failed[:3]} "
                      f"({len(failed)} mappings)")
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    return locked


def evict(path):
    """Drops the file's pages from the page cache (clean pages: fsync first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def warm(path):
    """Reads the whole file: its pages into the page cache."""
    with open(path, "rb") as f:
        while f.read(4 << 20):
            pass


def cachestat_pages(fd, off, n):
    """cachestat(2)'s count of cached pages of [off, off + n): no side effect
    (a read would bring pages in, or start readahead)."""
    rng, out = struct.pack("QQ", off, n), ctypes.create_string_buffer(40)
    assert _libc.syscall(451, fd, ctypes.c_char_p(rng), out, 0) == 0, ctypes.get_errno()
    return struct.unpack("5Q", out.raw)[0]


class LoopGap:
    """The running loop's longest gap between 5 ms ticks from begin() (the send
    under test) to end(): set-up before it runs on the loop thread too, and is
    not what is measured. Made in a coroutine."""

    def __init__(self):
        self.last, self.max, self._stop = None, 0.0, False
        self._ticker = asyncio.ensure_future(self._tick())

    async def _tick(self):
        while not self._stop:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if self.last is not None:
                self.max, self.last = max(self.max, now - self.last), now

    def begin(self):
        self.last, self.max = time.monotonic(), 0.0
        return self.last

    async def end(self):
        self._stop = True
        await self._ticker
        return self.max
