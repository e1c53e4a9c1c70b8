/* The engine: one thread per process running a libev loop that drives jobs
 * handed over from other threads. Submissions and cancellations cross over a
 * mutex-protected queue and an ev_async; completions go back through a
 * channel's eventfd. The engine never calls back into the host.
 *
 * The engine thread never waits for the disk: a job whose next range is not in
 * the page cache (zcs__range_ready) waits while one of a few prefetch threads reads
 * that range into the cache, on a dup of the job's file of its own, and the
 * engine steps the other jobs meanwhile (issue 13 §3). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "zcs_internal.h"
#include "zcsend_engine.h"
#include "zcsend_ev.h"

struct zcs_channel {
  int fd;                 /* eventfd, readable while done is not empty */
  pthread_mutex_t lock;
  uint64_t *done;         /* finished job ids (guarded by lock) */
  size_t ndone, cap;
  int refs;               /* the host's + one per job in flight (guarded by lock) */
  pid_t pid;              /* the process whose engine posts here */
};

enum { JOB_NEW, JOB_QUEUED, JOB_RUNNING, JOB_FINISHED };

struct zcs_job {
  zcs_transfer_t t;
  zcs_ev_transfer_t w;
  pthread_mutex_t lock;   /* held by the engine around each step, and by cancel */
  int state;              /* guarded by the engine's lock */
  int refs;               /* atomic */
  int kick;               /* queued for a cancel step (engine lock) */
  uint64_t id;
  zcs_channel_t *ch;
  pid_t pid;              /* set by zcs_job_submit in the host's thread: whose engine runs it */
  char *rbuf;             /* a read job's destination (zcs_job_init_read), else NULL */
  size_t rlen;
  int64_t rsize;          /* a read job's file size at zcs_job_init_read (what is cached is asked
                             of the range up to it: there are no pages past the end) */
  zcs_job_t *next;        /* engine queue link (engine lock) */
  zcs_job_t *wake_next;   /* on_wake's own start/kick lists (engine thread only): a
                             cancel may queue the job again, rewriting next, while
                             on_wake still walks these lists outside the lock */
  int pf;                 /* engine thread only: PF_NONE, PF_WAIT or PF_FRESH */
  int64_t ready_end;      /* engine thread only: the file was found (or prefetched) resident up
                             to here; a step inside needs no new question (see may_step) */
  int64_t pf_end;         /* engine thread only: the end of the prefetch in flight */
  int ended;              /* engine thread only: on_done ran */
};

/* A job's prefetch state. PF_WAIT: its prefetch is queued or running and the
   job waits (only a cancel steps it). PF_FRESH: the prefetch ended; the next
   step (or read) runs without asking the page cache again, so pages evicted
   meanwhile (memory pressure) cost one step that waits for the disk, never an
   endless loop of prefetches. */
enum { PF_NONE, PF_WAIT, PF_FRESH };

static struct {
  pthread_mutex_t lock;
  int started;
  pthread_t thread;
  struct ev_loop *loop;
  ev_async wake;
  zcs_job_t *queue;       /* submissions and cancellations, guarded by lock */
} engine = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t next_id = 1;
static int prefetch_on = 1; /* ZCSEND_ENGINE_PREFETCH=0 clears it (engine_start) */

/* ---- the prefetch pool ---------------------------------------------------------
 * A prefetch reads a range of a job's file into the page cache, blocking only
 * its worker: sendfile(2) to /dev/null, which the kernel serves by reading the
 * pages into the cache and handing them to a sink that drops them, with no copy
 * to user space (measured on this machine: 64 MiB cold in 26-45 ms for 2.3 ms of
 * CPU, against 27-70 ms of CPU for pread into a buffer; readahead(2) alone only
 * starts the reads and returns, so nothing would tell the engine when they are
 * done). Where sendfile refuses the file, pread into a scratch buffer.
 * Ownership: a prefetch holds a reference to its job (the struct outlives it)
 * and a dup of the job's file taken by the engine thread while the job ran; it
 * never touches the job's own fds, which the engine closes when the job ends,
 * maybe while the prefetch still reads. */
