/* zcsend.core: the Lua 5.4 face of the C core. It translates — arguments,
 * userdata lifetime, errors — and holds no transfer logic; lua/zcsend.lua
 * decides how to wait (its own loop, cqueues, or poll(2)).
 *
 * Runtime failures return nil, "ENAME: message", "ENAME" (luv's convention),
 * and a transfer's also the bytes it sent; bad arguments raise.
 *
 * fd ownership: a transfer works on dup()s of the caller's fds taken at the
 * call, so a caller's fd closed and its number reused can never receive a byte
 * nor have its flags touched. The only flag ever written is the O_NONBLOCK a
 * blocking socket needs for the transfer: set and cleared through our dup,
 * i.e. on the caller's own open file description, and cleared as soon as the
 * transfer ends. A transfer (or loop:wait) whose caller fd stops naming the
 * socket it was made on ends with EBADF: checked before every step, every
 * CHECK_INTERVAL while a loop drives or waits, and when it ends. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h> /* LUA_FILEHANDLE */

#include "zcsend_engine.h" /* zcs_transfer_prefetch */
#include "zcsend_ev.h" /* the driver, and zcsend.h */

#define TRANSFER_MT "zcsend.transfer"
#define LOOP_MT "zcsend.loop"
#define LOOPS_KEY "zcsend.loops" /* registry: weak-valued lightuserdata -> loop */

#if LUA_VERSION_NUM < 502
/* LuaJIT 2.1 (the 5.1 API plus most of 5.2's auxiliary library): what is missing.
   A userdata's one user value is its environment table there. */
#define lua_newuserdatauv(L, sz, n) lua_newuserdata(L, sz)
#define lua_getiuservalue(L, i, n) lua_getfenv(L, i)
#define lua_setiuservalue(L, i, n) lua_setfenv(L, i)
static void lua_rawgetp(lua_State *L, int t, const void *p) {
  t = t < 0 && t > LUA_REGISTRYINDEX ? lua_gettop(L) + t + 1 : t;
  lua_pushlightuserdata(L, (void *)p);
  lua_rawget(L, t);
}
static void lua_rawsetp(lua_State *L, int t, const void *p) {
  t = t < 0 && t > LUA_REGISTRYINDEX ? lua_gettop(L) + t + 1 : t;
  lua_pushlightuserdata(L, (void *)p);
  lua_insert(L, -2);
  lua_rawset(L, t);
}
/* LuaJIT's io handles start with their FILE *, NULL once closed */
typedef struct luaL_Stream {
  FILE *f;
  lua_CFunction closef; /* not LuaJIT's: only tested for NULL via f below */
} luaL_Stream;
#define STREAM_OPEN(s) ((s)->f != NULL)
#else
#define STREAM_OPEN(s) ((s)->closef != NULL && (s)->f != NULL)
#endif

/* every CHECK_INTERVAL seconds a loop checks that the fds it drives or waits on
   are still their callers'; cqueues hosts get it as a transfer's timeout() */
#define CHECK_INTERVAL 0.1

static int push_error_msg(lua_State *L, int code, const char *msg) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", zcs_err_name(code), msg);
  lua_pushstring(L, zcs_err_name(code));
  return 3;
}

/* nil, "ENAME: message", "ENAME" */
static int push_error(lua_State *L, int code) {
  return push_error_msg(L, code, zcs_strerror(code));
}

#define CLOSED_MSG "socket closed during the transfer"

static int64_t opt_int64(lua_State *L, int i, int64_t def, const char *what) {
  if (lua_isnoneornil(L, i))
    return def;
  int ok = 0;
#if LUA_VERSION_NUM >= 503
  lua_Integer v = lua_tointegerx(L, i, &ok);
#else /* numbers are doubles: an integral one is an integer */
  lua_Number n = lua_tonumber(L, i);
  ok = lua_type(L, i) == LUA_TNUMBER && n == (lua_Number)(int64_t)n;
  int64_t v = (int64_t)n;
#endif
  if (!ok)
    luaL_argerror(L, i, lua_pushfstring(L, "%s must be an integer", what));
  return (int64_t)v;
}

/* An fd argument: an integer from 0 to INT_MAX. A negative one raises
   `closed` (luasocket's getfd() says -1 once closed); a larger one raises
   "fd N out of range" (it is never truncated to an int). */
static int check_fd(lua_State *L, int i, const char *closed) {
#if LUA_VERSION_NUM >= 503
  lua_Integer v = luaL_checkinteger(L, i);
#else
  lua_Number v = luaL_checknumber(L, i);
  luaL_argcheck(L, v == floor(v), i, "fd must be an integer");
#endif
  if (v < 0)
    luaL_argerror(L, i, closed);
  if (v > INT_MAX) {
    char buf[64];
#if LUA_VERSION_NUM >= 503
    snprintf(buf, sizeof buf, "fd %lld out of range", (long long)v);
#else
    snprintf(buf, sizeof buf, "fd %.0f out of range", (double)v);
#endif
    luaL_argerror(L, i, buf);
  }
  return (int)v;
}

/* What an fd names, to tell later whether the same number still names it
   (for a socket, its inode is its one open file description). */
typedef struct fdid {
  dev_t dev;
  ino_t ino;
} fdid;

static int fd_identify(int fd, fdid *id) {
  struct stat st;
  if (fstat(fd, &st) < 0)
    return -errno;
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  return 0;
}

static int fd_still(int fd, const fdid *id) {
  fdid now = {0, 0};
  return fd_identify(fd, &now) == 0 && now.dev == id->dev && now.ino == id->ino;
}

/* ---- loop (forward) ----------------------------------------------------------
 * A loop keeps what it waits for — callbacks, driven transfers — in its own
 * user value (a table), never in the registry: a loop nobody can reach any more
 * is garbage with everything it holds, and its __gc stops what is pending. */
struct ltransfer;
typedef struct waiter {
  ev_io io;
  struct lloop *lp;
  int cb_ref;                   /* in the loop's table */
  fdid id;                      /* what io.fd named at loop:wait() */
  int fresh;                    /* not yet seen by libev (new waiters are first in the list) */
  double deadline;              /* ev_now() past which it ends with ETIMEDOUT; 0: none */
  struct waiter *prev, *next;
} waiter;

