/* C core tests (Check). Each test runs in its own process (CK_FORK), talks to
 * real sockets, pipes and files, and compares every byte. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include "zcsend.h"
#include "zcsend_engine.h"
#include "zcsend_ev.h"

/* ---- helpers --------------------------------------------------------------- */
static char tmpdir[] = "/tmp/zcs-test-XXXXXX";
/* evicted files live on /var/tmp (make_cold_file): /tmp may be a tmpfs */
static char colddir[] = "/var/tmp/zcs-cold-XXXXXX";
static int colddir_made;

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(tmpdir)); }
static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
  if (colddir_made) { /* here too, for a test that failed before its cold_cleanup() */
    snprintf(cmd, sizeof cmd, "rm -rf %s", colddir);
    ck_assert_int_eq(system(cmd), 0);
    colddir_made = 0;
  }
}

static unsigned char *pattern(size_t len, unsigned seed) {
  unsigned char *p = malloc(len ? len : 1);
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    p[i] = (unsigned char)x;
  }
  return p;
}

/* a file holding len pattern bytes; returns an O_RDONLY fd */
static int make_file(const char *name, const unsigned char *data, size_t len) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
  close(fd);
  fd = open(path, O_RDONLY);
  ck_assert_int_ge(fd, 0);
  return fd;
}

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }
static void small_sndbuf(int fd) {
  int sz = 4096;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
}

/* a socketpair (unix) or a loopback TCP pair; [0] non-blocking sender with a 4 KiB buffer */
static void make_pair(int tcp, int sv[2]) {
  if (!tcp) {
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  } else {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(l, 1), 0);
    getsockname(l, (struct sockaddr *)&a, &al);
    sv[1] = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_eq(connect(sv[1], (struct sockaddr *)&a, sizeof a), 0);
    sv[0] = accept(l, NULL, NULL);
    ck_assert_int_ge(sv[0], 0);
    close(l);
  }
  small_sndbuf(sv[0]);
  set_nonblock(sv[0]);
}

struct reader {
  int fd;
  unsigned char *buf;
  size_t len, cap;
  pthread_t th;
};
static void *read_all(void *arg) {
  struct reader *r = arg;
  for (;;) {
    if (r->len == r->cap) {
      r->cap = r->cap ? r->cap * 2 : 65536;
      r->buf = realloc(r->buf, r->cap);
    }
    ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len > 8192 ? 8192 : r->cap - r->len);
    if (n <= 0)
      break;
    r->len += (size_t)n;
  }
  return NULL;
}
static void reader_start(struct reader *r, int fd) {
  memset(r, 0, sizeof *r);
  r->fd = fd;
  pthread_create(&r->th, NULL, read_all, r);
}
static void reader_join(struct reader *r) { pthread_join(r->th, NULL); }

#include <poll.h>
/* steps until done, waiting with poll on what each step asks for; counts steps */
static int drive(zcs_transfer_t *t, int *steps) {
  int rc;
  *steps = 0;
  while ((rc = zcs_transfer_step(t)) > 0) {
    int ev;
    int fd = zcs_transfer_wait_fd(t, rc, &ev);
    struct pollfd p = {.fd = fd, .events = ev == ZCS_WAIT_READ ? POLLIN : POLLOUT};
    poll(&p, 1, 5000);
    (*steps)++;
  }
  return rc;
}

/* drives t to ZCS_DONE while a reader thread takes everything from sv[1]; the
   sending end (sv[0]) is closed after; returns what the reader got */
static struct reader drive_to_done(zcs_transfer_t *t, int sv[2]) {
  struct reader r;
  reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(t, &steps), ZCS_DONE);
  close(sv[0]);
  reader_join(&r);
  return r;
}

/* Sends a file (from off, count bytes or to EOF) over a fresh pair and checks
 * every byte arrives; with hlen, a head of hlen bytes goes first (bigger than
 * the 4 KiB send buffer, so it leaves in pieces) and sent counts the file only. */
static void check_send_head(int tcp, size_t len, int64_t off, int64_t count, int emulate,
                            size_t hlen) {
  unsigned char *data = pattern(len, 7);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(tcp, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, off, count, 0), 0);
  if (emulate)
    t.backend = ZCS_BACKEND_EMULATED;
  unsigned char *head = hlen ? pattern(hlen, 28) : NULL;
  if (hlen) {
    ck_assert_int_eq(zcs_transfer_set_head(&t, head, hlen), 0);
    ck_assert_int_eq(zcs_transfer_set_head(&t, head, hlen), -EINVAL); /* twice */
    memset(head, 0, hlen); /* it was copied */
  }
  struct reader r;
  reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
  close(sv[0]);
  reader_join(&r);
  size_t want = count < 0 ? len - (size_t)off : (size_t)count;
  ck_assert_uint_eq(t.sent, want);
  ck_assert_uint_eq(zcs_transfer_head_sent(&t), hlen);
  ck_assert_uint_eq(r.len, hlen + want);
  if (hlen) {
    unsigned char *want_head = pattern(hlen, 28);
    ck_assert(memcmp(r.buf, want_head, hlen) == 0);
    free(want_head);
  }
  ck_assert(want == 0 || memcmp(r.buf + hlen, data + off, want) == 0);
  ck_assert_uint_eq(t.sent_zero_copy, emulate ? 0 : want);
  /* a Unix socket's 4 KiB send buffer is a hard bound (TCP autotunes past it):
     it forces a partial send and a wait every few dozen KiB */
  if (!tcp && want >= (8u << 20))
    ck_assert_msg(steps > (int)(want >> 17), "only %d waits for %zu bytes", steps, want);
  zcs_transfer_release(&t);
  free(head); free(r.buf); free(data); close(sv[1]); close(fd);
}

static void check_send(int tcp, size_t len, int64_t off, int64_t count, int emulate) {
  check_send_head(tcp, len, off, count, emulate, 0);
}

/* ---- backends and partial progress ---------------------------------------- */
START_TEST(sendfile_unix_small_buffers) { check_send(0, 96 << 20, 0, -1, 0); }
END_TEST
START_TEST(sendfile_tcp_small_buffers) { check_send(1, 8 << 20, 0, -1, 0); }
END_TEST
START_TEST(sendfile_offset_count) { check_send(1, 3 << 20, 12345, 1000001, 0); }
END_TEST
START_TEST(emulated_tcp_small_buffers) { check_send(1, 8 << 20, 0, -1, 1); }
END_TEST
START_TEST(emulated_unix_small_buffers) { check_send(0, 96 << 20, 0, -1, 1); }
END_TEST
START_TEST(emulated_offset_count) { check_send(0, 3 << 20, 777, 2000003, 1); }
END_TEST

START_TEST(emulated_selected_by_env) {
  setenv("ZCSEND_BACKEND", "emulated", 1);
  ck_assert_str_eq(zcs_backend_name(), "emulated");
  unsigned char *data = pattern(100000, 3);
  int fd = make_file("f", data, 100000);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(t.backend, ZCS_BACKEND_EMULATED);
  zcs_transfer_release(&t);
  free(data);
}
END_TEST

START_TEST(unknown_backend_env) {
  setenv("ZCSEND_BACKEND", "bogus", 1);
  ck_assert_int_eq(zcs_backend_init(), ZCS_EBACKEND);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], 0, 0, -1, 0), ZCS_EBACKEND);
}
END_TEST

struct pipe_writer { int fd; const unsigned char *data; size_t len; pthread_t th; };
static void *write_pipe(void *arg) {
  struct pipe_writer *w = arg;
  for (size_t off = 0; off < w->len;) {
    size_t n = w->len - off < 10000 ? w->len - off : 10000;
    ssize_t k = write(w->fd, w->data + off, n);
    if (k <= 0) break;
    off += (size_t)k;
    if (off % 300000 < 10000) usleep(1000); /* let the source run dry now and then */
  }
  close(w->fd);
  return NULL;
}

static void check_pipe(int emulate) {
  size_t len = 3 << 20;
  unsigned char *data = pattern(len, 11);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], p[0], 0, ZCS_COUNT_TO_EOF, 0), 0);
  ck_assert_int_eq(t.backend, ZCS_BACKEND_SPLICE);
  if (emulate) t.backend = ZCS_BACKEND_EMULATED;
  struct pipe_writer w = {p[1], data, len, 0};
  pthread_create(&w.th, NULL, write_pipe, &w);
  struct reader r;
  reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
  close(sv[0]);
  reader_join(&r);
  pthread_join(w.th, NULL);
  ck_assert_uint_eq(t.sent, len);
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, data, len) == 0);
  ck_assert_uint_eq(t.sent_zero_copy, emulate ? 0 : len);
  zcs_transfer_release(&t);
  free(r.buf); free(data);
}
START_TEST(splice_from_pipe_to_eof) { check_pipe(0); }
END_TEST
START_TEST(emulated_from_pipe_to_eof) { check_pipe(1); }
END_TEST

START_TEST(char_device_goes_emulated) {
  int z = open("/dev/zero", O_RDONLY);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], z, 0, 1 << 20, 0), 0);
  ck_assert_int_eq(t.backend, ZCS_BACKEND_EMULATED);
  struct reader r;
  reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
  close(sv[0]);
  reader_join(&r);
  ck_assert_uint_eq(r.len, 1 << 20);
  for (size_t i = 0; i < r.len; i++) ck_assert_int_eq(r.buf[i], 0);
  zcs_transfer_release(&t);
  zcs_transfer_t t2;
  ck_assert_int_eq(zcs_transfer_init(&t2, sv[1], z, 0, 10, ZCS_F_NO_FALLBACK), ZCS_EBLOCKING);
  set_nonblock(sv[1]);
  ck_assert_int_eq(zcs_transfer_init(&t2, sv[1], z, 0, 10, ZCS_F_NO_FALLBACK), ZCS_EUNSUPPORTED);
  free(r.buf);
}
END_TEST

START_TEST(memory_transfer) {
  size_t len = 1 << 20;
  unsigned char *data = pattern(len, 5);
  int sv[2];
  make_pair(1, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init_memory(&t, sv[0], data, len, 0), 0);
  memset(data, 0, 10); /* the transfer holds its own copy */
  struct reader r;
  reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
  close(sv[0]);
  reader_join(&r);
  unsigned char *want = pattern(len, 5);
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, want, len) == 0);
  zcs_transfer_release(&t);
  free(r.buf); free(data); free(want);
}
END_TEST

/* sendfile(2) refuses an O_APPEND destination with EINVAL: the transfer must
   copy instead, from where it stands, or fail cleanly with ZCS_F_NO_FALLBACK */
START_TEST(fallback_on_einval) {
  size_t len = 500000;
  unsigned char *data = pattern(len, 9);
  int fd = make_file("src", data, len);
  char path[256];
  snprintf(path, sizeof path, "%s/dst", tmpdir);
  int out = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK, 0644);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, out, fd, 0, -1, ZCS_F_NO_FALLBACK), 0);
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_EUNSUPPORTED);
  ck_assert_uint_eq(t.sent, 0);
  zcs_transfer_release(&t);
  ck_assert_int_eq(zcs_transfer_init(&t, out, fd, 0, -1, 0), 0);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
  ck_assert_int_eq(t.backend, ZCS_BACKEND_EMULATED);
  ck_assert_uint_eq(t.sent, len);
  ck_assert_uint_eq(t.sent_zero_copy, 0);
  zcs_transfer_release(&t);
  close(out);
  unsigned char *got = malloc(len);
  int in = open(path, O_RDONLY);
  ck_assert_int_eq(read(in, got, len), (ssize_t)len);
  ck_assert(memcmp(got, data, len) == 0);
  free(got); free(data);
}
END_TEST

START_TEST(budget_bounds_one_step) {
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 1);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(0, sv);
  int big = 8 << 20;
  setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  t.budget = 65536;
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_WANT_WRITE);
  ck_assert_uint_le(t.sent, 65536 + 0u);
  ck_assert_uint_gt(t.sent, 0);
  zcs_transfer_release(&t);
  free(data);
}
END_TEST

/* blocked tells a spent budget from a full socket; peek moves nothing and
   advance counts what a host wrote itself (the nginx-lua wait) */
START_TEST(blocked_peek_advance) {
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 3);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 100, 1 << 20, 0), 0);
  unsigned char buf[64];
  ck_assert_int_eq(zcs_transfer_peek(&t, buf, 10), 10);
  ck_assert(memcmp(buf, data + 100, 10) == 0);
  ck_assert_int_eq(zcs_transfer_peek(&t, buf, 10), 10); /* again: nothing moved */
  ck_assert_int_eq(send(sv[0], buf, 3, 0), 3);
  ck_assert_int_eq(zcs_transfer_advance(&t, 3), 0);
  ck_assert_uint_eq(t.sent, 3);
  ck_assert_int_eq(zcs_transfer_advance(&t, 1 << 20), -EINVAL); /* past what is left */
  t.budget = 4096;
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_WANT_WRITE);
  ck_assert_int_eq(t.blocked, 0); /* the budget, not the socket */
  int rc;
  while ((rc = zcs_transfer_step(&t)) == ZCS_WANT_WRITE && !t.blocked) {
  }
  ck_assert_int_eq(rc, ZCS_WANT_WRITE);
  ck_assert_int_eq(t.blocked, 1); /* nobody reads: the socket is full */
  uint64_t before = t.sent;
  /* read everything so far, then finish: the bytes are the file's, in order */
  unsigned char *got = malloc(1 << 20);
  size_t have = 0;
  while (have < before) {
    ssize_t n = read(sv[1], got + have, (1 << 20) - have);
    ck_assert_int_gt(n, 0);
    have += (size_t)n;
  }
  while ((rc = zcs_transfer_step(&t)) == ZCS_WANT_WRITE) {
    ssize_t n = read(sv[1], got + have, (1 << 20) - have);
    ck_assert_int_gt(n, 0);
    have += (size_t)n;
  }
  ck_assert_int_eq(rc, ZCS_DONE);
  while (have < (1 << 20)) {
    ssize_t n = read(sv[1], got + have, (1 << 20) - have);
    ck_assert_int_gt(n, 0);
    have += (size_t)n;
  }
  ck_assert(memcmp(got, data + 100, 1 << 20) == 0);
  ck_assert_int_eq(zcs_transfer_peek(&t, buf, 10), 0); /* over */
  zcs_transfer_release(&t);
  free(got);
  free(data);
}
END_TEST

/* ZCS_F_EXACT_COUNT: a count past a sized file's end is refused at init,
   nothing counted; without the flag it is the rest of the file */
START_TEST(exact_count) {
  size_t len = 1000;
  unsigned char *data = pattern(len, 9);
  int fd = make_file("x", data, len);
  int sv[2];
  make_pair(0, sv);
  zcs_stats_t before, after;
  zcs_stats(&before);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 10, 991, ZCS_F_EXACT_COUNT), ZCS_ETRUNCATED);
  zcs_transfer_release(&t);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 2000, 1, ZCS_F_EXACT_COUNT), ZCS_ETRUNCATED);
  zcs_transfer_release(&t);
  zcs_stats(&after);
  ck_assert_uint_eq(after.started, before.started);
  ck_assert_uint_eq(after.cancelled, before.cancelled);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 10, 990, ZCS_F_EXACT_COUNT), 0);
  ck_assert_int_eq(t.remaining, 990);
  zcs_transfer_release(&t);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 10, 5000, 0), 0);
  ck_assert_int_eq(t.remaining, 990);
  zcs_transfer_release(&t);
  free(data);
}
END_TEST

START_TEST(peek_refuses_what_it_cannot) {
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], p[0], 0, -1, 0), 0);
  unsigned char buf[8];
  ck_assert_int_eq(zcs_transfer_peek(&t, buf, 8), -ESPIPE);
  zcs_transfer_release(&t);
  static const char head[] = "HTTP/1.1 200 OK\r\n\r\n";
  size_t len = 1000;
  unsigned char *data = pattern(len, 5);
  int fd = make_file("g", data, len);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_set_head(&t, head, sizeof head - 1), 0);
  ck_assert_int_eq(zcs_transfer_peek(&t, buf, 8), -EAGAIN); /* its head goes first */
  zcs_transfer_release(&t);
  close(p[0]);
  close(p[1]);
  free(data);
}
END_TEST

/* ---- bad input -------------------------------------------------------------- */
START_TEST(bad_inputs) {
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], 9999, 0, -1, 0), -EBADF);
  ck_assert_int_eq(zcs_transfer_init(&t, 9999, 0, 0, -1, 0), -EBADF);
  int dir = open(tmpdir, O_RDONLY | O_DIRECTORY);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], dir, 0, -1, 0), -EISDIR);
  char path[256];
  snprintf(path, sizeof path, "%s/w", tmpdir);
  int wo = open(path, O_WRONLY | O_CREAT, 0644);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], wo, 0, -1, 0), -EBADF);
  unsigned char d[10] = {0};
  int fd = make_file("f", d, 10);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, -1, -1, 0), -EINVAL);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -2, 0), -EINVAL);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[1], fd, 0, -1, 0), ZCS_EBLOCKING);
  ck_assert_str_eq(zcs_err_name(ZCS_EBLOCKING), "EBLOCKING");
  ck_assert_str_eq(zcs_err_name(-EPIPE), "EPIPE");
  ck_assert_str_eq(zcs_strerror(ZCS_ETRUNCATED),
                   "file ended before the requested byte count was sent");
  /* offset past EOF: nothing to send, done at once */
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 100, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_DONE);
  ck_assert_uint_eq(t.sent, 0);
  zcs_transfer_release(&t);
}
END_TEST

static void check_truncated(int emulate) {
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 2);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  if (emulate) t.backend = ZCS_BACKEND_EMULATED;
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_WANT_WRITE);
  char path[256];
  snprintf(path, sizeof path, "%s/f", tmpdir);
  ck_assert_int_eq(truncate(path, 1 << 20), 0);
  struct reader r;
  reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_ETRUNCATED);
  close(sv[0]);
  reader_join(&r);
  ck_assert_uint_eq(r.len, t.sent); /* the error says exactly what went out */
  ck_assert_uint_eq(t.sent, 1 << 20);
  ck_assert(memcmp(r.buf, data, r.len) == 0);
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_ETRUNCATED); /* sticky */
  zcs_transfer_release(&t);
  free(r.buf); free(data);
}
START_TEST(file_shrinks_mid_transfer) { check_truncated(0); }
END_TEST
START_TEST(file_shrinks_mid_transfer_emulated) { check_truncated(1); }
END_TEST

/* the default SIGPIPE disposition kills the process: a peer that goes away must
   give EPIPE/ECONNRESET, no signal, and leave the dispositions and mask alone */
static void check_peer_gone_flags(int emulate, int tcp, int flags);
static void check_peer_gone(int emulate, int tcp) { check_peer_gone_flags(emulate, tcp, 0); }
static void check_peer_gone_flags(int emulate, int tcp, int flags) {
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 4);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(tcp, sv);
  struct sigaction before, after;
  sigaction(SIGPIPE, NULL, &before);
  ck_assert_ptr_eq(before.sa_handler, SIG_DFL);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, flags), 0);
  if (emulate) t.backend = ZCS_BACKEND_EMULATED;
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_WANT_WRITE);
  uint64_t before_close = t.sent;
  close(sv[1]);
  int steps;
  int rc = drive(&t, &steps);
  ck_assert_msg(rc == -EPIPE || rc == -ECONNRESET, "rc=%d", rc);
  ck_assert_uint_eq(t.sent, before_close);
  sigaction(SIGPIPE, NULL, &after);
  ck_assert_ptr_eq(after.sa_handler, SIG_DFL);
  sigset_t mask, pending;
  pthread_sigmask(SIG_SETMASK, NULL, &mask);
  ck_assert(!sigismember(&mask, SIGPIPE));
  sigpending(&pending);
  ck_assert(!sigismember(&pending, SIGPIPE));
  zcs_transfer_release(&t);
  free(data);
}
START_TEST(peer_gone_no_sigpipe) { check_peer_gone(0, 0); }
END_TEST
START_TEST(peer_gone_no_sigpipe_tcp) { check_peer_gone(0, 1); }
END_TEST
START_TEST(peer_gone_no_sigpipe_emulated) { check_peer_gone(1, 0); }
END_TEST
/* ZCS_F_SIGPIPE_IF_DEFAULT looks at the disposition: at the default it still masks */
START_TEST(peer_gone_no_sigpipe_if_default) {
  check_peer_gone_flags(0, 1, ZCS_F_SIGPIPE_IF_DEFAULT);
  check_peer_gone_flags(1, 0, ZCS_F_SIGPIPE_IF_DEFAULT);
}
END_TEST

/* the checks a caller may vouch for: a blocking socket passes init when the
   caller says it is not; a write-only file then fails at the first read */