#define POOL_THREADS 2

struct prefetch {
  zcs_job_t *j;           /* a reference of its own; NULL for a host's (zcs_prefetch) */
  int fd;                 /* the worker's dup of the job's file; -1 once closed */
  int notify;             /* a host's: the worker's dup of the eventfd it signals; else -1 */
  int64_t off;
  size_t len;
  struct prefetch *next;
};

static struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* a prefetch was queued, or hold was lifted */
  struct prefetch *todo, *last; /* queued, oldest first */
  struct prefetch *done;        /* read, for on_wake to take back */
  struct prefetch *busy[POOL_THREADS]; /* being read (for fork: whose dup is open) */
  int threads;                  /* started; they never exit (as the engine thread) */
  int hold;                     /* zcs__engine_hold_prefetch() */
  uint64_t prefetches, bytes, inflight;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* ---- channel ---------------------------------------------------------------- */
zcs_channel_t *zcs_channel_new(void) {
  zcs_channel_t *ch = calloc(1, sizeof *ch);
  if (!ch)
    return NULL;
  ch->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (ch->fd < 0) {
    int e = errno;
    free(ch);
    errno = e;
    return NULL;
  }
  pthread_mutex_init(&ch->lock, NULL);
  ch->refs = 1;
  ch->pid = getpid();
  return ch;
}

/* A channel or job inherited through fork(): the parent's engine serves it. */
static int channel_foreign(const zcs_channel_t *ch) { return ch->pid != getpid(); }
static int job_foreign(const zcs_job_t *j) { return j->pid && j->pid != getpid(); }

int zcs_channel_fd(const zcs_channel_t *ch) { return ch->fd; }

static void channel_unref(zcs_channel_t *ch) {
  pthread_mutex_lock(&ch->lock);
  int last = --ch->refs == 0;
  pthread_mutex_unlock(&ch->lock);
  if (!last)
    return;
  close(ch->fd);
  pthread_mutex_destroy(&ch->lock);
  free(ch->done);
  free(ch);
}

int zcs_channel_after_fork(zcs_channel_t *ch) {
  if (!channel_foreign(ch))
    return 0;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = dup3(fd, ch->fd, O_CLOEXEC) < 0 ? -errno : 0;
  close(fd);
  return rc;
}

void zcs_channel_release(zcs_channel_t *ch) {
  if (ch && !channel_foreign(ch)) /* in a child: the parent's; its lock may be held for ever */
    channel_unref(ch);
}

static void channel_post(zcs_channel_t *ch, uint64_t id) {
  pthread_mutex_lock(&ch->lock);
  if (ch->ndone == ch->cap) {
    size_t cap = ch->cap ? ch->cap * 2 : 64;
    uint64_t *d = realloc(ch->done, cap * sizeof *d);
    if (!d)
      abort(); /* a lost completion would hang its waiter for ever */
    ch->done = d;
    ch->cap = cap;
  }
  ch->done[ch->ndone++] = id;
  int first = ch->ndone == 1;
  pthread_mutex_unlock(&ch->lock);
  /* the host is woken after the lock is let go: woken under it, its drain met the
     lock still held, and on a busy machine the engine thread, preempted by the
     very wake-up, held it for milliseconds (the loop thread's futex waits in
     zcs_channel_drain: up to 60 ms, cold.py under perf). The job's reference
     keeps ch alive. A drain between the unlock and the write takes the id and
     finds the counter at 0; the write then wakes the host once for nothing (a
     drain that gives no id, and clears the counter). Never a lost wake-up: the
     list turns non-empty only with a post that writes after it. */
  if (first) {
    uint64_t one = 1;
    while (write(ch->fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
}

size_t zcs_channel_drain(zcs_channel_t *ch, uint64_t *ids, size_t n) {
  if (channel_foreign(ch))
    return 0; /* the eventfd is the parent's too: reading it would steal its wake-up */
  pthread_mutex_lock(&ch->lock);
  size_t k = ch->ndone < n ? ch->ndone : n;
  memcpy(ids, ch->done, k * sizeof *ids);
  memmove(ch->done, ch->done + k, (ch->ndone - k) * sizeof *ids);
  ch->ndone -= k;
  if (ch->ndone == 0) {
    uint64_t v;
    while (read(ch->fd, &v, sizeof v) < 0 && errno == EINTR) {
    }
  }
  pthread_mutex_unlock(&ch->lock);
  return k;
}

/* ---- jobs ------------------------------------------------------------------- */
zcs_job_t *zcs_job_new(void) {
  zcs_job_t *j = calloc(1, sizeof *j);
  if (!j)
    return NULL;
  pthread_mutex_init(&j->lock, NULL);
  j->t.sock_fd = j->t.file_fd = -1;
  j->t.pipe_fds[0] = j->t.pipe_fds[1] = -1;
  j->refs = 1;
  j->id = __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED);
  return j;
}

zcs_transfer_t *zcs_job_transfer(zcs_job_t *j) { return &j->t; }
uint64_t zcs_job_id(const zcs_job_t *j) { return j->id; }

static void job_unref(zcs_job_t *j) {
  if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) != 0)
    return;
  zcs_transfer_release(&j->t);
  pthread_mutex_destroy(&j->lock);
  free(j->rbuf);
  free(j);
}

