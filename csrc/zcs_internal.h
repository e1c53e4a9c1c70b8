/* Internal contract between the transfer state machine and the backends. */
#ifndef ZCS_INTERNAL_H
#define ZCS_INTERNAL_H

#include "zcsend.h"
#include <errno.h>
#include <sys/types.h>

/* A backend call moves at most len bytes from t's source to t->sock_fd and returns:
 *   > 0                 bytes delivered to the socket (the backend advances t->offset
 *                       for what it read; transfer.c accounts t->sent and t->remaining);
 *   0                   the source is at its end;
 *   ZCS__SOURCE_EMPTY   the source has nothing to read yet (a pipe);
 *   -errno              -EAGAIN when the socket would block, anything else is an error.
 * A backend never blocks and never raises SIGPIPE by itself (transfer.c guards the
 * calls that can). */
#define ZCS__SOURCE_EMPTY (-100000)
/* the TLS sink needs the socket readable before it can write (handshake) */
#define ZCS__WANT_READ (-100001)

/* the platform's zero-copy call (backend_linux.c or backend_bsd.c) */
ssize_t zcs__sendfile(zcs_transfer_t *t, size_t len);
/* splice(2) through a pipe; -ENOSYS where the platform has none */
ssize_t zcs__splice(zcs_transfer_t *t, size_t len);
void zcs__splice_close(zcs_transfer_t *t);
/* read/pread into t->buf, then send (backend_emulated.c) */
ssize_t zcs__emulated(zcs_transfer_t *t, size_t len);
/* send or write whatever is buffered in t->buf */
ssize_t zcs__flush_buffer(zcs_transfer_t *t);
/* n bytes of t->buf went out: the buffer starts over once it is empty */
static inline void zcs__buf_took(zcs_transfer_t *t, size_t n) {
  t->buf_pos += n;
  if (t->buf_pos == t->buf_len)
    t->buf_pos = t->buf_len = 0;
}
/* n more bytes of t were delivered (zero_copy: without entering user space).
   Only the thread stepping t writes these counts, but a host reads a job's
   from another without the job's lock (zcs_job_sent: the engine holds that
   lock for a whole step, a 2 MiB sendfile, and the reader may be an event
   loop): so each write is one atomic store, and sent_zero_copy's comes after
   sent's, released, for a reader that loads it first (acquire) never to see
   it past sent. */
static inline void zcs__count_sent(zcs_transfer_t *t, uint64_t n, int zero_copy) {
  __atomic_store_n(&t->sent, t->sent + n, __ATOMIC_RELAXED);
  if (zero_copy)
    __atomic_store_n(&t->sent_zero_copy, t->sent_zero_copy + n, __ATOMIC_RELEASE);
}
/* write(2) that can't raise SIGPIPE in this thread (a pipe whose reader went) */
ssize_t zcs__write_nosigpipe(int fd, const void *buf, size_t len);

/* TLS sink (sink_tls.c): SSL_write buf; SSL_sendfile on kernel TLS */
ssize_t zcs__tls_write(zcs_transfer_t *t, const void *buf, size_t len);
ssize_t zcs__ktls_sendfile(zcs_transfer_t *t, size_t len);
void zcs__tls_release(zcs_transfer_t *t);

extern const char zcs__platform_name[];

struct stat;
/* True when a regular file's st_size is not its length (procfs, sysfs...):
   its count can't be fixed from it. */
int zcs__size_unreliable(int fd, const struct stat *st);
/* The checks and the sizing zcs_transfer_init() and zcs_chunks_init() share
   (transfer.c): offset and count valid, fd readable and not a directory; in
   *remaining the count fixed now (zcs_source_count's rule), ZCS_ETRUNCATED for
   one past a sized file's end with ZCS_F_EXACT_COUNT. *st is fd's. */
int zcs__source_check(int fd, int64_t offset, int64_t count, int flags, struct stat *st,
                      int64_t *remaining, int *sized);
/* The process-wide counters (transfer.c): a transfer or chunk source started;
   ended with result (ZCS_DONE completed; ZCS_RUNNING or -ECANCELED cancelled;
   else failed); n bytes sent one way or the other. */
void zcs__stats_start(void);
void zcs__stats_end(int result);
void zcs__stats_bytes(int zero_copy, uint64_t n);
/* pread of all len bytes at offset only from the page cache (chunks.c): 1 when
   all were read; 0 when not (not cached, the file ends sooner, no RWF_NOWAIT
   here); or -errno. Never waits for the disk. */
int zcs__pread_nowait(int fd, void *buf, size_t len, int64_t offset);
/* Whether reading [off, off + len) of fd can't wait for the disk (transfer.c):
   cachestat(2) says every page is cached, and preadv2(RWF_NOWAIT) probes say
   none of them is still being read in (zcs_transfer_cached says how, and
   where cachestat can't answer). */
int zcs__range_ready(int fd, int64_t off, size_t len);
/* A running transfer that reads a file range of a known length: the only kind
   whose next bytes may have to come from the disk (the readiness checks' and
   the prefetch's guard). Read by the thread that steps t. */
static inline int zcs__reads_sized_file(const zcs_transfer_t *t) {
  return t->result == ZCS_RUNNING && t->sized && t->offset >= 0 && t->file_fd >= 0;
}
/* Of the next len bytes t sends from its file, how many it must still read at
   t->offset: remaining less what it holds read already (the emulation's buffer,
   a splice pipe, a rest zcs_transfer_ready read), at most len; 0: none. */
size_t zcs__transfer_unread(const zcs_transfer_t *t, size_t len);
/* The bytes a prefetch for steps of up to step bytes (0: the budget) reads from
   t->offset: two steps' worth, so a slow reader's next step finds its pages read
   in too, but no more than ZCS__PREFETCH_MAX unless one step is more; and no
   more than the transfer must still read from its file. 0: it reads none (no
   file, one of no known length, nothing left, or all of it held already). The
   engine's rule, and zcs_transfer_prefetch's. */
#define ZCS__PREFETCH_MAX ((size_t)32 << 20)
size_t zcs__prefetch_window(const zcs_transfer_t *t, size_t step);
/* Ends a running transfer with err now (its outcome is counted). */
void zcs__transfer_end(zcs_transfer_t *t, int err);

/* One step of a driven transfer, as the driver's own ev_io callback takes it
   (driver_ev.c): the engine installs a callback of its own on w->io that asks
   first whether the range is in the page cache, then calls this. Engine thread. */
struct zcs_ev_transfer;
void zcs__ev_step(struct zcs_ev_transfer *w);
/* Test hook (engine.c): while hold is set, a prefetch worker that took a
   prefetch off the queue waits before reading it (the rest stay queued; all
   count as in flight); for tests that must see a hot job finish, a cancel end
   or a fork happen while a cold one's prefetch is under way.
   The prefetch itself is untouched: it still reads the evicted file. */
void zcs__engine_hold_prefetch(int hold);

/* True when errno from a zero-copy call means "not for this pair of fds". */
static inline int zcs__is_fallback_errno(int err) {
  switch (err) {
  case -EINVAL: case -ENOSYS: case -EOVERFLOW: case -ENOTSOCK: case -EXDEV: case -EIO:
  case -EOPNOTSUPP:
    return 1;
  default:
    return 0;
  }
}

#endif
