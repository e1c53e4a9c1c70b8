/* The transfer state machine: one object per transfer, no event loop inside.
 * A step moves bytes until the socket would block, the budget is spent, the
 * transfer ends, or an error; the caller waits on what the step asked for. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#ifdef __linux__
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#endif
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include "zcs_internal.h"

/* Private members grow into zcs__reserved, never past it: sizeof(zcs_transfer_t)
   is ABI for hosts that embed one. */
_Static_assert(sizeof(zcs_transfer_t) ==
                   offsetof(zcs_transfer_t, zcs__reserved) + sizeof(((zcs_transfer_t *)0)->zcs__reserved),
               "zcs_transfer_t's private members outgrew zcs__reserved");

/* ---- version ---------------------------------------------------------------- */
const char *zcs_version(void) { return ZCS_VERSION; }
unsigned int zcs_version_hex(void) { return ZCS_VERSION_HEX; }

/* ---- process-wide statistics ---------------------------------------------- */
static zcs_stats_t stats;
#define STAT_ADD(field, n) __atomic_add_fetch(&stats.field, (n), __ATOMIC_RELAXED)

void zcs_stats(zcs_stats_t *out) {
  out->bytes_zero_copy = __atomic_load_n(&stats.bytes_zero_copy, __ATOMIC_RELAXED);
  out->bytes_fallback = __atomic_load_n(&stats.bytes_fallback, __ATOMIC_RELAXED);
  out->started = __atomic_load_n(&stats.started, __ATOMIC_RELAXED);
  out->completed = __atomic_load_n(&stats.completed, __ATOMIC_RELAXED);
  out->failed = __atomic_load_n(&stats.failed, __ATOMIC_RELAXED);
  out->cancelled = __atomic_load_n(&stats.cancelled, __ATOMIC_RELAXED);
  out->active = __atomic_load_n(&stats.active, __ATOMIC_RELAXED);
}

/* For the other counted things (chunks.c's chunk sources): the same rules. */
void zcs__stats_start(void) {
  STAT_ADD(started, 1);
  STAT_ADD(active, 1);
}

void zcs__stats_end(int result) {
  if (result == ZCS_DONE)
    STAT_ADD(completed, 1);
  else if (result == ZCS_RUNNING || result == -ECANCELED)
    STAT_ADD(cancelled, 1);
  else
    STAT_ADD(failed, 1);
  __atomic_sub_fetch(&stats.active, 1, __ATOMIC_RELAXED);
}

void zcs__stats_bytes(int zero_copy, uint64_t n) {
  if (zero_copy)
    STAT_ADD(bytes_zero_copy, n);
  else
    STAT_ADD(bytes_fallback, n);
}

/* ---- backend selection ----------------------------------------------------- */
static pthread_once_t backend_once = PTHREAD_ONCE_INIT;
static int backend_forced_emulated;
static int backend_error;

static void backend_read_env(void) {
  const char *v = getenv("ZCSEND_BACKEND");
  if (!v || !*v || !strcmp(v, "auto"))
    backend_forced_emulated = 0;
  else if (!strcmp(v, "emulated"))
    backend_forced_emulated = 1;
  else
    backend_error = ZCS_EBACKEND;
}

int zcs_backend_init(void) {
  pthread_once(&backend_once, backend_read_env);
  return backend_error;
}

const char *zcs_backend_name(void) {
  zcs_backend_init();
  return backend_forced_emulated ? "emulated" : zcs__platform_name;
}

const char *zcs_backend_kind_name(int backend) {
  switch (backend) {
  case ZCS_BACKEND_SENDFILE: return "sendfile";
  case ZCS_BACKEND_SPLICE: return "splice";
  case ZCS_BACKEND_EMULATED: return "emulated";
  case ZCS_BACKEND_MEMORY: return "memory";
  case ZCS_BACKEND_TLS: return "tls";
  case ZCS_BACKEND_KTLS: return "ktls";
  default: return "unknown";
  }
}

/* ---- setup ----------------------------------------------------------------- */
static int init_common(zcs_transfer_t *t, int sock_fd, int flags) {
  memset(t, 0, sizeof *t);
  t->sock_fd = sock_fd;
  t->file_fd = -1;
  t->flags = flags;
  t->budget = ZCS_DEFAULT_BUDGET;
  t->buf_cap = ZCS_DEFAULT_BUFFER;
  t->pipe_fds[0] = t->pipe_fds[1] = -1;
  t->result = ZCS_RUNNING;
  int rc = zcs_backend_init();
  if (rc < 0)
    return rc;
  if (flags & ZCS_F_SOCK_NONBLOCKING)
    return 0;
  int fl = fcntl(sock_fd, F_GETFL);
  if (fl < 0)
    return -errno;
  if (!(fl & O_NONBLOCK))
    return ZCS_EBLOCKING;
  return 0;
}

static void count_start(zcs_transfer_t *t) {
  t->counted = 1;
  zcs__stats_start();
}