START_TEST(flags_the_caller_vouches_for) {
  unsigned char *data = pattern(4096, 9);
  int fd = make_file("f", data, 4096);
  char path[512];
  snprintf(path, sizeof path, "%s/f", tmpdir);
  int wo = open(path, O_WRONLY);
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), ZCS_EBLOCKING);
  zcs_transfer_release(&t);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, ZCS_F_SOCK_NONBLOCKING), 0);
  zcs_transfer_release(&t);
  set_nonblock(sv[0]);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], wo, 0, -1, 0), -EBADF);
  zcs_transfer_release(&t);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], wo, 0, -1, ZCS_F_SOURCE_READABLE), 0);
  ck_assert_int_eq(zcs_transfer_step(&t), -EBADF);
  ck_assert_uint_eq(t.sent, 0);
  zcs_transfer_release(&t);
  close(wo); close(fd); close(sv[0]); close(sv[1]); free(data);
}
END_TEST

/* A transfer begun on the stack goes on from heap memory: zcs_transfer_move()
   hands over everything (head half sent, emulation buffer, stats) and leaves
   the source empty: releasing it counts nothing. */
static void check_move(int emulate) {
  size_t len = 2 << 20, hlen = 10000;
  unsigned char *data = pattern(len, 11), *head = pattern(hlen, 12);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(0, sv);
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_transfer_t t, *moved = malloc(sizeof *moved);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, ZCS_F_SIGPIPE_IF_DEFAULT), 0);
  if (emulate)
    t.backend = ZCS_BACKEND_EMULATED;
  ck_assert_int_eq(zcs_transfer_set_head(&t, head, hlen), 0);
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_WANT_WRITE); /* a 4 KiB buffer: partial */
  ck_assert_uint_lt(zcs_transfer_head_sent(&t) + t.sent, hlen + len);
  zcs_transfer_move(moved, &t);
  zcs_transfer_release(&t); /* empty now: frees nothing of moved's, counts nothing */
  struct reader r = drive_to_done(moved, sv);
  ck_assert_uint_eq(moved->sent, len);
  ck_assert_uint_eq(r.len, hlen + len);
  ck_assert(memcmp(r.buf, head, hlen) == 0 && memcmp(r.buf + hlen, data, len) == 0);
  zcs_transfer_release(moved);
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.started - s0.started, 1);
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  ck_assert_uint_eq(s1.cancelled - s0.cancelled, 0);
  ck_assert_uint_eq(s1.active, s0.active);
  free(moved); free(r.buf); free(data); free(head); close(sv[1]); close(fd);
}
START_TEST(move_mid_transfer) { check_move(0); }
END_TEST
START_TEST(move_mid_transfer_emulated) { check_move(1); }
END_TEST

/* a sparse file over 4 GiB, sent from an offset past 4 GiB */
START_TEST(offsets_past_4gib) {
  char path[256];
  snprintf(path, sizeof path, "%s/sparse", tmpdir);
  int w = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  int64_t off = (int64_t)4 << 30;
  off += 123457;
  size_t len = 1 << 20;
  unsigned char *data = pattern(len, 6);
  ck_assert_int_eq(pwrite(w, data, len, off), (ssize_t)len);
  ck_assert_int_eq(ftruncate(w, ((int64_t)5 << 30)), 0);
  close(w);
  for (int emulate = 0; emulate < 2; emulate++) {
    int fd = open(path, O_RDONLY);
    int sv[2];
    make_pair(0, sv);
    zcs_transfer_t t;
    ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, off, (int64_t)len, 0), 0);
    if (emulate) t.backend = ZCS_BACKEND_EMULATED;
    struct reader r;
    reader_start(&r, sv[1]);
    int steps;
    ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
    close(sv[0]);
    reader_join(&r);
    ck_assert_uint_eq(r.len, len);
    ck_assert(memcmp(r.buf, data, len) == 0);
    ck_assert_int_eq(t.offset, off + (int64_t)len);
    zcs_transfer_release(&t);
    free(r.buf); close(sv[1]); close(fd);
  }
  free(data);
}
END_TEST

START_TEST(stats_count_outcomes) {
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  unsigned char *data = pattern(1000, 1);
  int fd = make_file("f", data, 1000);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t a, b;
  ck_assert_int_eq(zcs_transfer_init(&a, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_step(&a), ZCS_DONE);
  ck_assert_int_eq(zcs_transfer_init(&b, sv[0], fd, 0, -1, 0), 0);
  zcs_stats(&s1); /* an ended transfer is counted at once, not when released */
  ck_assert_uint_eq(s1.active - s0.active, 1);
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  zcs_transfer_cancel(&b);
  ck_assert_int_eq(zcs_transfer_step(&b), -ECANCELED);
  zcs_transfer_release(&a);
  zcs_transfer_release(&b);
  zcs_transfer_release(&b); /* twice is harmless */
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.started - s0.started, 2);
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  ck_assert_uint_eq(s1.cancelled - s0.cancelled, 1);
  ck_assert_uint_eq(s1.active, s0.active);
  ck_assert_uint_eq(s1.bytes_zero_copy - s0.bytes_zero_copy, 1000);
  free(data);
}
END_TEST

/* ---- chunk sources (the write path) --------------------------------------------- */
/* reads every chunk of c into out (cap bytes at a time); returns the last result */
static ssize_t chunks_read_all(zcs_chunks_t *c, unsigned char *out, size_t cap, size_t *total) {
  ssize_t n;
  *total = 0;
  while ((n = zcs_chunks_read(c, out + *total, cap, 0)) > 0)
    *total += (size_t)n;
  return n;
}

START_TEST(chunks_sizing) {
  size_t len = 1000, got;
  unsigned char *data = pattern(len, 41), out[2000];
  int fd = make_file("s", data, len);
  zcs_chunks_t c;
  /* to the end: the count fixed now from the size, read at offsets */
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 100, ZCS_COUNT_TO_EOF, 0), 0);
  ck_assert_int_eq(c.sized, 1);
  ck_assert_int_eq(c.offset, 100);
  ck_assert_int_eq(c.remaining, 900);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 256);
  ck_assert_int_eq(chunks_read_all(&c, out, 256, &got), 0);
  ck_assert_uint_eq(got, 900);
  ck_assert(memcmp(out, data + 100, 900) == 0);
  ck_assert_int_eq(c.offset, 1000);
  ck_assert_int_eq(c.remaining, 0);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 0);
  ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 0); /* pread: the fd's position is the caller's */
  zcs_chunks_end(&c, ZCS_DONE);
  ck_assert_int_eq(c.result, ZCS_DONE);
  ck_assert_int_eq(zcs_chunks_read(&c, out, 256, 0), 0);
  zcs_chunks_release(&c);
  /* a count inside the file: never past it */
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 10, 50, 0), 0);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 50);
  ck_assert_int_eq(chunks_read_all(&c, out, 256, &got), 0);
  ck_assert_uint_eq(got, 50);
  ck_assert(memcmp(out, data + 10, 50) == 0);
  zcs_chunks_release(&c);
  /* past the end: the rest of the file (asyncio's rule) */
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 10, 5000, 0), 0);
  ck_assert_int_eq(c.remaining, 990);
  ck_assert_int_eq(chunks_read_all(&c, out, 4096, &got), 0);
  ck_assert_uint_eq(got, 990);
  zcs_chunks_release(&c);
  /* an offset past the end: nothing to hand out */
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 5000, ZCS_COUNT_TO_EOF, 0), 0);
  ck_assert_int_eq(c.remaining, 0);
  ck_assert_int_eq(zcs_chunks_read(&c, out, 256, 0), 0);
  zcs_chunks_release(&c);
  close(fd);
  free(data);
}
END_TEST

START_TEST(chunks_exact_count) {
  size_t len = 1000;
  unsigned char *data = pattern(len, 42);
  int fd = make_file("e", data, len);
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_chunks_t c;
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 10, 991, ZCS_F_EXACT_COUNT), ZCS_ETRUNCATED);
  zcs_chunks_release(&c);
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 2000, 1, ZCS_F_EXACT_COUNT), ZCS_ETRUNCATED);
  zcs_chunks_release(&c);
  zcs_stats(&s1); /* refused before a byte: never started */
  ck_assert_uint_eq(s1.started, s0.started);
  ck_assert_uint_eq(s1.cancelled, s0.cancelled);
  ck_assert_uint_eq(s1.failed, s0.failed);
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 10, 990, ZCS_F_EXACT_COUNT), 0);
  ck_assert_int_eq(c.remaining, 990);
  zcs_chunks_release(&c);
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 10, ZCS_COUNT_TO_EOF, ZCS_F_EXACT_COUNT), 0);
  ck_assert_int_eq(c.remaining, 990);
  zcs_chunks_release(&c);
  close(fd);
  free(data);
}
END_TEST

START_TEST(chunks_bad_inputs) {
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_chunks_t c;
  int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY);
  ck_assert_int_eq(zcs_chunks_init(&c, dfd, 0, -1, 0), -EISDIR);
  zcs_chunks_release(&c);
  char path[256];
  snprintf(path, sizeof path, "%s/w", tmpdir);
  int wfd = open(path, O_WRONLY | O_CREAT, 0644);
  ck_assert_int_eq(zcs_chunks_init(&c, wfd, 0, -1, 0), -EBADF);
  int rfd = open(path, O_RDONLY);
  ck_assert_int_eq(zcs_chunks_init(&c, rfd, -1, -1, 0), -EINVAL);
  ck_assert_int_eq(zcs_chunks_init(&c, rfd, 0, -5, 0), -EINVAL);
  ck_assert_int_eq(zcs_chunks_init(&c, -1, -1, 10, 0), -EINVAL);
  close(wfd);
  ck_assert_int_eq(zcs_chunks_init(&c, wfd, 0, -1, 0), -EBADF); /* closed */
  zcs_chunks_release(&c);
  zcs_stats(&s1); /* a failed init counts nothing */
  ck_assert_uint_eq(s1.started, s0.started);
  ck_assert_uint_eq(s1.active, s0.active);
  ck_assert_uint_eq(s1.cancelled, s0.cancelled);
  /* the host reads (fd -1): zcsend can't; take checks what it hands over */
  unsigned char buf[16];
  ck_assert_int_eq(zcs_chunks_init(&c, -1, 0, 10, 0), 0);
  ck_assert_int_eq(zcs_chunks_read(&c, buf, sizeof buf, 0), -EBADF);
  ck_assert_int_eq(zcs_chunks_take(&c, 5, 4), -EINVAL); /* more than asked */
  ck_assert_int_eq(zcs_chunks_take(&c, 0, 0), -EINVAL);
  ck_assert_int_eq(zcs_chunks_take(&c, 11, 11), -EINVAL); /* past the range */
  ck_assert_int_eq(c.remaining, 10);
  ck_assert_int_eq(c.result, ZCS_RUNNING);
  zcs_chunks_release(&c);
  close(rfd);
  close(dfd);
}
END_TEST

/* A sized file that shrinks: its bytes, then ZCS_ETRUNCATED, counted failed once */
START_TEST(chunks_short_file_truncates) {
  size_t len = 1000, got;
  unsigned char *data = pattern(len, 43), out[1000];
  int fd = make_file("t", data, len);
  char path[256];
  snprintf(path, sizeof path, "%s/t", tmpdir);
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_chunks_t c;
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 0, ZCS_COUNT_TO_EOF, 0), 0);
  ck_assert_int_eq(c.remaining, 1000);
  ck_assert_int_eq(truncate(path, 600), 0);
  ck_assert_int_eq(chunks_read_all(&c, out, 256, &got), ZCS_ETRUNCATED);
  ck_assert_uint_eq(got, 600); /* every byte it still had */
  ck_assert(memcmp(out, data, 600) == 0);
  ck_assert_int_eq(c.result, ZCS_ETRUNCATED);
  ck_assert_int_eq(zcs_chunks_read(&c, out, 256, 0), ZCS_ETRUNCATED); /* for good */
  ck_assert_int_eq(zcs_chunks_take(&c, 1, 1), ZCS_ETRUNCATED);
  zcs_chunks_wrote(&c, 600);
  zcs_chunks_end(&c, ZCS_DONE); /* the first outcome stands */
  ck_assert_int_eq(c.result, ZCS_ETRUNCATED);
  zcs_chunks_release(&c);
  /* the host read the range elsewhere (a read job) and got less than it asked */
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 500, 100, 0), 0);
  ck_assert_int_eq(c.remaining, 100);
  ck_assert_int_eq(truncate(path, 550), 0);
  ck_assert_int_eq(zcs_chunks_take(&c, 50, 100), ZCS_ETRUNCATED);
  ck_assert_int_eq(c.offset, 550);
  ck_assert_int_eq(c.result, ZCS_ETRUNCATED);
  zcs_chunks_release(&c);
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.started - s0.started, 2);
  ck_assert_uint_eq(s1.failed - s0.failed, 2);
  ck_assert_uint_eq(s1.completed, s0.completed);
  ck_assert_uint_eq(s1.cancelled, s0.cancelled);
  ck_assert_uint_eq(s1.active, s0.active);
  ck_assert_uint_eq(s1.bytes_fallback - s0.bytes_fallback, 600);
  close(fd);
  free(data);
}
END_TEST

/* A pipe: read where it stands, until count or its end; never past the count */
/* a source that can't seek reads where it stands: an offset other than 0 is
   refused before a byte (it was ignored, and the stream's first bytes sent
   as if they were the ones at the offset) */
START_TEST(offset_on_a_pipe_is_espipe) {
  int p[2], sv[2];
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
  ck_assert_int_eq(write(p[1], "abcdef", 6), 6);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], p[0], 5, ZCS_COUNT_TO_EOF, 0), -ESPIPE);
  zcs_transfer_release(&t);
  zcs_chunks_t c;
  ck_assert_int_eq(zcs_chunks_init(&c, p[0], 5, 3, 0), -ESPIPE);
  zcs_chunks_release(&c);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], p[0], 0, 6, 0), 0); /* 0: where it stands */
  ck_assert_int_eq(t.offset, -1);
  zcs_transfer_release(&t);
  char b[8];
  ck_assert_int_eq(read(p[0], b, sizeof b), 6); /* nothing was read */
  close(p[0]); close(p[1]); close(sv[0]); close(sv[1]);
}
END_TEST

START_TEST(chunks_pipe_source) {
  unsigned char *data = pattern(3000, 44), out[4096];
  size_t got;
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  zcs_chunks_t c;
  ck_assert_int_eq(zcs_chunks_init(&c, p[0], 0, ZCS_COUNT_TO_EOF, 0), 0);
  ck_assert_int_eq(c.offset, -1);
  ck_assert_int_eq(c.sized, 0);
  ck_assert_int_eq(c.remaining, ZCS_COUNT_TO_EOF);
  ck_assert_int_eq(zcs_chunks_read(&c, out, sizeof out, ZCS_READ_NOWAIT), -EAGAIN); /* empty */
  ck_assert_int_eq(c.result, ZCS_RUNNING);
  ck_assert_int_eq(write(p[1], data, 3000), 3000);
  close(p[1]);
  ck_assert_int_eq(zcs_chunks_read(&c, out, 1000, ZCS_READ_NOWAIT), 1000);
  ck_assert_int_eq(chunks_read_all(&c, out + 1000, 700, &got), 0); /* its end is the range's */
  ck_assert_uint_eq(got, 2000);
  ck_assert(memcmp(out, data, 3000) == 0);
  ck_assert_int_eq(c.remaining, 0);
  ck_assert_int_eq(c.result, ZCS_RUNNING); /* the host ends it once its writer is done */
  zcs_chunks_end(&c, ZCS_DONE);
  zcs_chunks_release(&c);
  close(p[0]);
  /* a count: the pipe is not read past it */
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(write(p[1], data, 3000), 3000);
  ck_assert_int_eq(zcs_chunks_init(&c, p[0], 0, 1000, 0), 0);
  ck_assert_int_eq(chunks_read_all(&c, out, 4096, &got), 0);
  ck_assert_uint_eq(got, 1000);
  ck_assert_int_eq(read(p[0], out, sizeof out), 2000);
  zcs_chunks_release(&c);
  close(p[0]);
  close(p[1]);
  free(data);
}
END_TEST

/* From the page cache only: all of the chunk, or -EAGAIN and nothing consumed */
START_TEST(chunks_nowait_reads) {
  size_t len = (256 << 10) + 7;
  unsigned char *data = pattern(len, 45), *out = malloc(len);
  int fd = make_file("n", data, len); /* just written: in the page cache */
  zcs_chunks_t c;
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 1000, ZCS_COUNT_TO_EOF, 0), 0);
  ssize_t n = zcs_chunks_read(&c, out, 65536, ZCS_READ_NOWAIT);
  ck_assert(n == 65536 || n == -EAGAIN);
  if (n == 65536) {
    ck_assert(memcmp(out, data + 1000, 65536) == 0);
    ck_assert_int_eq(c.offset, 1000 + 65536);
  } else {
    ck_assert_int_eq(c.offset, 1000);
  }
  ck_assert_int_eq(c.result, ZCS_RUNNING);
  zcs_chunks_release(&c);
  /* evicted pages would wait for the disk: -EAGAIN, nothing consumed, no error */
  ck_assert_int_eq(fdatasync(fd), 0);
  ck_assert_int_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  ck_assert_int_eq(zcs_chunks_init(&c, fd, 0, ZCS_COUNT_TO_EOF, 0), 0);
  n = zcs_chunks_read(&c, out, len, ZCS_READ_NOWAIT);
  ck_assert(n == (ssize_t)len || n == -EAGAIN);
  ck_assert_int_eq(c.offset, n == -EAGAIN ? 0 : (int64_t)len);
  ck_assert_int_eq(c.result, ZCS_RUNNING);
  zcs_chunks_release(&c);
  close(fd);
  free(out);
  free(data);
}
END_TEST

/* The host reads a source zcsend can't see (fd -1) and hands the bytes over */
START_TEST(chunks_host_reads) {
  zcs_chunks_t c;
  ck_assert_int_eq(zcs_chunks_init(&c, -1, 7, 500, 0), 0);
  ck_assert_int_eq(c.offset, -1);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 256);
  ck_assert_int_eq(zcs_chunks_take(&c, 256, 256), 0);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 244);
  ck_assert_int_eq(zcs_chunks_take(&c, 100, 244), 0); /* unsized: short is not the end */
  ck_assert_int_eq(zcs_chunks_take(&c, 144, 144), 0);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 0);
  zcs_chunks_release(&c);
  ck_assert_int_eq(zcs_chunks_init(&c, -1, 0, ZCS_COUNT_TO_EOF, 0), 0);
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 256);
  ck_assert_int_eq(zcs_chunks_take(&c, 0, 256), 0); /* its end */
  ck_assert_uint_eq(zcs_chunks_want(&c, 256), 0);
  zcs_chunks_release(&c);
}
END_TEST

/* Each outcome counted once, bytes as written, and a release without an end
   counts as cancelled */
START_TEST(chunks_stats_counted_once) {
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_chunks_t a, b, c, d;
  ck_assert_int_eq(zcs_chunks_init(&a, -1, 0, 100, 0), 0);
  ck_assert_int_eq(zcs_chunks_init(&b, -1, 0, 100, 0), 0);
  ck_assert_int_eq(zcs_chunks_init(&c, -1, 0, 100, 0), 0);
  ck_assert_int_eq(zcs_chunks_init(&d, -1, 0, 100, 0), 0);
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.started - s0.started, 4);
  ck_assert_uint_eq(s1.active - s0.active, 4);
  zcs_chunks_wrote(&a, 60);
  zcs_chunks_wrote(&a, 40);
  ck_assert_uint_eq(a.sent, 100);
  zcs_chunks_end(&a, ZCS_DONE);
  zcs_chunks_end(&a, -EPIPE); /* once */
  zcs_chunks_end(&b, -EPIPE);
  zcs_chunks_end(&c, -ECANCELED);
  zcs_stats(&s1); /* counted when it ends, not when released */
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  ck_assert_uint_eq(s1.failed - s0.failed, 1);
  ck_assert_uint_eq(s1.cancelled - s0.cancelled, 1);
  ck_assert_uint_eq(s1.active - s0.active, 1);
  zcs_chunks_release(&a);
  zcs_chunks_release(&b);
  zcs_chunks_release(&c);
  zcs_chunks_release(&d); /* never ended: cancelled */
  zcs_chunks_release(&d); /* twice is harmless */
  ck_assert_int_eq(d.result, -ECANCELED);
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.started - s0.started, 4);
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  ck_assert_uint_eq(s1.failed - s0.failed, 1);
  ck_assert_uint_eq(s1.cancelled - s0.cancelled, 2);
  ck_assert_uint_eq(s1.active, s0.active);
  ck_assert_uint_eq(s1.bytes_fallback - s0.bytes_fallback, 100);
  ck_assert_uint_eq(s1.bytes_zero_copy, s0.bytes_zero_copy);
}
END_TEST

/* ---- libev driver ------------------------------------------------------------ */
struct job { zcs_transfer_t t; zcs_ev_transfer_t w; struct reader r; int sv[2]; int result; int calls; };
static void on_done(zcs_ev_transfer_t *w, int result) {
  struct job *j = w->data;
  j->result = result;
  j->calls++;
}

