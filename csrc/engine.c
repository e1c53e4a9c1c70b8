/* The engine: one thread per process running a libev loop that drives jobs
 * handed over from other threads. Submissions and cancellations cross over a
 * mutex-protected queue and an ev_async; completions go back through a
 * channel's eventfd. The engine never calls back into the host. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
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
  zcs_job_t *next;        /* engine queue link (engine lock) */
  zcs_job_t *wake_next;   /* on_wake's own start/kick lists (engine thread only): a
                             cancel may queue the job again, rewriting next, while
                             on_wake still walks these lists outside the lock */
};

static struct {
  pthread_mutex_t lock;
  int started;
  pthread_t thread;
  struct ev_loop *loop;
  ev_async wake;
  zcs_job_t *queue;       /* submissions and cancellations, guarded by lock */
} engine = {.lock = PTHREAD_MUTEX_INITIALIZER};

static uint64_t next_id = 1;

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
  if (ch->ndone == 1) {
    uint64_t one = 1;
    while (write(ch->fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  pthread_mutex_unlock(&ch->lock);
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

uint64_t zcs_job_sent(zcs_job_t *j) {
  if (job_foreign(j))
    return j->t.sent;
  pthread_mutex_lock(&j->lock);
  uint64_t s = j->t.sent;
  pthread_mutex_unlock(&j->lock);
  return s;
}

uint64_t zcs_job_sent_zero_copy(zcs_job_t *j) {
  if (job_foreign(j))
    return j->t.sent_zero_copy;
  pthread_mutex_lock(&j->lock);
  uint64_t s = j->t.sent_zero_copy;
  pthread_mutex_unlock(&j->lock);
  return s;
}

int zcs_job_result(zcs_job_t *j) {
  if (job_foreign(j))
    return j->t.result;
  pthread_mutex_lock(&j->lock);
  int r = j->t.result;
  pthread_mutex_unlock(&j->lock);
  return r;
}

/* ---- the engine thread -------------------------------------------------------- */
/* runs in the engine: the job ended; close its fds before the host hears of it */
static void on_done(zcs_ev_transfer_t *w, int result) {
  (void)result;
  zcs_job_t *j = w->data;
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

/* runs in the engine: a read job reads all it can at once (regular files only,
   so this never waits on anything but the disk) */
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
  pthread_mutex_lock(&j->lock);
  j->t.sent = got;
  j->t.result = rc;
  pthread_mutex_unlock(&j->lock);
  on_done(&j->w, rc);
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
  while (starts) { /* the engine's reference keeps each alive until on_done */
    zcs_job_t *j = starts;
    starts = j->wake_next;
    if (j->rbuf) {
      run_read(j);
      continue;
    }
    zcs_ev_start(&j->w, loop, &j->t, on_done, j);
  }
  while (kicks) { /* a cancelled job steps once more, to end */
    zcs_job_t *j = kicks;
    kicks = j->wake_next;
    zcs_ev_kick(&j->w);
    job_unref(j); /* the reference zcs_job_cancel took for the kick */
  }
}

static void *engine_main(void *arg) {
  (void)arg;
  ev_run(engine.loop, 0);
  return NULL;
}

static void engine_forget(void) {
  /* in a forked child the engine thread is gone: start afresh on next use */
  engine.started = 0;
  engine.loop = NULL;
  engine.queue = NULL;
  pthread_mutex_init(&engine.lock, NULL);
}

static int engine_start(void) {
  if (engine.started)
    return 0;
  static int atfork;
  if (!atfork) {
    pthread_atfork(NULL, NULL, engine_forget);
    atfork = 1;
  }
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