/* A regular file's count is fixed from its size, so a file that shrinks later
   is an error, not EOF; where the size is not the length, the count stands. */
static int64_t fixed_count(int fd, const struct stat *st, int64_t offset, int64_t count,
                           int *sized) {
  *sized = S_ISREG(st->st_mode) && !zcs__size_unreliable(fd, st);
  if (!*sized)
    return count;
  int64_t avail = offset >= st->st_size ? 0 : st->st_size - offset;
  return count == ZCS_COUNT_TO_EOF || count > avail ? avail : count;
}

int64_t zcs_source_count(int fd, int64_t offset, int64_t count, int *sized) {
  struct stat st;
  if (offset < 0 || (count < 0 && count != ZCS_COUNT_TO_EOF))
    return -EINVAL;
  if (fstat(fd, &st) < 0)
    return -errno;
  return fixed_count(fd, &st, offset, count, sized);
}

/* zcs__source_check, where have_st says st holds fd's fstat already */
static int source_check(int fd, int64_t offset, int64_t count, int flags, struct stat *st,
                        int have_st, int64_t *remaining, int *sized) {
  *sized = 0;
  if (offset < 0 || (count < 0 && count != ZCS_COUNT_TO_EOF))
    return -EINVAL;
  if (!have_st && fstat(fd, st) < 0)
    return -errno;
  if (S_ISDIR(st->st_mode))
    return -EISDIR;
  if (!(flags & ZCS_F_SOURCE_READABLE)) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
      return -errno;
    if ((fl & O_ACCMODE) == O_WRONLY)
      return -EBADF; /* what read(2) would say */
  }
  *remaining = count;
  if (S_ISREG(st->st_mode)) {
    *remaining = fixed_count(fd, st, offset, count, sized);
    if ((flags & ZCS_F_EXACT_COUNT) && *sized && count != ZCS_COUNT_TO_EOF && *remaining < count)
      return ZCS_ETRUNCATED; /* never counted as started: nothing was asked of the socket */
  }
  return 0;
}

int zcs__source_check(int fd, int64_t offset, int64_t count, int flags, struct stat *st,
                      int64_t *remaining, int *sized) {
  return source_check(fd, offset, count, flags, st, 0, remaining, sized);
}

/* zcs_transfer_init's part after init_common: st holds file_fd's fstat where have_st */
static int init_source(zcs_transfer_t *t, int file_fd, int64_t offset, int64_t count, int flags,
                       struct stat *st, int have_st) {
  int rc = source_check(file_fd, offset, count, flags, st, have_st, &t->remaining, &t->sized);
  if (rc < 0)
    return rc;
  t->file_fd = file_fd;
  t->start = t->offset = offset;
  if (S_ISREG(st->st_mode)) {
    t->backend = backend_forced_emulated ? ZCS_BACKEND_EMULATED : ZCS_BACKEND_SENDFILE;
  } else {
    if (lseek(file_fd, 0, SEEK_CUR) < 0) {
      /* pipes, sockets, ttys: read where the source stands. An offset there
         would be ignored, and bytes not the ones asked for sent: refused */
      if (offset || (flags & ZCS_F_SEEKABLE_ONLY))
        return -ESPIPE;
      t->offset = -1;
    }
    if (S_ISFIFO(st->st_mode))
      t->backend = backend_forced_emulated ? ZCS_BACKEND_EMULATED : ZCS_BACKEND_SPLICE;
    else if (flags & ZCS_F_NO_FALLBACK)
      return ZCS_EUNSUPPORTED;
    else
      t->backend = ZCS_BACKEND_EMULATED;
  }
  count_start(t);
  return 0;
}

int zcs_transfer_init(zcs_transfer_t *t, int sock_fd, int file_fd, int64_t offset,
                      int64_t count, int flags) {
  int rc = init_common(t, sock_fd, flags);
  if (rc < 0)
    return rc;
  struct stat st;
  return init_source(t, file_fd, offset, count, flags, &st, 0);
}

int zcs_transfer_init_memory(zcs_transfer_t *t, int sock_fd, const void *data, size_t len,
                             int flags) {
  int rc = init_common(t, sock_fd, flags);
  if (rc < 0)
    return rc;
  if (len) {
    t->buf = malloc(len);
    if (!t->buf)
      return -ENOMEM;
    memcpy(t->buf, data, len);
  }
  t->buf_cap = t->buf_len = len;
  t->offset = -1;
  t->remaining = (int64_t)len;
  t->backend = ZCS_BACKEND_MEMORY;
  if (!(flags & ZCS_F_UNCOUNTED))
    count_start(t);
  return 0;
}

/* ---- SIGPIPE ---------------------------------------------------------------
 * sendfile/splice/write to a socket whose peer has gone raise SIGPIPE, which
 * kills a host that has not ignored it. We block it in this thread for the
 * step and consume what the step raised; the process's dispositions are
 * never touched. */
