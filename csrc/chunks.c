/* Chunk sources: the write path, once. A host that writes the bytes through a
 * layer of its own (a TLS object, a transport's write()) takes a file range in
 * chunks from here: sized by the transfer's rule, ETRUNCATED when a sized file
 * ends early, counted in the stats. It reads with zcs_chunks_read(), or reads
 * elsewhere and reports what it got with zcs_chunks_take(). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "zcs_internal.h"

_Static_assert(sizeof(zcs_chunks_t) ==
                   offsetof(zcs_chunks_t, zcs__reserved) + sizeof(((zcs_chunks_t *)0)->zcs__reserved),
               "zcs_chunks_t's private members outgrew zcs__reserved");

int zcs__pread_nowait(int fd, void *buf, size_t len, int64_t offset) {
#ifdef RWF_NOWAIT
  static atomic_int unsupported; /* the kernel or filesystem said so once: stop asking */
  if (offset < 0)
    return -EINVAL;
  if (atomic_load_explicit(&unsupported, memory_order_relaxed))
    return 0;
  struct iovec v = {.iov_base = buf, .iov_len = len};
  ssize_t n;
  do
    n = preadv2(fd, &v, 1, (off_t)offset, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  if (n >= 0)
    return (size_t)n == len;
  if (errno == EAGAIN)
    return 0;
  if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) { /* EINVAL: flag unknown here */
    atomic_store_explicit(&unsupported, 1, memory_order_relaxed);
    return 0;
  }
  return -errno;
#else
  (void)fd, (void)buf, (void)len, (void)offset;
  return 0;
#endif
}

int zcs_chunks_init(zcs_chunks_t *c, int fd, int64_t offset, int64_t count, int flags) {
  memset(c, 0, sizeof *c);
  c->fd = fd;
  c->offset = -1;
  c->remaining = count;
  c->result = ZCS_RUNNING;
  if (fd >= 0) {
    struct stat st;
    int rc = zcs__source_check(fd, offset, count, flags, &st, &c->remaining, &c->sized);
    if (rc < 0)
      return c->result = rc;
    if (S_ISREG(st.st_mode) || lseek(fd, 0, SEEK_CUR) >= 0)
      c->offset = offset;
    else if (offset)
      return c->result = -ESPIPE; /* a pipe, socket or tty: read where it stands, from 0 only */
  } else if (offset < 0 || (count < 0 && count != ZCS_COUNT_TO_EOF)) {
    return c->result = -EINVAL;
  }
  c->counted = 1;
  zcs__stats_start();
  return 0;
}

size_t zcs_chunks_want(const zcs_chunks_t *c, size_t cap) {
  if (c->result != ZCS_RUNNING)
    return 0;
  return c->remaining >= 0 && (uint64_t)c->remaining < cap ? (size_t)c->remaining : cap;
}

void zcs_chunks_end(zcs_chunks_t *c, int result) {
  if (c->result == ZCS_RUNNING)
    c->result = result > 0 ? -ECANCELED : result; /* ZCS_RUNNING is not an outcome */
  if (c->counted) {
    c->counted = 0;
    zcs__stats_end(c->result);
  }
}

void zcs_chunks_release(zcs_chunks_t *c) { zcs_chunks_end(c, -ECANCELED); }

/* what a chunk source says once it has ended */
static int ended(const zcs_chunks_t *c) { return c->result < 0 ? c->result : 0; }

/* got of the asked next bytes were read: consume them */
static int consume(zcs_chunks_t *c, size_t got, size_t asked) {
  if (c->offset >= 0)
    c->offset += (int64_t)got;
  if (c->remaining > 0)
    c->remaining -= (int64_t)got;
  if (c->sized && got < asked) { /* a sized file ended early: it shrank */
    zcs_chunks_end(c, ZCS_ETRUNCATED);
    return ZCS_ETRUNCATED;
  }
  if (got == 0)
    c->remaining = 0; /* an unsized source's end is the range's */
  return 0;
}

ssize_t zcs_chunks_read(zcs_chunks_t *c, void *buf, size_t cap, int flags) {
  if (c->result != ZCS_RUNNING)
    return ended(c);
  if (c->fd < 0)
    return -EBADF;
  size_t len = zcs_chunks_want(c, cap);
  if (len == 0)
    return 0;
  ssize_t n;
  if ((flags & ZCS_READ_NOWAIT) && c->offset >= 0) {
    int rc = zcs__pread_nowait(c->fd, buf, len, c->offset);
    n = rc == 1 ? (ssize_t)len : rc == 0 ? -EAGAIN : rc;
    if (n == -EAGAIN)
      return n; /* nothing consumed */
  } else {
    if (flags & ZCS_READ_NOWAIT) {
      struct pollfd p = {.fd = c->fd, .events = POLLIN};
      int r;
      while ((r = poll(&p, 1, 0)) < 0 && errno == EINTR) {
      }
      if (r == 0)
        return -EAGAIN;
    }
    do
      n = c->offset >= 0 ? pread(c->fd, buf, len, (off_t)c->offset) : read(c->fd, buf, len);
    while (n < 0 && errno == EINTR);
    if (n < 0)
      n = -errno;
  }
  if (n < 0) {
    zcs_chunks_end(c, (int)n);
    return n;
  }
  /* a short pread is not yet the end: the next one says (0) */
  int rc = consume(c, (size_t)n, n == 0 ? len : (size_t)n);
  return rc < 0 ? rc : n;
}

int zcs_chunks_take(zcs_chunks_t *c, size_t got, size_t asked) {
  if (c->result != ZCS_RUNNING)
    return ended(c);
  if (asked == 0 || got > asked || zcs_chunks_want(c, asked) < asked)
    return -EINVAL;
  return consume(c, got, asked);
}

void zcs_chunks_wrote(zcs_chunks_t *c, size_t n) {
  c->sent += n;
  zcs__stats_bytes(0, n);
}
