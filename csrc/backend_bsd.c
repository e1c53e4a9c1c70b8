/* macOS and FreeBSD sendfile(2). NOT BUILT OR TESTED on the project's Linux CI:
 * written from the man pages and the rules in DESIGN.md; keep it small. */
#include <errno.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include "zcs_internal.h"

/* Not told apart here yet: a procfs file's size is taken as its length. */
int zcs__size_unreliable(int fd, const struct stat *st) {
  (void)fd, (void)st;
  return 0;
}

#if defined(__APPLE__)
const char zcs__platform_name[] = "darwin-sendfile";
#elif defined(__FreeBSD__)
const char zcs__platform_name[] = "freebsd-sendfile";
#else
#error "backend_bsd.c is for macOS and FreeBSD"
#endif

ssize_t zcs__sendfile(zcs_transfer_t *t, size_t len) {
  off_t sent = 0;
  int rc;
#if defined(__APPLE__)
  /* Darwin: len is in-out; on EAGAIN/EINTR it holds the bytes already sent. */
  sent = (off_t)len;
  rc = sendfile(t->file_fd, t->sock_fd, (off_t)t->offset, &sent, NULL, 0);
#else
  /* FreeBSD: sbytes holds the bytes sent even when it fails with EAGAIN/EINTR/EBUSY. */
  rc = sendfile(t->file_fd, t->sock_fd, (off_t)t->offset, len, NULL, &sent, 0);
#endif
  int err = rc < 0 ? errno : 0;
  /* Partial progress is success: count it and never resend it. */
  if (sent > 0) {
    t->offset += sent;
    return (ssize_t)sent;
  }
  if (rc == 0)
    return 0; /* nothing sent and no error: the file ends at offset */
  if (err == EBUSY)
    err = EAGAIN;
  return -err;
}

ssize_t zcs__splice(zcs_transfer_t *t, size_t len) {
  (void)t; (void)len;
  return -ENOSYS; /* transfer.c falls back to emulation */
}

void zcs__splice_close(zcs_transfer_t *t) { (void)t; }
