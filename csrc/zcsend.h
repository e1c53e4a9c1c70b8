/* zcsend — zero-copy file-to-socket transfers: the core API.
 *
 * One header per layer (docs/C_API.md is the guide to all three):
 *   zcsend.h         transfers, backends, errors, stats, version — this file;
 *                    needs only the C library (no libev, no pthread.h)
 *   zcsend_ev.h      the libev driver: runs transfers on an ev_loop
 *   zcsend_engine.h  the engine thread, its channels and jobs
 *
 * Implementation, one file each (inside out):
 *   backend_linux.c / backend_bsd.c / backend_emulated.c  move bytes once
 *   sink_tls.c                                            OpenSSL as the destination
 *   transfer.c                                            the state machine, stats, version
 *   chunks.c                                              chunk sources (the write path)
 *   errors.c                                              names and messages of error codes
 *   driver_ev.c                                           zcsend_ev.h
 *   engine.c                                              zcsend_engine.h
 * csrc/sources.mk lists them for every build.
 *
 * Every function that can fail returns a negative errno, or one of the ZCS_E*
 * codes below; zcs_strerror() and zcs_err_name() name both kinds.
 */
#ifndef ZCSEND_H
#define ZCSEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

struct ssl_st; /* OpenSSL's SSL; zcsend.h does not need OpenSSL's headers */

/* ZCS_API marks the public API. The core is compiled with -fvisibility=hidden:
 * a shared object built from it exports what carries ZCS_API and nothing else
 * (the zcs__* internals never). The Python and Lua bindings compile the core
 * into their own module with -DZCS_API= so that they export only their entry
 * point (see docs/C_API.md, "Linking"). */
#ifndef ZCS_API
#if defined(__GNUC__) || defined(__clang__)
#define ZCS_API __attribute__((visibility("default")))
#else
#define ZCS_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ----------------------------------------------------------------
 * The version is written once, in python/zcsend/_version.py; the string below is
 * checked against it (tests/python/test_packaging.py) and the numbers against
 * the string (tests/c/test_core.c). */
#define ZCS_VERSION_MAJOR 0
#define ZCS_VERSION_MINOR 1
#define ZCS_VERSION_PATCH 0
#define ZCS_VERSION "0.1.0"
/* (major << 16) | (minor << 8) | patch, for #if ZCS_VERSION_HEX >= 0x000100 */
#define ZCS_VERSION_HEX ((ZCS_VERSION_MAJOR << 16) | (ZCS_VERSION_MINOR << 8) | ZCS_VERSION_PATCH)

/* The version of the core actually linked, which may differ from the header's
 * a host was compiled with: ZCS_VERSION and ZCS_VERSION_HEX. */
ZCS_API const char *zcs_version(void);
ZCS_API unsigned int zcs_version_hex(void);

/* ---- errors ---------------------------------------------------------------- */
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

/* A message for err (a ZCS_E* code or a negative errno): strerror's for errnos. */
ZCS_API const char *zcs_strerror(int err);
/* The symbolic name of err without its minus sign: "ETRUNCATED", "EPIPE",
 * "EAGAIN" (for EWOULDBLOCK too: an alias gets the name its value has first).
 * Every errno the platform defines is named; "EUNKNOWN" for anything else
 * (0 and positive values included). */
ZCS_API const char *zcs_err_name(int err);

/* ---- transfers --------------------------------------------------------------- */
/* What zcs_transfer_step() asks for next; errors are negative. */
enum zcs_step_result {
  ZCS_DONE = 0,        /* every byte delivered (or the source hit EOF with no count) */
  ZCS_WANT_WRITE = 1,  /* wait until the socket is writable, then step again */
  ZCS_WANT_READ = 2,   /* wait until the socket is readable (TLS handshake or
                          renegotiation inside SSL_write), then step again */
  ZCS_WANT_SOURCE = 3  /* wait until the source fd is readable (pipe), then step again */
};

/* t->result (and zcs_job_result()) while the transfer has not ended; once it
 * has, ZCS_DONE or a negative error, for good. Not a step result. */
#define ZCS_RUNNING 1

/* The events zcs_transfer_wait_fd() asks for: the same bits as libev's
 * EV_READ and EV_WRITE (driver_ev.c checks), so a libev host may pass them on. */
