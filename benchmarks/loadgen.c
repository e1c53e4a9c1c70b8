/* The benchmark's own HTTP/1.1 client, plain or TLS (OpenSSL), for what wrk
 * does not measure. Every mode checks status 200 and reads exactly
 * Content-Length bytes; any surprise exits non-zero with a message.
 *
 *   loadgen get     [--tls] PORT PATH             one GET on a fresh connection;
 *                                                 prints "bytes seconds"
 *   loadgen latency [--tls] PORT PATH SECS        back-to-back GETs on one keep-alive
 *                                                 connection, 2 ms apart; prints
 *                                                 "count p50_us p99_us max_us"
 *   loadgen drain   [--tls] PORT PATH CONNS SECS  CONNS threads repeat GETs as fast as
 *                                                 they can read; prints "bytes"
 *   loadgen slow    [--tls] PORT PATH CONNS SECS  CONNS connections (16 KiB receive
 *                                                 buffers) each GET, then read 16 KiB
 *                                                 per connection every 100 ms; prints
 *                                                 "open bytes" when SECS are up
 *
 * The server is always 127.0.0.1. Built by benchmarks/run.py:
 *   cc -O2 -o loadgen loadgen.c -lssl -lcrypto -lpthread */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BODY_BUF (256 << 10)
#define HEAD_MAX (16 << 10)

static SSL_CTX *ctx; /* non-NULL: speak TLS */
static int port;
static const char *path;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "loadgen: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct conn {
  int fd;
  SSL *ssl;
  char head[HEAD_MAX];
  size_t have; /* bytes in head[] not consumed yet (the start of a body) */
};

static void conn_open(struct conn *c, int rcvbuf) {
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0)
    die("socket: %s", strerror(errno));
  if (rcvbuf)
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0)
    die("connect to port %d: %s", port, strerror(errno));
  c->ssl = NULL;
  c->have = 0;
  if (ctx) {
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1)
      die("TLS handshake failed: %s", ERR_error_string(ERR_get_error(), NULL));
  }
}

static void conn_close(struct conn *c) {
  if (c->ssl)
    SSL_free(c->ssl);
  close(c->fd);
}

/* Blocking read; 0 at EOF, -1 on error. On a non-blocking socket, -2 when
 * nothing is there yet. */
static long conn_read(struct conn *c, void *buf, size_t n) {
  if (!c->ssl) {
    ssize_t r = recv(c->fd, buf, n, 0);
    if (r < 0)
      return errno == EAGAIN ? -2 : -1;
    return r;
  }
  size_t got = 0;
  if (SSL_read_ex(c->ssl, buf, n, &got))
    return (long)got;
  int e = SSL_get_error(c->ssl, 0);
  if (e == SSL_ERROR_ZERO_RETURN)
    return 0;
  if (e == SSL_ERROR_WANT_READ)
    return -2;
  return -1;
}

static void conn_write_all(struct conn *c, const char *buf, size_t n) {
  while (n) {
    size_t put = 0;
    if (c->ssl) {
      if (!SSL_write_ex(c->ssl, buf, n, &put))
        die("TLS write failed");
    } else {
      ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);
      if (r <= 0)
        die("send: %s", strerror(errno));
      put = (size_t)r;
    }
    buf += put;
    n -= put;
  }
}

static void send_request(struct conn *c) {
  char req[1024];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
  conn_write_all(c, req, (size_t)n);
}

/* Reads the response head (blocking); returns Content-Length. Body bytes that
 * came with the head stay in c->head[0..have). */
static long long read_head(struct conn *c) {
  size_t len = c->have;
  char *end;
  for (;;) {
    c->head[len] = 0;
    if ((end = strstr(c->head, "\r\n\r\n")))
      break;
    if (len == HEAD_MAX - 1)
      die("response head over %d bytes", HEAD_MAX);
    long r = conn_read(c, c->head + len, HEAD_MAX - 1 - len);
    if (r == -2) {
      struct pollfd p = {.fd = c->fd, .events = POLLIN};
      poll(&p, 1, -1);
      continue;
    }
    if (r <= 0)
      die("connection ended before the response head (%s)", r ? "error" : "EOF");
    len += (size_t)r;
  }
  if (strncmp(c->head, "HTTP/1.1 200 ", 13) && strncmp(c->head, "HTTP/1.0 200 ", 13))
    die("expected 200, got: %.40s", c->head);
  char *cl = strcasestr(c->head, "\r\ncontent-length:");
  if (!cl || cl > end)
    die("response without Content-Length");
  long long length = strtoll(cl + 17, NULL, 10);
  size_t head_len = (size_t)(end + 4 - c->head);
  c->have = len - head_len;
  memmove(c->head, end + 4, c->have);
  return length;
}