static int sigpipe_block(sigset_t *old) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  return pthread_sigmask(SIG_BLOCK, &set, old) == 0;
}

/* Whether SIGPIPE needs masking for a step: always, unless the caller asked
   to look first (ZCS_F_SIGPIPE_IF_DEFAULT) and it is ignored. */
static int sigpipe_needs_mask(int flags) {
  if (flags & ZCS_F_SIGPIPE_BLOCKED)
    return 0;
  if (!(flags & ZCS_F_SIGPIPE_IF_DEFAULT))
    return 1;
  struct sigaction sa;
  return sigaction(SIGPIPE, NULL, &sa) != 0 || sa.sa_handler != SIG_IGN;
}

static void sigpipe_consume(void) {
  sigset_t set, pending;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
    struct timespec zero = {0, 0};
    while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR) {
    }
  }
}

ssize_t zcs__write_nosigpipe(int fd, const void *buf, size_t len) {
  sigset_t old;
  int masked = sigpipe_block(&old);
  ssize_t n = write(fd, buf, len);
  int err = errno;
  if (n < 0 && err == EPIPE)
    sigpipe_consume();
  if (masked)
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = err;
  return n;
}

/* ---- the step -------------------------------------------------------------- */
/* Records how a transfer ended, once: when it ends, or at release for one that
   never did (so the counters don't wait for the owner to free it). */
static void record_outcome(zcs_transfer_t *t) {
  if (!t->counted)
    return;
  t->counted = 0;
  zcs__stats_end(t->result);
}

/* released: a host that reads the outcome from another thread (zcs_job_result,
   an acquire load) sees every count stored before it final */
static int finish(zcs_transfer_t *t, int result) {
  __atomic_store_n(&t->result, result, __ATOMIC_RELEASE);
  record_outcome(t);
  return result;
}

static ssize_t call_backend(zcs_transfer_t *t, size_t len) {
  switch (t->backend) {
  case ZCS_BACKEND_SENDFILE: return zcs__sendfile(t, len);
  case ZCS_BACKEND_SPLICE: return zcs__splice(t, len);
  case ZCS_BACKEND_KTLS: return zcs__ktls_sendfile(t, len);
  default: return zcs__emulated(t, len);
  }
}

#ifndef MSG_MORE
#define MSG_MORE 0
#endif

/* The head goes first; MSG_MORE holds it for the file's first bytes only when
 * some are known to follow (else it would wait for a write that never comes). */
static int send_head(zcs_transfer_t *t) {
  int more = t->remaining > 0 ? MSG_MORE : 0;
  while (t->head_pos < t->head_len) {
    ssize_t n = send(t->sock_fd, t->head + t->head_pos, t->head_len - t->head_pos,
                     MSG_NOSIGNAL | MSG_DONTWAIT | more);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return t->blocked = 1, ZCS_WANT_WRITE;
      return finish(t, -errno);
    }
    t->head_pos += (size_t)n;
  }
  return 0;
}

int zcs_transfer_set_head(zcs_transfer_t *t, const void *data, size_t len) {
  /* head_len: a head sent whole at start (zcs_transfer_start) keeps no copy */
  if (!data || len == 0 || t->head || t->head_len || t->result != ZCS_RUNNING || t->sent)
    return -EINVAL;
  if (t->ssl)
    return -EOPNOTSUPP;
  if (!(t->head = malloc(len)))
    return -ENOMEM;
  memcpy(t->head, data, len);
  t->head_len = len;
  t->head_pos = 0;
  return 0;
}

size_t zcs_transfer_head_sent(const zcs_transfer_t *t) { return t->head_pos; }

/* bytes a sendfile transfer read ahead (zcs_transfer_ready) go before the
   backend's, and count as copied */
static int holds_copy(const zcs_transfer_t *t) {
  return t->buf_pos < t->buf_len && t->backend == ZCS_BACKEND_SENDFILE;
}

/* bytes that go before the file's next ones and that peek can't give: a head,
   the emulation's buffer, a splice pipe's */
static int held_elsewhere(const zcs_transfer_t *t) {
  return t->head_pos < t->head_len || (t->buf_pos < t->buf_len && !holds_copy(t)) || t->pipe_len;
}

/* a head (may be empty) and data in one sendmsg, never blocking, never raising
   SIGPIPE: bytes sent, or -1 with errno */
static ssize_t send_pair(int fd, const void *a, size_t alen, const void *b, size_t blen) {
  struct iovec v[2] = {{(void *)a, alen}, {(void *)b, blen}};
  struct msghdr m = {.msg_iov = alen ? v : v + 1, .msg_iovlen = alen ? 2 : 1};
  ssize_t n;
  while ((n = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT)) < 0 && errno == EINTR) {
  }
  return n;
}

/* file bytes that went as a copy (a held buffer's, or a start's) */
static void count_copied(zcs_transfer_t *t, size_t n) {
  zcs__count_sent(t, n, 0);
  t->remaining -= (int64_t)n;
  STAT_ADD(bytes_fallback, n);
}