void zcs_job_release(zcs_job_t *j) {
  if (j && !job_foreign(j))
    job_unref(j);
}

/* Progress and outcome without the job's lock, which the engine holds for a
   whole step: a host's loop thread (asyncio's timeout=, a progress report)
   would wait a step's length for it, longer where the engine thread is
   preempted holding it. The counts are atomic stores (zcs__count_sent), the
   outcome a release store after them (finish, end_read): a job whose result is
   no longer ZCS_RUNNING, or that came back, reads final, and so does a send job
   zcs_job_abort stopped (it takes the lock: the step in flight ended). A read
   job's pread runs without that lock and may still end after a cancel:
   nothing of it is written anywhere. */
uint64_t zcs_job_sent(zcs_job_t *j) {
  if (job_foreign(j))
    return j->t.sent;
  return __atomic_load_n(&j->t.sent, __ATOMIC_RELAXED);
}

uint64_t zcs_job_sent_zero_copy(zcs_job_t *j) {
  if (job_foreign(j))
    return j->t.sent_zero_copy;
  return __atomic_load_n(&j->t.sent_zero_copy, __ATOMIC_ACQUIRE);
}

int zcs_job_result(zcs_job_t *j) {
  if (job_foreign(j))
    return j->t.result;
  return __atomic_load_n(&j->t.result, __ATOMIC_ACQUIRE);
}

/* ---- the engine thread -------------------------------------------------------- */
/* runs in the engine: the job ended; close its fds before the host hears of it */
static void on_done(zcs_ev_transfer_t *w, int result) {
  (void)result;
  zcs_job_t *j = w->data;
  j->ended = 1;
  pthread_mutex_lock(&engine.lock);
  j->state = JOB_FINISHED;
  pthread_mutex_unlock(&engine.lock);
  if (j->t.sock_fd >= 0)
    close(j->t.sock_fd);
  if (j->t.file_fd >= 0)
    close(j->t.file_fd);
  j->t.sock_fd = j->t.file_fd = -1;
  zcs_channel_t *ch = j->ch;
  j->ch = NULL;
  channel_post(ch, j->id);
  channel_unref(ch);
  job_unref(j); /* the engine's reference */
}

/* a read job ends: got bytes read, rc 0 or -errno */
static void end_read(zcs_job_t *j, size_t got, int rc) {
  pthread_mutex_lock(&j->lock);
  __atomic_store_n(&j->t.sent, (uint64_t)got, __ATOMIC_RELAXED);
  __atomic_store_n(&j->t.result, rc, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&j->lock);
  on_done(&j->w, rc);
}

/* runs in the engine: a read job reads all it can at once (regular files only,
   and only once its range is in the page cache or was just prefetched) */
