/* The libev driver: one ev_io per transfer, pointed at whatever the last step
 * asked for; the completion callback runs once, from the loop, never from
 * inside zcs_ev_start() or zcs_ev_kick() (libuv's rule: a callback never runs
 * inside the call that registered it). */
#include <errno.h>
#include "zcs_internal.h"
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

/* invoked when the fd the last step asked for is ready */
static void on_ready(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  (void)revents;
  zcs__ev_step((zcs_ev_transfer_t *)io->data);
}

int zcs_ev_start(zcs_ev_transfer_t *w, struct ev_loop *loop, zcs_transfer_t *t,
                 zcs_ev_done_cb on_done, void *data) {
  if (!w || !loop || !t)
    return -EINVAL;
  if (w->transfer == t && w->loop == loop && ev_is_active(&w->io))
    return 0; /* started already */
  w->transfer = t;
  w->loop = loop;
  w->on_done = on_done;
  w->data = data;
  w->finished = 0;
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
  if (w->loop)
    ev_io_stop(w->loop, &w->io); /* also drops a step queued by start or kick */
}