typedef struct lloop {
  struct ev_loop *loop;
  lua_State *L;                 /* the state running loop:run(), for callbacks */
  int err_ref;                  /* a callback's error (registry), re-raised by run() */
  int active;                   /* pending waits and driven transfers */
  waiter *waiters;
  struct ltransfer *driven;
  ev_timer check;               /* fd ownership, while anything is active (unref'd) */
  ev_prepare fresh;             /* checks new waiters' fds before libev adds them */
} lloop;

/* ---- transfer ------------------------------------------------------------------ */
typedef struct ltransfer {
  zcs_transfer_t t;    /* works on sock_dup and file_dup */
  int ready;           /* t was initialised and not yet released */
  int ended;           /* t ended: dups closed, result final */
  int last;            /* last step result */
  int result;          /* once ended: the core's result, or -EBADF (gone) */
  int gone;            /* caller_fd stopped naming the socket before the end */
  int caller_fd;       /* the caller's socket fd (for checks and tostring) */
  int caller_file;
  fdid id;             /* what caller_fd named at the call */
  int sock_dup, file_dup; /* ours, -1 once closed */
  int efd;             /* the last t:prefetch()'s eventfd, -1 once closed */
  int nonblock_set;    /* we set O_NONBLOCK on the socket's description */
  /* driven by a loop: */
  zcs_ev_transfer_t w;
  lloop *loop;                  /* while driven; NULL again once the loop is gone */
  int driven;                   /* was handed to a loop (once only) */
  int self_ref, cb_ref;         /* in the loop's table */
  double idle;                  /* seconds without progress that end it with ETIMEDOUT; 0: none */
  double progress_at;           /* ev_now() when t.sent last moved */
  uint64_t progress_sent;
  struct ltransfer *prev, *next; /* the loop's driven list */
} ltransfer;

static ltransfer *check_transfer(lua_State *L, int i) {
  return (ltransfer *)luaL_checkudata(L, i, TRANSFER_MT);
}

static void check_timer_update(lloop *lp);

static void unlink_driven(ltransfer *x) {
  lloop *lp = x->loop;
  if (!lp)
    return;
  if (x->prev)
    x->prev->next = x->next;
  else
    lp->driven = x->next;
  if (x->next)
    x->next->prev = x->prev;
  x->prev = x->next = NULL;
  x->loop = NULL;
  lp->active--;
  check_timer_update(lp);
}

/* Clears the O_NONBLOCK we set — through our dup, so on the caller's own
   description and never another — and closes the dups. */
static void close_dups(ltransfer *x) {
  if (x->sock_dup >= 0) {
    if (x->nonblock_set) {
      int fl = fcntl(x->sock_dup, F_GETFL);
      if (fl >= 0 && (fl & O_NONBLOCK))
        fcntl(x->sock_dup, F_SETFL, fl & ~O_NONBLOCK);
    }
    close(x->sock_dup);
  }
  if (x->file_dup >= 0)
    close(x->file_dup);
  x->nonblock_set = 0;
  x->sock_dup = x->file_dup = -1;
  x->t.sock_fd = x->t.file_fd = -1;
}

static void release_core(ltransfer *x) {
  if (x->ready)
    zcs_transfer_release(&x->t);
  x->ready = 0;
}

/* the core says the transfer is over: fix the result, give back the fds now */
static void end_transfer(ltransfer *x, int rc) {
  if (x->ended)
    return;
  if (!x->gone && !fd_still(x->caller_fd, &x->id))
    x->gone = 1; /* closed under us, even if the last bytes went out: no success */
  x->ended = 1;
  x->result = x->gone ? -EBADF : rc;
  release_core(x);
  close_dups(x);
}

/* the caller's fd no longer names the socket: stop at the next step */
static int check_owner(ltransfer *x) {
  if (!x->ended && !x->gone && !fd_still(x->caller_fd, &x->id)) {
    x->gone = 1;
    zcs_transfer_abort(&x->t, -EBADF);
  }
  return x->gone;
}

/* closes an fd an object owns (-1 after): a prefetch's eventfd, a box's dup. A
   coroutine its host never resumes (a scheduler dropped with it) may never
   close it; its object's __gc will */
