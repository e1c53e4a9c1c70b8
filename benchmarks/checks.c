/* What each syscall zcsend's small-file path makes besides sendfile(2) costs,
 * alone, on a cached 16 KiB file (issue 13 §1: the per-call target is 3 us over
 * the sendfile floor; these are the checks between). Each is called N times in
 * a row, 5 rounds, and the median round's ns per call printed, with what the
 * call is for; the sum is the kernel time the checks take per send at best
 * (warm caches, no other work between). A second table times cachestat over
 * ranges of one page to 1 MiB (the inline step checks up to 1 MiB before it
 * sends): its cost grows with the page cache entries it counts, and with it the
 * readiness check's, which the table times too: the core's own
 * zcs__range_ready (transfer.c: cachestat and its probes; one page, a probe
 * alone), linked from the static library. On a file written in one go (where
 * the filesystem gives it large folios: ext4 on Linux >= 6.16), on one written
 * 4 KiB at a time (4 KiB pages), and on one evicted and read back from the disk
 * by 128 KiB reads, as a file a server sends usually is (readahead's folios:
 * mostly small here).
 *
 *   make -s -C csrc && cc -O2 -Wall -Icsrc benchmarks/checks.c csrc/build/libzcsend.a \
 *     -lev -lssl -lcrypto -pthread -o /tmp/checks && /tmp/checks [--quick]
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

#include "zcs_internal.h" /* zcs__range_ready: the readiness check itself */

#define SIZE 16384
#define FILE_SIZE (1 << 20)
#define ROUNDS 5

struct range { uint64_t off, len; };
struct stat5 { uint64_t v[5]; };

static int fd, cs_fd;
static char byte;
static uint64_t cs_len = SIZE; /* the range cachestat is asked about, of cs_fd */

/* each returns 1 when the call did what zcsend's does (timing an error path
   would say nothing): checked once before it is timed */
static int c_getpid(void) { return getpid() > 0; }
static int c_fstat(void) {
  struct stat st;
  return fstat(fd, &st) == 0 && st.st_size == FILE_SIZE;
}
static int c_fcntl(void) { return fcntl(fd, F_GETFL) >= 0; }
static int c_cachestat(void) {
  struct range r = {0, cs_len};
  struct stat5 cs;
  return syscall(451, cs_fd, &r, &cs, 0) == 0 && cs.v[0] == cs_len / (uint64_t)sysconf(_SC_PAGESIZE);
}
static int c_ready(void) { return zcs__range_ready(cs_fd, 0, cs_len) == 1; }
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

/* the median round's ns per call (the call checked to work first: -1 if not) */
static double median_ns(const char *name, int (*call)(void), int n) {
  errno = 0;
  if (!call()) { /* cachestat needs Linux >= 6.5; a tmpfs refuses the probe */
    fprintf(stderr, "%s does not work here (%s)\n", name, errno ? strerror(errno) : "an unexpected answer");
    return -1;
  }
  double r[ROUNDS];
  for (int k = 0; k < ROUNDS; k++) {
    double t = now_ns();
    for (int j = 0; j < n; j++)
      call();
    r[k] = (now_ns() - t) / n;
  }
  qsort(r, ROUNDS, sizeof r[0], cmp);
  return r[ROUNDS / 2];
}

/* a cached FILE_SIZE file, unlinked, written in writes of `piece` bytes (then,
   reread: evicted and read back by 128 KiB reads); -1 on failure */
static int cached_file(size_t piece, int reread) {
  static char buf[FILE_SIZE];
  char path[] = "/var/tmp/zcs-checks-XXXXXX"; /* not /tmp: a tmpfs refuses RWF_NOWAIT */
  int f = mkstemp(path);
  if (f < 0) {
    perror("mkstemp");
    return -1;
  }
  unlink(path);
  memset(buf, 'x', sizeof buf);
  for (size_t at = 0; at < sizeof buf; at += piece)
    if (write(f, buf + at, piece) != (ssize_t)piece) {
      perror("write");
      close(f);
      return -1;
    }
  int rc = reread ? (fsync(f) < 0 ? errno : posix_fadvise(f, 0, 0, POSIX_FADV_DONTNEED)) : 0;
  if (rc) {
    errno = rc;
    perror("evict");
    close(f);
    return -1;
  }
  for (size_t at = 0; at < sizeof buf; at += 128 << 10)
    if (pread(f, buf + at, 128 << 10, (off_t)at) != 128 << 10) {
      perror("pread");
      close(f);
      return -1;
    }
  return f;
}

int main(int argc, char **argv) {
  int n = argc > 1 && !strcmp(argv[1], "--quick") ? 2000 : 200000;
  int files[3] = {-1, -1, -1};
  static const char *const how[3] = {"in one write", "4 KiB at a time", "read back from disk"};
  if ((files[0] = fd = cs_fd = cached_file(FILE_SIZE, 0)) < 0 || (files[1] = cached_file(4096, 0)) < 0 ||
      (files[2] = cached_file(FILE_SIZE, 1)) < 0)
    return 1;
  printf("ns per call, median of %d rounds of %d calls, the first 16 KiB of a cached file\n\n", ROUNDS, n);
  printf("| syscall | ns | per send | why |\n|---|---|---|---|\n");
  double total = 0;
  for (size_t i = 0; i < sizeof CHECKS / sizeof CHECKS[0]; i++) {
    double ns = median_ns(CHECKS[i].name, CHECKS[i].call, n);
    if (ns < 0)
      return 1;
    total += ns * CHECKS[i].times;
    printf("| %s | %.0f | %d | %s |\n", CHECKS[i].name, ns, CHECKS[i].times, CHECKS[i].why);
  }
  printf("\nzcsend's checks per 16 KiB send: %.2f us\n", total / 1000);
  printf("\ncachestat, and the readiness check (zcs__range_ready), by range\n\n");
  printf("| file cached | range | cachestat ns | ns per page | readiness check us |\n"
         "|---|---|---|---|---|\n");
  long page = sysconf(_SC_PAGESIZE);
  for (int k = 0; k < 3; k++) {
    cs_fd = files[k];
    for (uint64_t len = (uint64_t)page; len <= FILE_SIZE; len *= len < SIZE ? 2 : 4) {
      cs_len = len;
      int times = len > (256 << 10) ? n / 16 : n / 4;
      double ns = median_ns("cachestat", c_cachestat, times);
      double ready = median_ns("the readiness check", c_ready, times);
      if (ns < 0 || ready < 0)
        return 1;
      printf("| %s | %llu KiB | %.0f | %.1f | %.2f |\n", how[k],
             (unsigned long long)(len >> 10), ns, ns / (double)(len / (uint64_t)page), ready / 1000);
    }
  }
  close(files[1]);
  close(files[2]);
  close(fd);
  return 0;
}
