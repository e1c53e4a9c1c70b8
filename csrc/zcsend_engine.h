/* zcsend's engine: a background thread running a libev loop, for hosts whose
 * own loop zcsend can't join (Python's asyncio). Implemented in engine.c; the
 * header needs neither libev nor pthread. See docs/C_API.md, "The engine".
 *
 * Jobs are handed to one engine thread per process, which works on dup()s of
 * their fds, so the host closing its fd mid-transfer can never redirect bytes to
 * an fd that reused the number. Finished jobs come back through a channel: an
 * fd that turns readable, and a list the host drains from its own thread.
 *
 * Thread safety: until zcs_job_submit() a job and its transfer are the
 * caller's, used from one thread at a time; from then on the host reaches it
 * only through zcs_job_cancel/abort/sent/sent_zero_copy/result/release, which
 * any thread may call, and zcs_job_data() once the job came back. Channel calls
 * may come from any thread. The engine calls nothing of the host's. Nothing may
 * be called on a job or channel after its release. */
#ifndef ZCSEND_ENGINE_H
#define ZCSEND_ENGINE_H

#include "zcsend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zcs_channel zcs_channel_t;
typedef struct zcs_job zcs_job_t;

ZCS_API zcs_channel_t *zcs_channel_new(void);          /* NULL and errno on failure */
ZCS_API int zcs_channel_fd(const zcs_channel_t *ch);   /* readable while finished jobs wait */
/* Takes up to n finished jobs' ids; each id was returned by zcs_job_id(). The fd
 * may turn readable once with none waiting (the engine wakes the host after
 * letting go of the channel's lock): a drain then gives 0 and quiets it. */
ZCS_API size_t zcs_channel_drain(zcs_channel_t *ch, uint64_t *ids, size_t n);
ZCS_API void zcs_channel_release(zcs_channel_t *ch);   /* freed when no job still holds it */
/* In a child just forked, before its event loop runs: the channel's fd number
 * now names a quiet eventfd of the child's own. Epoll registrations belong to
 * the open file description, which fork shares: without this, a child loop that
 * stops watching the fd (closing, say) takes the parent's watch away too.
 * Returns 0 (nothing to do in the process that made the channel) or -errno. */
ZCS_API int zcs_channel_after_fork(zcs_channel_t *ch);

/* A job owns its transfer; set it up with zcs_transfer_init*(zcs_job_transfer(j)),
 * step it inline if you like, then submit. One reference is the caller's. */
ZCS_API zcs_job_t *zcs_job_new(void);
ZCS_API zcs_transfer_t *zcs_job_transfer(zcs_job_t *j);
ZCS_API uint64_t zcs_job_id(const zcs_job_t *j);
/* Makes j a read job instead: the engine reads up to len bytes of the regular
 * file fd at offset into a buffer the job owns (zcs_job_data(), freed with the
 * job); when it comes back, zcs_job_sent() is the byte count read (short only at
 * the end of the file) and zcs_job_result() 0 or -errno. For hosts that must write the bytes through
 * a layer of their own (a TLS implementation zcsend can't reach), so the disk
 * read still happens off their thread. Returns 0, -EINVAL, or -ESPIPE when fd is
 * not a regular file. */
ZCS_API int zcs_job_init_read(zcs_job_t *j, int fd, int64_t offset, size_t len);
/* A read job's buffer; read it only after the job came back. */
ZCS_API const void *zcs_job_data(const zcs_job_t *j);
/* Reads len bytes of fd at offset into buf only if every one of them is in the
 * page cache, so it never waits for the disk and an event-loop thread may call
 * it (Linux preadv2 with RWF_NOWAIT). Returns 1 when all len bytes were read;
 * 0 when they were not (some not cached, the file ends sooner, or no such read
 * on this kernel or filesystem): then a read job reads them and says which;
 * or a negative errno (EBADF, ESPIPE, EIO...). */