static void close_owned(int *fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

static void transfer_release(ltransfer *x) {
  if (x->loop) { /* collected while a loop drives it */
    zcs_ev_stop(&x->w);
    unlink_driven(x);
  }
  release_core(x);
  close_dups(x);
  close_owned(&x->efd);
}

static int dup_fd(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }

/* core.transfer(sock_fd, file_fd [, offset [, count [, start]]]) -> transfer | nil, msg, name, 0.
 * Works on dups of both fds; a blocking socket is non-blocking until the end.
 * start: a small cached range goes now (zcs_transfer_start), for a caller that
 * steps the transfer at once and has nothing of its own to send first. */
static int l_transfer(lua_State *L) {
  int sock = check_fd(L, 1, "closed socket");
  int file = check_fd(L, 2, "closed file");
  int64_t offset = opt_int64(L, 3, 0, "offset");
  int64_t count = opt_int64(L, 4, ZCS_COUNT_TO_EOF, "count");
  luaL_argcheck(L, offset >= 0, 3, "offset must be non-negative");
  luaL_argcheck(L, count > 0 || count == ZCS_COUNT_TO_EOF || lua_isnoneornil(L, 4), 4,
                "count must be positive");
  int start = lua_toboolean(L, 5);
  ltransfer *x = (ltransfer *)lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  x->sock_dup = x->file_dup = x->efd = -1;
  x->t.sock_fd = x->t.file_fd = -1;
  x->caller_fd = sock;
  x->caller_file = file;
  x->self_ref = x->cb_ref = LUA_NOREF;
  luaL_setmetatable(L, TRANSFER_MT); /* from here __gc closes what we open */
  int rc = fd_identify(sock, &x->id);
  if (rc == 0 && ((x->sock_dup = dup_fd(sock)) < 0 || (x->file_dup = dup_fd(file)) < 0))
    rc = -errno;
  int fl = rc == 0 ? fcntl(x->sock_dup, F_GETFL) : 0;
  if (fl < 0)
    rc = -errno;
  if (rc == 0 && !(fl & O_NONBLOCK)) {
    if (fcntl(x->sock_dup, F_SETFL, fl | O_NONBLOCK) < 0)
      rc = -errno;
    else
      x->nonblock_set = 1;
  }
  if (rc == 0) {
    x->ready = 1;
    /* a count is exact: past a file's end it is ETRUNCATED before a byte moves */
    int flags = (count == ZCS_COUNT_TO_EOF ? 0 : ZCS_F_EXACT_COUNT) | ZCS_F_SOCK_NONBLOCKING;
    rc = start ? zcs_transfer_start(&x->t, x->sock_dup, x->file_dup, offset, count, NULL, 0, flags)
               : zcs_transfer_init(&x->t, x->sock_dup, x->file_dup, offset, count, flags);
  }
  if (rc < 0) {
    transfer_release(x);
    push_error(L, rc);
    lua_pushinteger(L, 0);
    return 4;
  }
  x->last = ZCS_WANT_WRITE;
  return 1;
}

static const char *result_name(int rc) {
  switch (rc) {
  case ZCS_DONE: return "done";
  case ZCS_WANT_WRITE: return "write";
  case ZCS_WANT_READ: return "read";
  case ZCS_WANT_SOURCE: return "source";
  default: return NULL;
  }
}

/* nil, "ENAME: message", "ENAME", sent for a transfer that failed */
static int push_failure(lua_State *L, ltransfer *x) {
  if (x->gone)
    push_error_msg(L, -EBADF, CLOSED_MSG);
  else
    push_error(L, x->result);
  lua_pushinteger(L, (lua_Integer)x->t.sent);
  return 4;
}

/* t:step() -> "done" | "write" | "read" | "source" | nil, msg, name, sent */
static int t_step(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  if (!x->ready && !x->ended)
    return luaL_error(L, "transfer is closed");
  if (x->loop)
    return luaL_error(L, "transfer is being driven by a loop");
  if (!x->ended) {
    check_owner(x);
    x->last = zcs_transfer_step(&x->t);
    if (x->last <= 0)
      end_transfer(x, x->last);
  }
  if (x->ended && x->result < 0)
    return push_failure(L, x);
  lua_pushstring(L, result_name(x->ended ? x->result : x->last));
  return 1;
}

/* cqueues' pollable protocol: pollfd, events, timeout. pollfd is the caller's
   fd (as ready as our dup of it): a host may close it the way it must close
   any fd it polls (cqueues: after cqueues.cancel), while our dups, closed when
   the transfer ends, are never in a host's poll set. */
static int t_pollfd(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  int ev = 0;
  int fd = x->ready && !x->ended ? zcs_transfer_wait_fd(&x->t, x->last, &ev) : -1;
  lua_pushinteger(L, fd < 0 ? -1 : fd == x->file_dup ? x->caller_file : x->caller_fd);
  return 1;
}

static int t_events(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  int ev = 0;
  if (x->ready && !x->ended)
    zcs_transfer_wait_fd(&x->t, x->last, &ev);
  lua_pushstring(L, ev == ZCS_WAIT_READ ? "r" : ev == ZCS_WAIT_WRITE ? "w" : "");
  return 1;
}

/* while it runs, step again within CHECK_INTERVAL anyway: that step sees a
   socket its caller closed (its dup alone would never tell) */
static int t_timeout(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  if (x->ready && !x->ended)
    lua_pushnumber(L, CHECK_INTERVAL);
  else
    lua_pushnil(L);
  return 1;
}

static int t_sent(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_pushinteger(L, (lua_Integer)x->t.sent);
  return 1;
}

static int t_done(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_pushboolean(L, x->ended);
  return 1;
}

/* t:result() -> true | nil, msg, name, sent | false (still running, or closed unfinished) */
static int t_result(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  if (!x->ended) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (x->result == ZCS_DONE) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return push_failure(L, x);
}

/* t:ownfd() -> the transfer's own dup that its last step waits on, or -1: for
   a host that polls it rather than pollfd() (zcsend.lua under cqueues, which
   then calls cqueues.cancel on it before the next step, which may close it) */
static int t_ownfd(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  int ev = 0;
  lua_pushinteger(L, x->ready && !x->ended ? zcs_transfer_wait_fd(&x->t, x->last, &ev) : -1);
  return 1;
}

static int t_backend(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_pushstring(L, zcs_backend_kind_name(x->t.backend));
  return 1;
}

/* t:blocked() -> true when the last step stopped because the socket would
   block (or, before the first, when the start found it full); false when it
   only spent its budget (the socket may be writable still: a host that can't
   poll should yield to its others, then step) */
static int t_blocked(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_pushboolean(L, x->ready && !x->ended && x->t.blocked);
  return 1;
}

/* t:peek(n) -> the transfer's next bytes (up to n; "" when none are left),
   moving nothing | nil, msg, name (EAGAIN: it holds bytes of its own; ESPIPE: a
   pipe). With t:advance(#written), for a host whose only way to wait for a
   socket is to write to it through its own object (nginx cosockets). */
static int t_peek(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n > 0 && n <= (1 << 20), 2, "1 to 1 MiB");
  if (x->ended) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (!x->ready || x->loop)
    return push_error(L, -EINVAL);
  char *p = (char *)lua_newuserdatauv(L, (size_t)n, 0);
  ssize_t got = zcs_transfer_peek(&x->t, p, (size_t)n);
  if (got < 0)
    return push_error(L, (int)got);
  lua_pushlstring(L, p, (size_t)got);
  return 1;
}

/* t:cached([n]) -> whether a step of up to n bytes (default: the step budget)
   can't wait for the disk (zcs_transfer_ready: the range is in the page cache,
   or there is no file behind it; a small rest is read in now, for the step) */
static size_t step_window(ltransfer *x, lua_State *L) {
  lua_Integer n = luaL_optinteger(L, 2, (lua_Integer)(x->t.budget ? x->t.budget : ZCS_DEFAULT_BUDGET));
  luaL_argcheck(L, n > 0, 2, "must be positive");
  return (size_t)n;
}

static int t_cached(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  size_t n = step_window(x, L);
  lua_pushboolean(L, !x->ready || x->ended || x->loop || zcs_transfer_ready(&x->t, n));
  return 1;
}