START_TEST(ev_driver_concurrent) {
  enum { N = 20 };
  size_t len = 2 << 20;
  unsigned char *data = pattern(len, 8);
  int fd = make_file("f", data, len);
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  static struct job jobs[N];
  pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  for (int i = 0; i < N; i++) {
    struct job *j = &jobs[i];
    memset(j, 0, sizeof *j);
    make_pair(i % 2, j->sv);
    ck_assert_int_eq(zcs_transfer_init(&j->t, j->sv[0], fd, i * 1000, -1, 0), 0);
    if (i % 3 == 0) j->t.backend = ZCS_BACKEND_EMULATED;
    reader_start(&j->r, j->sv[1]);
    j->w.lock = &lock;
    ck_assert_int_eq(zcs_ev_start(&j->w, loop, &j->t, on_done, j), 0);
    ck_assert_int_eq(zcs_ev_start(&j->w, loop, &j->t, on_done, j), 0); /* harmless twice */
  }
  /* cancel one mid-way: nothing more moves, the callback still comes once */
  zcs_transfer_cancel(&jobs[5].t);
  uint64_t at_cancel = jobs[5].t.sent;
  zcs_ev_kick(&jobs[5].w);
  ev_run(loop, 0);
  for (int i = 0; i < N; i++) {
    struct job *j = &jobs[i];
    close(j->sv[0]);
    reader_join(&j->r);
    ck_assert_int_eq(j->calls, 1);
    if (i == 5) {
      ck_assert_int_eq(j->result, -ECANCELED);
      ck_assert_uint_eq(j->t.sent, at_cancel);
      ck_assert_uint_eq(j->r.len, at_cancel);
    } else {
      ck_assert_int_eq(j->result, ZCS_DONE);
      ck_assert_uint_eq(j->r.len, len - (size_t)i * 1000);
      ck_assert(memcmp(j->r.buf, data + i * 1000, j->r.len) == 0);
    }
    zcs_ev_stop(&j->w);
    zcs_ev_stop(&j->w); /* harmless twice */
    zcs_transfer_release(&j->t);
    free(j->r.buf);
    close(j->sv[1]);
  }
  ev_loop_destroy(loop);
  free(data);
}
END_TEST

/* on_done never runs inside zcs_ev_start or zcs_ev_kick, even for a transfer
   one step finishes; zcs_ev_stop drops the step they queued */
START_TEST(ev_driver_never_reentrant) {
  size_t len = 1000;
  unsigned char *data = pattern(len, 13);
  int fd = make_file("r", data, len);
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct job j;
  memset(&j, 0, sizeof j);
  make_pair(0, j.sv);
  ck_assert_int_eq(zcs_transfer_init(&j.t, j.sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_ev_start(&j.w, loop, &j.t, on_done, &j), 0);
  ck_assert_int_eq(j.calls, 0);
  ck_assert_uint_eq(j.t.sent, 0); /* not even stepped yet */
  zcs_ev_kick(&j.w);
  ck_assert_int_eq(j.calls, 0);
  ev_run(loop, 0);
  ck_assert_int_eq(j.calls, 1);
  ck_assert_int_eq(j.result, ZCS_DONE);
  ck_assert_uint_eq(j.t.sent, len);
  zcs_ev_kick(&j.w); /* finished: nothing queued, no second call */
  ev_run(loop, 0);
  ck_assert_int_eq(j.calls, 1);
  zcs_transfer_release(&j.t);
  /* started, then stopped before the loop ran: no step, no callback */
  struct job k;
  memset(&k, 0, sizeof k);
  k.sv[0] = j.sv[0];
  ck_assert_int_eq(zcs_transfer_init(&k.t, k.sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_ev_start(&k.w, loop, &k.t, on_done, &k), 0);
  zcs_ev_stop(&k.w);
  ev_run(loop, 0);
  ck_assert_int_eq(k.calls, 0);
  ck_assert_uint_eq(k.t.sent, 0);
  zcs_transfer_release(&k.t);
  close(j.sv[0]);
  close(j.sv[1]);
  ev_loop_destroy(loop);
  free(data);
}
END_TEST

START_TEST(ev_driver_waits_on_pipe_source) {
  size_t len = 1 << 20;
  unsigned char *data = pattern(len, 12);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  struct job j;
  memset(&j, 0, sizeof j);
  make_pair(1, j.sv);
  ck_assert_int_eq(zcs_transfer_init(&j.t, j.sv[0], p[0], 0, -1, 0), 0);
  struct pipe_writer pw = {p[1], data, len, 0};
  pthread_create(&pw.th, NULL, write_pipe, &pw);
  reader_start(&j.r, j.sv[1]);
  zcs_ev_start(&j.w, loop, &j.t, on_done, &j);
  ev_run(loop, 0);
  pthread_join(pw.th, NULL);
  close(j.sv[0]);
  reader_join(&j.r);
  ck_assert_int_eq(j.result, ZCS_DONE);
  ck_assert_uint_eq(j.r.len, len);
  ck_assert(memcmp(j.r.buf, data, len) == 0);
  zcs_transfer_release(&j.t);
  ev_loop_destroy(loop);
  free(j.r.buf); free(data);
}
END_TEST


/* ---- TLS: real handshakes with OpenSSL, the client in a thread ------------- */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* a server context with a throwaway self-signed P-256 certificate */
static SSL_CTX *server_ctx(void) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  EVP_PKEY *key = EVP_EC_gen("P-256");
  X509 *crt = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(crt), 1);
  X509_gmtime_adj(X509_getm_notBefore(crt), 0);
  X509_gmtime_adj(X509_getm_notAfter(crt), 3600);
  X509_set_pubkey(crt, key);
  X509_NAME *name = X509_get_subject_name(crt);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1,
                             -1, 0);
  X509_set_issuer_name(crt, name);
  ck_assert_int_gt(X509_sign(crt, key, EVP_sha256()), 0);
  ck_assert_int_eq(SSL_CTX_use_certificate(ctx, crt), 1);
  ck_assert_int_eq(SSL_CTX_use_PrivateKey(ctx, key), 1);
  X509_free(crt);
  EVP_PKEY_free(key);
  return ctx;
}

struct tls_reader {
  int fd;
  SSL_CTX *ctx;
  size_t key_update_at; /* request a TLS 1.3 KeyUpdate after this many bytes (0: never) */
  size_t close_after;   /* close the socket after this many bytes (0: read to the end) */
  int max_version;
  unsigned char *buf;
  size_t len, cap;
  int key_updates;
  pthread_t th;
};

/* blocking client: handshake, then read plaintext until close_notify or EOF */
static void *tls_read_all(void *arg) {
  struct tls_reader *r = arg;
  SSL *ssl = SSL_new(r->ctx);
  SSL_set_fd(ssl, r->fd);
  if (SSL_connect(ssl) != 1)
    goto out;
  for (;;) {
    if (r->len == r->cap) {
      r->cap = r->cap ? r->cap * 2 : 65536;
      r->buf = realloc(r->buf, r->cap);
    }
    int n = SSL_read(ssl, r->buf + r->len, (int)(r->cap - r->len));
    if (n <= 0)
      break;
    size_t before = r->len;
    r->len += (size_t)n;
    if (r->key_update_at && before < r->key_update_at && r->len >= r->key_update_at &&
        SSL_version(ssl) == TLS1_3_VERSION) {
      /* ask the sender to rotate its keys too, and send ours now */
      if (SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED) == 1 && SSL_do_handshake(ssl) == 1)
        r->key_updates++;
    }
    if (r->close_after && r->len >= r->close_after)
      break;
  }
out:
  if (r->close_after)
    shutdown(r->fd, SHUT_RDWR);
  SSL_free(ssl);
  ERR_clear_error();
  return NULL;
}

static void tls_reader_start(struct tls_reader *r, int fd) {
  r->fd = fd;
  r->ctx = SSL_CTX_new(TLS_client_method());
  if (r->max_version)
    SSL_CTX_set_max_proto_version(r->ctx, r->max_version);
  SSL_CTX_set_verify(r->ctx, SSL_VERIFY_NONE, NULL);
  pthread_create(&r->th, NULL, tls_read_all, r);
}

static void tls_reader_join(struct tls_reader *r) {
  pthread_join(r->th, NULL);
  SSL_CTX_free(r->ctx);
}

/* the server side starts un-handshaken: the first steps drive the handshake
   through SSL_write and must wait for readability (ZCS_WANT_READ) */
static void check_tls(int tcp, size_t len, int64_t off, int64_t count, int max_version,
                      int key_update) {
  unsigned char *data = pattern(len, 21);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(tcp, sv);
  SSL_CTX *sctx = server_ctx();
  SSL *ssl = SSL_new(sctx);
  SSL_set_fd(ssl, sv[0]);
  SSL_set_accept_state(ssl);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, off, count, 0), 0);
  ck_assert_int_eq(zcs_transfer_set_ssl(&t, ssl), 0);
  ck_assert_int_eq(t.backend, ZCS_BACKEND_TLS);
  ck_assert_int_eq(zcs_transfer_set_ssl(&t, ssl), -EINVAL); /* twice */
  /* no client yet: the step must wait for the ClientHello to be readable */
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_WANT_READ);
  ck_assert_uint_eq(t.sent, 0);
  struct tls_reader r = {.max_version = max_version, .key_update_at = key_update ? len / 3 : 0};
  tls_reader_start(&r, sv[1]);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_DONE);
  size_t want = count < 0 ? len - (size_t)off : (size_t)count;
  ck_assert_uint_eq(t.sent, want);
  ck_assert_uint_eq(t.sent_zero_copy, 0);
  /* close_notify (best effort on a non-blocking socket), then a FIN, and the fd
     only once the reader is done: closing a socket with unread input (the
     client's KeyUpdate) sends an RST, which can destroy bytes in flight */
  SSL_shutdown(ssl);
  shutdown(sv[0], SHUT_WR);
  tls_reader_join(&r);
  close(sv[0]);
  ck_assert_uint_eq(r.len, want);
  ck_assert(memcmp(r.buf, data + off, want) == 0);
  if (key_update)
    ck_assert_int_eq(r.key_updates, 1);
  zcs_transfer_release(&t);
  /* the modes we added are gone again */
  ck_assert(!(SSL_get_mode(ssl) & SSL_MODE_ENABLE_PARTIAL_WRITE));
  SSL_free(ssl);
  SSL_CTX_free(sctx);
  free(r.buf); free(data); close(sv[1]); close(fd);
}

START_TEST(tls_unix_small_buffers) { check_tls(0, 24 << 20, 0, -1, 0, 0); }
END_TEST
START_TEST(tls_tcp_offset_count) { check_tls(1, 5 << 20, 4097, 3000001, 0, 0); }
END_TEST
START_TEST(tls12_tcp) { check_tls(1, 4 << 20, 0, -1, TLS1_2_VERSION, 0); }
END_TEST
START_TEST(tls13_key_update_mid_transfer) { check_tls(1, 16 << 20, 0, -1, 0, 1); }
END_TEST

/* a server-side TLS transfer of len pattern bytes on a fresh pair, not handshaken */
struct tls_server {
  unsigned char *data;
  int fd, sv[2];
  SSL_CTX *ctx;
  SSL *ssl;
  zcs_transfer_t t;
};

static void tls_server_start(struct tls_server *s, int tcp, size_t len, unsigned seed) {
  s->data = pattern(len, seed);
  s->fd = make_file("f", s->data, len);
  make_pair(tcp, s->sv);
  s->ctx = server_ctx();
  s->ssl = SSL_new(s->ctx);
  SSL_set_fd(s->ssl, s->sv[0]);
  SSL_set_accept_state(s->ssl);
  ck_assert_int_eq(zcs_transfer_init(&s->t, s->sv[0], s->fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_set_ssl(&s->t, s->ssl), 0);
}

static void tls_server_end(struct tls_server *s) {
  zcs_transfer_release(&s->t);
  SSL_free(s->ssl);
  SSL_CTX_free(s->ctx);
  free(s->data);
  close(s->sv[0]); close(s->sv[1]); close(s->fd);
}

/* the peer goes away mid-transfer: an error with the bytes counted, no SIGPIPE */
START_TEST(tls_peer_closes) {
  size_t len = 16 << 20;
  struct tls_server s;
  tls_server_start(&s, 0, len, 22);
  struct tls_reader r = {.close_after = 1 << 20};
  tls_reader_start(&r, s.sv[1]);
  int steps;
  int rc = drive(&s.t, &steps);
  ck_assert_msg(rc == -EPIPE || rc == -ECONNRESET, "rc=%d (%s)", rc, zcs_strerror(rc));
  ck_assert_uint_ge(s.t.sent, 1 << 20);
  ck_assert_uint_lt(s.t.sent, len);
  tls_reader_join(&r);
  sigset_t pending;
  sigpending(&pending);
  ck_assert(!sigismember(&pending, SIGPIPE));
  free(r.buf);
  tls_server_end(&s);
}
END_TEST

/* a client that isn't speaking TLS: a protocol error, named */
START_TEST(tls_garbage_from_peer) {
  struct tls_server s;
  tls_server_start(&s, 0, 1 << 20, 23);
  ck_assert_int_eq(write(s.sv[1], "GET / HTTP/1.0\r\n\r\n", 18), 18);
  int steps;
  ck_assert_int_eq(drive(&s.t, &steps), ZCS_ETLS);
  ck_assert_uint_eq(s.t.sent, 0);
  ck_assert_uint_ne(zcs_transfer_tls_error(&s.t), 0);
  ck_assert_str_eq(zcs_err_name(ZCS_ETLS), "ETLS");
  tls_server_end(&s);
}
END_TEST

START_TEST(tls_bad_inputs) {
  unsigned char *data = pattern(4096, 24);
  int fd = make_file("f", data, 4096);
  int sv[2], other[2];
  make_pair(0, sv);
  make_pair(0, other);
  SSL_CTX *sctx = server_ctx();
  SSL *ssl = SSL_new(sctx);
  SSL_set_fd(ssl, other[0]);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_set_ssl(&t, NULL), -EINVAL);
  ck_assert_int_eq(zcs_transfer_set_ssl(&t, ssl), -EINVAL); /* writes another fd */
  zcs_transfer_release(&t);
  SSL_set_fd(ssl, sv[0]);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, ZCS_F_NO_FALLBACK), 0);
  ck_assert_int_eq(zcs_transfer_set_ssl(&t, ssl), ZCS_EUNSUPPORTED); /* no kTLS here */
  zcs_transfer_release(&t);
  /* bytes zcs_transfer_ready holds would be skipped by kTLS's sendfile: a TLS
     object comes before them or not at all */
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1);
  ck_assert_int_eq(zcs_transfer_set_ssl(&t, ssl), -EINVAL);
  zcs_transfer_release(&t);
  SSL_free(ssl);
  SSL_CTX_free(sctx);
  free(data); close(sv[0]); close(sv[1]); close(other[0]); close(other[1]); close(fd);
}
END_TEST

/* TLS transfers side by side with plain ones on one libev loop */
START_TEST(ev_driver_tls_concurrent) {
  enum { N = 8 };
  size_t len = 2 << 20;
  unsigned char *data = pattern(len, 25);
  int fd = make_file("f", data, len);
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  SSL_CTX *sctx = server_ctx();
  static struct job jobs[N];
  static struct tls_reader readers[N];
  SSL *ssl[N];
  for (int i = 0; i < N; i++) {
    struct job *j = &jobs[i];
    memset(j, 0, sizeof *j);
    memset(&readers[i], 0, sizeof readers[i]);
    make_pair(i % 2, j->sv);
    ssl[i] = SSL_new(sctx);
    SSL_set_fd(ssl[i], j->sv[0]);
    SSL_set_accept_state(ssl[i]);
    ck_assert_int_eq(zcs_transfer_init(&j->t, j->sv[0], fd, i * 1000, -1, 0), 0);
    ck_assert_int_eq(zcs_transfer_set_ssl(&j->t, ssl[i]), 0);
    tls_reader_start(&readers[i], j->sv[1]);
    ck_assert_int_eq(zcs_ev_start(&j->w, loop, &j->t, on_done, j), 0);
  }
  ev_run(loop, 0);
  for (int i = 0; i < N; i++) {
    struct job *j = &jobs[i];
    ck_assert_int_eq(j->result, ZCS_DONE);
    SSL_shutdown(ssl[i]);
    shutdown(j->sv[0], SHUT_WR);
    tls_reader_join(&readers[i]);
    close(j->sv[0]);
    ck_assert_uint_eq(readers[i].len, len - (size_t)i * 1000);
    ck_assert(memcmp(readers[i].buf, data + i * 1000, readers[i].len) == 0);
    zcs_transfer_release(&j->t);
    SSL_free(ssl[i]);
    free(readers[i].buf);
    close(j->sv[1]);
  }
  SSL_CTX_free(sctx);
  ev_loop_destroy(loop);
  free(data);
}
END_TEST

/* ---- engine: jobs run by the engine thread, watched from other threads ------
 * Every wait here ends on an event (a job coming back on its channel, a reader
 * passing a byte count, a child exiting); HANG_MS only turns a hang into a
 * failure instead of the test case's timeout. */
#include <sys/wait.h>
#define HANG_MS 60000

/* waits until n jobs came back on ch; their ids go to ids[0..n) */
static void channel_wait(zcs_channel_t *ch, uint64_t *ids, size_t n) {
  size_t got = 0;
  while (got < n) {
    struct pollfd pf = {.fd = zcs_channel_fd(ch), .events = POLLIN};
    ck_assert_msg(poll(&pf, 1, HANG_MS) == 1, "only %zu of %zu jobs came back", got, n);
    got += zcs_channel_drain(ch, ids + got, n - got);
  }
}

/* nothing more waits on ch, and its fd is no longer readable */
static void channel_empty(zcs_channel_t *ch) {
  uint64_t id;
  ck_assert_uint_eq(zcs_channel_drain(ch, &id, 1), 0);
  struct pollfd pf = {.fd = zcs_channel_fd(ch), .events = POLLIN};
  ck_assert_int_eq(poll(&pf, 1, 0), 0);
}

/* The engine runs one callback at a time, and a job's last act (dropping the
   engine's reference) follows its completion in the same callback: once a job
   submitted now has come back, every job that came back before it has been
   let go by the engine too, so a leak checker at exit sees what stays. */
static void engine_barrier(void) {
  unsigned char b = 1;
  int fd = make_file("barrier", &b, 1);
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  zcs_job_t *j = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(j, fd, 0, 1), 0);
  ck_assert_int_eq(zcs_job_submit(j, ch), 0);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_uint_eq(id, zcs_job_id(j));
  zcs_job_release(j);
  zcs_channel_release(ch);
  close(fd);
}

static zcs_job_t *file_job(int sock, int fd, int64_t off, int64_t count) {
  zcs_job_t *j = zcs_job_new();
  ck_assert_ptr_nonnull(j);
  ck_assert_int_eq(zcs_transfer_init(zcs_job_transfer(j), sock, fd, off, count, 0), 0);
  return j;
}

/* A reader thread that says how far it got and, if asked, stops reading once
   past stop_at until resumed: the test then acts while a job is surely mid-way
   (with a stopped reader the engine waits on a full socket; with a running one
   it is busy stepping). buf is the reader's until gate_join. */
struct gate_reader {
  int fd;
  unsigned char *buf;
  size_t cap;
  size_t len;     /* guarded by m */
  size_t stop_at; /* 0: never stop */
  int go, eof;    /* guarded by m */
  pthread_mutex_t m;
  pthread_cond_t c;
  pthread_t th;
};

static void *gate_read(void *arg) {
  struct gate_reader *r = arg;
  for (;;) {
    if (r->len == r->cap) {
      r->cap = r->cap ? r->cap * 2 : 65536;
      r->buf = realloc(r->buf, r->cap);
    }
    ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len > 8192 ? 8192 : r->cap - r->len);
    pthread_mutex_lock(&r->m);
    if (n <= 0) {
      r->eof = 1;
      pthread_cond_broadcast(&r->c);
      pthread_mutex_unlock(&r->m);
      return NULL;
    }
    r->len += (size_t)n;
    pthread_cond_broadcast(&r->c);
    while (r->stop_at && r->len >= r->stop_at && !r->go)
      pthread_cond_wait(&r->c, &r->m);
    pthread_mutex_unlock(&r->m);
  }
}

static void gate_start(struct gate_reader *r, int fd, size_t stop_at) {
  memset(r, 0, sizeof *r);
  r->fd = fd;
  r->stop_at = stop_at;
  pthread_mutex_init(&r->m, NULL);
  pthread_cond_init(&r->c, NULL);
  ck_assert_int_eq(pthread_create(&r->th, NULL, gate_read, r), 0);
}

/* waits until the reader has at least n bytes (it must not meet EOF first) */
static void gate_wait(struct gate_reader *r, size_t n) {
  pthread_mutex_lock(&r->m);
  while (r->len < n && !r->eof)
    pthread_cond_wait(&r->c, &r->m);
  size_t len = r->len;
  pthread_mutex_unlock(&r->m);
  ck_assert_msg(len >= n, "the reader met EOF after %zu bytes, before %zu", len, n);
}

