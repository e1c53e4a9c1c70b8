/* The copying backend: read (or pread) into a bounded buffer, then send.
 * Used for sources sendfile/splice refuse, on ZCSEND_BACKEND=emulated, for bytes
 * handed over in memory, and as the fallback when a zero-copy call says
 * "not for these fds". */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include "zcs_internal.h"

/* The sink: plaintext on the socket, or the TLS connection when there is one. */
ssize_t zcs__flush_buffer(zcs_transfer_t *t) {
  size_t len = t->buf_len - t->buf_pos;
  if (t->ssl) {
    ssize_t n = zcs__tls_write(t, t->buf + t->buf_pos, len);
    if (n > 0)
      zcs__buf_took(t, (size_t)n);
    return n;
  }
  ssize_t n = send(t->sock_fd, t->buf + t->buf_pos, len, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0 && errno == ENOTSOCK)
    n = zcs__write_nosigpipe(t->sock_fd, t->buf + t->buf_pos, len); /* a pipe as destination */
  if (n < 0)
    return -errno;
  zcs__buf_took(t, (size_t)n);
  return n;
}

/* Reads without blocking: pread for seekable sources; for the others, read only
   once poll says there is something (a blocking pipe stays the caller's). */
static ssize_t fill(zcs_transfer_t *t, size_t want) {
  if (!t->buf) {
    t->buf = malloc(t->buf_cap);
    if (!t->buf)
      return -ENOMEM;
  }
  if (want > t->buf_cap)
    want = t->buf_cap;
  ssize_t n;
  for (;;) {
    if (t->offset >= 0) {
      n = pread(t->file_fd, t->buf, want, (off_t)t->offset);
    } else {
      struct pollfd p = {.fd = t->file_fd, .events = POLLIN};
      int r = poll(&p, 1, 0);
      if (r == 0)
        return ZCS__SOURCE_EMPTY;
      if (r < 0 && errno != EINTR)
        return -errno;
      n = r < 0 ? -1 : read(t->file_fd, t->buf, want);
      if (n < 0 && errno == EAGAIN)
        return ZCS__SOURCE_EMPTY;
    }
    if (n >= 0 || errno != EINTR)
      break;
  }
  if (n < 0)
    return -errno;
  if (t->offset >= 0)
    t->offset += n;
  t->buf_pos = 0;
  t->buf_len = (size_t)n;
  return n;
}

ssize_t zcs__emulated(zcs_transfer_t *t, size_t len) {
  if (t->buf_pos == t->buf_len) {
    if (t->backend == ZCS_BACKEND_MEMORY)
      return 0;
    ssize_t n = fill(t, len);
    if (n <= 0)
      return n;
  }
  return zcs__flush_buffer(t);
}
