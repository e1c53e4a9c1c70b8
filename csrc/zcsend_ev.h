/* zcsend's libev driver: runs transfers (zcsend.h) on a libev loop, one ev_io
 * each, pointed at whatever the last step asked for. Implemented in driver_ev.c.
 * See docs/C_API.md, "The libev driver". */
#ifndef ZCSEND_EV_H
#define ZCSEND_EV_H

#include <ev.h>
#include <pthread.h> /* the optional lock around each step */
#include "zcsend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct zcs_ev_transfer zcs_ev_transfer_t;
/* invoked once, when the transfer is done, failed or was cancelled */
typedef void (*zcs_ev_done_cb)(zcs_ev_transfer_t *w, int result);

/* flags: before each step, ask zcs_transfer_ready(); a range not in the page
 * cache is read in by a prefetch thread (zcs_transfer_prefetch(),
 * zcsend_engine.h) while the loop waits on its eventfd and runs everything
 * else, then stepped once without asking again. For a loop thread that must
 * never wait for the disk. */
#define ZCS_EV_PREFETCH 1

/* A watcher for one transfer; the host owns its memory (embed it by value:
 * zero it first, set flags, then zcs_ev_start()). */
struct zcs_ev_transfer {
  zcs_transfer_t *transfer; /* ro */
  struct ev_loop *loop;     /* ro */
  zcs_ev_done_cb on_done;   /* rw */
  void *data;               /* rw: the caller's */
  pthread_mutex_t *lock;    /* rw: if set, held around every step */
  int finished;             /* ro */
  ev_io io;                 /* private */
  int flags;                /* rw, before zcs_ev_start(): ZCS_EV_PREFETCH */
  int disk_fd;              /* private: a prefetch's eventfd while the loop waits on it */
  int fresh;                /* private: just read in; the next step doesn't ask */
  ev_io disk;               /* private */
};

/* Thread safety: call these from the thread that runs loop (libev's rule for
 * its watchers). Another thread may stop a transfer only through
 * zcs_transfer_cancel()/zcs_transfer_abort() under w->lock, then have the
 * loop's thread call zcs_ev_kick() (the engine does it with an ev_async). */

/* Starts driving t on loop: its first step runs at the loop's next turn (not
 * inside this call), and on_done is called from the loop when it ends. Starting
 * a started watcher is harmless. Returns 0 or -EINVAL. */
ZCS_API int zcs_ev_start(zcs_ev_transfer_t *w, struct ev_loop *loop, zcs_transfer_t *t,
                         zcs_ev_done_cb on_done, void *data);
/* Has the loop step the transfer at its next turn (e.g. after
 * zcs_transfer_cancel(), so that it ends); never calls on_done itself. */
ZCS_API void zcs_ev_kick(zcs_ev_transfer_t *w);
/* Stops watching without finishing (and a prefetch wait, its eventfd closed);
 * on_done is not called. Harmless twice. */
ZCS_API void zcs_ev_stop(zcs_ev_transfer_t *w);

#ifdef __cplusplus
}
#endif
#endif /* ZCSEND_EV_H */
