/* C core tests (Check). Each test runs in its own process (CK_FORK), talks to
 * real sockets, pipes and files, and compares every byte. */
#define _GNU_SOURCE
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include "zcsend.h"

/* ---- helpers --------------------------------------------------------------- */
static char tmpdir[] = "/tmp/zcs-test-XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(tmpdir)); }
static void teardown(void) {
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  ck_assert_int_eq(system(cmd), 0);
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
    struct pollfd p = {.fd = fd, .events = ev == EV_READ ? POLLIN : POLLOUT};
    poll(&p, 1, 5000);
    (*steps)++;
  }
  return rc;
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
static void check_peer_gone(int emulate, int tcp) {
  size_t len = 4 << 20;
  unsigned char *data = pattern(len, 4);
  int fd = make_file("f", data, len);
  int sv[2];
  make_pair(tcp, sv);
  struct sigaction before, after;
  sigaction(SIGPIPE, NULL, &before);
  ck_assert_ptr_eq(before.sa_handler, SIG_DFL);
  zcs_transfer_t t;
  ck_assert_int_eq(zcs_transfer_init(&t, sv[0], fd, 0, -1, 0), 0);
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
  uint64_t ids[4];
  size_t got = 0;
  while (got < 2) {
    struct pollfd pf = {.fd = zcs_channel_fd(ch), .events = POLLIN};
    ck_assert_int_eq(poll(&pf, 1, 5000), 1);
    got += zcs_channel_drain(ch, ids + got, 4 - got);
  }
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
  tcase_add_test(tc, bad_inputs);
  tcase_add_test(tc, file_shrinks_mid_transfer);
  tcase_add_test(tc, file_shrinks_mid_transfer_emulated);
  tcase_add_test(tc, peer_gone_no_sigpipe);
  tcase_add_test(tc, peer_gone_no_sigpipe_tcp);
  tcase_add_test(tc, peer_gone_no_sigpipe_emulated);
  tcase_add_test(tc, offsets_past_4gib);
  tcase_add_test(tc, stats_count_outcomes);
  tcase_add_test(tc, ev_driver_concurrent);
  tcase_add_test(tc, ev_driver_waits_on_pipe_source);
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
  tcase_add_test(tc, engine_read_jobs);
  tcase_add_test(tc, read_cached_never_waits);
  tcase_add_test(tc, head_then_file);
  tcase_add_test(tc, head_bad_calls);
  suite_add_tcase(s, tls);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