/* the head and the held bytes in one sendmsg: the head's rest, then as many
   of them as the socket takes */
static int send_head_and_held(zcs_transfer_t *t) {
  size_t left = t->head_len - t->head_pos;
  ssize_t n = send_pair(t->sock_fd, t->head + t->head_pos, left, t->buf + t->buf_pos,
                        t->buf_len - t->buf_pos);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return t->blocked = 1, ZCS_WANT_WRITE;
    return finish(t, -errno);
  }
  size_t h = (size_t)n < left ? (size_t)n : left;
  t->head_pos += h;
  size_t b = (size_t)n - h;
  if (b) {
    zcs__buf_took(t, b);
    count_copied(t, b);
  }
  return t->head_pos < t->head_len ? (t->blocked = 1, ZCS_WANT_WRITE) : 0;
}

static int run(zcs_transfer_t *t) {
  size_t budget = t->budget ? t->budget : ZCS_DEFAULT_BUDGET;
  if (t->head_pos < t->head_len) {
    int rc = holds_copy(t) && !t->ssl ? send_head_and_held(t) : send_head(t);
    if (rc)
      return rc;
  }
  for (;;) {
    if (t->remaining == 0)
      return finish(t, ZCS_DONE);
    if (budget == 0)
      return ZCS_WANT_WRITE; /* fairness: let the loop serve others, then come back */
    size_t len = budget;
    if (t->remaining > 0 && (uint64_t)t->remaining < len)
      len = (size_t)t->remaining;
    int copied = holds_copy(t);
    ssize_t n = copied ? zcs__flush_buffer(t) : call_backend(t, len);
    if (n > 0) {
      int zc = !copied && (t->backend == ZCS_BACKEND_SENDFILE || t->backend == ZCS_BACKEND_SPLICE ||
                           t->backend == ZCS_BACKEND_KTLS);
      zcs__count_sent(t, (uint64_t)n, zc);
      if (zc) {
        STAT_ADD(bytes_zero_copy, (uint64_t)n);
      } else {
        STAT_ADD(bytes_fallback, (uint64_t)n);
      }
      if (t->remaining > 0)
        t->remaining -= n;
      budget = (size_t)n >= budget ? 0 : budget - (size_t)n;
      continue;
    }
    if (n == 0) /* the source ended: short of a count fixed from its size, it shrank */
      return finish(t, t->remaining > 0 && t->sized ? ZCS_ETRUNCATED : ZCS_DONE);
    if (n == -EAGAIN)
      return t->blocked = 1, ZCS_WANT_WRITE;
    if (n == ZCS__SOURCE_EMPTY)
      return ZCS_WANT_SOURCE;
    if (n == ZCS__WANT_READ)
      return ZCS_WANT_READ;
    if (n == -EINTR)
      continue;
    if ((t->backend == ZCS_BACKEND_SENDFILE || t->backend == ZCS_BACKEND_SPLICE ||
         t->backend == ZCS_BACKEND_KTLS) &&
        zcs__is_fallback_errno((int)n) && t->pipe_len == 0) {
      /* this pair of fds can't go zero-copy: copy instead, from where we are */
      if (t->flags & ZCS_F_NO_FALLBACK)
        return finish(t, ZCS_EUNSUPPORTED);
      t->backend = t->ssl ? ZCS_BACKEND_TLS : ZCS_BACKEND_EMULATED;
      continue;
    }
    return finish(t, (int)n);
  }
}