static void run_read(zcs_job_t *j) {
  size_t got = 0;
  int rc = 0;
  while (got < j->rlen) {
    ssize_t n = pread(j->t.file_fd, j->rbuf + got, j->rlen - got, (off_t)(j->t.offset + (int64_t)got));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      break;
    }
    if (n == 0)
      break;
    got += (size_t)n;
  }
  end_read(j, got, rc);
}

/* the error a cancel or abort set (zcs_job_abort writes it under the job's lock) */
static int job_cancelled(zcs_job_t *j) {
  pthread_mutex_lock(&j->lock);
  int c = j->t.cancelled;
  pthread_mutex_unlock(&j->lock);
  return c;
}

/* a worker: the range into the page cache; errors are left for the job's own
   step or read to meet and report. /dev/null is opened for each prefetch, not
   kept: an fd the engine keeps for good from its first cold range on would
   show up in a host's fd counts as a leak. */
static void prefetch_read(const struct prefetch *p) {
  int64_t off = p->off;
  size_t left = p->len;
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC); /* failing: pread instead */
  while (devnull >= 0 && left) {
    off_t o = (off_t)off;
    ssize_t n = sendfile(devnull, p->fd, &o, left > 0x7ffff000 ? 0x7ffff000 : left);
    if (n < 0 && errno == EINTR)
      continue;
    if (n == 0 || (n < 0 && !zcs__is_fallback_errno(-errno)))
      left = 0; /* the file ends sooner, or an error the job will meet */
    else if (n < 0)
      break; /* this file can't be spliced: read it */
    else {
      off += n;
      left -= (size_t)n;
    }
  }
  if (devnull >= 0)
    close(devnull);
  char buf[64 << 10];
  while (left) {
    ssize_t n = pread(p->fd, buf, left < sizeof buf ? left : sizeof buf, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    off += n;
    left -= (size_t)n;
  }
}

static void *prefetch_main(void *arg) {
  int slot = (int)(intptr_t)arg;
#ifdef __linux__
  pthread_setname_np(pthread_self(), "zcs-prefetch");
#endif
  pthread_mutex_lock(&pool.lock);
  for (;;) {
    while (!pool.todo)
      pthread_cond_wait(&pool.cond, &pool.lock);
    struct prefetch *p = pool.todo;
    if (!(pool.todo = p->next))
      pool.last = NULL;
    pool.busy[slot] = p;
    while (pool.hold) /* the test hook: taken, not read yet */
      pthread_cond_wait(&pool.cond, &pool.lock);
    pthread_mutex_unlock(&pool.lock);
    prefetch_read(p);
    /* unlisted before it is closed: a fork in between leaks the dup in the
       child, never closes a number the child reused (engine_forget) */
    pthread_mutex_lock(&pool.lock);
    int fd = p->fd, notify = p->notify;
    p->fd = p->notify = -1;
    pool.busy[slot] = NULL;
    pthread_mutex_unlock(&pool.lock);
    close(fd);
    if (!p->j) { /* a host's: its eventfd says so; the engine has nothing to do */
      uint64_t one = 1;
      while (write(notify, &one, sizeof one) < 0 && errno == EINTR) {
      }
      close(notify);
      free(p);
      pthread_mutex_lock(&pool.lock);
      pool.inflight--;
      continue;
    }
    pthread_mutex_lock(&pool.lock);
    p->next = pool.done;
    pool.done = p;
    pool.inflight--; /* 0 in flight: every dup is closed */
    pthread_mutex_unlock(&pool.lock);
    ev_async_send(engine.loop, &engine.wake); /* thread-safe; the loop outlives us */
    pthread_mutex_lock(&pool.lock);
  }
  return NULL;
}

static void engine_forget(void);
static void pool_atfork(void) { pthread_atfork(NULL, NULL, engine_forget); }

/* pool.lock held (the engine thread, or a host's in zcs_prefetch): the workers,
   started on first need, with every signal blocked (the host's handlers run in
   the host's threads). 0, or -errno when none could start. */