#define ZCS_WAIT_READ 0x01
#define ZCS_WAIT_WRITE 0x02

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
#define ZCS_F_SOCK_NONBLOCKING 0x8 /* the caller knows sock_fd is O_NONBLOCK (an asyncio socket):
                                      init skips its check (one fcntl) */
#define ZCS_F_SOURCE_READABLE 0x10 /* the caller knows file_fd is open for reading: init skips
                                      its check (one fcntl); a wrong claim fails with -EBADF
                                      at the first read instead */
#define ZCS_F_SIGPIPE_IF_DEFAULT 0x20 /* a step looks at SIGPIPE's disposition (one sigaction)
                                      and masks it only where it is not ignored, instead of
                                      masking it always (two mask calls). For hosts that
                                      ignore SIGPIPE (CPython does at startup); a host that
                                      may reset it to the default from another thread while
                                      a step runs must not use it */
#define ZCS_F_SEEKABLE_ONLY 0x40   /* init refuses a source that can't seek (a pipe, a socket,
                                      a tty) with -ESPIPE, before counting it: for a host whose
                                      buffered reader may hold such a stream's next bytes,
                                      which the fd alone would skip */
#define ZCS_F_UNCOUNTED 0x80       /* zcs_transfer_init_memory: not counted as a transfer in
                                      the stats (its bytes are), for a host that sends one
                                      transfer as several (counted once by a chunk source) */

#define ZCS_COUNT_TO_EOF (-1)
#define ZCS_DEFAULT_BUDGET (2u << 20)     /* bytes one step may move: nginx's 2 MiB per event */
#define ZCS_DEFAULT_BUFFER (128u << 10)   /* emulation buffer */
#define ZCS_MIN_BUFFER (16u << 10)
#define ZCS_MAX_BUFFER (256u << 10)
#ifndef ZCS_SMALL_COPY /* a build may set it (benchmarks/core_small.c measures it) */
#define ZCS_SMALL_COPY (16u << 10)        /* a rest this small is copied: zcs_transfer_ready */
#endif

/* One transfer: a file (or part of one) to a non-blocking socket.
 *
 * The struct is public so that a host can embed it by value in its own
 * connection object (no allocation per transfer): its size and the place of
 * every public member are part of the ABI. Members marked rw may be changed
 * before the first step; ro ones read by the owner at any time it holds the
 * transfer (not while another thread steps it). The rest is zcsend's: private
 * members live in a fixed-size area (zcs__reserved), so they can change, or
 * new ones be added, without changing sizeof(zcs_transfer_t); never touch them. */
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
  int result;           /* ro: ZCS_RUNNING, then ZCS_DONE or a negative error */
  int blocked;          /* ro: the last step stopped because the socket would block (not the
                           budget), or zcs_transfer_start found it full */
  union {
    struct { /* private */
      volatile int cancelled; /* the error zcs_transfer_abort() ends it with, or 0 */
      int sized;        /* the count came from a size to trust: an early EOF is ZCS_ETRUNCATED */
      /* emulation buffer */
      char *buf;
      size_t buf_cap, buf_len, buf_pos;
      /* splice pipe and the bytes parked in it */
      int pipe_fds[2];
      size_t pipe_len;
      int counted;      /* counted as active; its outcome not yet recorded */
      /* bytes sent before the source's (zcs_transfer_set_head) */
      char *head;
      size_t head_len, head_pos;
      /* TLS sink (zcs_transfer_set_ssl) */
      struct ssl_st *ssl;
      int ssl_modes_added;
      unsigned long tls_error;
    };
    uint64_t zcs__reserved[32]; /* the private area's size: 256 bytes */
  };
} zcs_transfer_t;

/* Thread safety: a transfer belongs to one thread at a time, and every call on
 * it below must come from that thread (or under a lock the host holds around
 * all of them: zcs_ev_transfer_t's lock, the engine's job lock). Transfers
 * share nothing else but the process-wide stats, kept with atomics, so
 * different transfers may run in different threads at once. */