/* One GET on c; reads the whole body. Returns the body length. */
static long long get(struct conn *c, char *buf, double deadline) {
  send_request(c);
  long long length = read_head(c), got = (long long)c->have;
  c->have = 0;
  if (got > length)
    die("more bytes than Content-Length");
  while (got < length) {
    long want = length - got < BODY_BUF ? (long)(length - got) : BODY_BUF;
    long r = conn_read(c, buf, (size_t)want);
    if (r <= 0)
      die("body ended at %lld of %lld bytes", got, length);
    got += r;
    if (deadline && now() > deadline)
      return -got; /* cut short on purpose: the caller drops this connection */
  }
  return length;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static int mode_get(void) {
  struct conn c;
  char *buf = malloc(BODY_BUF);
  double t0 = now();
  conn_open(&c, 0);
  long long n = get(&c, buf, 0);
  printf("%lld %f\n", n, now() - t0);
  conn_close(&c);
  free(buf);
  return 0;
}

static int mode_latency(double secs) {
  struct conn c;
  char *buf = malloc(BODY_BUF);
  size_t cap = 1 << 16, count = 0;
  double *rtt = malloc(cap * sizeof *rtt);
  conn_open(&c, 0);
  double end = now() + secs; /* from the first request: a slow handshake is not the loop's */
  do { /* at least one: a loop that starves the probe for all of SECS still answers it */
    double t0 = now();
    get(&c, buf, 0);
    rtt[count++] = (now() - t0) * 1e6;
    usleep(2000);
  } while (now() < end && count < cap);
  conn_close(&c);
  if (!count)
    die("no request completed");
  qsort(rtt, count, sizeof *rtt, cmp_double);
  printf("%zu %.0f %.0f %.0f\n", count, rtt[count / 2], rtt[(size_t)(count * 0.99)], rtt[count - 1]);
  free(rtt);
  free(buf);
  return 0;
}

static double drain_end;
static long long drained;
static pthread_mutex_t drain_lock = PTHREAD_MUTEX_INITIALIZER;

static void *drain_thread(void *arg) {
  (void)arg;
  struct conn *c = malloc(sizeof *c);
  char *buf = malloc(BODY_BUF);
  long long mine = 0;
  conn_open(c, 0);
  while (now() < drain_end) {
    long long n = get(c, buf, drain_end);
    mine += n < 0 ? -n : n;
    if (n < 0)
      break;
  }
  conn_close(c);
  pthread_mutex_lock(&drain_lock);
  drained += mine;
  pthread_mutex_unlock(&drain_lock);
  free(buf);
  free(c);
  return NULL;
}

static int mode_drain(int conns, double secs) {
  pthread_t *t = calloc((size_t)conns, sizeof *t);
  drain_end = now() + secs;
  for (int i = 0; i < conns; i++)
    if (pthread_create(&t[i], NULL, drain_thread, NULL))
      die("pthread_create failed");
  for (int i = 0; i < conns; i++)
    pthread_join(t[i], NULL);
  printf("%lld\n", drained);
  free(t);
  return 0;
}

static int mode_slow(int conns, double secs) {
  struct conn *c = calloc((size_t)conns, sizeof *c);
  char *buf = malloc(16 << 10);
  long long bytes = 0;
  int open = 0;
  for (int i = 0; i < conns; i++) {
    conn_open(&c[i], 16 << 10);
    send_request(&c[i]);
    read_head(&c[i]);
    bytes += (long long)c[i].have;
    /* from here on, reads must never hold up the sweep */
    fcntl(c[i].fd, F_SETFL, fcntl(c[i].fd, F_GETFL) | O_NONBLOCK);
    open++;
  }
  double end = now() + secs;
  while (now() < end) {
    for (int i = 0; i < conns; i++) {
      long r = conn_read(&c[i], buf, 16 << 10);
      if (r > 0)
        bytes += r;
      else if (r != -2)
        die("slow connection %d ended (%s)", i, r ? "error" : "EOF");
    }
    usleep(100000);
  }
  printf("%d %lld\n", open, bytes);
  for (int i = 0; i < conns; i++)
    conn_close(&c[i]);
  free(c);
  free(buf);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2)
    die("usage: loadgen get|latency|drain|slow [--tls] PORT PATH [CONNS] [SECS]");
  const char *mode = argv[1];
  int a = 2;
  if (a < argc && !strcmp(argv[a], "--tls")) {
    a++;
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  }
  int need = !strcmp(mode, "get") ? 2 : !strcmp(mode, "latency") ? 3 : 4;
  if (argc - a != need)
    die("usage: loadgen get|latency|drain|slow [--tls] PORT PATH [CONNS] [SECS]");
  port = atoi(argv[a]);
  path = argv[a + 1];
  if (!strcmp(mode, "get"))
    return mode_get();
  if (!strcmp(mode, "latency"))
    return mode_latency(atof(argv[a + 2]));
  if (!strcmp(mode, "drain"))
    return mode_drain(atoi(argv[a + 2]), atof(argv[a + 3]));
  if (!strcmp(mode, "slow"))
    return mode_slow(atoi(argv[a + 2]), atof(argv[a + 3]));
  die("unknown mode %s", mode);
}
