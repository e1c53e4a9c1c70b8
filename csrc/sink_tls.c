/* The TLS sink: bytes the copying backend has buffered go out through an
 * OpenSSL SSL* instead of plaintext on the socket. Where OpenSSL has put kernel
 * TLS on the write BIO, SSL_sendfile keeps a regular file zero-copy instead.
 *
 * Rules from SSL_write(3): a write that failed with WANT_WRITE/WANT_READ is
 * retried with the same bytes; we set SSL_MODE_ENABLE_PARTIAL_WRITE so every
 * record that went out is counted exactly, and SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
 * so the retry may come from the same bytes at another address. Both are put
 * back as they were when the transfer is released. */
#define _GNU_SOURCE
#include <errno.h>
#include "zcs_internal.h"

#ifdef ZCS_NO_TLS
/* Built without OpenSSL (-DZCS_NO_TLS; the Python extension is, as its TLS
 * transports encrypt in Python and never hand the core an SSL*): no transfer
 * ever holds an SSL, so the sink's entry points below are never reached but
 * zcs_transfer_set_ssl, which refuses. */
int zcs_transfer_set_ssl(zcs_transfer_t *t, struct ssl_st *ssl) {
  (void)t;
  (void)ssl;
  return -EOPNOTSUPP;
}

void zcs__tls_release(zcs_transfer_t *t) {
  t->ssl_modes_added = 0;
  t->ssl = NULL;
}

ssize_t zcs__tls_write(zcs_transfer_t *t, const void *buf, size_t len) {
  (void)t;
  (void)buf;
  (void)len;
  return -EOPNOTSUPP;
}

ssize_t zcs__ktls_sendfile(zcs_transfer_t *t, size_t len) {
  (void)t;
  (void)len;
  return -ENOSYS;
}

#else /* with OpenSSL */

#include <openssl/err.h>
#include <openssl/ssl.h>

#define ADDED_MODES (SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)

static int ktls_send_active(SSL *ssl) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L && !defined(OPENSSL_NO_KTLS)
  BIO *w = SSL_get_wbio(ssl);
  return w && BIO_get_ktls_send(w);
#else
  (void)ssl;
  return 0;
#endif
}

int zcs_transfer_set_ssl(zcs_transfer_t *t, struct ssl_st *ssl) {
  /* bytes held already (zcs_transfer_ready) would be skipped by kTLS's sendfile */
  if (!ssl || t->result != ZCS_RUNNING || t->sent || t->ssl || t->head || t->buf_pos < t->buf_len)
    return -EINVAL;
  int wfd = SSL_get_wfd(ssl);
  if (wfd >= 0 && wfd != t->sock_fd)
    return -EINVAL; /* we would wait on one fd while OpenSSL writes another */
  t->ssl = ssl;
  long had = SSL_get_mode(ssl);
  t->ssl_modes_added = (int)(ADDED_MODES & ~had);
  SSL_set_mode(ssl, ADDED_MODES);
  if (t->backend == ZCS_BACKEND_SENDFILE && ktls_send_active(ssl))
    t->backend = ZCS_BACKEND_KTLS;
  else if (t->backend != ZCS_BACKEND_MEMORY) {
    if (t->flags & ZCS_F_NO_FALLBACK)
      return ZCS_EUNSUPPORTED;
    t->backend = ZCS_BACKEND_TLS;
  }
  return 0;
}

void zcs__tls_release(zcs_transfer_t *t) {
  if (t->ssl && t->ssl_modes_added)
    SSL_clear_mode(t->ssl, t->ssl_modes_added);
  t->ssl_modes_added = 0;
  t->ssl = NULL;
}

/* Maps a failed SSL call to the backend contract; clears this thread's error queue. */
static ssize_t tls_failure(zcs_transfer_t *t, int ret) {
  int saved = errno;
  int e = SSL_get_error(t->ssl, ret);
  unsigned long lib = ERR_peek_last_error();
  ERR_clear_error();
  switch (e) {
  case SSL_ERROR_WANT_WRITE: return -EAGAIN;
  case SSL_ERROR_WANT_READ: return ZCS__WANT_READ;
  case SSL_ERROR_ZERO_RETURN: return -EPIPE; /* the peer sent close_notify */
  case SSL_ERROR_SYSCALL:
    if (lib == 0)
      return saved && saved != EAGAIN ? -saved : -ECONNRESET; /* EOF: the peer went */
    t->tls_error = lib; /* a library error after all */
    return ZCS_ETLS;
  default:
    t->tls_error = lib;
    return ZCS_ETLS;
  }
}

ssize_t zcs__tls_write(zcs_transfer_t *t, const void *buf, size_t len) {
  size_t n = 0;
  ERR_clear_error();
  errno = 0;
  int ret = SSL_write_ex(t->ssl, buf, len, &n);
  if (ret > 0)
    return (ssize_t)n;
  return tls_failure(t, ret);
}

/* kTLS: the kernel encrypts. Unverified here (this kernel has no kTLS). */
ssize_t zcs__ktls_sendfile(zcs_transfer_t *t, size_t len) {
#if OPENSSL_VERSION_NUMBER >= 0x30000000L && !defined(OPENSSL_NO_KTLS)
  ERR_clear_error();
  errno = 0;
  ossl_ssize_t n = SSL_sendfile(t->ssl, t->file_fd, (off_t)t->offset, len, 0);
  if (n > 0) {
    t->offset += n;
    return (ssize_t)n;
  }
  return n == 0 ? 0 : tls_failure(t, (int)n);
#else
  (void)t;
  (void)len;
  return -ENOSYS;
#endif
}

#endif /* ZCS_NO_TLS */