/* t:prefetch([n]) -> fd | nil, msg, name: a prefetch thread reads the next
   steps' bytes (of up to n each, default: the step budget: two steps' worth,
   zcs_transfer_prefetch) into the page cache; the fd (an eventfd) becomes
   readable when it is done: wait for it the host's way, then
   t:prefetch_close(). It is t's: the next prefetch, t:close() and t's __gc
   close it too. For a host whose thread must not wait for the disk. */
static int t_prefetch(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  size_t n = step_window(x, L);
  if (!x->ready || x->ended || x->loop)
    return push_error(L, -EINVAL);
  int fd = zcs_transfer_prefetch(&x->t, n); /* -EINVAL: no file, nothing left */
  if (fd < 0)
    return push_error(L, fd);
  close_owned(&x->efd);
  x->efd = fd;
  lua_pushinteger(L, fd);
  return 1;
}

/* t:prefetch_close(): the prefetch's eventfd, waited for, is closed */
static int t_prefetch_close(lua_State *L) {
  close_owned(&check_transfer(L, 1)->efd);
  return 0;
}

/* t:advance(n): n bytes from t:peek() went out through the host's own write */
static int t_advance(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0, 2, "must be non-negative");
  int rc = x->ready && !x->ended && !x->loop ? zcs_transfer_advance(&x->t, (size_t)n) : -EINVAL;
  if (rc < 0)
    return luaL_error(L, "advance past what is left");
  return 0;
}

/* t:cancel([errno]): ends the transfer at its next step with ECANCELED, or
   with the (positive or negative) errno given, e.g. ETIMEDOUT */
static int t_cancel(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_Integer code = luaL_optinteger(L, 2, ECANCELED);
  if (!x->ready || x->ended)
    return 0;
  zcs_transfer_abort(&x->t, code > 0 ? -(int)code : (int)code);
  if (x->loop) /* the loop's next step ends it: its callback comes from loop:run() */
    zcs_ev_kick(&x->w);
  return 0;
}

static int t_close(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  if (x->loop) { /* driven: the loop lets go of the callback (never called now) and of it */
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, LOOPS_KEY);
    /* a loop being collected is gone from the (weak) map before its __gc runs,
       and its table with it: nothing to let go of then */
    lua_rawgetp(L, -1, x->loop);
    if (lua_type(L, -1) == LUA_TUSERDATA) {
      lua_getiuservalue(L, -1, 1);
      if (lua_type(L, -1) == LUA_TTABLE) {
        luaL_unref(L, -1, x->cb_ref);
        luaL_unref(L, -1, x->self_ref);
      }
    }
    lua_settop(L, top);
    x->cb_ref = x->self_ref = LUA_NOREF;
  }
  transfer_release(x);
  return 0;
}

static int t_tostring(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  char buf[96];
  snprintf(buf, sizeof buf, "zcsend.transfer (%d -> %d, %llu sent)", x->caller_file, x->caller_fd,
           (unsigned long long)x->t.sent);
  lua_pushstring(L, buf);
  return 1;
}

/* ---- the loop ---------------------------------------------------------------------- */
static lloop *check_loop(lua_State *L, int i) {
  lloop *lp = (lloop *)luaL_checkudata(L, i, LOOP_MT);
  if (!lp->loop)
    luaL_error(L, "loop is closed");
  return lp;
}

static void on_check(struct ev_loop *loop, ev_timer *tm, int revents);
static void on_prepare(struct ev_loop *loop, ev_prepare *pr, int revents);

static int l_loop(lua_State *L) {
  lloop *lp = (lloop *)lua_newuserdatauv(L, sizeof *lp, 1);
  memset(lp, 0, sizeof *lp);
  lp->err_ref = LUA_NOREF;
  luaL_setmetatable(L, LOOP_MT);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  lp->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
  if (!lp->loop)
    return push_error(L, -ENOMEM);
  ev_timer_init(&lp->check, on_check, CHECK_INTERVAL, CHECK_INTERVAL);
  ev_prepare_init(&lp->fresh, on_prepare);
  /* callbacks find their loop's table through a weak map: lp -> loop */
  lua_getfield(L, LUA_REGISTRYINDEX, LOOPS_KEY);
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, lp);
  lua_pop(L, 1);
  return 1;
}

/* the ownership check runs while something is active, and never keeps run() going */
static void check_timer_update(lloop *lp) {
  if (!lp->loop)
    return;
  if (lp->active > 0 && !ev_is_active(&lp->check)) {
    ev_timer_again(lp->loop, &lp->check);
    ev_unref(lp->loop);
  } else if (lp->active == 0 && ev_is_active(&lp->check)) {
    ev_ref(lp->loop);
    ev_timer_stop(lp->loop, &lp->check);
  }
  if (lp->waiters && !ev_is_active(&lp->fresh)) {
    ev_prepare_start(lp->loop, &lp->fresh);
    ev_unref(lp->loop);
  } else if (!lp->waiters && ev_is_active(&lp->fresh)) {
    ev_ref(lp->loop);
    ev_prepare_stop(lp->loop, &lp->fresh);
  }
}

/* pushes the loop's table of references; the loop is alive while it runs callbacks */
static void push_refs(lua_State *L, lloop *lp) {
  lua_getfield(L, LUA_REGISTRYINDEX, LOOPS_KEY);
  lua_rawgetp(L, -1, lp);
  lua_getiuservalue(L, -1, 1);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* takes the value at the top into the loop's table (whose index is t) */
static int keep(lua_State *L, int t) { return luaL_ref(L, t); }

/* pushes a kept value and lets go of it */
static void take(lua_State *L, lloop *lp, int ref) {
  push_refs(L, lp);
  lua_rawgeti(L, -1, ref);
  luaL_unref(L, -2, ref);
  lua_remove(L, -2);
}

static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg)
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Runs the function on top of L's stack with nargs under a protected call; a
   failure is kept (with its traceback) for loop:run() to raise, and the loop stops. */
static void protected_call(lloop *lp, lua_State *L, int nargs) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  if (lua_pcall(L, nargs, 0, base) != 0) {
    if (lp->err_ref == LUA_NOREF)
      lp->err_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
      lua_pop(L, 1);
    ev_break(lp->loop, EVBREAK_ALL);
  }
  lua_remove(L, base);
}