static int pool_start_locked(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  if (pool.threads < POOL_THREADS)
    pthread_once(&once, pool_atfork); /* a forked child forgets them (engine_forget) */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = 0;
  while (pool.threads < POOL_THREADS) {
    pthread_attr_t attr;
    pthread_t th;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 << 10);
    rc = pthread_create(&th, &attr, prefetch_main, (void *)(intptr_t)pool.threads);
    pthread_attr_destroy(&attr);
    if (rc != 0)
      break;
    pool.threads++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return pool.threads ? 0 : -rc;
}

/* the queue's tail gets p (pool.lock held) */
static void pool_enqueue_locked(struct prefetch *p) {
  if (pool.last)
    pool.last->next = p;
  else
    pool.todo = p;
  pool.last = p;
  pool.prefetches++;
  pool.bytes += p->len;
  pool.inflight++;
  pthread_cond_signal(&pool.cond);
}

int zcs_transfer_prefetch(zcs_transfer_t *t, size_t step) {
  size_t len = zcs__prefetch_window(t, step);
  return len ? zcs_prefetch(t->file_fd, t->offset, len) : -EINVAL;
}

int zcs_prefetch(int fd, int64_t off, size_t len) {
  if (fd < 0 || off < 0 || len == 0)
    return -EINVAL;
  struct prefetch *p = malloc(sizeof *p);
  if (!p)
    return -ENOMEM;
  /* the eventfd, the worker's dup of it, the worker's dup of fd: the first
     that fails ends the call, and closes what was made before it */
  int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  p->notify = efd < 0 ? -1 : fcntl(efd, F_DUPFD_CLOEXEC, 0);
  p->fd = p->notify < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (p->fd < 0) {
    int e = -errno;
    if (p->notify >= 0)
      close(p->notify);
    if (efd >= 0)
      close(efd);
    free(p);
    return e;
  }
  p->j = NULL;
  p->off = off;
  p->len = len;
  p->next = NULL;
  pthread_mutex_lock(&pool.lock);
  int rc = pool_start_locked();
  if (rc == 0)
    pool_enqueue_locked(p);
  pthread_mutex_unlock(&pool.lock);
  if (rc < 0) {
    close(p->notify);
    close(p->fd);
    close(efd);
    free(p);
    return rc;
  }
  return efd;
}

/* engine thread: hands [off, off + len) of j's file to the pool. 0, or -errno
   (no fd for the dup, no thread): the caller then steps as it would have
   without the pool. */
static int prefetch_submit(zcs_job_t *j, int64_t off, size_t len) {
  struct prefetch *p = malloc(sizeof *p);
  if (!p)
    return -ENOMEM;
  p->fd = fcntl(j->t.file_fd, F_DUPFD_CLOEXEC, 0);
  if (p->fd < 0) {
    int e = -errno;
    free(p);
    return e;
  }
  p->j = j;
  p->notify = -1;
  p->off = off;
  p->len = len;
  p->next = NULL;
  pthread_mutex_lock(&pool.lock);
  int rc = pool_start_locked();
  if (rc < 0) {
    pthread_mutex_unlock(&pool.lock);
    close(p->fd);
    free(p);
    return rc;
  }
  __atomic_add_fetch(&j->refs, 1, __ATOMIC_RELAXED);
  pool_enqueue_locked(p);
  pthread_mutex_unlock(&pool.lock);
  return 0;
}

/* engine thread, before a send job's step: 1 when it may step now; 0 when it
   waits for a prefetch (its watcher is stopped then; the prefetch's end or a
   cancel kicks it). The window checked is one step's budget; the one
   prefetched zcs__prefetch_window's, so a slow reader's steps find their pages
   there.
   Only the part of the window past ready_end is asked about: a slow reader's
   steps are small, and most then cost no syscall at all (pages found resident
   are taken to stay so until the step reads them; one evicted meanwhile costs
   that step a wait for the disk, as in the PF_FRESH case: on the engine's own
   thread, which may block; a host's event thread asks before every step). */