int zcs_transfer_step(zcs_transfer_t *t) {
  if (t->result != ZCS_RUNNING)
    return t->result;
  if (t->cancelled)
    return finish(t, t->cancelled);
  sigset_t old;
  /* a step that only sends bytes it holds sends with MSG_NOSIGNAL (a pipe as
     the destination: zcs__write_nosigpipe): no mask, no look at SIGPIPE */
  int copy_only = holds_copy(t) && !t->ssl && t->remaining > 0 &&
                  (uint64_t)t->remaining <= t->buf_len - t->buf_pos;
  int masked = !copy_only && sigpipe_needs_mask(t->flags) && sigpipe_block(&old);
  t->blocked = 0;
  int rc = run(t);
  if (rc == -EPIPE)
    sigpipe_consume();
  if (masked)
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

int zcs_transfer_wait_fd(const zcs_transfer_t *t, int step_result, int *events) {
  switch (step_result) {
  case ZCS_WANT_WRITE: *events = ZCS_WAIT_WRITE; return t->sock_fd;
  case ZCS_WANT_READ: *events = ZCS_WAIT_READ; return t->sock_fd;
  case ZCS_WANT_SOURCE: *events = ZCS_WAIT_READ; return t->file_fd;
  default: *events = 0; return -1;
  }
}

ssize_t zcs_transfer_peek(zcs_transfer_t *t, void *buf, size_t len) {
  if (t->result != ZCS_RUNNING || t->remaining == 0)
    return 0;
  if (t->ssl)
    return -EOPNOTSUPP;
  if (t->offset < 0 || t->file_fd < 0)
    return -ESPIPE;
  if (held_elsewhere(t))
    return -EAGAIN; /* bytes of its own go first */
  if (t->remaining > 0 && (uint64_t)t->remaining < len)
    len = (size_t)t->remaining;
  if (holds_copy(t)) { /* the rest, read already (zcs_transfer_ready): the next bytes */
    if (len > t->buf_len - t->buf_pos)
      len = t->buf_len - t->buf_pos;
    memcpy(buf, t->buf + t->buf_pos, len);
    return (ssize_t)len;
  }
  ssize_t n;
  while ((n = pread(t->file_fd, buf, len, (off_t)t->offset)) < 0 && errno == EINTR) {
  }
  return n < 0 ? -errno : n;
}

int zcs_transfer_advance(zcs_transfer_t *t, size_t n) {
  if (t->result != ZCS_RUNNING || (t->remaining >= 0 && (uint64_t)t->remaining < n))
    return -EINVAL;
  if (held_elsewhere(t))
    return -EAGAIN; /* no peek gave these: the transfer's own bytes go first */
  if (holds_copy(t)) {
    if (n > t->buf_len - t->buf_pos)
      return -EINVAL;
    zcs__buf_took(t, n);
  } else {
    t->offset += (int64_t)n;
  }
  zcs__count_sent(t, n, 0);
  STAT_ADD(bytes_fallback, n);
  if (t->remaining > 0)
    t->remaining -= (int64_t)n;
  return 0;
}

#ifdef __linux__
#ifndef __NR_cachestat
#define __NR_cachestat 451 /* the same on every architecture (the unified table) */
#endif
struct zcs__cachestat_range { uint64_t off, len; };
struct zcs__cachestat { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; };

/* cachestat(2) answers for a whole range, but counts a page whose read is still
   under way as cached: readahead the kernel started (8 MiB ahead on this
   machine's disk) leaves such pages past every prefetch and every step, and a
   step reaching one waits for the disk (measured in the engine: steps of up to
   368 ms with reads capped at 100 MB/s; on an event thread a request for a file
   another transfer is reading in would wait so). So the first and the last byte
   of every PROBE_EVERY bytes of the range are also read with
   preadv2(RWF_NOWAIT), which fails with EAGAIN on a page not yet read: a window
   of reads in flight that covers either end of a chunk is seen (one strictly
   inside a chunk, shorter than it, is not: readahead windows are larger). */
#define PROBE_EVERY ((size_t)256 << 10)

/* 1: the page holding byte at is read in (or at is past the end: the step
   meets that); 0: it is not, or still being read; -1: this file can't be
   probed (RWF_NOWAIT refused: tmpfs here, some other filesystems), asked anew
   each time, as it is a property of the file, not of the process */
static int probe(int fd, int64_t at) {
#ifdef RWF_NOWAIT
  char b;
  struct iovec v = {.iov_base = &b, .iov_len = 1};
  ssize_t n;
  while ((n = preadv2(fd, &v, 1, (off_t)at, RWF_NOWAIT)) < 0 && errno == EINTR) {
  }
  if (n >= 0)
    return 1;
  if (errno == EAGAIN)
    return 0;
  if (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)
    return -1;
  return 1; /* another error: the step meets and reports it */
#else
  (void)fd, (void)at;
  return -1;
#endif
}

static int range_probed(int fd, int64_t off, size_t len, long page) {
  for (size_t at = 0; at < len; at += PROBE_EVERY) {
    size_t last = len - at > PROBE_EVERY ? at + PROBE_EVERY - 1 : len - 1;
    int r = probe(fd, off + (int64_t)at);
    if (r > 0 && (off + (int64_t)last) / page != (off + (int64_t)at) / page)
      r = probe(fd, off + (int64_t)last);
    if (r <= 0)
      return r;
  }
  return 1;
}
#endif

#ifdef __linux__
/* A file whose pages are never read from a disk (swap aside): tmpfs (and
   memfd, /dev/shm), ramfs, hugetlbfs. */
static int in_memory_fs(int fd) {
  struct statfs sf;
  return fstatfs(fd, &sf) == 0 &&
         (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC || sf.f_type == HUGETLBFS_MAGIC);
}

/* Where cachestat(2) can't answer: it refuses (EPERM, Linux >= 6.14: a
   page-cache side channel) a file this process may not write and does not own,
   a server's worker reading root's files, the common case; or the kernel has
   none (ENOSYS: before 6.5). Then every page's first byte is probed, up to
   PROBE_ALL_PAGES pages; a longer range the process may not see (EPERM) is not
   ready: a prefetch thread's sendfile to /dev/null makes it so, at little cost
   where it was all there (without cachestat, mincore answers for the owner:
   ready_without_cachestat). A file that refuses the probes too is ready only
   where it lives in memory: any other (a network or FUSE filesystem) may wait
   longest of all. */
#define PROBE_ALL_PAGES 16

static int pages_probed(int fd, int64_t off, uint64_t pages, long page) {
  if (pages > PROBE_ALL_PAGES)
    return 0;
  int64_t first = off / page * page;
  for (uint64_t i = 0; i < pages; i++) {
    int r = probe(fd, i ? first + (int64_t)i * page : off);
    if (r < 0)
      return in_memory_fs(fd);
    if (!r)
      return 0;
  }
  return 1;
}
#endif

#ifdef __linux__
/* Where the kernel has no cachestat (before 6.5): mincore(2) of a shared
   mapping of the range, never touched (no page is read in or mapped by it). 1
   when every page is resident, 0 when one is not, or the mapping failed. For a
   file the process neither owns nor may write, mincore answers only for the
   pages this mapping has, none: 0, and the range is prefetched first. */
static int resident(int fd, int64_t off, size_t len, long page) {
  unsigned char vec[256];
  size_t most = sizeof vec * (size_t)page; /* a mapping's span at a time */
  int64_t at = off / page * page, end = off + (int64_t)len;
  while (at < end) {
    size_t span = (size_t)(end - at) < most ? (size_t)(end - at) : most;
    void *m = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)at);
    if (m == MAP_FAILED)
      return 0;
    int rc = mincore(m, span, vec);
    munmap(m, span);
    if (rc < 0)
      return 0;
    for (size_t i = 0; i < (span + (size_t)page - 1) / (size_t)page; i++)
      if (!(vec[i] & 1))
        return 0;
    at += (int64_t)span;
  }
  return 1;
}

