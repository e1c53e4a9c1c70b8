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

/* TLS sink (sink_tls.c): SSL_write buf; SSL_sendfile on kernel TLS */
ssize_t zcs__tls_write(zcs_transfer_t *t, const void *buf, size_t len);
ssize_t zcs__ktls_sendfile(zcs_transfer_t *t, size_t len);
void zcs__tls_release(zcs_transfer_t *t);

extern const char zcs__platform_name[];

struct stat;
/* True when a regular file's st_size is not its length (procfs, sysfs...):
   its count can't be fixed from it. */
int zcs__size_unreliable(int fd, const struct stat *st);
/* Ends a running transfer with err now (its outcome is counted). */
void zcs__transfer_end(zcs_transfer_t *t, int err);

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
