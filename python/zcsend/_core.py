"""zcsend.sendfile(): validation, the handoff to the engine, and the contract
around it. Transfer logic lives in the C core; this file only arranges it."""
import asyncio
import collections
import io
import os
import select
import stat
import weakref

from . import _zcsend
from ._errors import SendfileError, error_for
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
    loop's reader resolves the futures of the transfers that ended.

    It holds its loop only through the futures of transfers in flight (they
    anchor the waiting tasks too: a task whose transport paused reading is
    referenced by nothing else), so a loop with none is freed, and its
    collection closes the channel. The loop's close() cancels every transfer
    still in the engine for it."""

    def __init__(self, loop):
        self.channel = _zcsend.Channel()
        self.jobs = {}  # id -> (the future, the Transfer), while in the engine
        self.writers = 0  # transfers on the write path (TLS) now: they share WRITE_BUDGET
        self.turn_bytes = 0  # written through transports in this turn of the loop
        self.turn = 0  # which turn that is
        loop.add_reader(self.channel.fileno(), self._ready)
        weakref.finalize(loop, _Channel._end, self.channel, self.jobs)
        _watch_close(loop, self)

    @staticmethod
    def _end(channel, jobs):
        for _, job in jobs.values():
            job.cancel()  # the engine writes no more for a loop that is gone
        jobs.clear()
        channel.close()

    def shutdown(self):
        """The loop closed: stop every transfer and let the channel go."""
        _Channel._end(self.channel, self.jobs)

    def forked(self):
        """In a child just forked: the engine and the eventfd are the parent's.
        Each transfer waiting here fails (the parent's goes on); the loop's
        reader is left alone (the selector is shared too), but its fd number
        now names an eventfd of the child's own."""
        try:  # the child's loop watches a quiet fd of its own from now on
            self.channel.after_fork()
        except OSError:
            pass
        jobs = list(self.jobs.values())
        self.jobs.clear()
        self._ready = _nothing
        for fut, job in jobs:
            if not fut.done():
                sent = job.sent
                fut.set_exception(SendfileError(
                    _errno.ECANCELED, f"the process forked: the transfer goes on in the parent "
                    f"only (after {sent} bytes)", sent))

    def wrote(self, n, loop):
        if not self.turn_bytes:  # the turn's first write: the count starts over next turn
            loop.call_soon(self._next_turn)
        self.turn_bytes += n

    def _next_turn(self):
        self.turn_bytes = 0
        self.turn += 1

    def _ready(self):
        jobs = self.jobs
        for tid in self.channel.drain():
            entry = jobs.pop(tid, None)
            if entry is not None and not entry[0].done():
                entry[0].set_result(None)

    def submit(self, transfer, loop):
        fut = loop.create_future()
        self.jobs[transfer.id] = (fut, transfer)
        try:
            transfer.submit(self.channel)
        except BaseException:
            del self.jobs[transfer.id]
            raise
        return fut


def _nothing():
    pass


def _watch_close(loop, channel):
    """loop.close() then shuts the channel down (where the loop takes attributes).
    The wrapper holds the loop weakly: a closed loop is still freed."""
    ref = weakref.ref(loop)
    try:
        prev = vars(loop).get("close")  # someone's wrapper already: chain it
    except TypeError:
        return  # no instance attributes: the loop's collection still cancels

    def close():
        lp = ref()
        if lp is None:
            # BaseEventLoop.__del__'s close() of a loop collected unclosed: its
            # weak reference is cleared by then (the loop's own objects free
            # their fds as they go); the engine lets go of its transfers
            channel.shutdown()
            return
        if prev is not None:
            prev()
        else:
            type(lp).close(lp)
        if lp.is_closed():
            channel.shutdown()
    loop.close = close


_channels = weakref.WeakKeyDictionary()


def _channel(loop):
    ch = _channels.get(loop)
    if ch is None:
        ch = _channels[loop] = _Channel(loop)
    return ch


def _after_fork_in_child():
    for ch in list(_channels.values()):
        ch.forked()
    _channels.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_params(file, offset, count):
    """asyncio's checks, with asyncio's types and messages, and a few more."""
    if (type(file) is io.BufferedReader and type(offset) is int and offset >= 0
            and (count is None or (type(count) is int and count > 0)) and not file.closed):
        return  # open(path, "rb") and plain ints: binary and readable by its type
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


def _own(file, hold):
    """hold.src_fd = a dup of the file's fd, its number read and dup'ed in one C
    call (no other thread between) and no await since the file was seen open: a
    close and reuse of the number can't change what is read."""
    try:
        _zcsend.dup_into(hold, "src_fd", file)
    except OSError as exc:
        raise SendfileError(exc.errno, f"{exc.strerror} (after {hold.sent} bytes)", hold.sent) from None


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
    base = transfer.sent  # the inline step's, in hold.sent already
    try:
        if hold.ending():  # closed while we waited: this transfer ends before a byte
            transfer.cancel(hold.loss_code())
            return transfer.step()
        if INLINE_BUDGET > 0 and not stepped and transfer.cached(INLINE_BUDGET):
            rc = transfer.step(INLINE_BUDGET)
            if rc <= 0:
                return rc
        try:
            fut = _channel(hold.loop).submit(transfer, hold.loop)
        except OSError as exc:
            # no fd left for the channel's eventfd or the engine's dups: submit
            # ended the transfer; where the channel failed first, end it here
            if transfer.result == _zcsend.RUNNING:
                transfer.cancel(-(exc.errno or _errno.EMFILE))
                transfer.step()  # a cancelled step ends it and touches no fd
            return transfer.result
        try:
            if not await hold.wait(fut, lambda: transfer.sent):
                transfer.cancel(-_errno.ETIMEDOUT)
                await asyncio.shield(fut)
        except asyncio.CancelledError:
            transfer.cancel()  # no byte goes out once this returns
            if not fut.done():
                try:
                    await asyncio.shield(fut)  # the engine lets go of its fds
                except (asyncio.CancelledError, Exception):
                    pass
            raise
        return transfer.result
    finally:
        hold.transfer = None
        hold.sent += transfer.sent - base  # final: the transfer has ended or was stopped


def _finish(hold, rc, sent, total):
    """Raises what the call ends with, if not success. A transport closed or
    lost during the call is never a success, even where every byte went out
    before: the caller learns the connection is gone."""
    if hold.ending():
        raise hold.closed_error()
    if rc == 0:
        return
    if rc == -_errno.ETIMEDOUT and hold.timed_out:
        raise hold.timeout_error(sent)
    if rc == _zcsend.EUNSUPPORTED and sent == 0:
        raise asyncio.SendfileNotAvailableError("this pair of file and socket cannot go zero-copy")
    raise error_for(rc, _zcsend.strerror(rc), sent, total)


def _new_transfer(sock_fd, fd, offset, count, fallback, head):
    try:
        transfer = _zcsend.Transfer(sock_fd, fd, offset, -1 if count is None else count, fallback)
    except OSError as exc:
        _raise_core(exc, 0, count)
    if head is not None:
        transfer.set_head(head)
    return transfer


def _source_error(exc, file, sent):
    """What a failed read() of the source ends the call with: a SendfileError
    that says how many bytes went out, whatever read() raised."""
    if getattr(file, "closed", False):
        code, why = _errno.EBADF, "the source was closed during sendfile"
    elif isinstance(exc, OSError):
        code, why = exc.errno or _errno.EIO, exc.strerror or str(exc)
    else:
        code, why = _errno.EIO, f"reading the source failed: {exc!r}"
    return SendfileError(code, f"{why} (after {sent} bytes)", sent)


def _clamp(data, want):
    """A read() that returned more than it was asked for gives only that much;
    one that returned no bytes (None from a non-blocking source, a str) is an
    error, which the caller gives the count of what went out."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"read() returned {type(data).__name__}, not bytes")
    return data[:want] if len(data) > want else data


def _start_at(file, offset):
    """An object that only read()s, read from offset: seeked there (at 0 it is
    read where it stands, as asyncio does). One that can't seek is refused, as
    the core refuses such an fd: an ignored offset would send other bytes."""
    if not offset:
        return
    seekable = getattr(file, "seekable", None)
    if not hasattr(file, "seek") or (seekable is not None and not seekable()):
        raise OSError(_errno.ESPIPE, f"Illegal seek: the source can't start at offset {offset}")
    file.seek(offset)


async def _send_chunked(hold, file, offset, count, head):
    """Sources with no fd: read bounded chunks, each sent by the core (the head
    with the first, or alone when there is nothing to read). The call counts as
    one transfer in the stats (a chunk source with no fd counts it, as on the
    write path), not one per chunk."""
    _start_at(file, offset)
    c = _zcsend.Chunks(-1, 0, -1 if count is None else count)
    return await _ended(c, _chunks_to_socket(hold, file, count, head)), hold.sent, count


async def _ended(c, run):
    """The result code of run (a coroutine), which also ends the chunk source c
    (its count in the stats): with that code, with an exception's errno (EIO
    for others), or as cancelled where it never ended (a cancel, a close)."""
    try:
        rc = await run
        c.end(rc)
        return rc
    except Exception as exc:
        c.end(-(exc.errno or _errno.EIO) if isinstance(exc, OSError) else -_errno.EIO)
        raise
    finally:
        c.close()


async def _chunks_to_socket(hold, file, count, head):
    while count is None or hold.sent < count:
        want = CHUNK if count is None else min(CHUNK, count - hold.sent)
        try:
            data = await _object_read(hold, file, want)
            if data is _TIMED_OUT:
                return -_errno.ETIMEDOUT
            data = _clamp(data, want)
        except Exception as exc:
            raise _source_error(exc, file, hold.sent) from exc
        if not data and head is None:
            break
        transfer = _zcsend.Transfer.from_bytes(hold.sock_fd, data, False)
        if head is not None:
            transfer.set_head(head)
            head = None
        rc = await _run(hold, transfer)
        if rc != 0 or not data:
            return rc
    return 0


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
    """Reads the next chunks of a sized regular file in order: from the page cache
    on the loop thread when it is all there, else in the engine thread, with
    READ_AHEAD chunks in flight. The chunk source c checks each one."""

    def __init__(self, channel, loop, fd, c):
        self.channel, self.loop, self.fd, self.c = channel, loop, fd, c
        self.next = c.offset
        self.end = c.offset + c.remaining
        self.pending = collections.deque()

    def _fill(self):
        channel = self.channel
        while len(self.pending) < READ_AHEAD and self.next < self.end:
            n = min(_write_chunk(channel), self.end - self.next)
            job = _zcsend.Transfer.read(self.fd, self.next, n)
            self.pending.append((job, n, channel.submit(job, self.loop)))
            self.next += n

    async def chunk(self):
        """The next chunk (a buffer) and c's verdict on it: 0, or ETRUNCATED where
        the file ended early; None and a negative errno where a read failed."""
        if not self.pending and self.next < self.end:
            # all in the page cache: read here, no disk wait and no thread handoff
            buf = self.c.read_cached(_write_chunk(self.channel))
            if buf is not None:
                self.next += len(buf)
                return memoryview(buf), 0
        self._fill()
        if not self.pending:
            return b"", 0
        job, n, fut = self.pending.popleft()
        await fut
        if job.result != 0:
            return None, job.result
        self._fill()
        data = memoryview(job)  # the view keeps the job's buffer alive
        return data, self.c.take(data.nbytes, n)


async def _read_other(hold, c, file, fd, want):
    """A chunk from a source that is not a sized regular file, off the loop
    thread (at c's offset where it has offsets, else where it stands), and c's
    verdict on it."""
    try:
        if fd is None:
            data = await _object_read(hold, file, want)
            if data is not _TIMED_OUT:
                data = _clamp(data, want)
        else:
            data = await _OwnRead(fd).run(hold, want, c.offset)
    except Exception as exc:
        raise _source_error(exc, file, hold.sent) from exc
    if data is _TIMED_OUT:
        return None, -_errno.ETIMEDOUT
    return data, c.take(len(data), want)


_TIMED_OUT = object()  # (a read() may itself return None)


def _buffered_pipe_reader(file):
    """Whether file is a buffered reader of a pipe (a socket, a FIFO): its
    buffer may hold its stream's next bytes, and its read() waits for all it
    was asked."""
    return isinstance(file, (io.BufferedReader, io.BufferedRandom)) and not file.seekable()


async def _object_read(hold, file, want):
    """At most want bytes of an object that only reads (or whose buffer holds
    its stream's next bytes), off the loop thread; _TIMED_OUT where timeout=
    passed first. A buffered reader of a pipe is read with read1() once its
    pipe is readable: its read() waits for all it was asked (256 KiB) or the
    pipe's end, in a thread no timeout or cancel can free, holding back bytes
    that came. (Bytes in its buffer alone, the pipe idle, wait for the pipe.)"""
    if isinstance(file, io.BytesIO):
        return file.read(want)
    if _buffered_pipe_reader(file):
        return await _OwnRead(file.fileno(), file.read1).run(hold, want, -1)
    return await _timed_read(hold, hold.loop.run_in_executor(None, file.read, want))


async def _timed_read(hold, fut):
    """A read's result, or _TIMED_OUT where the call's timeout= passed first (the
    hold says timed out; the read, begun in its thread, ends there unwaited).
    A cancel (or an error) while the hold polls leaves fut running too: its
    error then is nobody's either, never "Future exception was never retrieved"."""
    done = False
    try:
        done = await hold.wait(fut, lambda: hold.sent)
    finally:
        if not done:  # timed out, cancelled or failed: the read ends unwaited
            fut.add_done_callback(_retrieved)
    return fut.result() if done else _TIMED_OUT


def _retrieved(fut):
    if not fut.cancelled():
        fut.exception()  # a read nobody waits for any more: its error is nobody's


class _OwnRead:
    """A read of a pipe (or another fd without a size) in the default executor,
    on a dup of its own: a cancel can't stop a read its thread has begun, and
    the call's close of its fd would let the number name another pipe or socket
    by the time it ran (whose bytes it would take). A read its call gave up on
    before it began reads nothing (the pipe's next bytes are the caller's); one
    the executor dropped unrun closes the dup all the same: its done-callback
    where the loop still runs, else when the read is let go of (__del__)."""

    __slots__ = ("fd", "given_up", "reader")

    def __init__(self, fd, reader=None):
        """reader: the source object's read1, called once the dup polls readable
        (a buffered reader's buffer goes first), instead of a read of the dup."""
        self.fd = -1  # (a failed dup leaves nothing for __del__ to close)
        self.given_up = False
        self.reader = reader
        self.fd = os.dup(fd)

    async def run(self, hold, want, offset):
        """The bytes read, or _TIMED_OUT where the call's timeout= passed first."""
        try:
            fut = hold.loop.run_in_executor(None, self._read, want, offset)
        except BaseException:
            self._close()
            raise
        fut.add_done_callback(self._done)
        try:
            # shielded: the read, once begun, ends in its own time and closes the dup
            data = await _timed_read(hold, asyncio.shield(fut))
            if data is _TIMED_OUT:
                self.given_up = True  # (not begun: it won't)
            return data
        except BaseException as exc:  # cancelled, closed, interrupted: given up
            self.given_up = True  # (not begun: it won't)
            if isinstance(exc, asyncio.CancelledError) and fut.cancelled():
                # the executor dropped it (shutdown(cancel_futures=True))
                raise OSError(_errno.ECANCELED, "the executor dropped the read") from None
            raise

    def _read(self, want, offset):
        try:
            poll = select.poll()
            poll.register(self.fd, select.POLLIN)
            blocking = self.reader is not None and os.get_blocking(self.fd)
            while not self.given_up:
                # readable first, looked at every 50 ms: a read its call gave up
                # on (a timeout, a cancel) lets go of its thread then, instead of
                # holding it until the pipe's next bytes; a non-blocking pipe is
                # waited for so too, as the socket path's splice waits
                ready = poll.poll(50)
                if not ready or self.given_up:  # (given up during the poll: nothing read)
                    continue
                if self.reader is not None:
                    data = self.reader(want)
                    # from a non-blocking pipe, b"" is EAGAIN (another reader was
                    # first) unless the pipe's writers are gone
                    if data or blocking or ready[0][1] & select.POLLHUP:
                        return data
                    continue
                try:
                    return os.pread(self.fd, want, offset) if offset >= 0 else os.read(self.fd, want)
                except BlockingIOError:
                    continue  # another reader of the pipe took its bytes first
            return b""
        finally:
            self._close()

    def _done(self, fut):
        if fut.cancelled():  # never run: the executor let go of it
            self._close()
        else:
            fut.exception()  # retrieved: a given-up read's error is nobody's

    def _close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    __del__ = _close  # the dup is this object's alone: unreachable, nobody reads it


def _seekable_fd(fd):
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
        return True
    except OSError:
        return False


async def _write_chunks(hold, channel, c, reader, file, fd, head):
    """The head, then c's chunks through the transport; the result code."""
    if head is not None:
        if hold.ending():
            return hold.loss_code()
        hold.write(head)  # the transport keeps the order
    my_turn = -1
    while c.remaining:
        # the turn's budget is spent and this transfer had its share: next turn
        while channel.turn_bytes >= WRITE_BUDGET and my_turn == channel.turn:
            await asyncio.sleep(0)
        if not await hold.writable():
            return -_errno.ETIMEDOUT if hold.timed_out else hold.loss_code()
        if reader is not None:
            data, rc = await reader.chunk()
        else:
            data, rc = await _read_other(hold, c, file, fd, c.want(_write_chunk(channel)))
        if data is None:
            return rc  # the read failed
        got = len(data)
        if got:
            if hold.ending():
                return hold.loss_code()
            hold.write(data)
            hold.sent += got
            c.wrote(got)
            channel.wrote(got, hold.loop)
            my_turn = channel.turn
        if rc:
            return rc  # ETRUNCATED: the file shrank, and what it still had went out
        if not got:
            break  # the source's end
    if not await hold.flushed():
        return -_errno.ETIMEDOUT if hold.timed_out else hold.loss_code()
    return 0


async def _send_by_write(hold, file, fd, offset, count, head):
    """Writes the file through the transport in bounded chunks, after the head.
    Bytes count as sent once the transport has taken them; flow control is
    honoured; success waits until the transport has passed them all on. The
    core's chunk source sizes the source by the transfer's rule (so a source
    gives the same result here as on a socket), checks every chunk against the
    range and counts the transfer in the stats; the reads stay off the loop."""
    if fd is None:
        _start_at(file, offset)
    try:
        c = _zcsend.Chunks(-1 if fd is None else fd, offset, -1 if count is None else count)
    except OSError as exc:
        _raise_core(exc, 0, count)  # refused before a byte: what a socket's Transfer() raises
    total = None if c.remaining < 0 else c.remaining
    channel = _channel(hold.loop)
    reader = _ReadAhead(channel, hold.loop, fd, c) if c.sized else None
    channel.writers += 1
    try:
        return await _ended(c, _write_chunks(hold, channel, c, reader, file, fd, head)), hold.sent, total
    finally:
        channel.writers -= 1


_MAX_COUNT = (1 << 63) - 1


def _check_timeout(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a positive number of seconds or None (got {timeout!r})")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None (got {timeout!r})")
    return timeout


async def sendfile(transport, file, offset=0, count=None, *, fallback=True, head=None, timeout=None):
    """Send ``count`` bytes of ``file`` from ``offset`` (all to EOF when None) on
    ``transport``, after the bytes ``head`` (an HTTP response head, say: on a
    socket they leave in the same packets as the file's first bytes); return the
    file bytes sent. ``timeout``: seconds in which no byte goes out before the
    call ends with SendfileConnectionError(ETIMEDOUT). See the README for the
    contract."""
    if timeout is not None:
        timeout = _check_timeout(timeout)
    # the common case whole in one C call: a transport or StreamWriter asyncio or
    # uvloop made, idle; open(path, "rb"); plain ints. It ends there (an int: all
    # sent), or nothing was done (None: the checks below say why, or send), or
    # its inline step went on or failed (r: picked up below, the checks passing)
    r = _zcsend.fast_send(transport, file, offset, count, fallback, head, INLINE_BUDGET)
    if type(r) is int:
        return r
    transport = resolve(transport)
    if r is None:  # (else fast_send checked them all, and stepped: another thread
        # may have closed the file since, during a step that let go of the GIL;
        # the transfer goes on over its dups of both)
        _check_params(file, offset, count)
    if count is not None and count > _MAX_COUNT:
        count = _MAX_COUNT  # more than any file holds: asyncio takes it too
    if head is not None:
        try:
            head = head if isinstance(head, bytes) else bytes(memoryview(head))
        except TypeError:
            raise TypeError(f"head must be a bytes-like object (got {type(head).__name__})") from None
        head = head or None
    loop = asyncio.get_running_loop()
    hold = hold_for(loop, transport)
    hold.timeout = timeout
    fd = _source_fd(file) if r is None else -1  # -1: fast_send's, its transfer holds a dup
    if fd is not None and fd != -1 and isinstance(file, io.BufferedIOBase):
        if _buffered_pipe_reader(file):
            # its buffer may hold the stream's next bytes, which the fd would
            # skip. Read through the object, buffer first
            if not fallback:
                raise asyncio.SendfileNotAvailableError(
                    "a buffered reader of a pipe may hold its next bytes: pass its .raw to send zero-copy")
            fd = None
        elif not isinstance(file, (io.BufferedReader, io.BufferedRandom)):
            # a stream over another (gzip, bz2, lzma): its fileno() is the
            # compressed file's, not where its read() gets its bytes
            if not fallback:
                raise asyncio.SendfileNotAvailableError(
                    f"{type(file).__name__}.fileno() is not where its read() gets its bytes")
            fd = None
    regular = False
    if fd is not None:
        if not fallback:
            st = os.fstat(fd)
            regular = stat.S_ISREG(st.st_mode)
            if not (regular or stat.S_ISFIFO(st.st_mode)):
                raise asyncio.SendfileNotAvailableError("not a regular file or pipe")
    elif not fallback:
        raise asyncio.SendfileNotAvailableError("file has no file descriptor to send from")
    if not hold.zero_copy and not fallback:
        raise RuntimeError(f"fallback is disabled and native sendfile is not supported "
                           f"for transport {transport!r}")
    if regular or fd is None:
        seekable = regular or getattr(file, "seekable", lambda: False)()
    else:
        seekable = None  # the core's transfer, or the fd, will say
    stepped = False
    if r is None and hold.zero_copy and fd is not None and INLINE_BUDGET > 0 and hold.idle():
        # The inline step before taking the hold, in one C call: most small files
        # end in it, and then swapping protocols and pausing reading would be
        # wasted. Nothing else runs on the loop until it returns, so nothing can
        # interleave with it and both fds are still the caller's; if it doesn't
        # end, the transfer goes on over dups. A range not in the page cache is
        # not stepped here (the disk would hold up the loop: the engine reads it).
        try:
            # readable False: the core looks at the fd (one fcntl). The file
            # object can't vouch for it: FileIO believes its mode string (open(fd,
            # "rb") of an O_WRONLY fd is "readable"), and a claim the fd belies
            # would fail at the first read, after the head went out
            # the objects, not the numbers: send_now reads both just before the
            # step, so no other thread's close and reuse can come between
            r = _zcsend.send_now(hold.raw_sock, file, offset, count, fallback, head,
                                 INLINE_BUDGET, False)
        except OSError as exc:
            r = exc
        if type(r) is tuple and r[0] == 0:
            # all sent. A step that let go of the GIL (over 64 KiB: on dups) may
            # have let another thread close the file meanwhile: no position then
            if r[3]:
                _seek_unless_closed(file, offset + r[1])
            return r[1]
    try:
        if r is not None:
            if type(r) is tuple:  # it ended with an error
                rc, hold.sent, total, seekable = r
                _finish(hold, rc, hold.sent, total)
            if isinstance(r, OSError):
                _raise_core(r, 0, count)
            transfer = r
            seekable = transfer.seekable
            total = transfer.remaining
            if total >= 0:
                total += transfer.sent
            hold.sent = transfer.sent
            stepped = True
        try:
            if fd is not None:
                # the inline step's transfer goes on over dups it took while the
                # numbers were provably the caller's (the GIL held since the look
                # at them): another thread may have closed and reused them since
                # (stored in the hold by the C call itself: not even a signal
                # handler's exception can come between taking and keeping them)
                if not (stepped and transfer.take_fds_into(hold)):
                    _own(file, hold)
                fd = hold.src_fd  # from here on, our dup (the finally closes it)
                if seekable is None:
                    seekable = _seekable_fd(fd)
            async with hold:
                if not hold.zero_copy:
                    rc, sent, total = await _send_by_write(hold, file, fd, offset, count, head)
                elif fd is not None:
                    if stepped:
                        transfer.use_fds(hold.sock_fd, fd)
                    else:
                        transfer = _new_transfer(hold.sock_fd, fd, offset, count, fallback, head)
                        total = transfer.remaining
                    rc = await _run(hold, transfer, stepped)
                    sent = hold.sent
                else:
                    rc, sent, total = await _send_chunked(hold, file, offset, count, head)
                _finish(hold, rc, sent, total)
                return sent
        except SendfileError as exc:
            if stepped and transfer.result == 1:  # it never went on (no fd for a dup, a
                transfer.cancel(-exc.errno)  # timeout in the drain): it failed with that,
                transfer.step()  # now (a cancelled step ends it and touches no fd)
            raise
    finally:
        if hold.src_fd >= 0 and not hold.forked():  # a child may have reused the number
            os.close(hold.src_fd)
            hold.src_fd = -1
        if hold.pid is None and hold.sock_fd >= 0:  # handed over, never taken: ours
            os.close(hold.sock_fd)
            hold.sock_fd = -1
        # the position is offset + bytes sent; not where the file was closed
        # under us, nor from a forked child (it shares the parent's position)
        if not getattr(file, "closed", False) and not hold.forked():
            if seekable is None:  # ended before a transfer was made
                seekable = getattr(file, "seekable", lambda: False)()
            if seekable:
                _seek_unless_closed(file, offset + hold.sent)


def _seek_unless_closed(file, pos):
    """file.seek(pos), unless another thread closed the file (before the seek,
    or during it: the send's result stands, there is no position to set)."""
    seek = getattr(file, "seek", None)
    if seek is None or getattr(file, "closed", False):
        return  # (an object with fileno() and no seek() has no position to set)
    try:
        seek(pos)
    except ValueError:
        if not getattr(file, "closed", False):
            raise


async def _sendfile_zc(self, file, offset=0, count=None, *, fallback=True, head=None, timeout=None):
    """``await transport.sendfile_zc(file, offset, count)``: zcsend.sendfile on this transport."""
    return await sendfile(self, file, offset, count, fallback=fallback, head=head, timeout=timeout)


def stats():
    """Process-wide counters: bytes sent zero-copy and by fallback; transfers
    started, completed, failed, cancelled, and active now."""
    return _zcsend.stats()


def backend():
    """The active backend's name: ``linux-sendfile`` or ``emulated``."""
    return _zcsend.backend()