/* Prepares a transfer of count bytes (ZCS_COUNT_TO_EOF: to the source's end)
 * from file_fd at offset to sock_fd. A regular file's count is fixed now from
 * its size, so a file that later grows sends what it had and one that shrinks
 * fails with ZCS_ETRUNCATED. Other sources (pipes, devices, and files of
 * pseudo filesystems such as procfs and sysfs, whose st_size is not their
 * length) send until count or their end, whichever comes first, as asyncio's
 * loop.sendfile does. A source that can't seek ignores offset.
 * Returns 0, or -EBADF / -EISDIR / -EINVAL / ZCS_EBLOCKING / -ENOMEM.
 * Every initialised transfer must be released with zcs_transfer_release() (after
 * a failed init that frees nothing and is harmless). The fds stay the caller's:
 * zcsend never closes them. */
ZCS_API int zcs_transfer_init(zcs_transfer_t *t, int sock_fd, int file_fd, int64_t offset,
                              int64_t count, int flags);

/* The count zcs_transfer_init() would fix now for fd from offset: with *sized
 * set, a regular file's min(count, bytes left) (an early EOF later means the
 * file shrank); else count itself (ZCS_COUNT_TO_EOF: up to the source's end).
 * For hosts that read the file themselves (a TLS layer zcsend can't reach), so
 * they size it by the same rule (a chunk source, zcs_chunks_init(), applies it
 * for them). Returns it, or -EINVAL / -EBADF. */
ZCS_API int64_t zcs_source_count(int fd, int64_t offset, int64_t count, int *sized);

/* Prepares a transfer of len bytes copied from data (no source fd). */
ZCS_API int zcs_transfer_init_memory(zcs_transfer_t *t, int sock_fd, const void *data,
                                     size_t len, int flags);

/* Bytes to send before the source's, an HTTP response head say: copied now,
 * sent first, with MSG_MORE while file bytes follow so the two leave in the same
 * packets (nginx corks for this). sent counts the source's bytes only; the
 * head's are zcs_transfer_head_sent(). Call before the first step. Returns 0,
 * -EINVAL (set twice, after a step, or len 0), -EOPNOTSUPP on a TLS transfer
 * (write the head through the SSL), or -ENOMEM. */
ZCS_API int zcs_transfer_set_head(zcs_transfer_t *t, const void *data, size_t len);
ZCS_API size_t zcs_transfer_head_sent(const zcs_transfer_t *t);

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
ZCS_API int zcs_transfer_set_ssl(zcs_transfer_t *t, struct ssl_st *ssl);
/* OpenSSL's error code (ERR_get_error) behind the last ZCS_ETLS, or 0. */
ZCS_API unsigned long zcs_transfer_tls_error(const zcs_transfer_t *t);

/* Pushes bytes until the socket would block, the budget is spent, the transfer
 * ends, or an error. Returns enum zcs_step_result or a negative error; after
 * ZCS_DONE or an error every later call returns the same. Partial progress is
 * in t->sent even when an error is returned. Never raises SIGPIPE: it blocks
 * SIGPIPE in the calling thread for the step (skipped with
 * ZCS_F_SIGPIPE_BLOCKED) and consumes what the step raised. */
ZCS_API int zcs_transfer_step(zcs_transfer_t *t);

/* Whether a step of up to len bytes can't wait for the disk: 1 when the next
 * len bytes of a regular file's range are all in the page cache (cachestat(2),
 * Linux 6.5+) and read in (cachestat counts a page still being read as cached:
 * a preadv2(RWF_NOWAIT) of the first and the last byte of every 256 KiB says
 * so; for one or two pages those probes alone answer), or the source is no
 * file (a pipe, memory), or nothing is left;
 * 0 when some of them are not (a host's event thread should hand the transfer
 * to a thread that may block, e.g. the engine, instead of stepping it). Where
 * cachestat can't answer (none before Linux 6.5; EPERM since 6.14 for a file
 * the process neither owns nor may write) every page is probed up to 16 pages;
 * a longer range is asked of mincore(2) (and probed at its ends) where there is
 * no cachestat, and is 0 where it refused. A file that refuses the probes (no
 * RWF_NOWAIT: an O_DIRECT fd, FUSE, a network filesystem) is 1 only on an
 * in-memory filesystem (tmpfs, ramfs, hugetlbfs). Nothing is
 * remembered: every call asks anew, so a page evicted between a host's steps
 * (memory pressure, a slow reader) is seen before the step would read it on
 * the host's thread. (The engine, on its own thread, does remember.) */
ZCS_API int zcs_transfer_cached(const zcs_transfer_t *t, size_t len);

