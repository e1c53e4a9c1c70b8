/* The libev driver: one ev_io per transfer, pointed at whatever the last step
 * asked for; the completion callback runs once, from the loop, never from
 * inside zcs_ev_start() or zcs_ev_kick() (libuv's rule: a callback never runs
 * inside the call that registered it). */
#include <errno.h>
#include <unistd.h>
#include "zcs_internal.h"
#include "zcsend_engine.h" /* zcs_transfer_prefetch */
#include "zcsend_ev.h"

/* zcs_transfer_wait_fd()'s events go to ev_io_set() as they are */
_Static_assert(ZCS_WAIT_READ == EV_READ && ZCS_WAIT_WRITE == EV_WRITE,
               "ZCS_WAIT_* must be libev's EV_READ/EV_WRITE");

void zcs__ev_step(zcs_ev_transfer_t *w) {
  if (w->finished)
    return;
  if (w->lock)
    pthread_mutex_lock(w->lock);
  int rc = zcs_transfer_step(w->transfer);
  if (w->lock)
    pthread_mutex_unlock(w->lock);
  int events;
  int fd = zcs_transfer_wait_fd(w->transfer, rc, &events);
  if (fd < 0) {
    zcs_ev_stop(w);
    w->finished = 1;
    if (w->on_done)
      w->on_done(w, rc); /* may free w: touch nothing after */
    return;
  }
  if (w->io.fd != fd || (w->io.events & (EV_READ | EV_WRITE)) != events) {
    ev_io_stop(w->loop, &w->io);
    ev_io_set(&w->io, fd, events);
  }
  if (!ev_is_active(&w->io))
    ev_io_start(w->loop, &w->io);
}

/* the prefetch wait over: its eventfd closed */
static void disk_stop(zcs_ev_transfer_t *w) {
  if (w->disk_fd >= 0) {
    ev_io_stop(w->loop, &w->disk);
    close(w->disk_fd);
    w->disk_fd = -1;
  }
}

/* the prefetch read the range in: step it, without asking again (pages evicted
   meanwhile cost one step that waits, never an endless loop) */
static void on_disk(struct ev_loop *loop, ev_io *io, int revents) {
  (void)revents;
  zcs_ev_transfer_t *w = io->data;
  disk_stop(w);
  w->fresh = 1;
  ev_feed_event(loop, &w->io, EV_WRITE);
}

/* ZCS_EV_PREFETCH: 1 when the next step can't wait for the disk; else 0, a
   prefetch of it under way and the loop waiting on its eventfd instead */
static int may_step(zcs_ev_transfer_t *w) {
  zcs_transfer_t *t = w->transfer;
  if (t->cancelled)
    return 1; /* the step ends it and reads nothing */
  if (w->disk_fd >= 0)
    return 0; /* kicked while a prefetch runs: wait on */
  if (w->lock) /* it may read a small rest into the transfer: as a step does */
    pthread_mutex_lock(w->lock);
  int ready = zcs_transfer_ready(t, t->budget ? t->budget : ZCS_DEFAULT_BUDGET);
  int efd = ready ? -1 : zcs_transfer_prefetch(t, 0);
  if (w->lock)
    pthread_mutex_unlock(w->lock);
  if (efd < 0)
    return 1; /* ready, or no prefetch to be had: step, as before */
  ev_io_stop(w->loop, &w->io);
  w->disk_fd = efd;
  ev_io_init(&w->disk, on_disk, efd, EV_READ);
  w->disk.data = w;
  ev_io_start(w->loop, &w->disk);
  return 0;
}

/* invoked when the fd the last step asked for is ready */
static void on_ready(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  (void)revents;
  zcs_ev_transfer_t *w = io->data;
  if ((w->flags & ZCS_EV_PREFETCH) && !w->fresh && !w->finished && !may_step(w))
    return;
  w->fresh = 0;
  zcs__ev_step(w);
}

int zcs_ev_start(zcs_ev_transfer_t *w, struct ev_loop *loop, zcs_transfer_t *t,
                 zcs_ev_done_cb on_done, void *data) {
  if (!w || !loop || !t)
    return -EINVAL;
  if (w->transfer == t && w->loop == loop && (ev_is_active(&w->io) || w->disk_fd >= 0))
    return 0; /* started already (or waiting for a prefetch) */
  w->transfer = t;
  w->loop = loop;
  w->on_done = on_done;
  w->data = data;
  w->finished = 0;
  w->disk_fd = -1;
  w->fresh = 0;
  ev_io_init(&w->io, on_ready, t->sock_fd, EV_WRITE);
  w->io.data = w;
  ev_io_start(loop, &w->io);
  /* the socket is usually writable now: the first step runs at the loop's
     next turn without waiting for a poll, and never from inside this call */
  ev_feed_event(loop, &w->io, EV_WRITE);
  return 0;
}

void zcs_ev_kick(zcs_ev_transfer_t *w) {
  if (w->loop && !w->finished)
    ev_feed_event(w->loop, &w->io, EV_WRITE); /* a step from the loop, soon */
}

void zcs_ev_stop(zcs_ev_transfer_t *w) {
  if (w->loop) {
    ev_io_stop(w->loop, &w->io); /* also drops a step queued by start or kick */
    disk_stop(w);
  }
}