static void gate_resume(struct gate_reader *r) {
  pthread_mutex_lock(&r->m);
  r->go = 1;
  pthread_cond_broadcast(&r->c);
  pthread_mutex_unlock(&r->m);
}

/* resumes the reader and waits for its EOF: every copy of the peer socket is
   closed, the engine's dup included */
static void gate_join(struct gate_reader *r) {
  gate_resume(r);
  pthread_join(r->th, NULL);
  pthread_mutex_destroy(&r->m);
  pthread_cond_destroy(&r->c);
}

/* A thread that reads running jobs' progress, as a host reporting it would:
   sent never goes back, the zero-copy part never exceeds it, the result is
   "running" or done, and a job read as done has sent all it had to (want[i]);
   until the test sets stop. */
struct watcher {
  zcs_job_t **jobs;
  const uint64_t *want;
  int n;
  int stop; /* atomic */
  long reads;
  char err[200];
  pthread_t th;
};

static void *watch_jobs(void *arg) {
  struct watcher *w = arg;
  uint64_t last[16] = {0};
  while (!__atomic_load_n(&w->stop, __ATOMIC_ACQUIRE)) {
    for (int i = 0; i < w->n; i++, w->reads++) {
      int rc = zcs_job_result(w->jobs[i]); /* first: a done job's counts read after are final */
      uint64_t z = zcs_job_sent_zero_copy(w->jobs[i]); /* then: z <= sent then <= sent now */
      uint64_t s = zcs_job_sent(w->jobs[i]);
      if (s < last[i] || z > s || (rc != 1 && rc != ZCS_DONE) || (rc == ZCS_DONE && s != w->want[i])) {
        snprintf(w->err, sizeof w->err, "job %d: sent %llu after %llu, zero-copy %llu, result %d",
                 i, (unsigned long long)s, (unsigned long long)last[i], (unsigned long long)z, rc);
        return NULL;
      }
      last[i] = s;
    }
    sched_yield();
  }
  return NULL;
}

/* Send jobs of every kind through one channel, their peers read by other
   threads and their progress by another: each comes back once, with every byte
   delivered, in order. */
START_TEST(engine_send_jobs) {
  enum { N = 6 };
  size_t len = 8 << 20, mlen = 1 << 20, plen = 3 << 20, hlen = 100000;
  unsigned char *data = pattern(len, 30), *mem = pattern(mlen, 31), *pdata = pattern(plen, 32);
  unsigned char *head = pattern(hlen, 33);
  int fd = make_file("f", data, len);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  struct {
    int sv[2];
    zcs_job_t *j;
    struct reader r;
    const unsigned char *want;
    size_t want_len, head_len;
    uint64_t zero_copy;
  } js[N];
  memset(js, 0, sizeof js);
  for (int i = 0; i < N; i++) {
    make_pair(i == 1 || i == 3, js[i].sv);
    reader_start(&js[i].r, js[i].sv[1]);
  }
  /* 0: sendfile to a Unix socket; 1: part of the file over TCP */
  js[0].j = file_job(js[0].sv[0], fd, 0, -1);
  js[0].want = data, js[0].want_len = js[0].zero_copy = len;
  js[1].j = file_job(js[1].sv[0], fd, 12345, 1000001);
  js[1].want = data + 12345, js[1].want_len = js[1].zero_copy = 1000001;
  /* 2: copied through the emulation buffer */
  js[2].j = file_job(js[2].sv[0], fd, 0, -1);
  zcs_job_transfer(js[2].j)->backend = ZCS_BACKEND_EMULATED;
  js[2].want = data, js[2].want_len = len;
  /* 3: a head, then part of the file, over TCP (kept short: loopback TCP with a
     4 KiB send buffer crawls) */
  js[3].j = file_job(js[3].sv[0], fd, 777, 2 << 20);
  ck_assert_int_eq(zcs_transfer_set_head(zcs_job_transfer(js[3].j), head, hlen), 0);
  js[3].want = data + 777, js[3].want_len = js[3].zero_copy = 2 << 20, js[3].head_len = hlen;
  /* 4: bytes from memory */
  js[4].j = zcs_job_new();
  zcs_transfer_t *mt = zcs_job_transfer(js[4].j);
  ck_assert_int_eq(zcs_transfer_init_memory(mt, js[4].sv[0], mem, mlen, 0), 0);
  js[4].want = mem, js[4].want_len = mlen;
  /* 5: spliced from a pipe that runs dry now and then: the engine waits on the source */
  js[5].j = file_job(js[5].sv[0], p[0], 0, -1);
  js[5].want = pdata, js[5].want_len = js[5].zero_copy = plen;
  zcs_job_t *jobs[N];
  uint64_t wants[N];
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(zcs_job_submit(js[i].j, ch), 0);
    jobs[i] = js[i].j;
    wants[i] = js[i].want_len;
    if (i == 0) /* twice, at once, while the engine takes the job on: refused */
      ck_assert_int_eq(zcs_job_submit(js[0].j, ch), -EINVAL);
  }
  struct watcher watch = {.jobs = jobs, .want = wants, .n = N};
  pthread_create(&watch.th, NULL, watch_jobs, &watch);
  struct pipe_writer w = {p[1], pdata, plen, 0};
  pthread_create(&w.th, NULL, write_pipe, &w);
  uint64_t ids[N];
  channel_wait(ch, ids, N);
  __atomic_store_n(&watch.stop, 1, __ATOMIC_RELEASE);
  pthread_join(watch.th, NULL);
  ck_assert_msg(!watch.err[0], "%s", watch.err);
  for (int i = 0; i < N; i++) {
    int seen = 0;
    for (int k = 0; k < N; k++)
      seen += ids[k] == zcs_job_id(js[i].j);
    ck_assert_msg(seen == 1, "job %d came back %d times", i, seen);
  }
  channel_empty(ch);
  pthread_join(w.th, NULL);
  for (int i = 0; i < N; i++) {
    ck_assert_msg(zcs_job_result(js[i].j) == ZCS_DONE, "job %d: %s", i,
                  zcs_strerror(zcs_job_result(js[i].j)));
    ck_assert_uint_eq(zcs_job_sent(js[i].j), js[i].want_len);
    ck_assert_uint_eq(zcs_job_sent_zero_copy(js[i].j), js[i].zero_copy);
    close(js[i].sv[0]); /* the engine closed its dup before the job came back */
    reader_join(&js[i].r);
    ck_assert_uint_eq(js[i].r.len, js[i].head_len + js[i].want_len);
    if (js[i].head_len) {
      unsigned char *want_head = pattern(hlen, 33);
      ck_assert(memcmp(js[i].r.buf, want_head, hlen) == 0);
      free(want_head);
    }
    ck_assert_msg(memcmp(js[i].r.buf + js[i].head_len, js[i].want, js[i].want_len) == 0,
                  "job %d: bytes differ", i);
    zcs_job_release(js[i].j);
    free(js[i].r.buf);
    close(js[i].sv[1]);
  }
  zcs_channel_release(ch);
  close(p[0]); close(fd);
  free(data); free(mem); free(pdata); free(head);
}
END_TEST

/* Cancels a send job of the whole file once the peer has mark bytes, the
   reader stopped there (stop) or still reading. When zcs_job_cancel() returns,
   zcs_job_sent() is final, and the peer, reading what is in the socket until
   EOF, gets exactly that many bytes. Returns 1 when the job ended cancelled,
   0 when it had completed before the cancel came (only a running reader allows). */
static int cancel_mid_send(int tcp, int fd, const unsigned char *data, size_t len, size_t mark,
                           int stop) {
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  int sv[2];
  make_pair(tcp, sv);
  struct gate_reader r;
  gate_start(&r, sv[1], stop ? mark : 0);
  zcs_job_t *j = file_job(sv[0], fd, 0, -1);
  ck_assert_int_eq(zcs_job_submit(j, ch), 0);
  gate_wait(&r, mark / 2);
  uint64_t early = zcs_job_sent(j); /* read while the engine steps (or waits) */
  int early_rc = zcs_job_result(j);
  ck_assert(early_rc == 1 || early_rc == ZCS_DONE);
  gate_wait(&r, mark);
  zcs_job_cancel(j);
  uint64_t sent = zcs_job_sent(j);
  ck_assert_uint_ge(sent, early);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_uint_eq(id, zcs_job_id(j));
  int rc = zcs_job_result(j);
  ck_assert_uint_eq(zcs_job_sent(j), sent);
  zcs_job_cancel(j); /* after the end: harmless */
  ck_assert_uint_eq(zcs_job_sent(j), sent);
  ck_assert_int_eq(zcs_job_result(j), rc);
  close(sv[0]);
  gate_join(&r);
  ck_assert_msg(r.len == sent, "cancel returned at %llu bytes sent, the peer got %zu",
                (unsigned long long)sent, r.len);
  ck_assert(memcmp(r.buf, data, r.len) == 0);
  if (stop || rc != ZCS_DONE)
    ck_assert_msg(rc == -ECANCELED, "rc=%d (%s)", rc, zcs_strerror(rc));
  else
    ck_assert_uint_eq(sent, len);
  channel_empty(ch);
  zcs_job_release(j);
  zcs_channel_release(ch);
  free(r.buf);
  close(sv[1]);
  return rc == -ECANCELED;
}

START_TEST(engine_cancel_mid_send) {
  size_t len = 32 << 20;
  unsigned char *data = pattern(len, 34);
  int fd = make_file("f", data, len);
  for (int tcp = 0; tcp < 2; tcp++) {
    /* the engine waiting on a socket that stays full: the cancel must end it */
    ck_assert(cancel_mid_send(tcp, fd, data, len, 1 << 20, 1));
    /* the engine stepping as fast as the reader reads: the cancel races steps */
    int cancelled = 0;
    for (int i = 0; i < 6; i++)
      cancelled += cancel_mid_send(tcp, fd, data, len, (size_t)(i + 1) << 19, 0);
    ck_assert_msg(cancelled > 0, "every transfer ended before its cancel (tcp=%d)", tcp);
  }
  close(fd); free(data);
}
END_TEST

/* The caller drops its reference while the engine still runs the job: the job
   runs to its end, comes back on its channel, and is freed by the engine. */
START_TEST(engine_release_while_running) {
  size_t len = 16 << 20;
  unsigned char *data = pattern(len, 35);
  int fd = make_file("f", data, len);
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  int a[2], b[2], c[2];
  make_pair(0, a);
  make_pair(0, b);
  make_pair(1, c);
  struct gate_reader ra, rb, rc;
  gate_start(&ra, a[1], 1 << 20);
  gate_start(&rb, b[1], 0);
  gate_start(&rc, c[1], 1 << 20);
  /* a: released mid-way, the engine waiting on a full socket */
  zcs_job_t *ja = file_job(a[0], fd, 0, -1);
  uint64_t ida = zcs_job_id(ja);
  ck_assert_int_eq(zcs_job_submit(ja, ch), 0);
  gate_wait(&ra, 1 << 20);
  ck_assert_int_eq(zcs_job_submit(ja, ch), -EINVAL); /* running: refused */
  zcs_job_release(ja);
  /* b: released at once, most likely before the engine has even started it */
  zcs_job_t *jb = file_job(b[0], fd, 4096, -1);
  uint64_t idb = zcs_job_id(jb);
  ck_assert_int_eq(zcs_job_submit(jb, ch), 0);
  zcs_job_release(jb);
  /* c: cancelled, then released before the engine has stepped it again */
  zcs_job_t *jc = file_job(c[0], fd, 0, -1);
  uint64_t idc = zcs_job_id(jc);
  ck_assert_int_eq(zcs_job_submit(jc, ch), 0);
  gate_wait(&rc, 1 << 20);
  zcs_job_cancel(jc);
  uint64_t sent_c = zcs_job_sent(jc);
  zcs_job_release(jc);
  close(a[0]); close(b[0]); close(c[0]); /* the engine's dups keep them going */
  gate_resume(&ra);
  uint64_t ids[3];
  channel_wait(ch, ids, 3);
  int seen_a = 0, seen_b = 0, seen_c = 0;
  for (int i = 0; i < 3; i++) {
    seen_a += ids[i] == ida;
    seen_b += ids[i] == idb;
    seen_c += ids[i] == idc;
  }
  ck_assert(seen_a == 1 && seen_b == 1 && seen_c == 1);
  gate_join(&ra); gate_join(&rb); gate_join(&rc);
  ck_assert_uint_eq(ra.len, len);
  ck_assert(memcmp(ra.buf, data, len) == 0);
  ck_assert_uint_eq(rb.len, len - 4096);
  ck_assert(memcmp(rb.buf, data + 4096, len - 4096) == 0);
  ck_assert_uint_eq(rc.len, sent_c);
  ck_assert(memcmp(rc.buf, data, sent_c) == 0);
  channel_empty(ch);
  zcs_channel_release(ch); /* the host's reference; the engine's are gone with the jobs */
  engine_barrier(); /* leaks of a, b, c would show at exit (ASan/LSan) */
  free(ra.buf); free(rb.buf); free(rc.buf);
  close(a[1]); close(b[1]); close(c[1]); close(fd); free(data);
}
END_TEST

/* 32 channels, 4 jobs each, submitted and drained by 4 host threads at once:
   every job comes back exactly once, on its own channel. Each thread polls its
   channels and its jobs' peers together and reads whatever is ready. */
enum { MC_HOSTS = 4, MC_CHANNELS = 8 /* per host */, MC_SENDS = 3 /* + 1 read job */ };
struct mc_sock {
  int sv[2];
  unsigned char *buf;
  size_t len, cap;
  int eof;
  const unsigned char *want;
  size_t want_len;
};
struct mc_host {
  int idx, fd;
  const unsigned char *data, *mem;
  zcs_channel_t *ch[MC_CHANNELS];
  zcs_job_t *jobs[MC_CHANNELS][MC_SENDS + 1];
  int seen[MC_CHANNELS][MC_SENDS + 1];
  struct mc_sock socks[MC_CHANNELS][MC_SENDS];
  char err[200];
  pthread_t th;
};
#define MC_FAIL(...) do { snprintf(h->err, sizeof h->err, __VA_ARGS__); return NULL; } while (0)

static void *mc_host_run(void *arg) {
  struct mc_host *h = arg;
  for (int c = 0; c < MC_CHANNELS; c++) {
    int k = h->idx * MC_CHANNELS + c; /* this channel's number, 0..31 */
    if (!(h->ch[c] = zcs_channel_new()))
      MC_FAIL("zcs_channel_new: %s", strerror(errno));
    for (int s = 0; s < MC_SENDS; s++) {
      struct mc_sock *so = &h->socks[c][s];
      if (socketpair(AF_UNIX, SOCK_STREAM, 0, so->sv) < 0)
        MC_FAIL("socketpair: %s", strerror(errno));
      small_sndbuf(so->sv[0]);
      set_nonblock(so->sv[0]);
      zcs_job_t *j = h->jobs[c][s] = zcs_job_new();
      zcs_transfer_t *t = zcs_job_transfer(j);
      int rc;
      if (s == 0) { /* sendfile */
        rc = zcs_transfer_init(t, so->sv[0], h->fd, k * 1000, 65536 + k, 0);
        so->want = h->data + k * 1000, so->want_len = 65536 + k;
      } else if (s == 1) { /* copied */
        rc = zcs_transfer_init(t, so->sv[0], h->fd, k * 333, 100000, 0);
        t->backend = ZCS_BACKEND_EMULATED;
        so->want = h->data + k * 333, so->want_len = 100000;
      } else { /* from memory */
        rc = zcs_transfer_init_memory(t, so->sv[0], h->mem + k, 3000 + k, 0);
        so->want = h->mem + k, so->want_len = 3000 + k;
      }
      if (rc < 0)
        MC_FAIL("init %d/%d: %s", k, s, zcs_strerror(rc));
      if ((rc = zcs_job_submit(j, h->ch[c])) < 0)
        MC_FAIL("submit %d/%d: %s", k, s, zcs_strerror(rc));
      close(so->sv[0]); /* the engine has its dup */
      so->sv[0] = -1;
    }
    zcs_job_t *rj = h->jobs[c][MC_SENDS] = zcs_job_new();
    int rc = zcs_job_init_read(rj, h->fd, k * 4096, 4096);
    if (rc < 0 || (rc = zcs_job_submit(rj, h->ch[c])) < 0)
      MC_FAIL("read job %d: %s", k, zcs_strerror(rc));
  }
  int ids_left = MC_CHANNELS * (MC_SENDS + 1), open_socks = MC_CHANNELS * MC_SENDS;
  for (unsigned round = 0; ids_left || open_socks; round++) {
    struct pollfd pf[MC_CHANNELS * (1 + MC_SENDS)];
    for (int c = 0; c < MC_CHANNELS; c++) {
      pf[c] = (struct pollfd){.fd = zcs_channel_fd(h->ch[c]), .events = POLLIN};
      for (int s = 0; s < MC_SENDS; s++) {
        struct mc_sock *so = &h->socks[c][s];
        pf[MC_CHANNELS + c * MC_SENDS + s] =
            (struct pollfd){.fd = so->eof ? -1 : so->sv[1], .events = POLLIN};
      }
    }
    int n = poll(pf, MC_CHANNELS * (1 + MC_SENDS), HANG_MS);
    if (n <= 0)
      MC_FAIL("host %d: stuck with %d jobs and %d peers left", h->idx, ids_left, open_socks);
    for (int c = 0; c < MC_CHANNELS; c++) {
      if (!pf[c].revents)
        continue;
      uint64_t ids[3];
      size_t got = zcs_channel_drain(h->ch[c], ids, 1 + round % 3); /* partial drains too */
      for (size_t i = 0; i < got; i++) {
        int which = -1;
        for (int s = 0; s <= MC_SENDS; s++)
          if (zcs_job_id(h->jobs[c][s]) == ids[i])
            which = s;
        if (which < 0)
          MC_FAIL("job %llu came back on channel %d, not its own",
                  (unsigned long long)ids[i], h->idx * MC_CHANNELS + c);
        if (h->seen[c][which]++)
          MC_FAIL("job %d/%d came back twice", h->idx * MC_CHANNELS + c, which);
        ids_left--;
      }
    }
    for (int c = 0; c < MC_CHANNELS; c++)
      for (int s = 0; s < MC_SENDS; s++) {
        struct mc_sock *so = &h->socks[c][s];
        if (!pf[MC_CHANNELS + c * MC_SENDS + s].revents)
          continue;
        if (so->len == so->cap) {
          so->cap = so->cap ? so->cap * 2 : 65536;
          so->buf = realloc(so->buf, so->cap);
        }
        ssize_t k = read(so->sv[1], so->buf + so->len, so->cap - so->len);
        if (k < 0)
          MC_FAIL("read: %s", strerror(errno));
        if (k == 0) {
          so->eof = 1;
          open_socks--;
        }
        so->len += (size_t)k;
      }
  }
  return NULL;
}

START_TEST(engine_many_channels) {
  size_t len = 256 << 10, mlen = 4096;
  unsigned char *data = pattern(len, 36), *mem = pattern(mlen, 37);
  int fd = make_file("f", data, len);
  static struct mc_host hosts[MC_HOSTS];
  memset(hosts, 0, sizeof hosts);
  for (int i = 0; i < MC_HOSTS; i++) {
    hosts[i] = (struct mc_host){.idx = i, .fd = fd, .data = data, .mem = mem};
    ck_assert_int_eq(pthread_create(&hosts[i].th, NULL, mc_host_run, &hosts[i]), 0);
  }
  for (int i = 0; i < MC_HOSTS; i++)
    pthread_join(hosts[i].th, NULL);
  for (int i = 0; i < MC_HOSTS; i++) {
    struct mc_host *h = &hosts[i];
    ck_assert_msg(!h->err[0], "%s", h->err);
    for (int c = 0; c < MC_CHANNELS; c++) {
      int k = i * MC_CHANNELS + c;
      channel_empty(h->ch[c]);
      for (int s = 0; s < MC_SENDS; s++) {
        struct mc_sock *so = &h->socks[c][s];
        ck_assert_int_eq(zcs_job_result(h->jobs[c][s]), ZCS_DONE);
        ck_assert_uint_eq(zcs_job_sent(h->jobs[c][s]), so->want_len);
        ck_assert_uint_eq(so->len, so->want_len);
        ck_assert_msg(memcmp(so->buf, so->want, so->len) == 0, "job %d/%d: bytes differ", k, s);
        zcs_job_release(h->jobs[c][s]);
        free(so->buf);
        close(so->sv[1]);
      }
      zcs_job_t *rj = h->jobs[c][MC_SENDS];
      ck_assert_int_eq(zcs_job_result(rj), 0);
      ck_assert_uint_eq(zcs_job_sent(rj), 4096);
      ck_assert(memcmp(zcs_job_data(rj), data + k * 4096, 4096) == 0);
      zcs_job_release(rj);
      zcs_channel_release(h->ch[c]);
    }
  }
  engine_barrier();
  close(fd); free(data); free(mem);
}
END_TEST