/* zcs_transfer_cached() for a host about to step the transfer, which may read
 * its rest now: a rest of at most ZCS_SMALL_COPY bytes (16 KiB) of a regular
 * file, on a sendfile transfer holding no bytes (and not ZCS_F_NO_FALLBACK), is read with one
 * preadv2(RWF_NOWAIT) into the transfer's buffer, and the step sends it, after
 * the head, with one sendmsg(MSG_NOSIGNAL) (those bytes count as copied, not
 * zero-copy): two syscalls where the zero-copy step makes four or five
 * (cachestat, the probes, the look at SIGPIPE, sendfile; a send for a head).
 * benchmarks/core_small.c, 4 runs on loopback TCP: 0.76-0.81x the zero-copy
 * step's CPU with a head and 0.87-1.01x without, for 8 to 16 KiB; at 32 KiB
 * 0.86-0.95x, but the copies' share grows with the size (one to the buffer,
 * one to the socket; sendfile makes neither on a NIC that gathers), and the
 * buffer (the rest's size, malloc) stays with a slow reader's connection,
 * hence the limit. 1: the rest is held. Where the
 * read fails or comes back short (a page not read in or still being read, the
 * file shrank, a cached page carrying the readahead mark, where RWF_NOWAIT
 * reads stop), the file refuses RWF_NOWAIT (tmpfs), or the read fails
 * otherwise, nothing is held and zcs_transfer_cached() answers (the step then
 * meets any error). It counts as the first step for what may change only
 * before one (the rw members, zcs_transfer_set_ssl: -EINVAL while bytes are
 * held), and is called as a step is (the same thread, or under the same lock).
 * zcs_transfer_peek/advance give and take the held bytes as the file's next. */
ZCS_API int zcs_transfer_ready(zcs_transfer_t *t, size_t len);

/* zcs_transfer_init, then zcs_transfer_set_head (head_len 0: none), except
 * that a small send goes at once: where the range is at most ZCS_SMALL_COPY
 * bytes (ZCS_COUNT_TO_EOF: a regular file's rest, from one fstat) and all in
 * the page cache, it is read with one preadv2(RWF_NOWAIT) into a buffer on
 * the stack and sent after the head with one sendmsg(MSG_NOSIGNAL |
 * MSG_DONTWAIT): with a count, no fstat; no fcntl of the file (the read
 * proves it readable), no SIGPIPE mask, and no allocation unless it must
 * hold bytes for later (a copy of the rest, and of the head's). Two syscalls where
 * init, zcs_transfer_ready and a step make four or five. Returns what they
 * would return (0, or init's and set_head's errors, with nothing sent). After 0:
 *   - t->result is ZCS_DONE: every byte went (t->sent of the file's), counted
 *     in the stats as a transfer done;
 *   - or t->sent / zcs_transfer_head_sent() say that part went, or none did
 *     as the socket was full (t->blocked): t holds the rest, read already
 *     (the file is not read again), to step once the socket is writable;
 *     where it could not hold it, it ended with -ENOMEM, what went counted;
 *   - or nothing went and t ended with the error the send met (a peer's
 *     reset: the send took it from the socket, so the step could not);
 *   - else nothing went (the range not all in memory, fewer bytes than count,
 *     an fd preadv2 can't read, ZCS_F_NO_FALLBACK, ZCSEND_BACKEND=emulated):
 *     t is as init left it, and the step meets each of those as it always
 *     does.
 * Release t in every case. The buffer (ZCS_SMALL_COPY) is on the caller's stack.
 * Not for a transfer that is to get a TLS sink (zcs_transfer_set_ssl): the
 * bytes may go at once, in the clear. */
ZCS_API int zcs_transfer_start(zcs_transfer_t *t, int sock_fd, int file_fd, int64_t offset,
                               int64_t count, const void *head, size_t head_len, int flags);

/* For a host that can wait for a socket only by writing through its own socket
 * object (an nginx cosocket waits for writability inside its send()): copies up
 * to len of the transfer's next bytes into buf, moving nothing. Returns the
 * bytes copied (0: the range is done or the file ended), -EAGAIN while the
 * transfer holds bytes of its own (a head, the emulation's buffer, a splice
 * pipe's: wait another way; the rest zcs_transfer_ready read is given, as the
 * file's next bytes), -ESPIPE for a source that can't seek, -EOPNOTSUPP on
 * TLS, or -errno from pread. */
