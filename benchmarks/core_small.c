/* CPU per send of a small cached file through the core, the two ways a step
 * can go (issue 13): the zero-copy step (zcs_transfer_cached, then sendfile:
 * cachestat, the probes, the SIGPIPE look, a second syscall for a head) and
 * zcs_transfer_ready's copy (one preadv2(RWF_NOWAIT), one sendmsg with the
 * head), which the core takes up to ZCS_SMALL_COPY bytes (see zcsend.h).
 * Loopback TCP, a drain process reading; the sending thread's CPU
 * (CLOCK_THREAD_CPUTIME_ID) per send, median of rounds that alternate the two
 * ways (and which goes first). Past the limit both columns are the zero-copy
 * step, so their ratio there shows the noise; to see what a
 * copy would cost there, build the library with a higher limit:
 *
 *   make -C csrc && cc -O2 -Icsrc benchmarks/core_small.c csrc/build/libzcsend.a \
 *       -lev -lssl -lcrypto -pthread -o /tmp/core_small && /tmp/core_small [--quick]
 *   make -C csrc BUILD=build-16k CFLAGS="-O2 -DZCS_SMALL_COPY=16384" && cc -O2 \
 *       -DZCS_SMALL_COPY=16384 -Icsrc benchmarks/core_small.c csrc/build-16k/libzcsend.a ...
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "zcsend.h"

static const char HEAD[] = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                           "Content-Length: 16384\r\n\r\n";

static double cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* one whole send, as an asyncio inline step makes it; exits on any failure */
static void send_one(int sock, int fd, size_t size, int head, int copy) {
  zcs_transfer_t t;
  int flags = ZCS_F_SOCK_NONBLOCKING | ZCS_F_SIGPIPE_IF_DEFAULT | ZCS_F_SOURCE_READABLE;
  if (zcs_transfer_init(&t, sock, fd, 0, (int64_t)size, flags) < 0 ||
      (head && zcs_transfer_set_head(&t, HEAD, sizeof HEAD - 1) < 0) ||
      !(copy ? zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET) : zcs_transfer_cached(&t, ZCS_DEFAULT_BUDGET))) {
    fprintf(stderr, "core_small: the file is not ready\n");
    exit(1);
  }
  int rc;
  while ((rc = zcs_transfer_step(&t)) == ZCS_WANT_WRITE) {
  }
  if (rc != ZCS_DONE) {
    fprintf(stderr, "core_small: step: %s\n", zcs_strerror(rc));
    exit(1);
  }
  zcs_transfer_release(&t);
}

int main(int argc, char **argv) {
  int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
  int sends = quick ? 300 : 5000, rounds = quick ? 1 : 9;
  signal(SIGPIPE, SIG_IGN); /* as CPython has it */
  char path[] = "/var/tmp/zcs-core-small-XXXXXX"; /* not /tmp: a tmpfs refuses RWF_NOWAIT */
  int fd = mkstemp(path);
  static char data[64 << 10];
  memset(data, 'z', sizeof data);
  if (fd < 0 || write(fd, data, sizeof data) != (ssize_t)sizeof data || fsync(fd) < 0)
    return perror("core_small: file"), 1;
  unlink(path);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (struct sockaddr *)&a, al) < 0 || listen(l, 1) < 0 ||
      getsockname(l, (struct sockaddr *)&a, &al) < 0)
    return perror("core_small: listen"), 1;
  pid_t drain = fork();
  if (drain == 0) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    static char sink[1 << 20]; /* as benchmarks/percall.py's drain reads */
    if (connect(c, (struct sockaddr *)&a, al) < 0)
      _exit(1);
    while (read(c, sink, sizeof sink) > 0) {
    }
    _exit(0);
  }
  int s = accept(l, NULL, NULL), on = 1;
  close(l);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  fcntl(s, F_SETFL, O_NONBLOCK);
  static const size_t sizes[] = {1 << 10, 4 << 10, 8 << 10, 12 << 10, 16 << 10, 32 << 10};
  printf("CPU ns per send, loopback TCP, median of %d rounds of %d (ZCS_SMALL_COPY %u)\n\n", rounds,
         sends, (unsigned)ZCS_SMALL_COPY);
  printf("| size | head | zero-copy step | zcs_transfer_ready's way | ratio |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    for (int head = 0; head <= 1; head++) {
      double t[2][9];
      for (int r = 0; r < rounds; r++) {
        for (int k = 0; k <= 1; k++) {
          int copy = k ^ (r & 1); /* each way first in every other round: no order bias */
          double t0 = cpu_ns();
          for (int k = 0; k < sends; k++)
            send_one(s, fd, sizes[i], head, copy);
          t[copy][r] = (cpu_ns() - t0) / sends;
        }
      }
      qsort(t[0], rounds, sizeof(double), by_value);
      qsort(t[1], rounds, sizeof(double), by_value);
      double z = t[0][rounds / 2], c = t[1][rounds / 2];
      printf("| %zu KiB | %s | %.0f | %.0f | %.2fx |\n", sizes[i] >> 10, head ? "yes" : "no", z, c, c / z);
    }
  }
  close(s);
  waitpid(drain, NULL, 0);
  close(fd);
  return 0;
}