static int may_step(zcs_job_t *j) {
  if (j->pf == PF_WAIT)
    return job_cancelled(j) != 0; /* a cancelled step ends the job, touching no file */
  if (j->pf == PF_FRESH) {
    j->pf = PF_NONE;
    j->ready_end = j->pf_end;
    return 1;
  }
  size_t budget = j->t.budget ? j->t.budget : ZCS_DEFAULT_BUDGET;
  if (!prefetch_on || !zcs__reads_sized_file(&j->t))
    return 1; /* no page cache behind it (a pipe, memory), or it ended */
  size_t len = zcs__transfer_unread(&j->t, budget); /* offset is past bytes held; 0: none left */
  if (!len)
    return 1;
  int64_t end = j->t.offset + (int64_t)len;
  int64_t from = j->ready_end > j->t.offset ? j->ready_end : j->t.offset;
  if (from >= end)
    return 1;
  if (zcs__range_ready(j->t.file_fd, from, (size_t)(end - from))) {
    j->ready_end = end;
    return 1;
  }
  if (job_cancelled(j))
    return 1;
  len = zcs__prefetch_window(&j->t, budget);
  if (!len || prefetch_submit(j, j->t.offset, len) < 0)
    return 1;
  j->pf = PF_WAIT;
  j->pf_end = j->t.offset + (int64_t)len;
  return 0;
}

/* the ev_io callback of an engine job, in place of the driver's own */
static void on_job_ready(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  (void)revents;
  zcs_ev_transfer_t *w = io->data;
  if (may_step(w->data))
    zcs__ev_step(w);
  else
    zcs_ev_stop(w);
}

/* engine thread: a read job reads now, waits for a prefetch, or, cancelled
   while its range is not in the page cache, ends with nothing read */
static void go_read(zcs_job_t *j) {
  if (j->pf == PF_WAIT) {
    int c = job_cancelled(j);
    if (c)
      end_read(j, 0, c);
    return;
  }
  int64_t left = j->rsize > j->t.offset ? j->rsize - j->t.offset : 0;
  size_t len = (uint64_t)left < j->rlen ? (size_t)left : j->rlen;
  if (j->pf == PF_NONE && prefetch_on && len && !zcs__range_ready(j->t.file_fd, j->t.offset, len)) {
    int c = job_cancelled(j);
    if (c) {
      end_read(j, 0, c);
      return;
    }
    if (prefetch_submit(j, j->t.offset, len) == 0) {
      j->pf = PF_WAIT;
      return;
    }
  }
  j->pf = PF_NONE;
  run_read(j);
}

static void on_wake(struct ev_loop *loop, ev_async *w, int revents) {
  (void)w;
  (void)revents;
  zcs_job_t *starts = NULL, *kicks = NULL;
  pthread_mutex_lock(&engine.lock);
  zcs_job_t *q = engine.queue;
  engine.queue = NULL;
  while (q) { /* the queue is newest first: prepending restores submission order */
    zcs_job_t *n = q->next;
    if (q->state == JOB_QUEUED) {
      q->state = JOB_RUNNING;
      q->wake_next = starts;
      starts = q;
    } else {
      q->kick = 0;
      q->wake_next = kicks;
      kicks = q;
    }
    q = n;
  }
  pthread_mutex_unlock(&engine.lock);
  pthread_mutex_lock(&pool.lock);
  struct prefetch *done = pool.done;
  pool.done = NULL;
  pthread_mutex_unlock(&pool.lock);
  while (starts) { /* the engine's reference keeps each alive until on_done */
    zcs_job_t *j = starts;
    starts = j->wake_next;
    if (j->rbuf) {
      go_read(j);
      continue;
    }
    zcs_ev_start(&j->w, loop, &j->t, on_done, j);
    ev_set_cb(&j->w.io, on_job_ready); /* every step asks the page cache first */
  }
  while (kicks) { /* a cancelled job steps once more, to end */
    zcs_job_t *j = kicks;
    kicks = j->wake_next;
    if (!j->rbuf)
      zcs_ev_kick(&j->w);
    else if (!j->ended && j->pf == PF_WAIT)
      go_read(j); /* cancelled while its prefetch runs: it ends now */
    job_unref(j); /* the reference zcs_job_cancel took for the kick */
  }
  while (done) { /* prefetches read: their jobs step (or read) whatever the cache says */
    struct prefetch *p = done;
    done = p->next;
    zcs_job_t *j = p->j;
    free(p);
    if (!j->ended && j->pf == PF_WAIT) {
      j->pf = PF_FRESH;
      if (j->rbuf)
        go_read(j);
      else
        zcs_ev_kick(&j->w);
    }
    job_unref(j); /* the prefetch's reference */
  }
}