/* a driven transfer ended: drop our hold on it and call back cb(transfer) */
static void on_driven_done(zcs_ev_transfer_t *w, int result) {
  ltransfer *x = (ltransfer *)w->data;
  lloop *lp = x->loop;
  lua_State *L = lp->L;
  unlink_driven(x);
  end_transfer(x, result);
  take(L, lp, x->cb_ref);
  take(L, lp, x->self_ref); /* the transfer itself, the callback's argument */
  x->cb_ref = x->self_ref = LUA_NOREF;
  protected_call(lp, L, 1);
}

/* loop:drive(transfer, cb [, idle]): steps the transfer from the loop (zcsend's
   libev driver) and calls cb(transfer) once it has ended; one that moves no
   byte for idle seconds (checked every CHECK_INTERVAL) ends with ETIMEDOUT. */
static int lp_drive(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  ltransfer *x = check_transfer(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_Number idle = luaL_optnumber(L, 4, 0);
  lua_settop(L, 3);
  if (!x->ready || x->ended)
    return luaL_error(L, "transfer is closed");
  if (x->driven)
    return luaL_error(L, "transfer is driven already");
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 3);
  x->cb_ref = keep(L, 4);
  lua_pushvalue(L, 2);
  x->self_ref = keep(L, 4);
  lua_pop(L, 1);
  x->driven = 1;
  x->idle = idle > 0 ? idle : 0;
  ev_now_update(lp->loop);
  x->progress_at = ev_now(lp->loop);
  x->progress_sent = x->t.sent;
  x->loop = lp;
  x->prev = NULL;
  x->next = lp->driven;
  if (lp->driven)
    lp->driven->prev = x;
  lp->driven = x;
  lp->active++;
  check_timer_update(lp);
  check_owner(x); /* a socket gone already: its first step ends it */
  /* its first step, and its callback, come from loop:run(), never from here;
     a range not in the page cache is read in by a prefetch thread meanwhile */
  x->w.flags = ZCS_EV_PREFETCH;
  zcs_ev_start(&x->w, lp->loop, &x->t, on_driven_done, x);
  return 0;
}

/* one-shot fd watcher: loop:wait(fd, "r"|"w", cb [, timeout]) calls cb(true) once
   the fd is ready, cb(nil, "EBADF: ...", "EBADF") once fd no longer names what
   it did, or cb(nil, "ETIMEDOUT: ...", "ETIMEDOUT") after timeout seconds */
static void unlink_waiter(waiter *wt) {
  lloop *lp = wt->lp;
  ev_io_stop(lp->loop, &wt->io);
  if (wt->prev)
    wt->prev->next = wt->next;
  else
    lp->waiters = wt->next;
  if (wt->next)
    wt->next->prev = wt->prev;
  lp->active--;
  check_timer_update(lp);
}

/* err: 0 ready, else -EBADF (the fd let go) or -ETIMEDOUT */
static void end_wait(waiter *wt, int err) {
  lloop *lp = wt->lp;
  lua_State *L = lp->L;
  unlink_waiter(wt);
  take(L, lp, wt->cb_ref);
  free(wt);
  if (!err) {
    lua_pushboolean(L, 1);
    protected_call(lp, L, 1);
  } else {
    push_error_msg(L, err, err == -EBADF ? "fd closed while waiting" : "timed out waiting");
    protected_call(lp, L, 3);
  }
}

static void on_wait_ready(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  waiter *wt = (waiter *)io;
  end_wait(wt, !(revents & EV_ERROR) && fd_still(io->fd, &wt->id) ? 0 : -EBADF);
}

/* Before libev adds new waiters' fds to its epoll set: one closed meanwhile
   would abort the process in libev (EBADF), one reused would watch a stranger. */
static void on_prepare(struct ev_loop *loop, ev_prepare *pr, int revents) {
  (void)loop;
  (void)revents;
  lloop *lp = (lloop *)((char *)pr - offsetof(lloop, fresh));
  waiter *wt = lp->waiters;
  while (wt && wt->fresh) {
    wt->fresh = 0;
    if (!fd_still(wt->io.fd, &wt->id)) {
      end_wait(wt, -EBADF); /* may add waiters (fresh, first): start over */
      wt = lp->waiters;
    } else {
      wt = wt->next;
    }
  }
}

/* a driven transfer that moved nothing for its idle seconds */
static int idle_too_long(ltransfer *x, double now) {
  if (x->t.sent != x->progress_sent) {
    x->progress_sent = x->t.sent;
    x->progress_at = now;
    return 0;
  }
  if (x->idle > 0 && now - x->progress_at >= x->idle && !x->ended && !x->t.cancelled) {
    zcs_transfer_abort(&x->t, -ETIMEDOUT);
    return 1;
  }
  return 0;
}

/* every CHECK_INTERVAL: end what waits on, or sends to, an fd its caller let
   go, and what waited longer than its timeout */
static void on_check(struct ev_loop *loop, ev_timer *tm, int revents) {
  (void)revents;
  lloop *lp = (lloop *)((char *)tm - offsetof(lloop, check));
  double now = ev_now(loop);
  for (ltransfer *x = lp->driven; x; x = x->next)
    if ((!x->gone && check_owner(x)) || idle_too_long(x, now))
      zcs_ev_kick(&x->w); /* its next step ends it; on_driven_done unlinks it then */
again: /* a waiter's callback runs now and may add or end waiters: start over */
  for (waiter *wt = lp->waiters; wt; wt = wt->next) {
    int err = !fd_still(wt->io.fd, &wt->id) ? -EBADF
              : wt->deadline > 0 && now >= wt->deadline ? -ETIMEDOUT : 0;
    if (err) {
      end_wait(wt, err);
      goto again;
    }
  }
}

static int lp_wait(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  int fd = check_fd(L, 2, "closed fd");
  const char *ev = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_Number timeout = luaL_optnumber(L, 5, 0);
  lua_settop(L, 4);
  int events = (strchr(ev, 'r') ? EV_READ : 0) | (strchr(ev, 'w') ? EV_WRITE : 0);
  luaL_argcheck(L, events, 3, "\"r\", \"w\" or \"rw\" expected");
  waiter *wt = (waiter *)calloc(1, sizeof *wt);
  if (!wt)
    return luaL_error(L, "out of memory");
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 4);
  wt->cb_ref = keep(L, 5);
  lua_pop(L, 1);
  wt->lp = lp;
  wt->prev = NULL;
  wt->next = lp->waiters;
  if (lp->waiters)
    lp->waiters->prev = wt;
  lp->waiters = wt;
  ev_io_init(&wt->io, on_wait_ready, fd, events);
  wt->fresh = 1;
  if (timeout > 0) {
    ev_now_update(lp->loop); /* ev_now may be from before the loop last slept */
    wt->deadline = ev_now(lp->loop) + timeout;
  }
  lp->active++;
  check_timer_update(lp);
  if (fd_identify(fd, &wt->id) < 0)
    ev_feed_event(lp->loop, &wt->io, EV_ERROR); /* not open: cb gets EBADF from run() */
  else
    ev_io_start(lp->loop, &wt->io);
  return 0;
}