ZCS_API ssize_t zcs_transfer_peek(zcs_transfer_t *t, void *buf, size_t len);
/* The host wrote n of the bytes the last zcs_transfer_peek() copied: they count
 * as sent (not zero-copy). Returns 0, -EINVAL when n is more than is left, or
 * -EAGAIN while bytes peek can't give go first (nothing is counted). */
ZCS_API int zcs_transfer_advance(zcs_transfer_t *t, size_t n);

/* The fd, and in *events the ZCS_WAIT_* bits, that a step result waits on;
 * -1 (and 0) for ZCS_DONE or an error. */
ZCS_API int zcs_transfer_wait_fd(const zcs_transfer_t *t, int step_result, int *events);

/* Marks the transfer cancelled: the next step returns -ECANCELED and moves nothing.
 * Safe from another thread only when the caller excludes a concurrent step
 * (zcs_ev_transfer does, with its lock). */
ZCS_API void zcs_transfer_cancel(zcs_transfer_t *t);
/* Like zcs_transfer_cancel(), but the transfer ends with err, a negative error
 * the host saw (-ECONNRESET: its connection went; -ETIMEDOUT: no progress), and
 * counts as failed; -ECANCELED is zcs_transfer_cancel(). The first call wins. */
ZCS_API void zcs_transfer_abort(zcs_transfer_t *t, int err);

/* Moves a transfer to other memory (from the C stack into a heap object, say,
 * when one that was meant to end in its first step must go on): dst takes over
 * src as it stands, buffers, head, pipe and stats included; src is left empty,
 * as if released without counting an outcome. dst must not hold a transfer. */
ZCS_API void zcs_transfer_move(zcs_transfer_t *dst, zcs_transfer_t *src);

/* Frees buffers and the splice pipe; closes none of the caller's fds. (The
 * outcome is in zcs_stats() from the moment the transfer ends; one released
 * unfinished counts as cancelled.) */
ZCS_API void zcs_transfer_release(zcs_transfer_t *t);

/* ---- chunk sources: the write path ------------------------------------------
 * For a host that must write the bytes itself, through a layer zcsend can't
 * reach (a TLS object, a transport's write()): a file range handed out in
 * chunks, sized by zcs_transfer_init()'s rule, ending in ZCS_ETRUNCATED when a
 * sized file ends early, and counted in zcs_stats() like a transfer. The host
 * keeps only what only it can do: writing, and waiting its own way.
 *
 *   zcs_chunks_init(&c, fd, offset, count, flags)
 *   while ((n = zcs_chunks_read(&c, buf, cap, 0)) > 0)    or the host reads the
 *     write n bytes of buf through the host's writer;      bytes elsewhere and
 *     zcs_chunks_wrote(&c, bytes it took);                  hands them over with
 *   zcs_chunks_end(&c, n < 0 ? n : ZCS_DONE)                zcs_chunks_take()
 *   zcs_chunks_release(&c)
 *
 * Like a transfer, the struct is the host's (embed it by value); ro members may
 * be read at any time, the rest is zcsend's. One thread at a time. */
typedef struct zcs_chunks {
  int fd;               /* ro: the source; -1: the host reads one zcsend can't see */
  int sized;            /* ro: the count was fixed from a regular file's size, so an
                           early end is ZCS_ETRUNCATED */
  int64_t offset;       /* ro: offset of the next byte (-1: the source has no offsets;
                           it is read where it stands) */
  int64_t remaining;    /* ro: bytes still to hand out, ZCS_COUNT_TO_EOF when unknown */
  uint64_t sent;        /* ro: bytes the host's writer took (zcs_chunks_wrote) */
  int result;           /* ro: ZCS_RUNNING, then ZCS_DONE or a negative error */
  union {
    struct { /* private */
      int counted;      /* counted as active; its outcome not yet recorded */
    };
    uint64_t zcs__reserved[4];
  };
} zcs_chunks_t;