static void *engine_main(void *arg) {
  (void)arg;
#ifdef __linux__
  pthread_setname_np(pthread_self(), "zcs-engine"); /* seen in top -H, perf, /proc */
#endif
  ev_run(engine.loop, 0);
  return NULL;
}

static void engine_forget(void) {
  /* in a forked child the engine thread is gone: start afresh on next use */
  engine.started = 0;
  engine.loop = NULL;
  engine.queue = NULL;
  pthread_mutex_init(&engine.lock, NULL);
  /* and so are the prefetch threads. This runs before the child does anything
     else, so the dups still listed are ours to close (a worker unlists its dup
     before closing it); the requests themselves and their job references are
     left as the jobs are: the parent's. */
  struct prefetch *lists[] = {pool.todo, pool.done};
  for (size_t i = 0; i < sizeof lists / sizeof *lists; i++)
    for (struct prefetch *p = lists[i]; p; p = p->next) {
      if (p->fd >= 0)
        close(p->fd);
      if (p->notify >= 0)
        close(p->notify);
    }
  for (int i = 0; i < POOL_THREADS; i++)
    if (pool.busy[i]) {
      if (pool.busy[i]->fd >= 0)
        close(pool.busy[i]->fd);
      if (pool.busy[i]->notify >= 0)
        close(pool.busy[i]->notify);
    }
  memset(pool.busy, 0, sizeof pool.busy);
  pool.todo = pool.last = pool.done = NULL;
  pool.threads = pool.hold = 0;
  pool.inflight = 0;
  pthread_mutex_init(&pool.lock, NULL);
  pthread_cond_init(&pool.cond, NULL);
}

static int engine_start(void) {
  if (engine.started)
    return 0;
  static int atfork;
  if (!atfork) {
    pthread_atfork(NULL, NULL, engine_forget);
    atfork = 1;
  }
  const char *pf = getenv("ZCSEND_ENGINE_PREFETCH"); /* "0": off, for measurements */
  prefetch_on = !(pf && !strcmp(pf, "0"));
  engine.loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
  if (!engine.loop)
    return -ENOMEM;
  ev_async_init(&engine.wake, on_wake);
  ev_async_start(engine.loop, &engine.wake);
  /* The engine takes no signals: the host's handlers run in the host's threads,
     and SIGPIPE from a peer that went away stays blocked here and is consumed. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 << 10);
  int rc = pthread_create(&engine.thread, &attr, engine_main, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    ev_loop_destroy(engine.loop);
    engine.loop = NULL;
    return -rc;
  }
  engine.started = 1;
  return 0;
}

static void engine_enqueue(zcs_job_t *j) {
  j->next = engine.queue;
  engine.queue = j;
}

int zcs_job_init_read(zcs_job_t *j, int fd, int64_t offset, size_t len) {
  struct stat st;
  if (j->state != JOB_NEW || j->rbuf || len == 0 || offset < 0)
    return -EINVAL;
  if (fstat(fd, &st) < 0)
    return -errno;
  if (!S_ISREG(st.st_mode))
    return -ESPIPE; /* a pipe could block the engine: the host reads those itself */
  char *buf = malloc(len);
  if (!buf)
    return -ENOMEM;
  j->t.file_fd = fd;
  j->t.offset = j->t.start = offset;
  j->t.result = ZCS_RUNNING;
  j->w.finished = 1; /* a cancel's kick has nothing to step */
  j->w.data = j;
  j->rbuf = buf;
  j->rlen = len;
  j->rsize = st.st_size;
  return 0;
}