/* the probes' answer for a range cachestat or mincore calls cached: a file
   that refuses them (no RWF_NOWAIT: an O_DIRECT fd, whose reads skip the page
   cache; FUSE, a network filesystem, which may still be reading it) is read
   in only where it lives in memory */
static int read_in(int fd, int64_t off, size_t len, long page) {
  int r = range_probed(fd, off, len, page);
  return r < 0 ? in_memory_fs(fd) : r;
}

/* no cachestat answer (none in this kernel, or EPERM): up to PROBE_ALL_PAGES
   pages the probes alone; more, mincore and the probes (for reads in flight)
   where there is no cachestat, not ready where it refused */
static int ready_without_cachestat(int fd, int64_t off, size_t len, uint64_t pages, long page, int refused) {
  if (pages <= PROBE_ALL_PAGES || refused)
    return pages_probed(fd, off, pages, page);
  return resident(fd, off, len, page) && read_in(fd, off, len, page);
}
#endif

#ifdef __linux__
/* cachestat(2)'s count of the range's cached pages; -errno where it has none
   to give (-ENOSYS: none in this kernel, which stays so; -EPERM: refused) */
static int64_t cached_pages(int fd, int64_t off, size_t len) {
  static int unsupported; /* a benign race */
  if (__atomic_load_n(&unsupported, __ATOMIC_RELAXED))
    return -ENOSYS;
  struct zcs__cachestat_range r = {(uint64_t)off, len};
  struct zcs__cachestat cs;
  if (syscall(__NR_cachestat, fd, &r, &cs, 0) < 0) {
    if (errno == ENOSYS)
      __atomic_store_n(&unsupported, 1, __ATOMIC_RELAXED);
    return -errno;
  }
  return (int64_t)cs.nr_cache;
}
#endif

int zcs__range_ready(int fd, int64_t off, size_t len) {
#ifdef __linux__
  static long page;
  if (!page)
    page = sysconf(_SC_PAGESIZE);
  if (!len || fd < 0 || off < 0)
    return 1;
  uint64_t pages = (uint64_t)(off + (int64_t)len - 1) / (uint64_t)page - (uint64_t)off / (uint64_t)page + 1;
  if (pages <= 2) {
    /* the first and the last byte's probes cover every page: each says both
       (cached, and read in), and cachestat would add nothing but its cost */
    int r = range_probed(fd, off, len, page);
    if (r >= 0)
      return r;
    /* refused: only a file that lives in memory is read in; there cachestat
       still tells a page swapped out (where it answers) */
    if (!in_memory_fs(fd))
      return 0;
    int64_t cached = cached_pages(fd, off, len);
    return cached < 0 || (uint64_t)cached >= pages;
  }
  int64_t cached = cached_pages(fd, off, len);
  if (cached == -EPERM || cached == -ENOSYS)
    return ready_without_cachestat(fd, off, len, pages, page, cached == -EPERM);
  if (cached < 0)
    return 1; /* another error (a bad fd): the step meets and reports it */
  return (uint64_t)cached >= pages && read_in(fd, off, len, page);
#else
  (void)fd, (void)off, (void)len;
  return 1;
#endif
}

#ifdef RWF_NOWAIT
/* a read that never waits for the disk (RWF_NOWAIT): bytes read, or -1 with
   errno (EAGAIN: a page not in memory). Callers read to an odd address: an
   O_DIRECT fd, for which RWF_NOWAIT would still wait for the disk, refuses it
   (EINVAL) and is left to the probes. */