/* Prepares to hand out count bytes (ZCS_COUNT_TO_EOF: to the source's end) of fd
 * from offset, sized as zcs_transfer_init() sizes a transfer (zcs_source_count):
 * a regular file's count is fixed now; other sources go until count or their
 * end. With ZCS_F_EXACT_COUNT a count past a sized file's end is ZCS_ETRUNCATED
 * now, before a byte. fd -1: the host reads a source zcsend can't see (a
 * language's file object) and hands the bytes over with zcs_chunks_take(); only
 * count bounds it. The fd stays the caller's. Returns 0 (counted as started),
 * or -EINVAL / -EBADF (write-only too) / -EISDIR / ZCS_ETRUNCATED, counting
 * nothing. Release every initialised chunk source (harmless after a failure). */
ZCS_API int zcs_chunks_init(zcs_chunks_t *c, int fd, int64_t offset, int64_t count, int flags);

/* How many bytes to read next for a buffer of cap: min(cap, remaining); 0 once
 * the range is done or the source ended. */
ZCS_API size_t zcs_chunks_want(const zcs_chunks_t *c, size_t cap);

/* zcs_chunks_read() flags */
#define ZCS_READ_NOWAIT 0x1 /* read only what needs no waiting: from the page cache,
                               all the chunk or nothing (preadv2 RWF_NOWAIT); a
                               source without offsets only when poll says it has bytes */

/* Reads the range's next bytes into buf (at most cap, never past the range):
 * pread at c->offset, or read(2) where a source without offsets stands.
 * Returns the bytes read; 0 at the end (the range is done, or an unsized source
 * ended); ZCS_ETRUNCATED when a sized file ended early; -EAGAIN with
 * ZCS_READ_NOWAIT when the bytes would need waiting for (nothing is consumed:
 * read them elsewhere, then zcs_chunks_take); or -errno. An error or
 * ZCS_ETRUNCATED ends the chunk source with it. After the end: 0, or the error
 * it ended with. -EBADF for fd -1 (the host reads). */
ZCS_API ssize_t zcs_chunks_read(zcs_chunks_t *c, void *buf, size_t cap, int flags);

/* For a host that read the next bytes elsewhere (off its thread, or from its
 * own file object): it asked for asked (no more than zcs_chunks_want(c, asked))
 * and got got. They are consumed as zcs_chunks_read's would be: got 0 of an
 * unsized source is its end. Returns 0; ZCS_ETRUNCATED when a sized file ended
 * early (got < asked: the got bytes are its last, and may still be written; the
 * chunk source has ended with ZCS_ETRUNCATED); after the end, 0 or the error it
 * ended with; -EINVAL for got > asked, asked 0 or past the range. */
ZCS_API int zcs_chunks_take(zcs_chunks_t *c, size_t got, size_t asked);

/* The host's writer took n bytes: c->sent and zcs_stats()'s bytes_fallback
 * count them (also after the end: bytes written after a truncation). */
ZCS_API void zcs_chunks_wrote(zcs_chunks_t *c, size_t n);

/* Records the outcome, once (the first end, or the error a read or take ended
 * with, wins): ZCS_DONE completed, -ECANCELED cancelled, another error failed. */
ZCS_API void zcs_chunks_end(zcs_chunks_t *c, int result);

/* Done with the chunk source: one that never ended counts as cancelled now (it
 * holds no memory, and closes no fd). Harmless twice, and after a failed init. */
ZCS_API void zcs_chunks_release(zcs_chunks_t *c);

/* ---- stats ------------------------------------------------------------------- */
/* Process-wide counters, shared by every binding; safe from any thread. */
typedef struct zcs_stats {
  uint64_t bytes_zero_copy;
  uint64_t bytes_fallback;
  uint64_t started;
  uint64_t completed;
  uint64_t failed;
  uint64_t cancelled;
  uint64_t active;
} zcs_stats_t;
ZCS_API void zcs_stats(zcs_stats_t *out);

/* ---- backends ---------------------------------------------------------------- */
/* Reads ZCSEND_BACKEND ("", "auto" or "emulated") once. Returns 0 or ZCS_EBACKEND. */
ZCS_API int zcs_backend_init(void);
/* "linux-sendfile", "darwin-sendfile", "freebsd-sendfile" or "emulated". */
ZCS_API const char *zcs_backend_name(void);
/* "sendfile", "splice", "emulated", "memory", "tls", "ktls" (enum zcs_backend), or "unknown". */
ZCS_API const char *zcs_backend_kind_name(int backend);

#ifdef __cplusplus
}
#endif
#endif /* ZCSEND_H */