ZCS_API int zcs_read_cached(int fd, void *buf, size_t len, int64_t offset);
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
ZCS_API int zcs_job_submit(zcs_job_t *j, zcs_channel_t *ch);
/* Stops the job: when this returns, no further byte of it will be written, and
 * a send job's zcs_job_sent() is final (a read job's read may still end and
 * count: it writes nothing). The job still comes back through its channel. */
ZCS_API void zcs_job_cancel(zcs_job_t *j);
/* zcs_job_cancel() that ends the job with err (see zcs_transfer_abort). */
ZCS_API void zcs_job_abort(zcs_job_t *j, int err);
/* Progress and outcome, from any thread while the job runs, without waiting:
 * atomic loads, not the job's lock, which the engine holds for a whole step.
 * The zero-copy part read first is never past the total read after it; once
 * zcs_job_result() says the job ended, zcs_job_sent() read after it is final. */
ZCS_API uint64_t zcs_job_sent(zcs_job_t *j);
ZCS_API uint64_t zcs_job_sent_zero_copy(zcs_job_t *j);
ZCS_API int zcs_job_result(zcs_job_t *j);       /* ZCS_RUNNING until it ended */
ZCS_API void zcs_job_release(zcs_job_t *j);

/* The engine never waits for the disk itself: before each step of a job (and
 * before a read job's read) it asks whether the range is in the page cache
 * (cachestat(2), and preadv2(RWF_NOWAIT) probes for pages still being read);
 * when it is not, a small pool of prefetch threads (started on first need)
 * reads the range into the page cache while the engine keeps stepping the other
 * jobs, and the job steps when they are done, without asking again (so pages
 * evicted meanwhile can't keep a job waiting for ever). A job waiting for its
 * prefetch stays cancellable: it ends at the engine's next turn (a read job
 * then with nothing read and the cancel's error as its result).
 * ZCSEND_ENGINE_PREFETCH=0 in the environment (read when the engine starts)
 * turns this off, for measurements. These counters are process-wide and only
 * grow, but prefetching and workers, which are current values. */
typedef struct zcs_engine_stats {
  uint64_t prefetches;     /* cold ranges handed to the prefetch threads */
  uint64_t prefetch_bytes; /* the bytes those ranges spanned */
  uint64_t prefetching;    /* prefetches queued or running now */
  uint64_t workers;        /* prefetch threads running now */
} zcs_engine_stats_t;
ZCS_API void zcs_engine_stats(zcs_engine_stats_t *out);

/* For a host whose own thread steps transfers (an event loop) and must not wait
 * for the disk: when zcs_transfer_cached() says no, this has one of the same
 * prefetch threads read [off, off + len) of fd into the page cache, on a dup of
 * fd taken now (fd may be closed at once). Returns an eventfd (non-blocking,
 * close-on-exec) that becomes readable when the read is over (read, or failed:
 * the host's next step meets the error); the host waits for it the host's way,
 * then closes it (closing it sooner is harmless: the thread signals a dup of its
 * own). Counted in zcs_engine_stats(). -EINVAL, -EMFILE, -ENOMEM or a
 * pthread_create error when none could start. */
ZCS_API int zcs_prefetch(int fd, int64_t off, size_t len);

/* zcs_prefetch() for the next steps of t, of up to step bytes each (0: its
 * budget): it reads two steps' worth from t's offset (no more than 32 MiB unless
 * one step is more, nor than t must still read from its file), the engine's own
 * rule. Returns the eventfd as zcs_prefetch() does, or -EINVAL where t has no
 * such range (no file, an unsized source such as a pipe or a procfs file,
 * nothing left to read, the transfer ended). When the eventfd is readable, step
 * once without asking zcs_transfer_cached() again (pages evicted meanwhile cost
 * that one step a wait, never an endless loop of prefetches), then ask before
 * every later step. Called as a step is (the transfer's thread or lock). */
ZCS_API int zcs_transfer_prefetch(zcs_transfer_t *t, size_t step);

#ifdef __cplusplus
}
#endif
#endif /* ZCSEND_ENGINE_H */