/* loop:run() -> true when nothing is left to do; raises a callback's error */
static int lp_run(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  lua_State *saved = lp->L;
  lp->L = L;
  ev_run(lp->loop, 0);
  lp->L = saved;
  if (lp->err_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, lp->err_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, lp->err_ref);
    lp->err_ref = LUA_NOREF;
    return lua_error(L);
  }
  lua_pushboolean(L, lp->active == 0);
  return 1;
}

static int lp_stop(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  ev_break(lp->loop, EVBREAK_ALL);
  return 0;
}

static int lp_active(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  lua_pushinteger(L, lp->active);
  return 1;
}

/* An unreachable loop: what it still waits for can never happen; stop it all.
   (Its driven transfers may be finalized before or after it: both are safe.) */
static int lp_gc(lua_State *L) {
  lloop *lp = (lloop *)luaL_checkudata(L, 1, LOOP_MT);
  if (!lp->loop)
    return 0;
  while (lp->waiters) {
    waiter *wt = lp->waiters;
    unlink_waiter(wt);
    free(wt);
  }
  while (lp->driven) {
    ltransfer *x = lp->driven;
    zcs_ev_stop(&x->w);
    unlink_driven(x);
  }
  ev_loop_destroy(lp->loop);
  lp->loop = NULL;
  return 0;
}

static int t_gc(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  transfer_release(x);
  return 0;
}

/* ---- helpers for the Lua layer ------------------------------------------------------ */
/* core.poll(fd, "r"|"w" [, timeout_seconds]) -> true | false (timed out) | nil, msg, name */
static int l_poll(lua_State *L) {
  int fd = check_fd(L, 1, "closed fd");
  const char *ev = luaL_checkstring(L, 2);
  lua_Number timeout = luaL_optnumber(L, 3, -1);
  struct pollfd p = {.fd = fd, .events = (short)((strchr(ev, 'r') ? POLLIN : 0) |
                                                 (strchr(ev, 'w') ? POLLOUT : 0))};
  int ms = timeout < 0 ? -1 : (int)(timeout * 1000);
  int r;
  while ((r = poll(&p, 1, ms)) < 0 && errno == EINTR) {
  }
  if (r < 0)
    return push_error(L, -errno);
  if (r > 0 && (p.revents & POLLNVAL))
    return push_error(L, -EBADF);
  lua_pushboolean(L, r > 0);
  return 1;
}

/* core.fdid(fd) -> a string naming what fd refers to | nil, msg, name: while
   it is the same, fd still names the same socket */
static int l_fdid(lua_State *L) {
  int fd = check_fd(L, 1, "closed fd");
  fdid id = {0, 0};
  int rc = fd_identify(fd, &id);
  if (rc < 0)
    return push_error(L, rc);
  char buf[48];
  snprintf(buf, sizeof buf, "%llx:%llx", (unsigned long long)id.dev, (unsigned long long)id.ino);
  lua_pushstring(L, buf);
  return 1;
}

/* core.fileno(io_handle) -> fd, ahead; raises on a closed handle (as the io
   library does). ahead: the bytes the handle's stdio buffer read ahead of a
   source that can't seek (a pipe the caller read from), which the fd alone
   would skip; 0 for a file that seeks (sent by offset), or where the C library
   doesn't say (glibc does) */
static int l_fileno(lua_State *L) {
  luaL_Stream *s = (luaL_Stream *)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  luaL_argcheck(L, STREAM_OPEN(s), 1, "attempt to use a closed file");
  int fd = fileno(s->f);
  lua_Integer ahead = 0;
#ifdef __GLIBC__
  if (s->f->_IO_read_ptr < s->f->_IO_read_end && fd >= 0 && lseek(fd, 0, SEEK_CUR) < 0)
    ahead = (lua_Integer)(s->f->_IO_read_end - s->f->_IO_read_ptr);
#endif
  lua_pushinteger(L, fd);
  lua_pushinteger(L, ahead);
  return 2;
}

/* core.engine_stats() -> {prefetches, prefetch_bytes, prefetching, workers} */
static int l_engine_stats(lua_State *L) {
  zcs_engine_stats_t s;
  zcs_engine_stats(&s);
  lua_createtable(L, 0, 4);
#define F(name) lua_pushinteger(L, (lua_Integer)s.name); lua_setfield(L, -2, #name);
  F(prefetches) F(prefetch_bytes) F(prefetching) F(workers)
#undef F
  return 1;
}

static int l_stats(lua_State *L) {
  zcs_stats_t s;
  zcs_stats(&s);
  lua_createtable(L, 0, 7);
#define F(name) lua_pushinteger(L, (lua_Integer)s.name); lua_setfield(L, -2, #name);
  F(bytes_zero_copy) F(bytes_fallback) F(started) F(completed) F(failed) F(cancelled) F(active)
#undef F
  return 1;
}

/* ---- chunk sources: the TLS path ------------------------------------------------------ */
/* core.chunks(fd, offset, count) -> chunks | nil, msg, name, 0: the range of a file
   that lua/zcsend.lua writes through a TLS object's send(). The core sizes it
   (a count past a sized file's end is ETRUNCATED now, before a byte), reads it,
   says ETRUNCATED when the file shrank, and counts it in the stats; it reads
   through a dup taken now, so the caller's fd may be closed and reused meanwhile. */
#define CHUNKS_MT "zcsend.chunks"

typedef struct lchunks {
  zcs_chunks_t c;
  int fd;  /* our dup, -1 once closed */
  int efd; /* the last c:prefetch()'s eventfd, -1 once closed */
} lchunks;