/* The host closes its fds right after zcs_job_submit (or once the job is
   mid-way) and the numbers are reused at once, by another connection and
   another file. The engine works on its dups: the job's bytes still come from
   the first file and go to the first peer; the new socket receives nothing,
   and is still open (the host's) after the job ended. */
static void check_fd_reuse(int tcp, int midway) {
  size_t len = tcp ? 1 << 20 : 4 << 20;
  unsigned char *data = pattern(len, 38), *decoy = pattern(len, 39);
  int fd = make_file("f", data, len);
  int dfd = make_file("decoy", decoy, len);
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  int sv[2], nv[2];
  make_pair(tcp, sv);
  make_pair(tcp, nv); /* the connection that will take the number over */
  struct gate_reader r;
  gate_start(&r, sv[1], midway ? 256 << 10 : 0);
  zcs_job_t *j = file_job(sv[0], fd, 0, -1);
  ck_assert_int_eq(zcs_job_submit(j, ch), 0);
  if (midway)
    gate_wait(&r, 256 << 10);
  int sock_no = sv[0], file_no = fd;
  close(sock_no);
  close(file_no);
  ck_assert_int_eq(dup2(nv[0], sock_no), sock_no);
  ck_assert_int_eq(dup2(dfd, file_no), file_no);
  close(nv[0]);
  close(dfd);
  gate_resume(&r);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_uint_eq(id, zcs_job_id(j));
  ck_assert_int_eq(zcs_job_result(j), ZCS_DONE);
  ck_assert_uint_eq(zcs_job_sent(j), len);
  gate_join(&r); /* EOF: the engine closed its dup of the first socket */
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, data, len) == 0);
  /* the number is still the new socket's: one byte through it, then its EOF;
     the peer must get that byte alone */
  ck_assert_int_eq(write(sock_no, "x", 1), 1);
  close(sock_no);
  char got[256];
  size_t n = 0;
  for (ssize_t k; (k = read(nv[1], got + n, sizeof got - n)) > 0;)
    n += (size_t)k;
  ck_assert_msg(n == 1 && got[0] == 'x', "the reused number's peer got %zu bytes", n);
  close(file_no);
  zcs_job_release(j);
  zcs_channel_release(ch);
  free(r.buf); free(data); free(decoy);
  close(sv[1]); close(nv[1]);
}

START_TEST(engine_host_closes_and_reuses_fds) {
  for (int tcp = 0; tcp < 2; tcp++) {
    check_fd_reuse(tcp, 0);
    check_fd_reuse(tcp, 1);
  }
}
END_TEST

/* In a child forked while a job runs, the inherited job and channel belong to
   the parent's engine (zcsend.h, at zcs_job_submit): sent/result read the copy
   without its lock, cancel only marks it, release frees nothing and closes no
   fd, drain returns 0 without touching the eventfd the parent still waits on,
   and releasing the channel leaves it be. Returns the child's exit status: 0,
   or which of those failed. */
static int forked_child(zcs_job_t *run, zcs_job_t *done, zcs_channel_t *ch, uint64_t len) {
  alarm(30); /* a deadlock on a lock the engine held at the fork ends here */
  uint64_t sent = zcs_job_sent(run);
  if (sent > len || zcs_job_sent_zero_copy(run) > sent)
    return 2;
  int rc = zcs_job_result(run);
  if (rc != 1 && rc != ZCS_DONE)
    return 3;
  zcs_job_cancel(run);
  if (zcs_job_sent(run) != sent)
    return 4;
  if (zcs_job_result(done) != 0 || zcs_job_sent(done) != 1)
    return 5;
  uint64_t ids[4];
  if (zcs_channel_drain(ch, ids, 4) != 0)
    return 6;
  int sock = zcs_job_transfer(run)->sock_fd; /* the copy's: the engine's dup, or -1 */
  zcs_job_release(run);
  zcs_job_release(done);
  if (sock >= 0 && fcntl(sock, F_GETFD) < 0)
    return 7;
  zcs_channel_release(ch); /* the parent's too: a no-op here, its lock untouched */
  return 0;
}

START_TEST(engine_fork_while_running) {
  static const char *what[] = {"", "", "sent > len or zero-copy > sent",
                               "result neither running nor done", "cancel changed sent",
                               "a finished job's sent/result",
                               "drain took the parent's completions",
                               "release closed the engine's fd"};
  size_t len = 32 << 20;
  unsigned char *data = pattern(len, 40);
  int fd = make_file("f", data, len);
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  struct pollfd pf = {.fd = zcs_channel_fd(ch), .events = POLLIN};
  /* a job that came back and waits on the channel: its eventfd is readable */
  zcs_job_t *done = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(done, fd, 0, 1), 0);
  ck_assert_int_eq(zcs_job_submit(done, ch), 0);
  ck_assert_int_eq(poll(&pf, 1, HANG_MS), 1);
  int sv[2];
  make_pair(0, sv);
  struct gate_reader r;
  gate_start(&r, sv[1], 1 << 20);
  zcs_job_t *run = file_job(sv[0], fd, 0, -1);
  ck_assert_int_eq(zcs_job_submit(run, ch), 0);
  /* the first child while the engine waits on a full socket, then six while it
     steps as fast as the reader reads (it holds the job's lock then) */
  for (int i = 0; i < 7; i++) {
    gate_wait(&r, (size_t)(i + 1) << 20);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0)
      _exit(forked_child(run, done, ch, len));
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(!WIFSIGNALED(status), "child %d died of signal %d%s", i, WTERMSIG(status),
                  WTERMSIG(status) == SIGALRM ? " (hung)" : "");
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: exit %d %s", i,
                  WEXITSTATUS(status), WEXITSTATUS(status) < 8 ? what[WEXITSTATUS(status)] : "");
    /* the parent's completion is still there, and the eventfd still says so */
    ck_assert_int_eq(poll(&pf, 1, 0), 1);
    if (i == 0)
      gate_resume(&r);
  }
  uint64_t ids[2];
  channel_wait(ch, ids, 2);
  ck_assert((ids[0] == zcs_job_id(done) && ids[1] == zcs_job_id(run)) ||
            (ids[1] == zcs_job_id(done) && ids[0] == zcs_job_id(run)));
  ck_assert_int_eq(zcs_job_result(run), ZCS_DONE);
  ck_assert_uint_eq(zcs_job_sent(run), len);
  close(sv[0]);
  gate_join(&r);
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, data, len) == 0);
  channel_empty(ch);
  zcs_job_release(run); zcs_job_release(done);
  zcs_channel_release(ch);
  free(r.buf); close(sv[1]); close(fd); free(data);
}
END_TEST

/* read jobs: the engine reads a regular file for a host that writes itself */
START_TEST(engine_read_jobs) {
  size_t len = (1 << 20) + 5;
  unsigned char *data = pattern(len, 26);
  int fd = make_file("f", data, len);
  zcs_channel_t *ch = zcs_channel_new();
  ck_assert_ptr_nonnull(ch);
  zcs_job_t *a = zcs_job_new(), *b = zcs_job_new(), *c = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(a, fd, 100, 65536), 0);
  ck_assert_int_eq(zcs_job_init_read(b, fd, len - 5, 65536), 0); /* short: the file ends */
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(zcs_job_init_read(c, p[0], 0, 10), -ESPIPE); /* would block the engine */
  ck_assert_int_eq(zcs_job_init_read(c, fd, -1, 10), -EINVAL);
  ck_assert_int_eq(zcs_job_init_read(c, fd, 0, 0), -EINVAL);
  ck_assert_int_eq(zcs_job_submit(a, ch), 0);
  ck_assert_int_eq(zcs_job_submit(b, ch), 0);
  zcs_job_cancel(b); /* harmless: a read has nothing to stop */
  uint64_t ids[2];
  channel_wait(ch, ids, 2);
  ck_assert((ids[0] == zcs_job_id(a) && ids[1] == zcs_job_id(b)) ||
            (ids[1] == zcs_job_id(a) && ids[0] == zcs_job_id(b)));
  channel_empty(ch);
  ck_assert_int_eq(zcs_job_result(a), 0);
  ck_assert_uint_eq(zcs_job_sent(a), 65536);
  ck_assert(memcmp(zcs_job_data(a), data + 100, 65536) == 0);
  ck_assert_int_eq(zcs_job_result(b), 0);
  ck_assert_uint_eq(zcs_job_sent(b), 5);
  ck_assert(memcmp(zcs_job_data(b), data + len - 5, 5) == 0);
  zcs_job_release(a); zcs_job_release(b); zcs_job_release(c);
  zcs_channel_release(ch);
  close(p[0]); close(p[1]); close(fd); free(data);
}
END_TEST

START_TEST(read_cached_never_waits) {
  size_t len = (256 << 10) + 7;
  unsigned char *data = pattern(len, 27);
  int fd = make_file("c", data, len); /* just written: in the page cache */
  unsigned char *buf = malloc(len);
  ck_assert_int_eq(zcs_read_cached(fd, buf, 65536, 1000), 1);
  ck_assert(memcmp(buf, data + 1000, 65536) == 0);
  ck_assert_int_eq(zcs_read_cached(fd, buf, len, 0), 1);
  ck_assert(memcmp(buf, data, len) == 0);
  ck_assert_int_eq(zcs_read_cached(fd, buf, 100, len - 7), 0); /* the file ends sooner */
  ck_assert_int_eq(zcs_read_cached(fd, buf, 100, len + 1), 0); /* past the end */
  ck_assert_int_eq(zcs_read_cached(fd, buf, 100, -1), -EINVAL);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(zcs_read_cached(p[0], buf, 10, 0), -ESPIPE); /* never blocks on a pipe */
  close(p[1]);
  ck_assert_int_eq(zcs_read_cached(p[1], buf, 10, 0), -EBADF);
  /* evicted pages are not read, they would wait for the disk: 0, and no error
   * (tmpfs keeps its pages, and then all of them are read) */
  ck_assert_int_eq(fdatasync(fd), 0);
  ck_assert_int_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  memset(buf, 0, len);
  int r = zcs_read_cached(fd, buf, len, 0);
  ck_assert(r == 0 || r == 1);
  if (r == 1)
    ck_assert(memcmp(buf, data, len) == 0);
  close(p[0]); close(fd); free(buf); free(data);
}
END_TEST

/* A head then the file, in order, on every backend. */
START_TEST(head_then_file) {
  check_send_head(1, 3 << 20, 0, -1, 0, 100000);
  check_send_head(0, 3 << 20, 0, -1, 0, 100000);
  check_send_head(0, 1 << 20, 5, -1, 1, 100000);
  check_send_head(1, 0, 0, -1, 0, 100000); /* an empty file: the head alone, not held back for it */
}
END_TEST

START_TEST(head_bad_calls) {
  int fd = make_file("b", (const unsigned char *)"abc", 3);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_set_head(&t, "x", 0), -EINVAL);
  ck_assert_int_eq(zcs_transfer_set_head(&t, NULL, 1), -EINVAL);
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_DONE);
  ck_assert_int_eq(zcs_transfer_set_head(&t, "x", 1), -EINVAL); /* after a step */
  zcs_transfer_release(&t);
  close(sv[0]); close(sv[1]); close(fd);
}
END_TEST

/* The version numbers and the string say the same, in the header and the library. */
START_TEST(version_numbers) {
  char v[32];
  snprintf(v, sizeof v, "%d.%d.%d", ZCS_VERSION_MAJOR, ZCS_VERSION_MINOR, ZCS_VERSION_PATCH);
  ck_assert_str_eq(v, ZCS_VERSION);
  ck_assert_str_eq(zcs_version(), ZCS_VERSION);
  ck_assert_uint_eq(zcs_version_hex(), ZCS_VERSION_HEX);
  ck_assert_uint_eq(ZCS_VERSION_HEX,
                    (ZCS_VERSION_MAJOR << 16) | (ZCS_VERSION_MINOR << 8) | ZCS_VERSION_PATCH);
}
END_TEST

/* Every errno the C library has a message for has a name, and the name is the
 * errno's (an alias gets its value's first name); zcsend's own codes too. */
START_TEST(err_names_complete) {
  int named = 0;
  for (int e = 1; e < 4096; e++) {
    char unknown[64];
    snprintf(unknown, sizeof unknown, "Unknown error %d", e);
    if (!strcmp(strerror(e), unknown))
      continue;
    named++;
    ck_assert_msg(strcmp(zcs_err_name(-e), "EUNKNOWN") != 0, "errno %d (%s) has no name", e,
                  strerror(e));
    ck_assert_str_eq(zcs_strerror(-e), strerror(e));
  }
  ck_assert_int_ge(named, 100);
  static const struct { int code; const char *name; } known[] = {
      {-EPERM, "EPERM"}, {-EPIPE, "EPIPE"}, {-EAGAIN, "EAGAIN"}, {-EWOULDBLOCK, "EAGAIN"},
      {-EOPNOTSUPP, "EOPNOTSUPP"}, {-EHOSTUNREACH, "EHOSTUNREACH"}, {-ENETUNREACH, "ENETUNREACH"},
      {-ENOBUFS, "ENOBUFS"}, {-EDQUOT, "EDQUOT"}, {-ECONNREFUSED, "ECONNREFUSED"},
      {-EMSGSIZE, "EMSGSIZE"}, {-ENOTRECOVERABLE, "ENOTRECOVERABLE"}, {-ECANCELED, "ECANCELED"},
      {ZCS_ETRUNCATED, "ETRUNCATED"}, {ZCS_EBLOCKING, "EBLOCKING"}, {ZCS_EBACKEND, "EBACKEND"},
      {ZCS_EUNSUPPORTED, "EUNSUPPORTED"}, {ZCS_ETLS, "ETLS"},
      {0, "EUNKNOWN"}, {1, "EUNKNOWN"}, {EPIPE, "EUNKNOWN"}, {-4000, "EUNKNOWN"}, {-100000, "EUNKNOWN"}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    ck_assert_str_eq(zcs_err_name(known[i].code), known[i].name);
#ifdef __linux__
  ck_assert_str_eq(zcs_err_name(-ENOTSUP), "EOPNOTSUPP"); /* the same value there */
  ck_assert_str_eq(zcs_err_name(-EDEADLOCK), "EDEADLK");
#endif
}
END_TEST

/* t->result is ZCS_RUNNING from init until the transfer ends; so is a job's. */
START_TEST(running_is_named) {
  int fd = make_file("r", (const unsigned char *)"abc", 3);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(t.result, ZCS_RUNNING);
  ck_assert_int_eq(zcs_transfer_step(&t), ZCS_DONE);
  ck_assert_int_eq(t.result, ZCS_DONE);
  zcs_transfer_release(&t);
  zcs_job_t *j = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(j, fd, 0, 3), 0);
  ck_assert_int_eq(zcs_job_result(j), ZCS_RUNNING);
  zcs_job_release(j);
  close(sv[0]); close(sv[1]); close(fd);
}
END_TEST

/* ---- issue 13 §3: the engine never waits for the disk ------------------------
 * "Cold" here is a real file on /var/tmp (not /tmp: it may be a tmpfs, whose
 * pages can't be evicted) written, fsynced and evicted with
 * posix_fadvise(DONTNEED); each test checks it really is cold first. The
 * assertions are on what happened (the engine's prefetch counters, which job
 * came back when, every byte), never on time. zcs__engine_hold_prefetch() only
 * orders events: the worker holding a prefetch still reads the evicted file
 * once let go. */
#include <dirent.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include "zcs_internal.h"

static int open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  if (!d)
    return -1;
  while (readdir(d))
    n++;
  closedir(d);
  return n;
}

/* 1 when none of [0, len) of fd is in the page cache... as far as a 4 KiB
   window at offset 0 tells (a transfer's own cachestat question) */
static int is_cached(int fd, size_t len) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
    return -1;
  set_nonblock(sv[0]);
  zcs_transfer_t t;
  int rc = zcs_transfer_init(&t, sv[0], fd, 0, -1, 0);
  if (rc == 0)
    rc = zcs_transfer_cached(&t, len);
  zcs_transfer_release(&t);
  close(sv[0]);
  close(sv[1]);
  return rc;
}

/* whether any page of [0, len) of fd is in the page cache, by cachestat(2)
   alone (it reads nothing, and a page locked for a moment is still there: a
   probe's EAGAIN would call it gone); zcs_transfer_cached where it is missing */
static int any_page_cached(int fd, size_t len) {
  struct { uint64_t off, len; } r = {0, len};
  uint64_t cs[5];
  if (syscall(451 /* __NR_cachestat */, fd, &r, cs, 0) == 0)
    return cs[0] > 0;
  return is_cached(fd, len) != 0;
}

static int evict(int fd, size_t len);

/* a file of len pattern bytes on /var/tmp, none of its pages in memory; an
   O_RDONLY fd (plain calls, no ck_assert: a forked child uses it too) */
static int make_cold_file(const char *name, const unsigned char *data, size_t len) {
  if (!colddir_made && !mkdtemp(colddir))
    return -1;
  colddir_made = 1;
  char path[256];
  snprintf(path, sizeof path, "%s/%s", colddir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || write(fd, data, len) != (ssize_t)len || fsync(fd) < 0)
    return -1;
  close(fd);
  fd = open(path, O_RDONLY);
  return fd < 0 || evict(fd, len) < 0 ? -1 : fd;
}

/* no page of [0, len) of fd left in memory: 0, or -1 */
static int evict(int fd, size_t len) {
  /* a page the kernel still holds a moment (writeback's end, another CPU's
     batch) stays through one DONTNEED: asked again, a few times */
  for (int i = 0; i < 100; i++) {
    if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) != 0)
      return -1;
    if (!any_page_cached(fd, len))
      return 0;
    usleep(10000);
  }
  return -1;
}

static void cold_cleanup(void) {
  if (!colddir_made)
    return;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", colddir);
  ck_assert_int_eq(system(cmd), 0);
  colddir_made = 0;
}

static zcs_engine_stats_t engine_stats_now(void) {
  zcs_engine_stats_t st;
  zcs_engine_stats(&st);
  return st;
}

/* waits until n prefetches are in flight (a state the engine reaches by
   itself; the wait is bounded only so that a bug fails instead of hanging) */
static void wait_prefetching(uint64_t n) {
  for (int i = 0; i < HANG_MS; i++) {
    if (engine_stats_now().prefetching == n)
      return;
    usleep(1000);
  }
  ck_abort_msg("prefetches in flight: %llu, never %llu",
               (unsigned long long)engine_stats_now().prefetching, (unsigned long long)n);
}

/* engine_barrier() on a channel the caller keeps */
static void channel_barrier(zcs_channel_t *ch) {
  unsigned char b = 1;
  int fd = make_file("barrier", &b, 1);
  zcs_job_t *j = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(j, fd, 0, 1), 0);
  ck_assert_int_eq(zcs_job_submit(j, ch), 0);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_uint_eq(id, zcs_job_id(j));
  zcs_job_release(j);
  close(fd);
}

/* a cold read job, to the end: starts the engine and the prefetch pool, so
   that later fd counts see the engine as it stays (the pool keeps no fd) */
static void cold_read_warmup(void) {
  size_t len = 1 << 20;
  unsigned char *data = pattern(len, 49);
  int fd = make_cold_file("warmup", data, len);
  ck_assert_int_ge(fd, 0);
  uint64_t before = engine_stats_now().prefetches;
  zcs_channel_t *ch = zcs_channel_new();
  zcs_job_t *j = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(j, fd, 4096, len - 4096), 0);
  ck_assert_int_eq(zcs_job_submit(j, ch), 0);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_int_eq(zcs_job_result(j), 0);
  ck_assert_uint_eq(zcs_job_sent(j), len - 4096);
  ck_assert(memcmp(zcs_job_data(j), data + 4096, len - 4096) == 0);
  /* the read went to a worker: the engine thread never preads a cold range */
  ck_assert_uint_eq(engine_stats_now().prefetches, before + 1);
  ck_assert_uint_eq(engine_stats_now().workers, 2);
  wait_prefetching(0);
  engine_barrier(); /* the engine took the prefetch back and let the job go */
  zcs_job_release(j);
  zcs_channel_release(ch);
  close(fd);
  free(data);
}

/* A hot job (its file in the page cache) submitted while a cold job's prefetch
   is under way runs to its end; the cold job has not moved a byte meanwhile
   (the engine never stepped it on a cold range), then completes, every byte. */
