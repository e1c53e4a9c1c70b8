"""zcsend.sendfile(): validation, the handoff to the engine, and the contract
around it. Transfer logic lives in the C core; this file only arranges it."""
import asyncio
import collections
import io
import os
import stat
import weakref

from . import _zcsend
from ._errors import error_for
from ._transports import hold_for, resolve

import errno as _errno

# One inline step in the loop thread before handing off: a small file is then
# sent without any thread handoff. Bounded so the loop is never held for long.
# 0 hands every transfer to the engine at once (benchmarks/inline.py compares).
INLINE_BUDGET = 1 << 20
# Chunk size for sources without a file descriptor (BytesIO and the like).
CHUNK = 256 << 10


class _Channel:
    """Completions for one event loop: the engine marks an fd readable and the
    loop's reader resolves the futures of the transfers that ended."""

    def __init__(self, loop):
        self.channel = _zcsend.Channel()
        self.waiters = {}
        self.loop = loop
        self.writers = 0  # transfers on the write path (TLS) now: they share WRITE_BUDGET
        self.turn_bytes = 0  # written through transports in this turn of the loop
        self.turn = 0  # which turn that is
        loop.add_reader(self.channel.fileno(), self._ready)
        weakref.finalize(loop, self.channel.close)

    def wrote(self, n):
        if not self.turn_bytes:  # the turn's first write: the count starts over next turn
            self.loop.call_soon(self._next_turn)
        self.turn_bytes += n

    def _next_turn(self):
        self.turn_bytes = 0
        self.turn += 1

    def _ready(self):
        for tid in self.channel.drain():
            fut = self.waiters.pop(tid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def submit(self, transfer):
        fut = self.loop.create_future()
        self.waiters[transfer.id] = fut
        try:
            transfer.submit(self.channel)
        except BaseException:
            del self.waiters[transfer.id]
            raise
        return fut


_channels = weakref.WeakKeyDictionary()


def _channel(loop):
    ch = _channels.get(loop)
    if ch is None:
        ch = _channels[loop] = _Channel(loop)
    return ch


def _check_params(file, offset, count):
    """asyncio's checks, with asyncio's types and messages, and a few more."""
    if isinstance(file, io.TextIOBase) or "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
    if getattr(file, "closed", False):
        raise ValueError("I/O operation on closed file.")
    readable = getattr(file, "readable", None)
    if readable is not None and not readable():
        raise io.UnsupportedOperation("File not open for reading")


def _source_fd(file):
    """The file's fd, or None for objects that only read()."""
    try:
        return file.fileno()
    except (AttributeError, io.UnsupportedOperation):
        return None


def _raise_core(exc, sent, total):
    """The OSError a core Transfer() raised, in zcsend's terms."""
    code = -exc.errno
    if code == _zcsend.EUNSUPPORTED:
        raise asyncio.SendfileNotAvailableError("this source cannot be sent without copying") from None
    if exc.errno >= 4000:
        raise error_for(code, exc.strerror, sent, total) from None
    raise exc


async def _run(hold, transfer, stepped=False):
    """Drives one core transfer to its end; returns its result code. On
    cancellation the transfer is stopped before CancelledError goes on.
    stepped: its inline step was taken already."""
    hold.transfer = transfer
    try:
        if INLINE_BUDGET > 0 and not stepped:
            rc = transfer.step(INLINE_BUDGET)
            if rc <= 0:
                return rc
        fut = _channel(hold.loop).submit(transfer)
        try:
            await fut
        except asyncio.CancelledError:
            transfer.cancel()  # no byte goes out once this returns
            try:
                await asyncio.shield(fut)  # the engine lets go of its fds
            except asyncio.CancelledError:
                pass
            raise
        return transfer.result
    finally:
        hold.transfer = None
        hold.sent += transfer.sent  # final: the transfer has ended or was stopped


def _finish(hold, rc, sent, total):
    if rc == 0:
        return
    if hold.closed:
        raise hold.closed_error()
    if rc == _zcsend.EUNSUPPORTED and sent == 0:
        raise asyncio.SendfileNotAvailableError("this pair of file and socket cannot go zero-copy")
    raise error_for(rc, _zcsend.strerror(rc), sent, total)


def _new_transfer(hold, fd, offset, count, fallback, head):
    try:
        transfer = _zcsend.Transfer(hold.sock_fd, fd, offset, -1 if count is None else count, fallback)
    except OSError as exc:
        _raise_core(exc, 0, count)
    if head is not None:
        transfer.set_head(head)
    return transfer


async def _send_chunked(hold, file, offset, count, head):
    """Sources with no fd: read bounded chunks, each sent by the core (the head
    with the first, or alone when there is nothing to read)."""
    if offset:
        file.seek(offset)
    while count is None or hold.sent < count:
        want = CHUNK if count is None else min(CHUNK, count - hold.sent)
        if isinstance(file, io.BytesIO):
            data = file.read(want)
        else:  # may block on disk: off the loop thread
            data = await hold.loop.run_in_executor(None, file.read, want)
        if not data and head is None:
            break
        transfer = _zcsend.Transfer.from_bytes(hold.sock_fd, data)
        if head is not None:
            transfer.set_head(head)
            head = None
        rc = await _run(hold, transfer)
        if rc != 0 or not data:
            return rc, hold.sent, count
    return 0, hold.sent, count


# ---- the write path: transports with no socket to send on (TLS) ----------------
# A TLS transport encrypts all of a write() on the loop thread, so what is
# written in one turn of the loop is how long everything else waits. All the
# transfers on a loop share WRITE_BUDGET per turn: one that has written in this
# turn and finds it spent waits for the next, so 50 TLS downloads hold the loop
# about as long per turn as 4 do; one that hasn't written yet always may, so a
# small response is never stuck behind big ones. (Yielding after every chunk
# instead costs a loop iteration per chunk: a third fewer requests/s at 100
# connections.) One transfer alone
# writes WRITE_CHUNK at a time (the fastest size: `python benchmarks/loops_tls.py
# --chunk-sweep`); many share the budget in chunks of no less than MIN_CHUNK,
# which bounds their memory. `python benchmarks/run.py` measures both sides.
# Read-ahead keeps the next chunks' disk reads in the engine while this one is
# encrypted, when they are not in the page cache.
WRITE_CHUNK = 256 << 10
WRITE_BUDGET = 2 << 20
MIN_CHUNK = 64 << 10  # smaller costs more per byte than it saves in latency
READ_AHEAD = 2


def _write_chunk(channel):
    share = WRITE_BUDGET // max(1, channel.writers)
    return max(MIN_CHUNK, min(WRITE_CHUNK, share - share % MIN_CHUNK))


class _ReadAhead:
    """Reads the next chunks of a regular file in order: from the page cache
    on the loop thread when it is all there, else in the engine thread, with
    READ_AHEAD chunks in flight."""

    def __init__(self, channel, fd, offset, total):
        self.channel, self.fd = channel, fd
        self.next = offset
        self.end = offset + total
        self.pending = collections.deque()

    def _fill(self):
        channel = self.channel
        while len(self.pending) < READ_AHEAD and self.next < self.end:
            n = min(_write_chunk(channel), self.end - self.next)
            job = _zcsend.Transfer.read(self.fd, self.next, n)
            self.pending.append((job, n, channel.submit(job)))
            self.next += n

    async def chunk(self):
        """The next chunk (a buffer); shorter than asked only where the file ended."""
        if not self.pending and self.next < self.end:
            n = min(_write_chunk(self.channel), self.end - self.next)
            # all in the page cache: read here, no disk wait and no thread handoff
            buf = _zcsend.read_cached(self.fd, self.next, n)
            if buf is not None:
                self.next += n
                return memoryview(buf), n
        self._fill()
        if not self.pending:
            return None, 0
        job, n, fut = self.pending.popleft()
        await fut
        if job.result != 0:
            return job.result, n  # a negative errno
        self._fill()
        return memoryview(job), n  # the view keeps the job's buffer alive


async def _read_other(hold, file, fd, want):
    """A chunk from a pipe or a read()-only object, read off the loop thread."""
    if fd is not None:
        return await hold.loop.run_in_executor(None, os.read, fd, want)
    if isinstance(file, io.BytesIO):
        return file.read(want)
    return await hold.loop.run_in_executor(None, file.read, want)


async def _send_by_write(hold, file, fd, offset, count, regular, head):
    """Writes the file through the transport in bounded chunks, after the head.
    Bytes count as sent once the transport has taken them; flow control is
    honoured."""
    channel = _channel(hold.loop)
    if regular:
        size = os.fstat(fd).st_size
        total = max(0, size - offset) if count is None else min(count, max(0, size - offset))
        reader = _ReadAhead(channel, fd, offset, total)
    else:
        total = count
        if fd is None and offset:
            file.seek(offset)
    _zcsend.host_begin()
    rc = -_errno.ECANCELED
    my_turn = -1
    channel.writers += 1
    try:
        if head is not None:
            if hold.ending():
                rc = -_errno.ECONNRESET
                return rc, hold.sent, total
            hold.write(head)  # the transport keeps the order
        while total is None or hold.sent < total:
            # the turn's budget is spent and this transfer had its share: next turn
            while channel.turn_bytes >= WRITE_BUDGET and my_turn == channel.turn:
                await asyncio.sleep(0)
            if not await hold.writable():
                rc = -_errno.ECONNRESET
                return rc, hold.sent, total
            if regular:
                data, asked = await reader.chunk()
                if data is None:
                    break
                if isinstance(data, int):
                    rc = data
                    return rc, hold.sent, total
                got = data.nbytes
                if got < asked:  # the file ended early: it shrank
                    if got:
                        hold.write(data)
                        hold.sent += got
                    rc = _zcsend.ETRUNCATED
                    return rc, hold.sent, total
            else:
                want = _write_chunk(channel)
                want = want if total is None else min(want, total - hold.sent)
                try:
                    data = await _read_other(hold, file, fd, want)
                except OSError as exc:
                    if hold.sent:  # after bytes went out: say how many
                        rc = -(exc.errno or _errno.EIO)
                        return rc, hold.sent, total
                    raise
                got = len(data)
                if not got:
                    break
            if hold.ending():
                rc = -_errno.ECONNRESET
                return rc, hold.sent, total
            hold.write(data)
            hold.sent += got
            channel.wrote(got)
            my_turn = channel.turn
        rc = 0 if not hold.ending() else -_errno.ECONNRESET
        return rc, hold.sent, total
    except OSError as exc:
        rc = -(exc.errno or _errno.EIO)
        raise
    except Exception:
        rc = -_errno.EIO
        raise
    finally:
        channel.writers -= 1
        _zcsend.host_end(rc, hold.sent)


async def sendfile(transport, file, offset=0, count=None, *, fallback=True, head=None):
    """Send ``count`` bytes of ``file`` from ``offset`` (all to EOF when None) on
    ``transport``, after the bytes ``head`` (an HTTP response head, say: on a
    socket they leave in the same packets as the file's first bytes); return the
    file bytes sent. See the README for the contract."""
    transport = resolve(transport)
    _check_params(file, offset, count)
    if head is not None:
        try:
            head = head if isinstance(head, bytes) else bytes(memoryview(head))
        except TypeError:
            raise TypeError(f"head must be a bytes-like object (got {type(head).__name__})") from None
        head = head or None
    loop = asyncio.get_running_loop()
    hold = hold_for(loop, transport)
    fd = _source_fd(file)
    regular = False
    if fd is not None:
        if not fallback or not hold.zero_copy:  # else the core sorts the source out itself
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)
            if not fallback and not (regular or stat.S_ISFIFO(st.st_mode)):
                raise asyncio.SendfileNotAvailableError("not a regular file or pipe")
    elif not fallback:
        raise asyncio.SendfileNotAvailableError("file has no file descriptor to send from")
    if not hold.zero_copy and not fallback:
        raise RuntimeError(f"fallback is disabled and native sendfile is not supported "
                           f"for transport {transport!r}")
    if regular or fd is None:
        seekable = regular or getattr(file, "seekable", lambda: False)()
    else:
        seekable = None  # the core's transfer will say
    stepped = False
    try:
        if hold.zero_copy and fd is not None and INLINE_BUDGET > 0 and hold.idle():
            # The inline step before taking the hold: most small files end in it,
            # and then swapping protocols and pausing reading would be wasted.
            # Nothing else runs on the loop until it returns, so nothing can
            # interleave with it; if it doesn't end, the hold takes over.
            transfer = _new_transfer(hold, fd, offset, count, fallback, head)
            seekable = transfer.seekable
            total = transfer.remaining
            rc = transfer.step(INLINE_BUDGET)
            if rc <= 0:
                hold.sent = transfer.sent
                _finish(hold, rc, hold.sent, total)
                return hold.sent
            stepped = True
        async with hold:
            if not hold.zero_copy:
                rc, sent, total = await _send_by_write(hold, file, fd, offset, count, regular, head)
            elif fd is not None:
                if not stepped:
                    transfer = _new_transfer(hold, fd, offset, count, fallback, head)
                    seekable = transfer.seekable
                    total = transfer.remaining
                rc = await _run(hold, transfer, stepped)
                sent = hold.sent
            else:
                rc, sent, total = await _send_chunked(hold, file, offset, count, head)
            _finish(hold, rc, sent, total)
            return sent
    finally:
        if not getattr(file, "closed", False):  # closed under us: nothing to place
            if seekable is None:  # ended before a transfer was made
                seekable = getattr(file, "seekable", lambda: False)()
            if seekable:
                file.seek(offset + hold.sent)


async def _sendfile_zc(self, file, offset=0, count=None, *, fallback=True, head=None):
    """``await transport.sendfile_zc(file, offset, count)``: zcsend.sendfile on this transport."""
    return await sendfile(self, file, offset, count, fallback=fallback, head=head)


def stats():
    """Process-wide counters: bytes sent zero-copy and by fallback; transfers
    started, completed, failed, cancelled, and active now."""
    return _zcsend.stats()


def backend():
    """The active backend's name: ``linux-sendfile`` or ``emulated``."""
    return _zcsend.backend()
