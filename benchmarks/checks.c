/* What each syscall zcsend's small-file path makes besides sendfile(2) costs,
 * alone, on a cached 16 KiB file (issue 13 §1: the per-call target is 3 us over
 * the sendfile floor; these are the checks between). Each is called N times in
 * a row, 5 rounds, and the median round's ns per call printed, with what the
 * call is for; the sum is the kernel time the checks take per send at best
 * (warm caches, no other work between).
 *
 *   cc -O2 -Wall benchmarks/checks.c -o /tmp/checks && /tmp/checks [--quick]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SIZE 16384
#define ROUNDS 5

struct range { uint64_t off, len; };
struct stat5 { uint64_t v[5]; };

static int fd;
static char byte;

/* each returns 1 when the call did what zcsend's does (timing an error path
   would say nothing): checked once before it is timed */
static int c_getpid(void) { return getpid() > 0; }
static int c_fstat(void) {
  struct stat st;
  return fstat(fd, &st) == 0 && st.st_size == SIZE;
}
static int c_fcntl(void) { return fcntl(fd, F_GETFL) >= 0; }
static int c_cachestat(void) {
  struct range r = {0, SIZE};
  struct stat5 cs;
  return syscall(451, fd, &r, &cs, 0) == 0 && cs.v[0] == (uint64_t)(SIZE / sysconf(_SC_PAGESIZE));
}
static int c_probe(void) {
  struct iovec v = {&byte, 1};
  return preadv2(fd, &v, 1, SIZE - 1, RWF_NOWAIT) == 1;
}
static int c_sigaction(void) {
  struct sigaction sa;
  return sigaction(SIGPIPE, NULL, &sa) == 0;
}
static int c_lseek(void) { return lseek(fd, SIZE, SEEK_SET) == SIZE; }

static const struct {
  const char *name, *why;
  int (*call)(void);
  int times; /* per send of 16 KiB */
} CHECKS[] = {
    {"fstat", "size and kind of the file (one per send, as the issue allows)", c_fstat, 1},
    {"fcntl(F_GETFL)", "is the fd readable: open(fd, \"rb\") of an O_WRONLY fd says it is", c_fcntl, 1},
    {"cachestat", "is the range in the page cache (issue 13 §2)", c_cachestat, 1},
    {"preadv2(RWF_NOWAIT)", "first and last byte read in, not in flight (issue 13 §2)", c_probe, 2},
    {"sigaction(SIGPIPE)", "is SIGPIPE ignored (else it is masked around the send)", c_sigaction, 1},
    {"lseek", "asyncio's contract: the file's position after the bytes sent", c_lseek, 1},
    {"getpid", "CPython 3.11's get_running_loop (not zcsend's; gone in 3.12)", c_getpid, 0},
};

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int n = argc > 1 && !strcmp(argv[1], "--quick") ? 2000 : 200000;
  char path[] = "/var/tmp/zcs-checks-XXXXXX"; /* not /tmp: a tmpfs refuses RWF_NOWAIT */
  fd = mkstemp(path);
  if (fd < 0) {
    perror("mkstemp");
    return 1;
  }
  unlink(path);
  char buf[SIZE];
  memset(buf, 'x', sizeof buf);
  if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf || pread(fd, buf, sizeof buf, 0) != SIZE) {
    perror("write");
    return 1;
  }
  printf("ns per call, median of %d rounds of %d calls, a cached 16 KiB file\n\n", ROUNDS, n);
  printf("| syscall | ns | per send | why |\n|---|---|---|---|\n");
  double total = 0;
  for (size_t i = 0; i < sizeof CHECKS / sizeof CHECKS[0]; i++) {
    errno = 0;
    if (!CHECKS[i].call()) { /* cachestat needs Linux >= 6.5; a tmpfs refuses the probe */
      fprintf(stderr, "%s does not work here (%s)\n", CHECKS[i].name,
              errno ? strerror(errno) : "an unexpected answer");
      return 1;
    }
    double r[ROUNDS];
    for (int k = 0; k < ROUNDS; k++) {
      double t = now_ns();
      for (int j = 0; j < n; j++)
        CHECKS[i].call();
      r[k] = (now_ns() - t) / n;
    }
    qsort(r, ROUNDS, sizeof r[0], cmp);
    total += r[ROUNDS / 2] * CHECKS[i].times;
    printf("| %s | %.0f | %d | %s |\n", CHECKS[i].name, r[ROUNDS / 2], CHECKS[i].times, CHECKS[i].why);
  }
  printf("\nzcsend's checks per 16 KiB send: %.2f us\n", total / 1000);
  close(fd);
  return 0;
}