static lchunks *check_chunks(lua_State *L, int i) {
  lchunks *x = (lchunks *)luaL_checkudata(L, i, CHUNKS_MT);
  return x;
}

static void chunks_release(lchunks *x) {
  if (x->fd >= 0) {
    zcs_chunks_release(&x->c); /* never ended: cancelled */
    close(x->fd);
    x->fd = -1;
  }
  close_owned(&x->efd);
}

static int l_chunks(lua_State *L) {
  int file = check_fd(L, 1, "closed file");
  int64_t offset = opt_int64(L, 2, 0, "offset");
  int64_t count = opt_int64(L, 3, ZCS_COUNT_TO_EOF, "count");
  lchunks *x = (lchunks *)lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  x->fd = x->efd = -1;
  luaL_setmetatable(L, CHUNKS_MT); /* from here __gc closes what we open */
  int fd = dup_fd(file);
  int rc = fd < 0 ? -errno : 0;
  if (rc == 0) {
    /* a count is exact: past a file's end it is ETRUNCATED before a byte moves */
    rc = zcs_chunks_init(&x->c, fd, offset, count, count == ZCS_COUNT_TO_EOF ? 0 : ZCS_F_EXACT_COUNT);
    if (rc < 0)
      close(fd);
    else
      x->fd = fd;
  }
  if (rc < 0) {
    push_error(L, rc);
    lua_pushinteger(L, 0);
    return 4;
  }
  return 1;
}

/* c:read(n [, nowait]) -> the next bytes, at most n ("" at the end) | nil, msg,
   name (ETRUNCATED: the file shrank; the chunk source has ended with the error).
   nowait: only from the page cache, all n or nothing: EAGAIN where the disk
   would be waited for (nothing consumed: c:prefetch(n), wait, read again) */
static int c_read(lua_State *L) {
  lchunks *x = check_chunks(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n > 0 && n <= (64 << 20), 2, "1 to 64 MiB");
  luaL_argcheck(L, x->fd >= 0, 1, "chunk source is closed");
  int nowait = lua_toboolean(L, 3);
  char *p = (char *)lua_newuserdata(L, (size_t)n); /* collected, even if a push fails */
  ssize_t got = zcs_chunks_read(&x->c, p, (size_t)n, nowait ? ZCS_READ_NOWAIT : 0);
  if (got < 0)
    return push_error(L, (int)got);
  lua_pushlstring(L, p, (size_t)got);
  return 1;
}

/* c:prefetch(n) -> eventfd | nil, msg, name: a prefetch thread reads the next
   n bytes (at most what is left) into the page cache, for a host whose
   c:read(n, true) said EAGAIN; the eventfd turns readable when it is done
   (zcs_prefetch); c:prefetch_close() closes it once waited for (and the next
   prefetch, c:close() and c's __gc, as t's) */
static int c_prefetch(lua_State *L) {
  lchunks *x = check_chunks(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n > 0 && n <= (64 << 20), 2, "1 to 64 MiB");
  size_t want = x->fd >= 0 && x->c.offset >= 0 ? zcs_chunks_want(&x->c, (size_t)n) : 0;
  int efd = want ? zcs_prefetch(x->fd, x->c.offset, want) : -EINVAL;
  if (efd < 0)
    return push_error(L, efd);
  close_owned(&x->efd);
  x->efd = efd;
  lua_pushinteger(L, efd);
  return 1;
}

static int c_prefetch_close(lua_State *L) {
  close_owned(&check_chunks(L, 1)->efd);
  return 0;
}

/* c:wrote(n): the TLS object took n bytes */
static int c_wrote(lua_State *L) {
  lchunks *x = check_chunks(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= 0, 2, "must be non-negative");
  zcs_chunks_wrote(&x->c, (size_t)n);
  return 0;
}

/* the code a name ("EPIPE", "ECANCELED") stands for; -EIO for one it doesn't know */
static int code_of_name(const char *name) {
#define XX(n, v, msg) if (!strcmp(name, #n)) return v;
  ZCS_ERRNO_MAP(XX)
#undef XX
  for (int e = 1; e < 4096; e++)
    if (!strcmp(name, zcs_err_name(-e)))
      return -e;
  return -EIO;
}

/* c:finish(): every byte went out; c:fail(name): it ended with the error named so
   (ECANCELED counts as cancelled, anything else as failed). The first outcome wins. */
static int c_finish(lua_State *L) {
  zcs_chunks_end(&check_chunks(L, 1)->c, ZCS_DONE);
  return 0;
}

static int c_fail(lua_State *L) {
  lchunks *x = check_chunks(L, 1);
  const char *name = lua_tostring(L, 2);
  zcs_chunks_end(&x->c, name ? code_of_name(name) : -EIO);
  return 0;
}

static int c_sent(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_chunks(L, 1)->c.sent);
  return 1;
}

/* c:remaining() -> bytes still to read (-1: up to the source's end), 0 once done */
static int c_remaining(lua_State *L) {
  lchunks *x = check_chunks(L, 1);
  lua_pushinteger(L, (lua_Integer)(x->c.result == ZCS_RUNNING ? x->c.remaining : 0));
  return 1;
}

/* c:seekable() -> false for a source read where it stands (a pipe: wait for it) */
static int c_seekable(lua_State *L) {
  lua_pushboolean(L, check_chunks(L, 1)->c.offset >= 0);
  return 1;
}

static int c_ownfd(lua_State *L) {
  lua_pushinteger(L, check_chunks(L, 1)->fd);
  return 1;
}

/* c:close(), __gc, __close: closes the dup; a chunk source never ended counts as cancelled */
static int c_close(lua_State *L) {
  chunks_release(check_chunks(L, 1));
  return 0;
}

/* core.dup(fd) -> a new fd (close-on-exec) for the same file | nil, msg, name;
   core.close(fd): for the dups the Lua layer takes */
static int l_dup(lua_State *L) {
  int fd = dup_fd(check_fd(L, 1, "closed fd"));
  if (fd < 0)
    return push_error(L, -errno);
  lua_pushinteger(L, fd);
  return 1;
}

static int l_close(lua_State *L) {
  close(check_fd(L, 1, "closed fd"));
  return 0;
}

/* core.hold(fd) -> box | nil, msg, name: a close-on-exec dup of fd that box
   owns: box:fd() is its number (-1 once closed), box:close() closes it, and so
   does box's __gc. For a dup kept across a host's wait: a coroutine its host
   drops there, never resumed, leaves nothing open once collected. */