START_TEST(engine_hot_job_passes_a_cold_one) {
  size_t clen = 8 << 20, hlen = 4 << 20;
  unsigned char *cdata = pattern(clen, 50), *hdata = pattern(hlen, 51);
  int cfd = make_cold_file("cold", cdata, clen);
  ck_assert_msg(cfd >= 0, "no cold file on /var/tmp (errno %d)", errno);
  int hfd = make_file("hot", hdata, hlen);
  ck_assert_int_eq(is_cached(hfd, hlen), 1);
  zcs_channel_t *ch = zcs_channel_new();
  int cs[2], hs[2];
  make_pair(0, cs);
  make_pair(1, hs);
  struct reader rc, rh;
  reader_start(&rc, cs[1]);
  reader_start(&rh, hs[1]);
  zcs_engine_stats_t st0 = engine_stats_now();
  zcs__engine_hold_prefetch(1);
  zcs_job_t *cj = file_job(cs[0], cfd, 0, -1), *hj = file_job(hs[0], hfd, 0, -1);
  ck_assert_int_eq(zcs_job_submit(cj, ch), 0);
  wait_prefetching(1);
  ck_assert_int_eq(zcs_job_submit(hj, ch), 0);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_msg(id == zcs_job_id(hj), "the cold job came back before the hot one");
  ck_assert_int_eq(zcs_job_result(hj), ZCS_DONE);
  ck_assert_uint_eq(zcs_job_sent(hj), hlen);
  ck_assert_int_eq(zcs_job_result(cj), ZCS_RUNNING);
  ck_assert_uint_eq(zcs_job_sent(cj), 0); /* never stepped on its cold range */
  zcs_engine_stats_t st = engine_stats_now();
  ck_assert_uint_eq(st.prefetches, st0.prefetches + 1); /* the cold one's; the hot one none */
  ck_assert_uint_eq(st.prefetching, 1);
  ck_assert_uint_eq(st.workers, 2);
  zcs__engine_hold_prefetch(0);
  channel_wait(ch, &id, 1);
  ck_assert_uint_eq(id, zcs_job_id(cj));
  ck_assert_int_eq(zcs_job_result(cj), ZCS_DONE);
  ck_assert_uint_eq(zcs_job_sent(cj), clen);
  ck_assert_uint_eq(zcs_job_sent_zero_copy(cj), clen);
  close(cs[0]);
  close(hs[0]);
  reader_join(&rc);
  reader_join(&rh);
  ck_assert_uint_eq(rc.len, clen);
  ck_assert(memcmp(rc.buf, cdata, clen) == 0);
  ck_assert_uint_eq(rh.len, hlen);
  ck_assert(memcmp(rh.buf, hdata, hlen) == 0);
  st = engine_stats_now();
  ck_assert_uint_ge(st.prefetch_bytes, st0.prefetch_bytes + (4u << 20));
  wait_prefetching(0);
  channel_empty(ch);
  zcs_job_release(cj);
  zcs_job_release(hj);
  zcs_channel_release(ch);
  free(rc.buf); free(rh.buf); free(cdata); free(hdata);
  close(cs[1]); close(hs[1]); close(cfd); close(hfd);
  cold_cleanup();
}
END_TEST

/* Cancelled while their prefetches are under way (held), a send job and a read
   job end at once with nothing sent or read; the prefetches finish later on
   dups of their own; every fd comes back to where it was. */
START_TEST(engine_cancel_during_prefetch) {
  cold_read_warmup();
  /* the engine drops its channel reference after posting to it: a channel
     released by the host may close a little later. A barrier on a channel the
     test keeps makes every count below see the channels already gone */
  zcs_channel_t *bch = zcs_channel_new();
  channel_barrier(bch);
  int fds0 = open_fds();
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 52);
  int fd = make_cold_file("cold", data, len);
  ck_assert_int_ge(fd, 0);
  zcs_channel_t *ch = zcs_channel_new();
  int sv[2];
  make_pair(1, sv);
  struct reader r;
  reader_start(&r, sv[1]);
  zcs__engine_hold_prefetch(1);
  zcs_job_t *sj = file_job(sv[0], fd, 0, -1), *rj = zcs_job_new();
  ck_assert_int_eq(zcs_job_init_read(rj, fd, 1 << 20, 1 << 20), 0);
  ck_assert_int_eq(zcs_job_submit(sj, ch), 0);
  ck_assert_int_eq(zcs_job_submit(rj, ch), 0);
  wait_prefetching(2);
  zcs_job_cancel(sj);
  zcs_job_abort(rj, -ETIMEDOUT);
  ck_assert_uint_eq(zcs_job_sent(sj), 0);
  uint64_t ids[2];
  channel_wait(ch, ids, 2); /* both back while their prefetches still hold */
  ck_assert_uint_eq(engine_stats_now().prefetching, 2);
  ck_assert_int_eq(zcs_job_result(sj), -ECANCELED);
  ck_assert_int_eq(zcs_job_result(rj), -ETIMEDOUT);
  ck_assert_uint_eq(zcs_job_sent(sj), 0);
  ck_assert_uint_eq(zcs_job_sent(rj), 0);
  close(sv[0]); /* the engine's dup is closed already: the reader meets EOF */
  reader_join(&r);
  ck_assert_uint_eq(r.len, 0);
  zcs_job_release(sj);
  zcs_job_release(rj);
  zcs_channel_release(ch);
  zcs__engine_hold_prefetch(0);
  wait_prefetching(0);
  channel_barrier(bch); /* the engine took the prefetches back and let the jobs go */
  ck_assert_int_ge(fcntl(fd, F_GETFD), 0); /* the host's own fd: untouched */
  close(fd);
  close(sv[1]);
  ck_assert_int_eq(open_fds(), fds0);
  zcs_channel_release(bch);
  free(r.buf); free(data);
  cold_cleanup();
}
END_TEST

/* A child forked while prefetches are under way (two taken by the workers and
   held, one still queued) finds the pool gone: no thread, nothing in flight,
   the three dups closed; and where threads may be started in it,
   a cold job of its own starts a new engine and pool and completes. The
   parent's jobs complete. Returns the child's exit status. */
static int prefetch_child(int fds_before, int cold_fd, const unsigned char *data, size_t len) {
  alarm(30); /* a lock held at the fork would hang here */
  zcs_engine_stats_t st = engine_stats_now();
  if (st.workers != 0 || st.prefetching != 0)
    return 2;
  if (open_fds() != fds_before - 3)
    return 3;
#if defined(__SANITIZE_THREAD__)
  /* ThreadSanitizer ends a child of a threaded parent that starts threads */
  (void)cold_fd, (void)data, (void)len;
  return 0;
#else
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
    return 4;
  set_nonblock(sv[0]);
  struct reader r;
  reader_start(&r, sv[1]);
  zcs_channel_t *ch = zcs_channel_new();
  zcs_job_t *j = zcs_job_new();
  if (!ch || !j || zcs_transfer_init(zcs_job_transfer(j), sv[0], cold_fd, 0, -1, 0) != 0 ||
      zcs_job_submit(j, ch) != 0)
    return 4;
  struct pollfd pf = {.fd = zcs_channel_fd(ch), .events = POLLIN};
  uint64_t id;
  if (poll(&pf, 1, HANG_MS) != 1 || zcs_channel_drain(ch, &id, 1) != 1 || id != zcs_job_id(j))
    return 5;
  if (zcs_job_result(j) != ZCS_DONE || zcs_job_sent(j) != len)
    return 6;
  st = engine_stats_now();
  if (st.workers != 2 || st.prefetches == 0)
    return 7;
  close(sv[0]);
  reader_join(&r);
  if (r.len != len || memcmp(r.buf, data, len) != 0)
    return 8;
  return 0;
#endif
}

START_TEST(engine_fork_during_prefetch) {
  static const char *what[] = {"", "", "the pool survived the fork", "fds left open",
                               "setup", "the child's job never came back",
                               "the child's job failed", "no pool in the child", "bytes differ"};
  enum { N = 3 };
  cold_read_warmup();
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 53), *cdata = pattern(len, 54);
  int fd = make_cold_file("cold", data, len);
  int cfd = make_cold_file("child", cdata, len);
  ck_assert(fd >= 0 && cfd >= 0);
  zcs_channel_t *ch = zcs_channel_new();
  int sv[N][2];
  struct reader r[N];
  zcs_job_t *j[N];
  zcs__engine_hold_prefetch(1);
  for (int i = 0; i < N; i++) {
    make_pair(0, sv[i]);
    reader_start(&r[i], sv[i][1]);
    j[i] = file_job(sv[i][0], fd, 0, -1);
    ck_assert_int_eq(zcs_job_submit(j[i], ch), 0);
  }
  wait_prefetching(N);
  int before = open_fds();
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(prefetch_child(before, cfd, cdata, len));
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(!WIFSIGNALED(status), "child died of signal %d", WTERMSIG(status));
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: exit %d %s",
                WEXITSTATUS(status), WEXITSTATUS(status) < 9 ? what[WEXITSTATUS(status)] : "");
  ck_assert_uint_eq(engine_stats_now().prefetching, N); /* the parent's pool is as it was */
  zcs__engine_hold_prefetch(0);
  uint64_t ids[N];
  channel_wait(ch, ids, N);
  for (int i = 0; i < N; i++) {
    ck_assert_int_eq(zcs_job_result(j[i]), ZCS_DONE);
    ck_assert_uint_eq(zcs_job_sent(j[i]), len);
    close(sv[i][0]);
    reader_join(&r[i]);
    ck_assert_uint_eq(r[i].len, len);
    ck_assert(memcmp(r[i].buf, data, len) == 0);
    free(r[i].buf);
    close(sv[i][1]);
    zcs_job_release(j[i]);
  }
  wait_prefetching(0);
  zcs_channel_release(ch);
  close(fd); close(cfd); free(data); free(cdata);
  cold_cleanup();
}
END_TEST

/* ZCSEND_ENGINE_PREFETCH=0 (for measurements): the engine steps cold ranges
   itself, as before; nothing is prefetched. */
START_TEST(engine_prefetch_off) {
  setenv("ZCSEND_ENGINE_PREFETCH", "0", 1);
  size_t len = 2 << 20;
  unsigned char *data = pattern(len, 55);
  int fd = make_cold_file("cold", data, len);
  ck_assert_int_ge(fd, 0);
  zcs_channel_t *ch = zcs_channel_new();
  int sv[2];
  make_pair(0, sv);
  struct reader r;
  reader_start(&r, sv[1]);
  zcs_job_t *j = file_job(sv[0], fd, 0, -1);
  ck_assert_int_eq(zcs_job_submit(j, ch), 0);
  uint64_t id;
  channel_wait(ch, &id, 1);
  ck_assert_int_eq(zcs_job_result(j), ZCS_DONE);
  zcs_engine_stats_t st = engine_stats_now();
  ck_assert_uint_eq(st.prefetches, 0);
  ck_assert_uint_eq(st.workers, 0);
  close(sv[0]);
  reader_join(&r);
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, data, len) == 0);
  zcs_job_release(j);
  zcs_channel_release(ch);
  free(r.buf); free(data); close(fd); close(sv[1]);
  cold_cleanup();
}
END_TEST

/* zcs_prefetch, for hosts that step transfers themselves: the range comes into
   the page cache on a prefetch thread, the eventfd says when; the fd given may be
   closed at once (the thread reads a dup); every fd comes back. */
/* ZCS_EV_PREFETCH: a libev loop never steps a range not in the page cache; it
   waits on the prefetch's eventfd, running the rest (here: nothing moves while
   the prefetch is held), then steps; a cancel during the wait ends it with
   nothing sent and the eventfd closed. */
START_TEST(ev_driver_waits_for_a_prefetch) {
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 58);
  int fds0 = open_fds();
  for (int cancel = 0; cancel <= 1; cancel++) {
    int fd = make_cold_file(cancel ? "cold-c" : "cold", data, len);
    ck_assert_int_ge(fd, 0);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    static struct job j;
    memset(&j, 0, sizeof j);
    make_pair(cancel, j.sv);
    ck_assert_int_eq(zcs_transfer_init(&j.t, j.sv[0], fd, 0, -1, 0), 0);
    reader_start(&j.r, j.sv[1]);
    zcs_engine_stats_t st0 = engine_stats_now();
    zcs__engine_hold_prefetch(1);
    j.w.flags = ZCS_EV_PREFETCH;
    ck_assert_int_eq(zcs_ev_start(&j.w, loop, &j.t, on_done, &j), 0);
    ev_run(loop, EVRUN_NOWAIT); /* the first turn: cold, a prefetch asked for */
    wait_prefetching(1);
    ck_assert_int_ge(j.w.disk_fd, 0);
    ck_assert_int_eq(zcs_ev_start(&j.w, loop, &j.t, on_done, &j), 0); /* harmless */
    for (int i = 0; i < 5; i++)
      ev_run(loop, EVRUN_NOWAIT);
    ck_assert_uint_eq(j.t.sent, 0); /* never stepped on its cold range */
    ck_assert_int_eq(j.calls, 0);
    ck_assert_uint_eq(engine_stats_now().prefetches, st0.prefetches + 1);
    if (cancel) {
      zcs_transfer_cancel(&j.t);
      zcs_ev_kick(&j.w);
      ev_run(loop, 0);
      ck_assert_int_eq(j.result, -ECANCELED);
      ck_assert_uint_eq(j.t.sent, 0);
      ck_assert_int_eq(j.w.disk_fd, -1); /* its eventfd closed */
      zcs__engine_hold_prefetch(0);
    } else {
      zcs__engine_hold_prefetch(0);
      ev_run(loop, 0);
      ck_assert_int_eq(j.result, ZCS_DONE);
      ck_assert_uint_eq(j.t.sent, len);
    }
    ck_assert_int_eq(j.calls, 1);
    close(j.sv[0]);
    reader_join(&j.r);
    if (!cancel) {
      ck_assert_uint_eq(j.r.len, len);
      ck_assert(memcmp(j.r.buf, data, len) == 0);
    }
    zcs_ev_stop(&j.w);
    zcs_transfer_release(&j.t);
    free(j.r.buf);
    close(j.sv[1]);
    close(fd);
    ev_loop_destroy(loop);
    for (int i = 0; i < 1000 && engine_stats_now().prefetching; i++)
      usleep(1000);
  }
  cold_cleanup();
  /* the prefetch threads stay (as the engine's): fds are what they were, but theirs */
  ck_assert_int_eq(open_fds(), fds0);
  free(data);
}
END_TEST

/* waits for a prefetch's eventfd to say done, and closes it */
static void prefetch_done(int efd) {
  ck_assert_int_ge(efd, 0);
  struct pollfd pfd = {.fd = efd, .events = POLLIN};
  ck_assert_int_eq(poll(&pfd, 1, 20000), 1);
  close(efd);
}

/* A host's question before each step is asked anew every time: a range found
   resident and then evicted (memory pressure, a slow reader) is not ready
   again, so the host's thread never reads it from the disk. And
   zcs_transfer_prefetch reads the engine's window: two steps' worth. */
START_TEST(host_asks_before_every_step) {
  const size_t MiB = 1 << 20, len = 8 * MiB;
  unsigned char *data = pattern(len, 59);
  int fds0 = open_fds();
  int fd = make_cold_file("asks", data, len);
  ck_assert_int_ge(fd, 0);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, MiB), 0);
  zcs_engine_stats_t st0 = engine_stats_now();
  prefetch_done(zcs_transfer_prefetch(&t, MiB));
  zcs_engine_stats_t st1 = engine_stats_now();
  ck_assert_uint_eq(st1.prefetches - st0.prefetches, 1);
  ck_assert_uint_eq(st1.prefetch_bytes - st0.prefetch_bytes, 2 * MiB);
  int yes = 0;
  for (int i = 0; i < 100 && !(yes = zcs_transfer_ready(&t, 2 * MiB)); i++)
    usleep(10000); /* a page read in a moment ago may be locked a moment longer */
  ck_assert_int_eq(yes, 1);
  ck_assert_int_eq(evict(fd, len), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, 2 * MiB), 0); /* asked anew: gone */
  ck_assert_int_eq(zcs_transfer_cached(&t, MiB), 0);
  /* the window is capped by what is left */
  zcs_transfer_t end;
  ck_assert_int_eq(zcs_transfer_init(&end, sv[0], fd, (int64_t)(len - 3000), -1, 0), 0);
  prefetch_done(zcs_transfer_prefetch(&end, 0));
  ck_assert_uint_eq(engine_stats_now().prefetch_bytes - st1.prefetch_bytes, 3000);
  zcs_transfer_release(&end);
  /* two steps' worth up to 32 MiB, one step past that (a sparse file: holes
     read in as zero pages, nothing from the disk) */
  char big[256];
  snprintf(big, sizeof big, "%s/sparse", tmpdir);
  int sfd = open(big, O_RDWR | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(sfd, 0);
  ck_assert_int_eq(ftruncate(sfd, 100 << 20), 0);
  size_t steps[][2] = {{8 << 20, 16 << 20}, {20 << 20, 32 << 20}, {40 << 20, 40 << 20}};
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(zcs_transfer_init(&end, sv[0], sfd, 0, -1, 0), 0);
    zcs_engine_stats_t b0 = engine_stats_now();
    prefetch_done(zcs_transfer_prefetch(&end, steps[i][0]));
    ck_assert_uint_eq(engine_stats_now().prefetch_bytes - b0.prefetch_bytes, steps[i][1]);
    zcs_transfer_release(&end);
  }
  close(sfd);
  /* a rest held already (zcs_transfer_ready read it): nothing left to prefetch */
  int small = make_file("held-rest", data, 3000);
  ck_assert_int_eq(zcs_transfer_init(&end, sv[0], small, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_ready(&end, MiB), 1);
  ck_assert_int_eq(zcs_transfer_prefetch(&end, 0), -EINVAL);
  zcs_transfer_release(&end);
  close(small);
  /* a source of no known length (a pipe: offset -1; /proc: sized 0) */
  int pp[2];
  ck_assert_int_eq(pipe(pp), 0);
  ck_assert_int_eq(zcs_transfer_init(&end, sv[0], pp[0], 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_prefetch(&end, 0), -EINVAL);
  zcs_transfer_release(&end);
  close(pp[0]);
  close(pp[1]);
  int proc = open("/proc/self/status", O_RDONLY);
  ck_assert_int_ge(proc, 0);
  ck_assert_int_eq(zcs_transfer_init(&end, sv[0], proc, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_prefetch(&end, 0), -EINVAL);
  zcs_transfer_release(&end);
  close(proc);
  /* no prefetch where there is no file range to read */
  zcs_transfer_t none;
  ck_assert_int_eq(zcs_transfer_init_memory(&none, sv[0], "x", 1, 0), 0);
  ck_assert_int_eq(zcs_transfer_prefetch(&none, 0), -EINVAL);
  zcs_transfer_release(&none);
  ck_assert_int_eq(zcs_transfer_init(&none, sv[0], fd, (int64_t)len, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_prefetch(&none, 0), -EINVAL); /* nothing left */
  zcs_transfer_release(&none);
  zcs_transfer_release(&t);
  for (int i = 0; i < 1000 && engine_stats_now().prefetching; i++)
    usleep(1000); /* the thread closes its dups just after signalling */
  close(fd); close(sv[0]); close(sv[1]);
  cold_cleanup();
  ck_assert_int_eq(open_fds(), fds0);
  free(data);
}
END_TEST

START_TEST(host_prefetch) {
  ck_assert_int_eq(zcs_prefetch(-1, 0, 1), -EINVAL);
  ck_assert_int_eq(zcs_prefetch(0, -1, 1), -EINVAL);
  ck_assert_int_eq(zcs_prefetch(0, 0, 0), -EINVAL);
  int fds0 = open_fds();
  /* a number that names nothing: -EBADF, and nothing of its own kept */
  int gone = 1000; /* far above what is open: not the number its own eventfd takes */
  ck_assert_int_eq(fcntl(gone, F_GETFD), -1);
  ck_assert_int_eq(zcs_prefetch(gone, 0, 1), -EBADF);
  ck_assert_int_eq(open_fds(), fds0);
  /* no fd left for one of its three (eventfd, its dup, the file's dup): room
     for none, one or two more fds fails each step in turn, -EMFILE, none kept */
  struct rlimit rl0, rl;
  ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl0), 0);
  for (int room = 0; room <= 2; room++) {
    int low = dup(0); /* the lowest free number: the limit sits room above it */
    close(low);
    rl = rl0;
    rl.rlim_cur = (rlim_t)low + (rlim_t)room;
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    int rc = zcs_prefetch(0, 0, 1);
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl0), 0);
    ck_assert_int_eq(rc, -EMFILE);
    ck_assert_int_eq(open_fds(), fds0);
  }
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 57);
  int fd = make_cold_file("cold", data, len);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(is_cached(fd, len), 0);
  zcs_engine_stats_t before = engine_stats_now();
  int efd = zcs_prefetch(fd, 0, len);
  ck_assert_int_ge(efd, 0);
  int keep = dup(fd);
  close(fd); /* the prefetch reads its own dup */
  struct pollfd pfd = {.fd = efd, .events = POLLIN};
  ck_assert_int_eq(poll(&pfd, 1, 20000), 1);
  uint64_t v;
  ck_assert_int_eq(read(efd, &v, sizeof v), (ssize_t)sizeof v);
  ck_assert_uint_eq(v, 1);
  close(efd);
  ck_assert_int_eq(is_cached(keep, len), 1);
  zcs_engine_stats_t after = engine_stats_now();
  ck_assert_uint_eq(after.prefetches - before.prefetches, 1);
  ck_assert_uint_eq(after.prefetch_bytes - before.prefetch_bytes, len);
  for (int i = 0; i < 1000 && engine_stats_now().prefetching; i++)
    usleep(1000); /* the thread closes its dups just after signalling */
  ck_assert_uint_eq(engine_stats_now().prefetching, 0);
  ck_assert_uint_eq(engine_stats_now().workers, 2);
  close(keep);
  cold_cleanup();
  /* the two threads stay (as the engine's): fds are what they were */
  ck_assert_int_eq(open_fds(), fds0);
  free(data);
}
END_TEST

