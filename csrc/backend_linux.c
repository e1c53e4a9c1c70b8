/* Linux backends: sendfile(2) for regular files, splice(2) for pipes and FIFOs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "zcs_internal.h"

const char zcs__platform_name[] = "linux-sendfile";

/* procfs reports st_size 0 and sysfs 4096 whatever a file holds; neither has
   blocks. Only a blockless file pays for the statfs. */
int zcs__size_unreliable(int fd, const struct stat *st) {
  if (st->st_blocks != 0)
    return 0;
  struct statfs fs;
  if (fstatfs(fd, &fs) < 0)
    return 0;
  switch ((unsigned long)fs.f_type) {
  case 0x9fa0:     /* PROC_SUPER_MAGIC */
  case 0x62656572: /* SYSFS_MAGIC */
  case 0x64626720: /* DEBUGFS_MAGIC */
  case 0x74726163: /* TRACEFS_MAGIC */
  case 0x27e0eb:   /* CGROUP_SUPER_MAGIC */
  case 0x63677270: /* CGROUP2_SUPER_MAGIC */
  case 0x73636673: /* SECURITYFS_MAGIC */
    return 1;
  default:
    return 0;
  }
}

/* Linux sendfile moves at most 0x7ffff000 bytes a call, whatever is asked. */
#define LINUX_SENDFILE_MAX 0x7ffff000

ssize_t zcs__sendfile(zcs_transfer_t *t, size_t len) {
  off_t off = (off_t)t->offset;
  if (len > LINUX_SENDFILE_MAX)
    len = LINUX_SENDFILE_MAX;
  ssize_t n = sendfile(t->sock_fd, t->file_fd, &off, len);
  if (n < 0)
    return -errno;
  /* a short count is progress, not EAGAIN: the caller keeps going until the
     kernel says EAGAIN; 0 means the file ends here */
  t->offset = (int64_t)off;
  return n;
}

static int splice_pipe(zcs_transfer_t *t) {
  if (t->pipe_fds[0] >= 0)
    return 0;
  if (pipe2(t->pipe_fds, O_CLOEXEC | O_NONBLOCK) < 0) {
    t->pipe_fds[0] = t->pipe_fds[1] = -1;
    return -errno;
  }
  return 0;
}

/* Fills the pipe from the source when it is empty, then drains it into the
   socket. Bytes parked in the pipe are not sent yet and are not counted. */
ssize_t zcs__splice(zcs_transfer_t *t, size_t len) {
  int rc = splice_pipe(t);
  if (rc < 0)
    return rc;
  if (t->pipe_len == 0) {
    loff_t off = (loff_t)t->offset;
    ssize_t n = splice(t->file_fd, t->offset >= 0 ? &off : NULL, t->pipe_fds[1], NULL, len,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0)
      return errno == EAGAIN ? ZCS__SOURCE_EMPTY : -errno;
    if (n == 0)
      return 0;
    if (t->offset >= 0)
      t->offset = (int64_t)off;
    t->pipe_len = (size_t)n;
  }
  ssize_t n = splice(t->pipe_fds[0], NULL, t->sock_fd, NULL, t->pipe_len,
                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n < 0)
    return -errno;
  t->pipe_len -= (size_t)n;
  return n;
}

void zcs__splice_close(zcs_transfer_t *t) {
  for (int i = 0; i < 2; i++) {
    if (t->pipe_fds[i] >= 0)
      close(t->pipe_fds[i]);
    t->pipe_fds[i] = -1;
  }
}