#define FDBOX_MT "zcsend.fdbox"
typedef struct fdbox {
  int fd;
} fdbox;

static int l_hold(lua_State *L) {
  int fd = check_fd(L, 1, "closed fd");
  fdbox *b = (fdbox *)lua_newuserdatauv(L, sizeof *b, 0);
  b->fd = -1;
  luaL_setmetatable(L, FDBOX_MT);
  if ((b->fd = dup_fd(fd)) < 0)
    return push_error(L, -errno);
  return 1;
}

static int box_fd(lua_State *L) {
  lua_pushinteger(L, ((fdbox *)luaL_checkudata(L, 1, FDBOX_MT))->fd);
  return 1;
}

static int box_close(lua_State *L) {
  close_owned(&((fdbox *)luaL_checkudata(L, 1, FDBOX_MT))->fd);
  return 0;
}

/* core.strerror(errno) -> "ENAME: message", "ENAME" (a host's errno, e.g. cqueues') */
static int l_strerror(lua_State *L) {
  int e = (int)luaL_checkinteger(L, 1);
  push_error(L, -e);
  return 2;
}

/* core.nonblocking(fd) -> true when O_NONBLOCK is set on fd's description | nil, msg, name */
static int l_nonblocking(lua_State *L) {
  int fd = check_fd(L, 1, "closed fd");
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0)
    return push_error(L, -errno);
  lua_pushboolean(L, (fl & O_NONBLOCK) != 0);
  return 1;
}

/* core.now() -> seconds on the monotonic clock */
static int l_now(lua_State *L) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static int l_backend(lua_State *L) {
  lua_pushstring(L, zcs_backend_name());
  return 1;
}

static const luaL_Reg transfer_methods[] = {
    {"step", t_step},       {"pollfd", t_pollfd}, {"events", t_events}, {"timeout", t_timeout},
    {"sent", t_sent},       {"done", t_done},     {"result", t_result}, {"backend", t_backend},
    {"cancel", t_cancel},   {"close", t_close},   {"ownfd", t_ownfd},   {"blocked", t_blocked},
    {"peek", t_peek},       {"advance", t_advance}, {"cached", t_cached},
    {"prefetch", t_prefetch}, {"prefetch_close", t_prefetch_close}, {NULL, NULL}};

static const luaL_Reg chunks_methods[] = {
    {"read", c_read},   {"wrote", c_wrote},         {"finish", c_finish}, {"fail", c_fail},
    {"sent", c_sent},   {"remaining", c_remaining}, {"seekable", c_seekable},
    {"ownfd", c_ownfd}, {"close", c_close},         {"prefetch", c_prefetch}, {"prefetch_close", c_prefetch_close},
    {NULL, NULL}};

static const luaL_Reg loop_methods[] = {{"drive", lp_drive}, {"wait", lp_wait}, {"run", lp_run},
                                        {"stop", lp_stop},   {"active", lp_active}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"transfer", l_transfer}, {"loop", l_loop},         {"poll", l_poll},
    {"chunks", l_chunks},     {"fileno", l_fileno},     {"fdid", l_fdid},
    {"strerror", l_strerror}, {"dup", l_dup}, {"hold", l_hold},           {"close", l_close},
    {"now", l_now},           {"nonblocking", l_nonblocking},
    {"stats", l_stats},       {"backend", l_backend},   {"engine_stats", l_engine_stats},
    {NULL, NULL}};

static void new_metatable(lua_State *L, const char *name, const luaL_Reg *methods,
                          lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
#if LUA_VERSION_NUM >= 504
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__close");
#endif
  lua_pop(L, 1);
}

/* The core's prefetch threads (t:prefetch) run this object's code and never
   exit, but lua_close() dlcloses C modules: the object stays mapped for good
   instead (RTLD_NODELETE), as CPython keeps its extensions. */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)pin_module, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

/* The module's one exported symbol: lua/Makefile builds with -fvisibility=hidden
   and -DZCS_API=, so the core compiled into core.so stays private to it. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((visibility("default")))
#endif
int luaopen_zcsend_core(lua_State *L) {
  pin_module();
  int rc = zcs_backend_init();
  if (rc < 0)
    return luaL_error(L, "ZCSEND_BACKEND=%s: %s (use 'auto' or 'emulated')",
                      getenv("ZCSEND_BACKEND"), zcs_strerror(rc));
  new_metatable(L, TRANSFER_MT, transfer_methods, t_gc);
  luaL_getmetatable(L, TRANSFER_MT);
  lua_pushcfunction(L, t_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  new_metatable(L, LOOP_MT, loop_methods, lp_gc);
  new_metatable(L, CHUNKS_MT, chunks_methods, c_close);
  static const luaL_Reg box_methods[] = {{"fd", box_fd}, {"close", box_close}, {NULL, NULL}};
  new_metatable(L, FDBOX_MT, box_methods, box_close);
  lua_newtable(L); /* weak-valued: a loop's entry must not keep it alive */
  lua_createtable(L, 0, 1);
  lua_pushstring(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, LOOPS_KEY);
  luaL_newlib(L, functions);
  /* the loop's method table, for the Lua layer to add wrap() and sendfile() */
  luaL_getmetatable(L, LOOP_MT);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "loop_methods");
  lua_pop(L, 1);
#define CODE(name, v) lua_pushinteger(L, v); lua_setfield(L, -2, name);
  CODE("EPIPE", -EPIPE) CODE("EIO", -EIO) CODE("EBADF", -EBADF) CODE("ETIMEDOUT", -ETIMEDOUT)
  CODE("ECONNRESET", -ECONNRESET) CODE("EAGAIN", -EAGAIN)
#undef CODE
  lua_pushinteger(L, ZCS_ETRUNCATED);
  lua_setfield(L, -2, "ETRUNCATED");
  lua_pushstring(L, ZCS_VERSION); /* zcsend._VERSION: written once, in csrc/zcsend.h */
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, -ECANCELED);
  lua_setfield(L, -2, "ECANCELED");
  lua_pushinteger(L, ZCS_SMALL_COPY); /* a rest this small goes as one copy (t:cached) */
  lua_setfield(L, -2, "SMALL_COPY");
  return 1;
}
