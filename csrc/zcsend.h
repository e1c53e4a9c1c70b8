/* zcsend — zero-copy file-to-socket transfers.
 *
 * Layers (inside out), one file each:
 *   backend_linux.c / backend_bsd.c / backend_emulated.c  move bytes once
 *   transfer.c                                            the state machine
 *   driver_ev.c                                           runs transfers on a libev loop
 *
 * Every function that can fail returns a negative errno, or one of the ZCS_E*
 * codes below; zcs_strerror() and zcs_err_name() name both kinds.
 */
#ifndef ZCSEND_H
#define ZCSEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */
#include <pthread.h>
#include <ev.h>

struct ssl_st; /* OpenSSL's SSL; zcsend.h does not need OpenSSL's headers */

#ifdef __cplusplus
extern "C" {
#endif

#define ZCS_VERSION "0.1.0"

/* zcsend's own error codes, beside negative errnos. */
#define ZCS_ERRNO_MAP(XX)                                                        \
  XX(ETRUNCATED, -4001, "file ended before the requested byte count was sent")   \
  XX(EBLOCKING,  -4002, "socket is in blocking mode; zcsend needs O_NONBLOCK")   \
  XX(EBACKEND,   -4003, "unknown ZCSEND_BACKEND value")                          \
  XX(EUNSUPPORTED, -4004, "this source cannot be sent without copying")         \
  XX(ETLS,       -4005, "TLS protocol error (see zcs_transfer_tls_error)")

enum {
#define XX(name, value, msg) ZCS_##name = (value),
  ZCS_ERRNO_MAP(XX)
#undef XX
};

/* What zcs_transfer_step() asks for next; errors are negative. */
enum zcs_step_result {
  ZCS_DONE = 0,        /* every byte delivered (or the source hit EOF with no count) */
  ZCS_WANT_WRITE = 1,  /* wait until the socket is writable, then step again */
  ZCS_WANT_READ = 2,   /* wait until the socket is readable (TLS handshake or
                          renegotiation inside SSL_write), then step again */
  ZCS_WANT_SOURCE = 3  /* wait until the source fd is readable (pipe), then step again */
};

/* How bytes leave the file. */
enum zcs_backend {
  ZCS_BACKEND_SENDFILE = 0, /* the platform's sendfile(2) */
  ZCS_BACKEND_SPLICE = 1,   /* Linux splice(2) through a pipe */
  ZCS_BACKEND_EMULATED = 2, /* read/pread into a bounded buffer, then send */
  ZCS_BACKEND_MEMORY = 3,   /* bytes handed over in memory (no source fd) */
  ZCS_BACKEND_TLS = 4,      /* read into a bounded buffer, then SSL_write */
  ZCS_BACKEND_KTLS = 5      /* SSL_sendfile on a kernel-TLS socket (unverified here) */
};

/* Transfer flags. */
#define ZCS_F_NO_FALLBACK 0x1      /* fail with ZCS_EUNSUPPORTED instead of copying */
#define ZCS_F_SIGPIPE_BLOCKED 0x2  /* caller's thread already blocks SIGPIPE: skip the per-step mask */
#define ZCS_F_EXACT_COUNT 0x4      /* a count past a sized file's end is ZCS_ETRUNCATED at init,
                                      before a byte moves (without it: the rest of the file) */

#define ZCS_COUNT_TO_EOF (-1)
#define ZCS_DEFAULT_BUDGET (2u << 20)     /* bytes one step may move: nginx's 2 MiB per event */
#define ZCS_DEFAULT_BUFFER (128u << 10)   /* emulation buffer */
#define ZCS_MIN_BUFFER (16u << 10)
#define ZCS_MAX_BUFFER (256u << 10)

/* One transfer: a file (or part of one) to a non-blocking socket.
 * Members marked ro may be read by the owner at any time it holds the transfer;
 * rw may be changed before the first step; private are zcsend's. */
typedef struct zcs_transfer {
  int sock_fd;          /* rw: destination socket, O_NONBLOCK */
  int file_fd;          /* rw: source fd, -1 for ZCS_BACKEND_MEMORY */
  int flags;            /* rw: ZCS_F_* */
  size_t budget;        /* rw: bytes one step may move before yielding */
  int64_t start;        /* ro: offset the transfer began at */
  int64_t offset;       /* ro: next source offset to read (-1: source can't seek) */
  int64_t remaining;    /* ro: bytes still to send, ZCS_COUNT_TO_EOF when unknown */
  uint64_t sent;        /* ro: bytes delivered to the socket, exactly */
  uint64_t sent_zero_copy; /* ro: the part of sent that never entered user space */
  int backend;          /* ro: enum zcs_backend now in use */
  int result;           /* ro: 1 while running, then ZCS_DONE or a negative error */
  volatile int cancelled; /* private: the error zcs_transfer_abort() ends it with, or 0 */
  int sized;            /* private: the count came from a size to trust: an early EOF is ZCS_ETRUNCATED */
  int blocked;          /* ro: the last step stopped because the socket would block (not the budget) */
  /* private: emulation buffer */
  char *buf;
  size_t buf_cap, buf_len, buf_pos;
  /* private: splice pipe and the bytes parked in it */
  int pipe_fds[2];
  size_t pipe_len;
  int counted;          /* private: counted as active; its outcome not yet recorded */
  /* private: bytes sent before the source's (zcs_transfer_set_head) */
  char *head;
  size_t head_len, head_pos;
  /* private: TLS sink (zcs_transfer_set_ssl) */
  struct ssl_st *ssl;
  int ssl_modes_added;
  unsigned long tls_error;
} zcs_transfer_t;

/* Prepares a transfer of count bytes (ZCS_COUNT_TO_EOF: to the source's end)
 * from file_fd at offset to sock_fd. A regular file's count is fixed now from
 * its size, so a file that later grows sends what it had and one that shrinks
 * fails with ZCS_ETRUNCATED. Other sources (pipes, devices, and files of
 * pseudo filesystems such as procfs and sysfs, whose st_size is not their
 * length) send until count or their end, whichever comes first, as asyncio's
 * loop.sendfile does. A source that can't seek ignores offset.
 * Returns 0, or -EBADF / -EISDIR / -EINVAL / ZCS_EBLOCKING / -ENOMEM.
 * Every initialised transfer must be released with zcs_transfer_release(). */
int zcs_transfer_init(zcs_transfer_t *t, int sock_fd, int file_fd, int64_t offset,
                      int64_t count, int flags);

/* The count zcs_transfer_init() would fix now for fd from offset: with *sized
 * set, a regular file's min(count, bytes left) (an early EOF later means the
 * file shrank); else count itself (ZCS_COUNT_TO_EOF: up to the source's end).
 * For hosts that read the file themselves (a TLS layer zcsend can't reach), so
 * they size it by the same rule. Returns it, or -EINVAL / -EBADF. */
int64_t zcs_source_count(int fd, int64_t offset, int64_t count, int *sized);

/* Prepares a transfer of len bytes copied from data (no source fd). */
int zcs_transfer_init_memory(zcs_transfer_t *t, int sock_fd, const void *data, size_t len,
                             int flags);

/* Bytes to send before the source's, an HTTP response head say: copied now,
 * sent first, with MSG_MORE while file bytes follow so the two leave in the same
 * packets (nginx corks for this). sent counts the source's bytes only; the
 * head's are zcs_transfer_head_sent(). Call before the first step. Returns 0,
 * -EINVAL (set twice, after a step, or len 0), -EOPNOTSUPP on a TLS transfer
 * (write the head through the SSL), or -ENOMEM. */
int zcs_transfer_set_head(zcs_transfer_t *t, const void *data, size_t len);
size_t zcs_transfer_head_sent(const zcs_transfer_t *t);

/* Sends through ssl (an established or still-handshaking OpenSSL connection on
 * sock_fd) instead of writing plaintext to the socket: the file is read in
 * bounded chunks and SSL_written, or, where OpenSSL runs kernel TLS on the write
 * BIO, sent with SSL_sendfile. Call after zcs_transfer_init*() and before the
 * first step. The SSL is borrowed: it must outlive the transfer, and nothing
 * else may write to it meanwhile. Its SSL_MODE_ENABLE_PARTIAL_WRITE and
 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER are set for the transfer and restored on
 * release. Returns 0, -EINVAL (set twice, after a step, ssl writes another fd,
 * or a head is set), or ZCS_EUNSUPPORTED with ZCS_F_NO_FALLBACK and no kernel TLS.
 * Build switch: compiled with -DZCS_NO_TLS the core needs no OpenSSL (headers or
 * libssl/libcrypto) and this returns -EOPNOTSUPP; everything else is unchanged.
 * The Python extension is built so (its TLS goes through transport.write). */
int zcs_transfer_set_ssl(zcs_transfer_t *t, struct ssl_st *ssl);
/* OpenSSL's error code (ERR_get_error) behind the last ZCS_ETLS, or 0. */
unsigned long zcs_transfer_tls_error(const zcs_transfer_t *t);

/* Pushes bytes until the socket would block, the budget is spent, the transfer
 * ends, or an error. Returns enum zcs_step_result or a negative error; after
 * ZCS_DONE or an error every later call returns the same. Partial progress is
 * in t->sent even when an error is returned. Never raises SIGPIPE. */
int zcs_transfer_step(zcs_transfer_t *t);

/* For a host that can wait for a socket only by writing through its own socket
 * object (an nginx cosocket waits for writability inside its send()): copies up
 * to len of the transfer's next bytes into buf, moving nothing. Returns the
 * bytes copied (0: the range is done or the file ended), -EAGAIN while the
 * transfer holds bytes of its own (wait another way), -ESPIPE for a source that
 * can't seek, -EOPNOTSUPP on TLS, or -errno from pread. */
ssize_t zcs_transfer_peek(zcs_transfer_t *t, void *buf, size_t len);
/* The host wrote n of the bytes the last zcs_transfer_peek() copied: they count
 * as sent (not zero-copy). Returns 0, or -EINVAL when n is more than is left. */
int zcs_transfer_advance(zcs_transfer_t *t, size_t n);

/* The fd and libev-style events (1 read, 2 write) that a step result waits on. */
int zcs_transfer_wait_fd(const zcs_transfer_t *t, int step_result, int *events);

/* Marks the transfer cancelled: the next step returns -ECANCELED and moves nothing.
 * Safe from another thread only when the caller excludes a concurrent step
 * (zcs_ev_transfer does, with its lock). */
void zcs_transfer_cancel(zcs_transfer_t *t);
/* Like zcs_transfer_cancel(), but the transfer ends with err, a negative error
 * the host saw (-ECONNRESET: its connection went; -ETIMEDOUT: no progress), and
 * counts as failed; -ECANCELED is zcs_transfer_cancel(). The first call wins. */
void zcs_transfer_abort(zcs_transfer_t *t, int err);

/* Frees buffers and the splice pipe. (The outcome is in zcs_stats() from the
 * moment the transfer ends; one released unfinished counts as cancelled.) */
void zcs_transfer_release(zcs_transfer_t *t);

/* Process-wide counters, shared by every binding. */
typedef struct zcs_stats {
  uint64_t bytes_zero_copy;
  uint64_t bytes_fallback;
  uint64_t started;
  uint64_t completed;
  uint64_t failed;
  uint64_t cancelled;
  uint64_t active;
} zcs_stats_t;
void zcs_stats(zcs_stats_t *out);
/* For transfers a binding carries out through the host's own writer (read jobs
 * plus the host's write calls): counted like the core's own. begin once, then
 * end once with ZCS_DONE, -ECANCELED or another error and the bytes written. */
void zcs_stats_host_begin(void);
void zcs_stats_host_end(int result, uint64_t bytes_written);

/* Reads ZCSEND_BACKEND ("", "auto" or "emulated") once. Returns 0 or ZCS_EBACKEND. */
int zcs_backend_init(void);
/* "linux-sendfile", "darwin-sendfile", "freebsd-sendfile" or "emulated". */
const char *zcs_backend_name(void);
const char *zcs_backend_kind_name(int backend);

const char *zcs_strerror(int err);
const char *zcs_err_name(int err);

/* ---- libev driver ---------------------------------------------------------- */
typedef struct zcs_ev_transfer zcs_ev_transfer_t;
/* invoked once, when the transfer is done, failed or was cancelled */
typedef void (*zcs_ev_done_cb)(zcs_ev_transfer_t *w, int result);

struct zcs_ev_transfer {
  zcs_transfer_t *transfer; /* ro */
  struct ev_loop *loop;     /* ro */
  zcs_ev_done_cb on_done;   /* rw */
  void *data;               /* rw: the caller's */
  pthread_mutex_t *lock;    /* rw: if set, held around every step */
  int finished;             /* ro */
  ev_io io;                 /* private */
};

/* Starts driving t on loop; on_done is called from the loop when it ends.
 * Starting a started watcher is harmless. Returns 0 or -EINVAL. */
int zcs_ev_start(zcs_ev_transfer_t *w, struct ev_loop *loop, zcs_transfer_t *t,
                 zcs_ev_done_cb on_done, void *data);
/* Steps now (e.g. after zcs_transfer_cancel); may call on_done. */
void zcs_ev_kick(zcs_ev_transfer_t *w);
/* Stops watching without finishing; on_done is not called. Harmless twice. */
void zcs_ev_stop(zcs_ev_transfer_t *w);

/* ---- engine: a background thread running a libev loop --------------------
 * For hosts whose own loop zcsend can't join (Python's asyncio): jobs are handed
 * to one engine thread per process, which works on dup()s of their fds, so the
 * host closing its fd mid-transfer can never redirect bytes to an fd that reused
 * the number. Finished jobs come back through a channel: an fd that turns
 * readable, and a list the host drains from its own thread. */
typedef struct zcs_channel zcs_channel_t;
typedef struct zcs_job zcs_job_t;

zcs_channel_t *zcs_channel_new(void);          /* NULL and errno on failure */
int zcs_channel_fd(const zcs_channel_t *ch);   /* readable while finished jobs wait */
/* Takes up to n finished jobs' ids; each id was returned by zcs_job_id(). */
size_t zcs_channel_drain(zcs_channel_t *ch, uint64_t *ids, size_t n);
void zcs_channel_release(zcs_channel_t *ch);   /* freed when no job still holds it */
/* In a child just forked, before its event loop runs: the channel's fd number
 * now names a quiet eventfd of the child's own. Epoll registrations belong to
 * the open file description, which fork shares: without this, a child loop that
 * stops watching the fd (closing, say) takes the parent's watch away too.
 * Returns 0 (nothing to do in the process that made the channel) or -errno. */
int zcs_channel_after_fork(zcs_channel_t *ch);

/* A job owns its transfer; set it up with zcs_transfer_init*(zcs_job_transfer(j)),
 * step it inline if you like, then submit. One reference is the caller's. */
zcs_job_t *zcs_job_new(void);
zcs_transfer_t *zcs_job_transfer(zcs_job_t *j);
uint64_t zcs_job_id(const zcs_job_t *j);
/* Makes j a read job instead: the engine reads up to len bytes of the regular
 * file fd at offset into a buffer the job owns (zcs_job_data(), freed with the
 * job); when it comes back, zcs_job_sent() is the byte count read (short only at
 * the end of the file) and zcs_job_result() 0 or -errno. For hosts that must write the bytes through
 * a layer of their own (a TLS implementation zcsend can't reach), so the disk
 * read still happens off their thread. Returns 0, -EINVAL, or -ESPIPE when fd is
 * not a regular file. */
int zcs_job_init_read(zcs_job_t *j, int fd, int64_t offset, size_t len);
/* A read job's buffer; read it only after the job came back. */
const void *zcs_job_data(const zcs_job_t *j);
/* Reads len bytes of fd at offset into buf only if every one of them is in the
 * page cache, so it never waits for the disk and an event-loop thread may call
 * it (Linux preadv2 with RWF_NOWAIT). Returns 1 when all len bytes were read;
 * 0 when they were not (some not cached, the file ends sooner, or no such read
 * on this kernel or filesystem): then a read job reads them and says which;
 * or a negative errno (EBADF, ESPIPE, EIO...). */
int zcs_read_cached(int fd, void *buf, size_t len, int64_t offset);
/* Hands the job to the engine thread (started on first use). Returns 0, or a
 * negative errno (-EMFILE: no fd left for the dups): nothing is submitted then,
 * and a send job's transfer has ended with that error.
 *
 * fork(): the engine thread does not exist in a child. A job or channel the
 * child inherited belongs to the parent's engine: in the child, cancel only
 * marks the job, sent/result read the inherited copy without its lock (the
 * engine may have held it at the fork), drain returns 0 without touching the
 * eventfd the parent still uses, and release frees nothing and closes no fd
 * (the child may have reused those numbers already; they are CLOEXEC). New
 * jobs and channels in the child start a new engine. */
int zcs_job_submit(zcs_job_t *j, zcs_channel_t *ch);
/* Stops the job: when this returns, no further byte of it will be written, and
 * zcs_job_sent() is final. The job still comes back through its channel. */
void zcs_job_cancel(zcs_job_t *j);
/* zcs_job_cancel() that ends the job with err (see zcs_transfer_abort). */
void zcs_job_abort(zcs_job_t *j, int err);
uint64_t zcs_job_sent(zcs_job_t *j);
uint64_t zcs_job_sent_zero_copy(zcs_job_t *j);
int zcs_job_result(zcs_job_t *j);               /* 1 while running */
void zcs_job_release(zcs_job_t *j);

#ifdef __cplusplus
}
#endif
#endif /* ZCSEND_H */