static ssize_t read_cached(int fd, char *odd, size_t len, int64_t offset) {
  struct iovec v = {.iov_base = odd, .iov_len = len};
  ssize_t n;
  while ((n = preadv2(fd, &v, 1, (off_t)offset, RWF_NOWAIT)) < 0 && errno == EINTR) {
  }
  return n;
}
#endif

/* 1: the whole rest read into the buffer; 0: not (left as it was) */
static int load_small(zcs_transfer_t *t) {
#ifdef RWF_NOWAIT
  /* ZCS_F_NO_FALLBACK: the caller asked for zero-copy only, and gets it */
  if (t->result != ZCS_RUNNING || t->cancelled || t->backend != ZCS_BACKEND_SENDFILE || t->ssl ||
      (t->flags & ZCS_F_NO_FALLBACK) ||
      !t->sized || t->offset < 0 || t->remaining <= 0 || t->remaining > (int64_t)ZCS_SMALL_COPY ||
      t->buf_pos != t->buf_len || t->pipe_len)
    return 0;
  if (!t->buf) { /* the rest's size, not the limit's: a slow reader's connection holds it */
    if (!(t->buf = malloc((size_t)t->remaining + 1)))
      return 0; /* the step copes, or meets it */
    t->buf_cap = (size_t)t->remaining + 1;
  }
  if ((uint64_t)t->remaining >= t->buf_cap)
    return 0;
  size_t want = (size_t)t->remaining;
  if (read_cached(t->file_fd, t->buf + 1, want, t->offset) == (ssize_t)want) {
    t->buf_pos = 1;
    t->buf_len = 1 + want;
    t->offset += (int64_t)want;
    return 1;
  }
  /* EAGAIN or short: a page not read in, or the file shrank (the step meets
     that), or a cached page that carries the readahead mark (the read stops
     there). zcs_transfer_cached tells which. Any other error is the step's to
     meet. Like every RWF_NOWAIT read of a buffered file (the probes too), this
     one submits the kernel's readahead where it finds no page, or a marked one:
     the reads start from this thread, which never waits for them. */
  return 0;
#else
  (void)t;
  return 0;
#endif
}

/* zcs_transfer_start's send took sent bytes (0: the socket was full) of the
   head's head_len and of the file's count, read into data: t becomes the
   transfer a step that sent them would have left, done, or holding the rest
   (read already: the file is not read again) and blocked, or ended with
   -ENOMEM where it can't hold it, what went counted. t->result says which.
   Returns 0; or -ENOMEM, t untouched, where none went and the copies can't be
   made: the caller makes init's transfer instead, as if it had not sent. */
static int small_sent(zcs_transfer_t *t, int file_fd, int64_t offset, int64_t count,
                      const char *data, const void *head, size_t head_len, size_t sent) {
  size_t h = sent < head_len ? sent : head_len, body = sent - h, rest = (size_t)count - body;
  int done = !rest && h == head_len; /* else rest > 0: the head goes first */
  char *head_copy = NULL, *rest_copy = NULL;
  if (!done && ((h < head_len && !(head_copy = malloc(head_len))) || !(rest_copy = malloc(rest)))) {
    free(head_copy);
    head_copy = NULL;
    if (!sent)
      return -ENOMEM;
  }
  t->file_fd = file_fd;
  t->start = offset;
  t->offset = offset + count; /* every byte is read: the next to read is past them */
  t->remaining = count;
  t->sized = 1;
  t->backend = ZCS_BACKEND_SENDFILE; /* a sendfile transfer's held bytes go as a copy */
  count_start(t);
  if (body)
    count_copied(t, body);
  t->head_len = t->head_pos = h; /* a head all sent needs no copy */
  if (done) {
    finish(t, ZCS_DONE);
    return 0;
  }
  if (!rest_copy) {
    finish(t, -ENOMEM);
    return 0;
  }
  if (head_copy) {
    memcpy(head_copy, head, head_len);
    t->head = head_copy;
    t->head_len = head_len;
  }
  memcpy(rest_copy, data + body, rest);
  t->buf = rest_copy;
  t->buf_cap = t->buf_len = rest;
  t->blocked = 1;
  return 0;
}