/* ---- issue 13: a small rest is one copy (zcs_transfer_ready) -----------------
 * At most ZCS_SMALL_COPY bytes of a regular file are read with one
 * preadv2(RWF_NOWAIT) and sent, after the head, with one sendmsg: every byte in
 * order, counted as copied, through partial sends (a 4 KiB send buffer) and a
 * move to the heap; one byte more goes zero-copy. */
static void check_small(int tcp, size_t len, int64_t off, size_t hlen) {
  size_t flen = (size_t)off + len + 100;
  unsigned char *data = pattern(flen, 31), *head = hlen ? pattern(hlen, 32) : NULL;
  int fd = make_file("small", data, flen);
  int sv[2];
  make_pair(tcp, sv);
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_transfer_t t, *moved = malloc(sizeof *moved);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, off, (int64_t)len, ZCS_F_SIGPIPE_IF_DEFAULT), 0);
  if (hlen)
    ck_assert_int_eq(zcs_transfer_set_head(&t, head, hlen), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1);
  int copy = len <= ZCS_SMALL_COPY;
  /* held now: the file's bytes may change, the transfer sends what it read */
  if (copy) {
    unsigned char junk[64] = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/small", tmpdir);
    int w = open(path, O_WRONLY);
    ck_assert_int_eq(pwrite(w, junk, sizeof junk, off), (ssize_t)sizeof junk);
    close(w);
  }
  int rc = zcs_transfer_step(&t);
  ck_assert(rc == ZCS_DONE || rc == ZCS_WANT_WRITE);
  zcs_transfer_move(moved, &t); /* what it holds goes with it */
  zcs_transfer_release(&t);
  struct reader r = drive_to_done(moved, sv);
  ck_assert_uint_eq(moved->sent, len);
  ck_assert_uint_eq(r.len, hlen + len);
  ck_assert(!hlen || memcmp(r.buf, head, hlen) == 0);
  ck_assert(memcmp(r.buf + hlen, data + off, len) == 0);
  ck_assert_uint_eq(moved->sent_zero_copy, copy ? 0 : len);
  zcs_transfer_release(moved);
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.bytes_fallback - s0.bytes_fallback, copy ? len : 0);
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  free(moved); free(r.buf); free(data); free(head); close(sv[1]); close(fd);
}

START_TEST(small_rest_is_one_copy) {
  for (int tcp = 0; tcp <= 1; tcp++) {
    check_small(tcp, 1, 0, 0);
    check_small(tcp, 4095, 3, 0);
    check_small(tcp, ZCS_SMALL_COPY, 4096, 0);
    check_small(tcp, ZCS_SMALL_COPY, 1, 9000); /* the head is more than the send buffer */
    check_small(tcp, 100, 0, 20);
    check_small(tcp, ZCS_SMALL_COPY + 1, 0, 20); /* zero-copy */
  }
}
END_TEST

/* what zcs_transfer_ready leaves alone: a rest past ZCS_SMALL_COPY, the
   emulated backend, TLS's; and an evicted file is not ready (nothing held: the
   step then goes zero-copy once it is read in) */
START_TEST(small_rest_only_when_read_in) {
  size_t len = ZCS_SMALL_COPY;
  unsigned char *data = pattern(len, 33);
  int sv[2];
  make_pair(0, sv);
  int fd = make_cold_file("small-cold", data, len);
  ck_assert_int_ge(fd, 0);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  /* not ready, nothing held. (Its RWF_NOWAIT read starts reading the page in,
     and the probe after it may find it there already: then it says ready,
     truly; asking again would race that read.) */
  int ready = zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET);
  ck_assert(ready == 0 || is_cached(fd, len) == 1);
  ck_assert_uint_eq(t.buf_len - t.buf_pos, 0);
  ck_assert_uint_eq(t.offset, 0);
  unsigned char *in = malloc(len);
  ck_assert_int_eq(pread(fd, in, len, 0), (ssize_t)len); /* read in now */
  t.backend = ZCS_BACKEND_EMULATED;
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1); /* as cached says: holds nothing */
  t.backend = ZCS_BACKEND_SENDFILE;
  struct reader r = drive_to_done(&t, sv);
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, data, len) == 0);
  ck_assert_uint_eq(t.sent_zero_copy, len);
  zcs_transfer_release(&t);
  close(fd);
  cold_cleanup();
  free(in); free(r.buf); free(data); close(sv[1]);
}
END_TEST

/* whether [off, off + len) of fd turns ready within a second: a page read in a
   moment ago can be locked a moment longer, and a probe then says "not yet" */
static int ready_soon(int fd, int64_t off, size_t len) {
  for (int i = 0; i < 100; i++) {
    if (zcs__range_ready(fd, off, len) == 1)
      return 1;
    usleep(10000);
  }
  return 0;
}

/* this process, and its children, without cachestat(2), as before Linux 6.5:
   a seccomp filter makes the kernel answer ENOSYS. 0, or -1. */
static int without_cachestat(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 451 /* __NR_cachestat */, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
    return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

enum asker { OWNER, NOBODY, NO_CACHESTAT };

/* the readiness check's answers for fd, an evicted file of len bytes, asked by
   its owner (cachestat answers: range_ready_as_the_owner), by nobody (it
   refuses: range_ready_without_cachestat_rights) or where the kernel has none
   (range_ready_without_cachestat); the last two in a child: the first check
   that failed (0: all passed) */
static int readiness_checks(int fd, size_t len, enum asker who) {
  if (who == NOBODY && (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0))
    return 1;
  if (who == NO_CACHESTAT && without_cachestat() < 0)
    return 1;
  if (who != OWNER) {
    struct { uint64_t off, len; } r = {0, len};
    uint64_t cs[5];
    errno = 0;
    if (syscall(451 /* __NR_cachestat */, fd, &r, cs, 0) == 0 || errno != (who == NOBODY ? EPERM : ENOSYS))
      return 2; /* the kernel answers: this test shows nothing here */
  }
  if (posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM) != 0)
    return 12; /* no readahead: a read (or a probe) brings in its own pages only */
  if (zcs__range_ready(fd, 0, 16384) != 0)
    return 3; /* evicted: not ready */
  if (zcs__range_ready(fd, 256 << 10, 4096) != 0)
    return 4; /* one page, evicted */
  char buf[64 << 10];
  if (pread(fd, buf, sizeof buf, 0) != (ssize_t)sizeof buf)
    return 5;
  if (!ready_soon(fd, 0, sizeof buf))
    return 6; /* 16 pages read in: every one probed */
  if (!ready_soon(fd, 100, sizeof buf - 200))
    return 7; /* unaligned, inside them */
  if (zcs__range_ready(fd, 0, sizeof buf + 1) != 0)
    return 8; /* 17 pages: not ready, read in or not (a prefetch makes it so) */
  /* the page after it out for sure: an earlier probe's readahead may have
     read it in (seen once: 13) */
  if (posix_fadvise(fd, (800 << 10) + 4096, 4096, POSIX_FADV_DONTNEED) != 0 ||
      pread(fd, buf, 4096, 800 << 10) != 4096 || !ready_soon(fd, 800 << 10, 4096))
    return 9;
  if (zcs__range_ready(fd, 800 << 10, 8192) != 0)
    return 13; /* one page in, the next out (two pages: probes alone, either way) */
  if (zcs__range_ready(fd, (800 << 10) - 100, 200) != 0)
    return 15; /* the page before it out, the range's first */
  if (pread(fd, buf, 4096, (800 << 10) + 4096) != 4096 || !ready_soon(fd, 800 << 10, 8192))
    return 16; /* both in */
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
    return 10;
  set_nonblock(sv[0]);
  zcs_transfer_t t; /* the public question, as the hosts ask it */
  if (zcs_transfer_init(&t, sv[0], fd, 512 << 10, 16384, 0) != 0)
    return 11;
  if (zcs_transfer_cached(&t, 16384) != 0)
    return 14;
  zcs_transfer_release(&t);
  close(sv[0]);
  close(sv[1]);
  /* 32 pages read in: ready where the kernel tells their owner (cachestat, or
     without it mincore); never for nobody, whom it doesn't (a prefetch first) */
  if (pread(fd, buf, sizeof buf, 384 << 10) != (ssize_t)sizeof buf ||
      pread(fd, buf, sizeof buf, 448 << 10) != (ssize_t)sizeof buf)
    return 17;
  if (ready_soon(fd, 384 << 10, 128 << 10) != (who != NOBODY))
    return 18;
  return 0;
}

/* fn(fd, len, who) in a child: its exit code */
static int in_child(int (*fn)(int, size_t, enum asker), int fd, size_t len, enum asker who) {
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0)
    _exit(fn(fd, len, who));
  int status;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert(WIFEXITED(status));
  return WEXITSTATUS(status);
}

/* readiness_checks on a new cold file of 1 MiB, asked as who (in a child, but
   for the owner): every one passes */
static void check_readiness(const char *name, unsigned seed, enum asker who) {
  size_t len = 1 << 20;
  unsigned char *data = pattern(len, seed);
  int fd = make_cold_file(name, data, len); /* root's (or the test user's), 0644 */
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(who == OWNER ? readiness_checks(fd, len, who) : in_child(readiness_checks, fd, len, who), 0);
  close(fd);
  cold_cleanup();
  free(data);
}

/* the same answers where cachestat answers (the file's owner): evicted ranges
   not ready, read-in ones ready, from one page to 17 */
START_TEST(range_ready_as_the_owner) { check_readiness("mine", 53, OWNER); }
END_TEST

/* a kernel without cachestat(2) (before 6.5): a cold range must not look
   ready (it did: "the kernel can't tell" meant "step", a disk read on the
   host's thread); every page probed up to 16, mincore past that */
START_TEST(range_ready_without_cachestat) { check_readiness("old-kernel", 54, NO_CACHESTAT); }
END_TEST

/* cachestat(2) refuses a file the process may neither write nor owns (EPERM,
   Linux >= 6.14), as a server worker serving root's files: a cold range must
   still never look ready (it did: "can't tell" meant "step"). Needs root, to
   be nobody in a child. */
START_TEST(range_ready_without_cachestat_rights) {
  if (geteuid() != 0) {
    fprintf(stderr, "range_ready_without_cachestat_rights: not root, nothing to show\n");
    return;
  }
  check_readiness("not-mine", 52, NOBODY);
}
END_TEST

/* the child of range_ready_in_memory_without_cachestat: a tmpfs file's ranges,
   asked without cachestat */
static int in_memory_checks(int fd, size_t len, enum asker who) {
  (void)len, (void)who;
  if (without_cachestat() < 0)
    return 1;
  if (zcs__range_ready(fd, 0, 16384) != 1)
    return 2;
  return zcs__range_ready(fd, 4096, 4096) != 1 ? 3 : 0;
}

/* a file on tmpfs refuses the probes (no RWF_NOWAIT): it is ready, cachestat
   or not, being all in memory (a file of a network
   filesystem, refusing both, would not be: none here to show) */
START_TEST(range_ready_in_memory_without_cachestat) {
  char dir[] = "/dev/shm/zcs-mem-XXXXXX", path[64];
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/f", dir);
  size_t len = 256 << 10;
  unsigned char *data = pattern(len, 55);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
  ck_assert_int_eq(in_child(in_memory_checks, fd, len, NO_CACHESTAT), 0);
  /* and where cachestat answers (one page, two: the probes refused, in memory) */
  ck_assert_int_eq(zcs__range_ready(fd, 4096, 4096), 1);
  ck_assert_int_eq(zcs__range_ready(fd, 4000, 200), 1);
  ck_assert_int_eq(zcs__range_ready(fd, 0, len), 1);
  close(fd);
  ck_assert_int_eq(unlink(path), 0);
  ck_assert_int_eq(rmdir(dir), 0);
  free(data);
}
END_TEST

/* the file shrank after init: the read comes back short, nothing is held, and
   zcs_transfer_cached answers; the (zero-copy) step says ETRUNCATED */
START_TEST(small_rest_of_a_shrunk_file) {
  unsigned char *data = pattern(4000, 34);
  int fd = make_file("shrinks", data, 4000);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/shrinks", tmpdir);
  ck_assert_int_eq(truncate(path, 2500), 0);
  int cached = zcs_transfer_cached(&t, ZCS_DEFAULT_BUDGET); /* a page past the end: not cached */
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), cached);
  int steps;
  ck_assert_int_eq(drive(&t, &steps), ZCS_ETRUNCATED);
  ck_assert_uint_eq(t.sent, 2500);
  ck_assert_uint_eq(t.sent_zero_copy, 2500);
  zcs_transfer_release(&t);
  free(data); close(fd); close(sv[0]); close(sv[1]);
}
END_TEST

/* ---- issue 13: a small send at once (zcs_transfer_start) ----------------------
 * Every byte in order after the head, whether the socket takes all (done at
 * start) or part (t holds the rest, read already, and sends it even where the
 * file changes after); one transfer done in the stats either way. */
/* malloc, as linked into this test (-Wl,--wrap=malloc, the core's calls too):
   fail_next_malloc = N makes the Nth call from now fail with ENOMEM */
void *__real_malloc(size_t n);
void *__wrap_malloc(size_t n);
static volatile int fail_next_malloc;
void *__wrap_malloc(size_t n) {
  if (fail_next_malloc > 1) { /* N: the Nth call from now fails */
    fail_next_malloc--;
  } else if (fail_next_malloc) {
    fail_next_malloc = 0;
    errno = ENOMEM;
    return NULL;
  }
  return __real_malloc(n);
}

static int small_parts; /* check_start_small's parts */
static void check_start_small(int tcp, size_t len, int64_t off, int64_t count, size_t hlen) {
  size_t flen = (size_t)off + len + (count < 0 ? 0 : 100);
  unsigned char *data = pattern(flen, 41), *head = hlen ? pattern(hlen, 42) : NULL;
  int fd = make_file("start-small", data, flen);
  int sv[2];
  make_pair(tcp, sv);
  zcs_stats_t s0, s1;
  zcs_stats(&s0);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_start(&t, sv[0], fd, off, count, head, hlen, ZCS_F_SOCK_NONBLOCKING), 0);
  struct reader r;
  if (t.result == ZCS_DONE) {
    ck_assert_uint_eq(t.sent, len);
    ck_assert_uint_eq(zcs_transfer_head_sent(&t), hlen);
    ck_assert_int_eq(t.remaining, 0);
    ck_assert_int_eq(zcs_transfer_step(&t), ZCS_DONE);
    reader_start(&r, sv[1]);
    close(sv[0]);
    reader_join(&r);
  } else {
    ck_assert_int_eq(t.result, ZCS_RUNNING);
    ck_assert_uint_gt(t.sent + zcs_transfer_head_sent(&t), 0);
    ck_assert_uint_lt(t.sent + zcs_transfer_head_sent(&t), hlen + len);
    ck_assert_int_eq(t.remaining, (int64_t)(len - t.sent));
    ck_assert_int_eq(t.blocked, 1);
    small_parts++;
    /* held: what the file holds now is not what goes */
    unsigned char junk[64] = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/start-small", tmpdir);
    int w = open(path, O_WRONLY);
    ck_assert_int_eq(pwrite(w, junk, sizeof junk, off), (ssize_t)sizeof junk);
    ck_assert_int_eq(ftruncate(w, off), 0);
    close(w);
    r = drive_to_done(&t, sv);
    ck_assert_uint_eq(t.sent, len);
  }
  ck_assert_uint_eq(t.sent_zero_copy, 0);
  zcs_transfer_release(&t);
  ck_assert_uint_eq(r.len, hlen + len);
  ck_assert(!hlen || memcmp(r.buf, head, hlen) == 0);
  ck_assert(memcmp(r.buf + hlen, data + off, len) == 0);
  zcs_stats(&s1);
  ck_assert_uint_eq(s1.started - s0.started, 1);
  ck_assert_uint_eq(s1.completed - s0.completed, 1);
  ck_assert_uint_eq(s1.active, s0.active);
  ck_assert_uint_eq(s1.bytes_fallback - s0.bytes_fallback, len);
  ck_assert_uint_eq(s1.bytes_zero_copy, s0.bytes_zero_copy);
  free(r.buf); free(data); free(head); close(sv[1]); close(fd);
}

START_TEST(start_small_sends_all_or_holds_the_rest) {
  for (int tcp = 0; tcp <= 1; tcp++) {
    check_start_small(tcp, 1, 0, 1, 0);
    check_start_small(tcp, 100, 0, 100, 20);
    check_start_small(tcp, 4095, 3, 4095, 0);
    check_start_small(tcp, ZCS_SMALL_COPY, 4096, ZCS_SMALL_COPY, 0); /* part: 4 KiB buffer */
    check_start_small(tcp, ZCS_SMALL_COPY, 1, ZCS_SMALL_COPY, 9000); /* part of the head only */
    check_start_small(tcp, 3000, 10, ZCS_COUNT_TO_EOF, 0);             /* to EOF: its size */
    check_start_small(tcp, ZCS_SMALL_COPY, 0, ZCS_COUNT_TO_EOF, 100);
  }
  /* 16 KiB through a unix socket's 4 KiB buffer (loopback TCP takes it whole) */
  ck_assert_int_ge(small_parts, 3);
  /* a socket with room takes all at once; the fd's position stays (pread) */
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  set_nonblock(sv[0]);
  unsigned char *data = pattern(5000, 43), got[6000];
  int fd = make_file("start-small-all", data, 5000);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_start(&t, sv[0], fd, 0, 5000, "HEAD", 4, 0), 0);
  ck_assert_int_eq(t.result, ZCS_DONE);
  ck_assert_uint_eq(t.sent, 5000);
  zcs_transfer_release(&t);
  ck_assert_int_eq(recv(sv[1], got, sizeof got, MSG_DONTWAIT), 5004);
  ck_assert(memcmp(got, "HEAD", 4) == 0 && memcmp(got + 4, data, 5000) == 0);
  ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 0);
  free(data); close(fd); close(sv[0]); close(sv[1]);
}
END_TEST

/* part sent at start and no memory to hold the rest (or the head's rest): t
   ends with -ENOMEM saying what went (never returned as an error, which says
   nothing went); counted failed; the peer has exactly those bytes */
START_TEST(start_small_part_sent_then_no_memory) {
  for (size_t hlen = 0; hlen <= 9000; hlen += 9000) {
    unsigned char *data = pattern(10240, 45), *head = hlen ? pattern(hlen, 46) : NULL;
    int fd = make_file("start-enomem", data, 10240);
    int sv[2];
    make_pair(0, sv); /* a unix socket, a 4 KiB buffer: part goes */
    zcs_stats_t s0, s1;
    zcs_stats(&s0);
    zcs_transfer_t t;
    fail_next_malloc = 1; /* the held rest's copy (the head's, with one) */
    int rc = zcs_transfer_start(&t, sv[0], fd, 0, 10240, head, hlen, ZCS_F_SOCK_NONBLOCKING);
    fail_next_malloc = 0;
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(t.result, -ENOMEM);
    size_t hs = zcs_transfer_head_sent(&t);
    ck_assert_uint_gt(hs + t.sent, 0);
    ck_assert(hlen ? (hs < hlen && t.sent == 0) : t.sent < 10240);
    ck_assert_int_eq(zcs_transfer_step(&t), -ENOMEM);
    zcs_stats(&s1);
    ck_assert_uint_eq(s1.started - s0.started, 1);
    ck_assert_uint_eq(s1.failed - s0.failed, 1);
    ck_assert_uint_eq(s1.active, s0.active);
    ck_assert_uint_eq(s1.bytes_fallback - s0.bytes_fallback, t.sent);
    size_t body = t.sent;
    zcs_transfer_release(&t);
    struct reader r;
    reader_start(&r, sv[1]);
    close(sv[0]);
    reader_join(&r);
    ck_assert_uint_eq(r.len, hs + body);
    ck_assert(!hs || memcmp(r.buf, head, hs) == 0);
    ck_assert(memcmp(r.buf + hs, data, body) == 0);
    free(r.buf); free(data); free(head); close(sv[1]); close(fd);
  }
}
END_TEST

/* the socket full at start: nothing goes, and t holds what the read got (the
   head too), blocked: the step the socket's writability brings sends it, the
   file not read again (its bytes as they were at start). Where it can't hold
   them (no memory for a copy), t is init's, and its step reads the range. */
