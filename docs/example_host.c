/* A complete C host for zcsend: sends a file to a connected TCP socket with
 * zcs_transfer_step(), waiting with poll(2) for whatever each step asks for.
 * It needs zcsend.h and the static library only (no libev, no engine):
 *
 *   make -C csrc
 *   cc -Icsrc docs/example_host.c csrc/build/libzcsend.a -lssl -lcrypto -pthread
 *
 * send_file() is the part a host copies; main() is a harness around it: it
 * makes a loopback TCP connection, sends the file named by argv[1] through one
 * end, and a child process copies what the other end receives to stdout, so
 *
 *   ./example_host FILE > COPY && cmp FILE COPY
 *
 * checks every byte (csrc/Makefile's test target runs exactly that, zero-copy
 * and with ZCSEND_BACKEND=emulated). docs/C_API.md explains each call. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "zcsend.h"

/* Sends count bytes (ZCS_COUNT_TO_EOF: all) of file_fd from offset to sock,
 * which must be O_NONBLOCK, giving up when the socket stays unwritable for
 * idle_ms. Returns ZCS_DONE (0) or a negative error; *sent gets the bytes
 * delivered either way. Closes neither fd: zcsend never does. */
static int send_file(int sock, int file_fd, int64_t offset, int64_t count, int idle_ms,
                     uint64_t *sent) {
  zcs_transfer_t t; /* by value: no allocation per transfer */
  int rc = zcs_transfer_init(&t, sock, file_fd, offset, count, 0);
  if (rc == 0) {
    /* A step moves bytes until the socket would block, the budget (2 MiB) is
     * spent, or the transfer ends. A positive result is ZCS_WANT_*: wait on the
     * fd it names, then step again. A host serving many connections puts that
     * fd in its own poll set and steps the transfer when it is ready. */
    while ((rc = zcs_transfer_step(&t)) > 0) {
      int events;
      struct pollfd p = {.fd = zcs_transfer_wait_fd(&t, rc, &events)};
      p.events = (short)((events & ZCS_WAIT_READ ? POLLIN : 0) |
                         (events & ZCS_WAIT_WRITE ? POLLOUT : 0));
      int n;
      while ((n = poll(&p, 1, idle_ms)) < 0 && errno == EINTR) {
      }
      if (n == 0)
        zcs_transfer_abort(&t, -ETIMEDOUT); /* the next step ends it with -ETIMEDOUT */
      else if (n < 0)
        zcs_transfer_abort(&t, -errno);
      /* POLLERR/POLLHUP need nothing special: the next step returns the error
         (-EPIPE, -ECONNRESET), and never raises SIGPIPE */
    }
  }
  *sent = t.sent; /* exact, even when rc is an error */
  zcs_transfer_release(&t); /* always, once init has run */
  return rc;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s FILE > COPY\n", argv[0]);
    return 2;
  }
  int file_fd = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (file_fd < 0) {
    perror(argv[1]);
    return 1;
  }
  /* a loopback TCP connection: sock is ours, peer the receiver's */
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0 ||
      getsockname(l, (struct sockaddr *)&a, &alen) < 0) {
    perror("listen");
    return 1;
  }
  int peer = socket(AF_INET, SOCK_STREAM, 0);
  if (peer < 0 || connect(peer, (struct sockaddr *)&a, sizeof a) < 0) {
    perror("connect");
    return 1;
  }
  int sock = accept(l, NULL, NULL);
  if (sock < 0) {
    perror("accept");
    return 1;
  }
  close(l);

  pid_t child = fork();
  if (child < 0) {
    perror("fork");
    return 1;
  }
  if (child == 0) { /* the receiver: everything it reads goes to stdout */
    close(sock);
    static char buf[1 << 16];
    ssize_t n;
    while ((n = read(peer, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
      if (n > 0 && write_all(1, buf, (size_t)n) < 0)
        _exit(1);
    _exit(n < 0);
  }
  close(peer);

  /* O_NONBLOCK is the host's to set: zcs_transfer_init refuses a blocking
     socket with ZCS_EBLOCKING rather than let a step block the loop. */
  int fl = fcntl(sock, F_GETFL);
  if (fl < 0 || fcntl(sock, F_SETFL, fl | O_NONBLOCK) < 0) {
    perror("fcntl");
    return 1;
  }
  uint64_t sent = 0;
  int rc = send_file(sock, file_fd, 0, ZCS_COUNT_TO_EOF, 10000, &sent);
  close(sock); /* the fds were ours all along: the receiver sees EOF now */
  close(file_fd);

  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  zcs_stats_t st;
  zcs_stats(&st);
  if (rc == ZCS_DONE)
    fprintf(stderr, "example_host: sent %llu bytes, %llu zero-copy (%s, zcsend %s)\n",
            (unsigned long long)sent, (unsigned long long)st.bytes_zero_copy, zcs_backend_name(),
            zcs_version());
  else
    fprintf(stderr, "example_host: %s (%s) after %llu bytes\n", zcs_err_name(rc),
            zcs_strerror(rc), (unsigned long long)sent);
  return rc == ZCS_DONE && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