const void *zcs_job_data(const zcs_job_t *j) { return j->rbuf; }

int zcs_read_cached(int fd, void *buf, size_t len, int64_t offset) {
  return zcs__pread_nowait(fd, buf, len, offset);
}

/* a send job that can't be handed over has ended, with that error */
static int submit_failed(zcs_job_t *j, int s, int f, int err) {
  if (s >= 0)
    close(s);
  if (f >= 0)
    close(f);
  if (!j->rbuf)
    zcs__transfer_end(&j->t, err);
  return err;
}

int zcs_job_submit(zcs_job_t *j, zcs_channel_t *ch) {
  pthread_mutex_lock(&engine.lock); /* the engine moves a submitted job's state */
  int fresh = j->state == JOB_NEW;
  pthread_mutex_unlock(&engine.lock);
  if (!fresh || j->t.result != ZCS_RUNNING || channel_foreign(ch))
    return -EINVAL;
  int s = -1;
  if (!j->rbuf && (s = fcntl(j->t.sock_fd, F_DUPFD_CLOEXEC, 0)) < 0)
    return submit_failed(j, -1, -1, -errno);
  int f = -1;
  if (j->t.file_fd >= 0 && (f = fcntl(j->t.file_fd, F_DUPFD_CLOEXEC, 0)) < 0)
    return submit_failed(j, s, -1, -errno);
  pthread_mutex_lock(&engine.lock);
  int rc = engine_start();
  if (rc < 0) {
    pthread_mutex_unlock(&engine.lock);
    return submit_failed(j, s, f, rc);
  }
  j->t.sock_fd = s;
  j->t.file_fd = f;
  j->t.flags |= ZCS_F_SIGPIPE_BLOCKED; /* the engine thread blocks every signal */
  j->w.lock = &j->lock;
  pthread_mutex_lock(&ch->lock);
  ch->refs++;
  pthread_mutex_unlock(&ch->lock);
  j->ch = ch;
  j->pid = ch->pid;
  __atomic_add_fetch(&j->refs, 1, __ATOMIC_RELAXED);
  j->state = JOB_QUEUED;
  engine_enqueue(j);
  pthread_mutex_unlock(&engine.lock);
  ev_async_send(engine.loop, &engine.wake);
  return 0;
}

void zcs_job_cancel(zcs_job_t *j) { zcs_job_abort(j, -ECANCELED); }

void zcs_job_abort(zcs_job_t *j, int err) {
  if (job_foreign(j)) { /* the parent's engine runs it; here it only stops counting */
    zcs_transfer_abort(&j->t, err);
    return;
  }
  pthread_mutex_lock(&j->lock);
  zcs_transfer_abort(&j->t, err);
  pthread_mutex_unlock(&j->lock);
  /* a job that is waiting on a socket that never turns writable must still end */
  pthread_mutex_lock(&engine.lock);
  int queue = j->state == JOB_RUNNING && !j->kick;
  if (queue) {
    j->kick = 1;
    __atomic_add_fetch(&j->refs, 1, __ATOMIC_RELAXED);
    engine_enqueue(j);
  }
  pthread_mutex_unlock(&engine.lock);
  if (queue)
    ev_async_send(engine.loop, &engine.wake);
}

void zcs_engine_stats(zcs_engine_stats_t *out) {
  pthread_mutex_lock(&pool.lock);
  out->prefetches = pool.prefetches;
  out->prefetch_bytes = pool.bytes;
  out->prefetching = pool.inflight;
  out->workers = (uint64_t)pool.threads;
  pthread_mutex_unlock(&pool.lock);
}

void zcs__engine_hold_prefetch(int hold) {
  pthread_mutex_lock(&pool.lock);
  pool.hold = hold;
  pthread_cond_broadcast(&pool.cond);
  pthread_mutex_unlock(&pool.lock);
}