START_TEST(start_small_on_a_full_socket_holds_what_it_read) {
  /* no_memory: 0, or which malloc fails (1: the head's copy; 2: the range's;
     no head: 1 is the range's) */
  for (int round = 0; round < 4; round++) {
    int no_memory = round == 3 ? 1 : round;
    const char *head = round == 3 ? NULL : "HEAD";
    size_t hlen = head ? 4 : 0;
    unsigned char *data = pattern(3000, 48);
    int fd = make_file("start-full", data, 3000);
    int sv[2];
    make_pair(0, sv);
    char fill[4096];
    memset(fill, 0, sizeof fill);
    size_t filled = 0;
    ssize_t k;
    while ((k = send(sv[0], fill, sizeof fill, MSG_DONTWAIT)) > 0)
      filled += (size_t)k;
    zcs_stats_t s0, s1;
    zcs_stats(&s0);
    zcs_transfer_t t;
    fail_next_malloc = no_memory;
    ck_assert_int_eq(zcs_transfer_start(&t, sv[0], fd, 100, 2000, head, hlen, ZCS_F_SOCK_NONBLOCKING), 0);
    fail_next_malloc = 0;
    ck_assert_uint_eq(t.sent, 0);
    ck_assert_uint_eq(zcs_transfer_head_sent(&t), 0);
    ck_assert_int_eq(t.result, ZCS_RUNNING);
    ck_assert_int_eq(t.remaining, 2000);
    ck_assert_int_eq(t.blocked, !no_memory);
    if (!no_memory) {
      /* the file changes, then shrinks: what was read goes all the same */
      char path[512];
      snprintf(path, sizeof path, "%s/start-full", tmpdir);
      int wfd = open(path, O_WRONLY);
      ck_assert_int_eq(pwrite(wfd, fill, 3000, 0), 3000);
      ck_assert_int_eq(ftruncate(wfd, 0), 0);
      close(wfd);
    }
    struct reader r;
    reader_start(&r, sv[1]);
    int rc = ZCS_WANT_WRITE;
    while (rc == ZCS_WANT_WRITE) {
      struct pollfd p = {sv[0], POLLOUT, 0};
      poll(&p, 1, 5000);
      ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1);
      rc = zcs_transfer_step(&t);
    }
    ck_assert_int_eq(rc, ZCS_DONE);
    zcs_stats(&s1);
    ck_assert_uint_eq(s1.started - s0.started, 1);
    ck_assert_uint_eq(s1.completed - s0.completed, 1);
    ck_assert_uint_eq(s1.failed - s0.failed, 0);
    ck_assert_uint_eq(s1.bytes_fallback - s0.bytes_fallback, 2000);
    zcs_transfer_release(&t);
    close(sv[0]);
    reader_join(&r);
    ck_assert_uint_eq(r.len, filled + hlen + 2000);
    ck_assert(memcmp(r.buf + filled, "HEAD", hlen) == 0);
    ck_assert(memcmp(r.buf + filled + hlen, data + 100, 2000) == 0);
    free(r.buf); free(data); close(sv[1]); close(fd);
  }
}
END_TEST

/* a peer's reset that the start's send met (and took from the socket) is the
   transfer's error, as its first step would have said; a head sent whole at
   start is a head set: a second is refused */
START_TEST(start_small_keeps_what_the_send_met) {
  unsigned char *data = pattern(3000, 47);
  int fd = make_file("start-reset", data, 3000);
  int sv[2];
  make_pair(1, sv);
  struct linger lg = {1, 0};
  ck_assert_int_eq(setsockopt(sv[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  close(sv[1]); /* a reset */
  usleep(50000);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_start(&t, sv[0], fd, 0, 3000, "H", 1, ZCS_F_SOCK_NONBLOCKING), 0);
  ck_assert_int_eq(t.result, -ECONNRESET);
  ck_assert_uint_eq(t.sent, 0);
  ck_assert_int_eq(zcs_transfer_step(&t), -ECONNRESET);
  zcs_transfer_release(&t);
  close(sv[0]);
  /* the whole head and no file byte: a head of what a fresh unix socket with a
     4 KiB buffer takes in one send */
  unsigned char *head = pattern(65536, 48);
  make_pair(0, sv);
  ssize_t fits = send(sv[0], head, 65536, MSG_DONTWAIT);
  ck_assert_int_gt(fits, 0);
  close(sv[0]), close(sv[1]);
  make_pair(0, sv);
  ck_assert_int_eq(zcs_transfer_start(&t, sv[0], fd, 0, 3000, head, (size_t)fits,
                                      ZCS_F_SOCK_NONBLOCKING), 0);
  ck_assert_int_eq(t.result, ZCS_RUNNING);
  ck_assert_uint_eq(zcs_transfer_head_sent(&t), (size_t)fits);
  ck_assert_uint_eq(t.sent, 0);
  ck_assert_int_eq(zcs_transfer_set_head(&t, "X", 1), -EINVAL); /* a head set: not twice */
  struct reader r = drive_to_done(&t, sv);
  ck_assert_uint_eq(r.len, (size_t)fits + 3000);
  ck_assert(memcmp(r.buf, head, (size_t)fits) == 0 && memcmp(r.buf + fits, data, 3000) == 0);
  zcs_transfer_release(&t);
  close(sv[1]);
  free(r.buf); free(head); free(data); close(fd);
}
END_TEST

/* nothing sent at start: t is what zcs_transfer_init (and set_head) make of
   it, error or not, and nothing reached the peer */
static void check_start_ends(int sock, int fd, int64_t off, int64_t count, int flags, int peer,
                             const char *what, int result) {
  zcs_transfer_t a, b;
  int ra = zcs_transfer_start(&a, sock, fd, off, count, "H", 1, flags);
  int rb = zcs_transfer_init(&b, sock, fd, off, count, flags);
  if (rb == 0)
    rb = zcs_transfer_set_head(&b, "H", 1);
  ck_assert_msg(ra == rb, "%s: %d, init %d", what, ra, rb);
  if (ra == 0) {
    ck_assert_msg(a.result == result && a.sent == 0 && zcs_transfer_head_sent(&a) == 0 &&
                      a.remaining == b.remaining && a.backend == b.backend && a.offset == b.offset,
                  "%s: sent, or not init's", what);
  }
  zcs_transfer_release(&a);
  zcs_transfer_release(&b);
  char c;
  if (peer >= 0)
    ck_assert_msg(recv(peer, &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "%s: sent", what);
}
#define check_start_sends_nothing(sock, fd, off, count, flags, peer, what) \
  check_start_ends(sock, fd, off, count, flags, peer, what, ZCS_RUNNING)

START_TEST(start_small_leaves_the_rest_to_the_transfer) {
  int sv[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  set_nonblock(sv[0]);
  size_t big = ZCS_SMALL_COPY + 1;
  unsigned char *data = pattern(big, 44);
  int fd = make_file("not-small", data, big);
  check_start_sends_nothing(sv[0], fd, 0, (int64_t)big, 0, sv[1], "count past the limit");
  check_start_sends_nothing(sv[0], fd, 0, ZCS_COUNT_TO_EOF, 0, sv[1], "to EOF past the limit");
  check_start_sends_nothing(sv[0], fd, -1, 10, 0, sv[1], "negative offset");
  check_start_sends_nothing(sv[0], fd, 0, -2, 0, sv[1], "negative count");
  check_start_sends_nothing(sv[0], fd, 10, 100, ZCS_F_NO_FALLBACK, sv[1], "zero-copy only");
  check_start_sends_nothing(sv[0], fd, (int64_t)big - 10, 11, 0, sv[1], "fewer bytes than count");
  check_start_sends_nothing(sv[0], fd, (int64_t)big - 10, 11, ZCS_F_EXACT_COUNT, sv[1],
                            "fewer bytes than an exact count");
  check_start_sends_nothing(sv[0], fd, (int64_t)big, ZCS_COUNT_TO_EOF, 0, sv[1], "at the end");
  /* write-only: no fcntl looks, the read refuses it, init says EBADF */
  char path[512];
  snprintf(path, sizeof path, "%s/not-small", tmpdir);
  int wo = open(path, O_WRONLY);
  check_start_sends_nothing(sv[0], wo, 0, 10, 0, sv[1], "write-only");
  close(wo);
  int dir = open(tmpdir, O_RDONLY | O_DIRECTORY);
  check_start_sends_nothing(sv[0], dir, 0, 10, 0, sv[1], "a directory");
  check_start_sends_nothing(sv[0], dir, 0, ZCS_COUNT_TO_EOF, 0, sv[1], "a directory to EOF");
  close(dir);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  ck_assert_int_eq(write(p[1], "abc", 3), 3);
  check_start_sends_nothing(sv[0], p[0], 0, 3, 0, sv[1], "a pipe");
  check_start_sends_nothing(sv[0], p[0], 1, 3, 0, sv[1], "a pipe with an offset");
  check_start_sends_nothing(sv[0], p[0], 0, ZCS_COUNT_TO_EOF, 0, sv[1], "a pipe to EOF");
  char got[4];
  ck_assert_int_eq(read(p[0], got, 4), 3); /* its bytes untaken */
  close(p[0]), close(p[1]);
  check_start_sends_nothing(sv[0], -1, 0, 10, 0, sv[1], "a closed fd");
  /* a blocking socket: init's ZCS_EBLOCKING, before a byte */
  int bp[2];
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, bp), 0);
  check_start_sends_nothing(bp[0], fd, 0, 10, 0, bp[1], "a blocking socket");
  close(bp[0]), close(bp[1]);
  /* the socket full: start_small_on_a_full_socket_holds_what_it_read */
  char fill[4096];
  memset(fill, 0, sizeof fill);
  while (send(sv[0], fill, sizeof fill, MSG_DONTWAIT) > 0) {
  }
  close(sv[1]);
  /* the peer gone, SIGPIPE at its default: no signal, nothing sent, the
     transfer ended with EPIPE */
  struct sigaction sa;
  sigaction(SIGPIPE, NULL, &sa);
  ck_assert_ptr_eq(sa.sa_handler, SIG_DFL);
  check_start_ends(sv[0], fd, 0, 10, 0, -1, "a closed peer", -EPIPE); /* as its step would */
  sigset_t pending;
  sigpending(&pending);
  ck_assert(!sigismember(&pending, SIGPIPE));
  close(sv[0]);
  /* a range not in memory: never read here (the engine reads it) */
  ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  set_nonblock(sv[0]);
  int cold = make_cold_file("start-small-cold", data, 8192);
  ck_assert_int_ge(cold, 0);
  ck_assert_int_eq(posix_fadvise(cold, 0, 0, POSIX_FADV_RANDOM), 0);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_start(&t, sv[0], cold, 0, 8192, NULL, 0, 0), 0);
  ck_assert_uint_eq(t.sent, 0);
  ck_assert_int_eq(t.result, ZCS_RUNNING);
  zcs_transfer_release(&t);
  char c;
  ck_assert(recv(sv[1], &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN);
  close(cold);
  cold_cleanup();
  close(sv[0]), close(sv[1]);
  free(data); close(fd);
}
END_TEST

/* a pipe as the destination, its reader gone, SIGPIPE at its default: the copy
   step (which skips the look at SIGPIPE) still only fails with EPIPE */
START_TEST(small_rest_to_a_closed_pipe_no_sigpipe) {
  unsigned char *data = pattern(3000, 35);
  int fd = make_file("to-pipe", data, 3000);
  int p[2];
  ck_assert_int_eq(pipe(p), 0);
  set_nonblock(p[1]);
  close(p[0]);
  struct sigaction sa;
  sigaction(SIGPIPE, NULL, &sa);
  ck_assert_ptr_eq(sa.sa_handler, SIG_DFL);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, p[1], fd, 0, -1, ZCS_F_SIGPIPE_IF_DEFAULT), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1);
  ck_assert_int_eq(zcs_transfer_step(&t), -EPIPE);
  ck_assert_uint_eq(t.sent, 0);
  sigset_t mask, pending;
  pthread_sigmask(SIG_SETMASK, NULL, &mask);
  ck_assert(!sigismember(&mask, SIGPIPE));
  sigpending(&pending);
  ck_assert(!sigismember(&pending, SIGPIPE));
  zcs_transfer_release(&t);
  free(data); close(fd); close(p[1]);
}
END_TEST

/* a host that writes through its own socket (nginx) while the rest is held:
   peek gives the held bytes as the next ones and advance takes them, never the
   file's bytes past the range; advance refuses while bytes peek can't give go
   first (a head, the emulation's buffer) */
START_TEST(small_rest_peek_and_advance) {
  size_t flen = 8000, len = 1000;
  unsigned char *data = pattern(flen, 36), got[2048];
  int fd = make_file("peek-small", data, flen);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 100, (int64_t)len, 0), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1);
  ck_assert_int_eq(zcs_transfer_peek(&t, got, 10), 10);
  ck_assert(memcmp(got, data + 100, 10) == 0);
  ck_assert_int_eq(write(sv[0], got, 10), 10); /* the host's own write */
  ck_assert_int_eq(zcs_transfer_advance(&t, 10), 0);
  ck_assert_int_eq(zcs_transfer_peek(&t, got, sizeof got), (ssize_t)len - 10); /* the range's end */
  ck_assert(memcmp(got, data + 110, len - 10) == 0);
  ck_assert_int_eq(zcs_transfer_advance(&t, len), -EINVAL);
  struct reader r = drive_to_done(&t, sv);
  ck_assert_uint_eq(t.sent, len);
  ck_assert_uint_eq(r.len, len);
  ck_assert(memcmp(r.buf, data + 100, len) == 0);
  zcs_transfer_release(&t);
  free(r.buf);
  close(sv[1]);
  /* a head first: nothing to peek, nothing to advance */
  make_pair(0, sv);
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, (int64_t)len, 0), 0);
  ck_assert_int_eq(zcs_transfer_set_head(&t, "H", 1), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 1);
  ck_assert_int_eq(zcs_transfer_peek(&t, got, 10), -EAGAIN);
  ck_assert_int_eq(zcs_transfer_advance(&t, 10), -EAGAIN);
  ck_assert_uint_eq(t.sent, 0);
  zcs_transfer_release(&t);
  close(sv[0]); close(sv[1]); close(fd); free(data);
}
END_TEST

/* an O_DIRECT fd is never read by zcs_transfer_ready (RWF_NOWAIT does not
   keep direct I/O off the disk): nothing held, the step goes zero-copy; and
   never "ready", its pages cached or not: its reads skip the page cache (it
   refuses the probes, and cachestat's answer counted) */
START_TEST(small_rest_never_read_with_o_direct) {
  unsigned char *data = pattern(4096, 37);
  int fd = make_cold_file("direct", data, 4096);
  ck_assert_int_ge(fd, 0);
  char path[300];
  snprintf(path, sizeof path, "%s/direct", colddir);
  int dfd = open(path, O_RDONLY | O_DIRECT);
  if (dfd < 0) { /* a filesystem without direct I/O: nothing to check */
    close(fd);
    cold_cleanup();
    free(data);
    return;
  }
  unsigned char in[4096];
  ck_assert_int_eq(pread(fd, in, sizeof in, 0), (ssize_t)sizeof in); /* cached now */
  ck_assert(ready_soon(fd, 0, sizeof in)); /* through the plain fd: ready */
  ck_assert_int_eq(zcs__range_ready(dfd, 0, sizeof in), 0);
  int sv[2];
  make_pair(0, sv);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], dfd, 0, -1, 0), 0);
  ck_assert_int_eq(zcs_transfer_ready(&t, ZCS_DEFAULT_BUDGET), 0);
  ck_assert_uint_eq(t.buf_len - t.buf_pos, 0);
  zcs_transfer_release(&t);
  close(dfd); close(fd); close(sv[0]); close(sv[1]);
  cold_cleanup();
  free(data);
}
END_TEST

int main(void) {
  Suite *s = suite_create("zcsend-core");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 120);
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, sendfile_unix_small_buffers);
  tcase_add_test(tc, sendfile_tcp_small_buffers);
  tcase_add_test(tc, sendfile_offset_count);
  tcase_add_test(tc, emulated_tcp_small_buffers);
  tcase_add_test(tc, emulated_unix_small_buffers);
  tcase_add_test(tc, emulated_offset_count);
  tcase_add_test(tc, emulated_selected_by_env);
  tcase_add_test(tc, unknown_backend_env);
  tcase_add_test(tc, splice_from_pipe_to_eof);
  tcase_add_test(tc, emulated_from_pipe_to_eof);
  tcase_add_test(tc, char_device_goes_emulated);
  tcase_add_test(tc, memory_transfer);
  tcase_add_test(tc, fallback_on_einval);
  tcase_add_test(tc, budget_bounds_one_step);
  tcase_add_test(tc, blocked_peek_advance);
  tcase_add_test(tc, peek_refuses_what_it_cannot);
  tcase_add_test(tc, exact_count);
  tcase_add_test(tc, bad_inputs);
  tcase_add_test(tc, file_shrinks_mid_transfer);
  tcase_add_test(tc, file_shrinks_mid_transfer_emulated);
  tcase_add_test(tc, peer_gone_no_sigpipe);
  tcase_add_test(tc, peer_gone_no_sigpipe_if_default);
  tcase_add_test(tc, flags_the_caller_vouches_for);
  tcase_add_test(tc, move_mid_transfer);
  tcase_add_test(tc, move_mid_transfer_emulated);
  tcase_add_test(tc, peer_gone_no_sigpipe_tcp);
  tcase_add_test(tc, peer_gone_no_sigpipe_emulated);
  tcase_add_test(tc, offsets_past_4gib);
  tcase_add_test(tc, stats_count_outcomes);
  tcase_add_test(tc, chunks_sizing);
  tcase_add_test(tc, chunks_exact_count);
  tcase_add_test(tc, chunks_bad_inputs);
  tcase_add_test(tc, chunks_short_file_truncates);
  tcase_add_test(tc, chunks_pipe_source);
  tcase_add_test(tc, offset_on_a_pipe_is_espipe);
  tcase_add_test(tc, chunks_nowait_reads);
  tcase_add_test(tc, chunks_host_reads);
  tcase_add_test(tc, chunks_stats_counted_once);
  tcase_add_test(tc, ev_driver_concurrent);
  tcase_add_test(tc, ev_driver_waits_on_pipe_source);
  tcase_add_test(tc, ev_driver_never_reentrant);
  suite_add_tcase(s, tc);
  TCase *tls = tcase_create("tls");
  tcase_set_timeout(tls, 120);
  tcase_add_checked_fixture(tls, setup, teardown);
  tcase_add_test(tls, tls_unix_small_buffers);
  tcase_add_test(tls, tls_tcp_offset_count);
  tcase_add_test(tls, tls12_tcp);
  tcase_add_test(tls, tls13_key_update_mid_transfer);
  tcase_add_test(tls, tls_peer_closes);
  tcase_add_test(tls, tls_garbage_from_peer);
  tcase_add_test(tls, tls_bad_inputs);
  tcase_add_test(tls, ev_driver_tls_concurrent);
  tcase_add_test(tc, read_cached_never_waits);
  tcase_add_test(tc, head_then_file);
  tcase_add_test(tc, head_bad_calls);
  tcase_add_test(tc, version_numbers);
  tcase_add_test(tc, err_names_complete);
  tcase_add_test(tc, running_is_named);
  suite_add_tcase(s, tls);
  TCase *eng = tcase_create("engine");
  tcase_set_timeout(eng, 120);
  tcase_add_checked_fixture(eng, setup, teardown);
  tcase_add_test(eng, engine_read_jobs);
  tcase_add_test(eng, engine_send_jobs);
  tcase_add_test(eng, engine_cancel_mid_send);
  tcase_add_test(eng, engine_release_while_running);
  tcase_add_test(eng, engine_many_channels);
  tcase_add_test(eng, engine_host_closes_and_reuses_fds);
  tcase_add_test(eng, engine_fork_while_running);
  tcase_add_test(eng, engine_hot_job_passes_a_cold_one);
  tcase_add_test(eng, engine_cancel_during_prefetch);
  tcase_add_test(eng, engine_fork_during_prefetch);
  tcase_add_test(eng, engine_prefetch_off);
  tcase_add_test(eng, host_prefetch);
  tcase_add_test(eng, host_asks_before_every_step);
  tcase_add_test(eng, ev_driver_waits_for_a_prefetch);
  tcase_add_test(eng, small_rest_is_one_copy);
  tcase_add_test(eng, small_rest_only_when_read_in);
  tcase_add_test(eng, range_ready_without_cachestat_rights);
  tcase_add_test(eng, range_ready_as_the_owner);
  tcase_add_test(eng, range_ready_without_cachestat);
  tcase_add_test(eng, range_ready_in_memory_without_cachestat);
  tcase_add_test(eng, small_rest_of_a_shrunk_file);
  tcase_add_test(eng, small_rest_to_a_closed_pipe_no_sigpipe);
  tcase_add_test(eng, small_rest_peek_and_advance);
  tcase_add_test(eng, small_rest_never_read_with_o_direct);
  tcase_add_test(eng, start_small_sends_all_or_holds_the_rest);
  tcase_add_test(eng, start_small_leaves_the_rest_to_the_transfer);
  tcase_add_test(eng, start_small_part_sent_then_no_memory);
  tcase_add_test(eng, start_small_keeps_what_the_send_met);
  tcase_add_test(eng, start_small_on_a_full_socket_holds_what_it_read);
  suite_add_tcase(s, eng);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