int zcs_transfer_start(zcs_transfer_t *t, int sock_fd, int file_fd, int64_t offset,
                       int64_t count, const void *head, size_t head_len, int flags) {
  int rc = init_common(t, sock_fd, flags);
  if (rc < 0)
    return rc;
  struct stat st;
  int have_st = 0, send_err = 0;
  int64_t n = count;
#ifdef RWF_NOWAIT
  /* ZCS_F_NO_FALLBACK: zero-copy only; ZCSEND_BACKEND=emulated: the backend asked for */
  if (offset >= 0 && count >= ZCS_COUNT_TO_EOF && count <= (int64_t)ZCS_SMALL_COPY &&
      !(flags & ZCS_F_NO_FALLBACK) && !backend_forced_emulated && (head || !head_len)) {
    if (count == ZCS_COUNT_TO_EOF) { /* the size says: a regular file's that can be trusted */
      have_st = fstat(file_fd, &st) == 0;
      n = have_st && S_ISREG(st.st_mode) && offset < st.st_size &&
                  !zcs__size_unreliable(file_fd, &st)
              ? st.st_size - offset
              : 0;
    }
    if (n > 0 && n <= (int64_t)ZCS_SMALL_COPY) {
      char buf[ZCS_SMALL_COPY + 1]; /* +1: read to an odd address (read_cached) */
      ssize_t got = read_cached(file_fd, buf + 1, (size_t)n, offset);
      /* short or failed: not all in memory now, fewer bytes, or an fd not read
         this way (a pipe, write-only, O_DIRECT, a directory): init meets it */
      if (got == (ssize_t)n) {
        got = send_pair(sock_fd, head, head_len, buf + 1, (size_t)n);
        int full = got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
        /* part or all went, or none (the socket full): t holds the rest,
           read already, for the step the socket's writability brings. An
           error here (-ENOMEM) is t's where bytes went; where none did, init's
           transfer is made instead (its step reads the range again) */
        if ((got > 0 || full) &&
            small_sent(t, file_fd, offset, n, buf + 1, head, head_len, full ? 0 : (size_t)got) == 0)
          return 0;
        /* none went, the socket in error, which the send took from it (a
           peer's reset): kept for the transfer to end with */
        if (got < 0 && !full && errno != ENOTSOCK)
          send_err = -errno;
      }
    }
  }
#endif
  rc = init_source(t, file_fd, offset, count, flags, &st, have_st);
  if (rc == 0 && head_len)
    rc = zcs_transfer_set_head(t, head, head_len);
  if (rc == 0 && send_err)
    finish(t, send_err); /* what its first step would have met, had the send not taken it */
  return rc;
}

int zcs_transfer_ready(zcs_transfer_t *t, size_t len) {
  return (len && load_small(t)) || zcs_transfer_cached(t, len);
}

size_t zcs__prefetch_window(const zcs_transfer_t *t, size_t step) {
  if (!zcs__reads_sized_file(t))
    return 0;
  if (!step)
    step = t->budget ? t->budget : ZCS_DEFAULT_BUDGET;
  size_t len = step > ZCS__PREFETCH_MAX / 2 ? (step > ZCS__PREFETCH_MAX ? step : ZCS__PREFETCH_MAX)
                                            : 2 * step;
  return zcs__transfer_unread(t, len); /* offset is past bytes held already */
}

int zcs_transfer_cached(const zcs_transfer_t *t, size_t len) {
  if (!zcs__reads_sized_file(t))
    return 1;
  len = zcs__transfer_unread(t, len); /* 0 for len 0, or nothing left to read */
  return !len || zcs__range_ready(t->file_fd, t->offset, len);
}

size_t zcs__transfer_unread(const zcs_transfer_t *t, size_t len) {
  uint64_t held = (t->buf_len - t->buf_pos) + t->pipe_len;
  if (t->remaining <= 0 || (uint64_t)t->remaining <= held)
    return 0;
  if ((uint64_t)t->remaining - held < len)
    len = (size_t)((uint64_t)t->remaining - held);
  return len;
}

unsigned long zcs_transfer_tls_error(const zcs_transfer_t *t) { return t->tls_error; }

void zcs_transfer_cancel(zcs_transfer_t *t) { zcs_transfer_abort(t, -ECANCELED); }

void zcs_transfer_abort(zcs_transfer_t *t, int err) {
  if (!t->cancelled)
    t->cancelled = err < 0 ? err : -ECANCELED;
}

void zcs__transfer_end(zcs_transfer_t *t, int err) {
  if (t->result == ZCS_RUNNING)
    finish(t, err);
}

void zcs_transfer_move(zcs_transfer_t *dst, zcs_transfer_t *src) {
  *dst = *src; /* nothing in a transfer points into the transfer itself */
  src->buf = src->head = NULL;
  src->buf_len = src->buf_pos = src->head_len = src->head_pos = 0;
  src->pipe_fds[0] = src->pipe_fds[1] = -1;
  src->pipe_len = 0;
  src->ssl = NULL;
  src->ssl_modes_added = 0;
  src->counted = 0;
}

void zcs_transfer_release(zcs_transfer_t *t) {
  free(t->buf);
  t->buf = NULL;
  free(t->head);
  t->head = NULL;
  t->head_len = t->head_pos = 0;
  t->buf_len = t->buf_pos = 0;
  zcs__splice_close(t);
  zcs__tls_release(t);
  if (t->result == ZCS_RUNNING && t->cancelled)
    t->result = t->cancelled; /* stopped, never stepped again: ended as it was told */
  record_outcome(t);
}
