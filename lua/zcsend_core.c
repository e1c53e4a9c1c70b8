/* zcsend.core: the Lua 5.4 face of the C core. It translates — arguments,
 * userdata lifetime, errors — and holds no transfer logic; lua/zcsend.lua
 * decides how to wait (its own loop, cqueues, or poll(2)).
 *
 * Runtime failures return nil, "ENAME: message", "ENAME" (luv's convention);
 * bad arguments raise. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h> /* LUA_FILEHANDLE */

#include "zcsend.h"

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

/* nil, "ENAME: message", "ENAME" */
static int push_error(lua_State *L, int code) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", zcs_err_name(code), zcs_strerror(code));
  lua_pushstring(L, zcs_err_name(code));
  return 3;
}

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

/* ---- loop (forward) ----------------------------------------------------------
 * A loop keeps what it waits for — callbacks, driven transfers — in its own
 * user value (a table), never in the registry: a loop nobody can reach any more
 * is garbage with everything it holds, and its __gc stops what is pending. */
struct ltransfer;
typedef struct waiter {
  ev_io io;
  struct lloop *lp;
  int cb_ref;                   /* in the loop's table */
  struct waiter *prev, *next;
} waiter;

typedef struct lloop {
  struct ev_loop *loop;
  lua_State *L;                 /* the state running loop:run(), for callbacks */
  int err_ref;                  /* a callback's error (registry), re-raised by run() */
  int active;                   /* pending waits and driven transfers */
  waiter *waiters;
  struct ltransfer *driven;
} lloop;

/* ---- transfer ------------------------------------------------------------------ */
typedef struct ltransfer {
  zcs_transfer_t t;
  int ready;           /* t was initialised and must be released */
  int last;            /* last step result */
  int restore_flags;   /* the socket's flags before we set O_NONBLOCK, or -1 */
  /* driven by a loop: */
  zcs_ev_transfer_t w;
  lloop *loop;                  /* while driven; NULL again once the loop is gone */
  int driven;                   /* was handed to a loop (once only) */
  int self_ref, cb_ref;         /* in the loop's table */
  struct ltransfer *prev, *next; /* the loop's driven list */
} ltransfer;

static ltransfer *check_transfer(lua_State *L, int i) {
  return (ltransfer *)luaL_checkudata(L, i, TRANSFER_MT);
}

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
}

static void transfer_release(ltransfer *x) {
  if (x->loop) { /* collected while a loop drives it */
    zcs_ev_stop(&x->w);
    unlink_driven(x);
  }
  if (x->ready) {
    zcs_transfer_release(&x->t);
    x->ready = 0;
    if (x->restore_flags >= 0)
      fcntl(x->t.sock_fd, F_SETFL, x->restore_flags);
    x->restore_flags = -1;
  }
}

/* core.transfer(sock_fd, file_fd [, offset [, count]]) -> transfer | nil, msg, name.
 * A blocking socket is made non-blocking for the transfer and put back after. */
static int l_transfer(lua_State *L) {
  int sock = (int)luaL_checkinteger(L, 1);
  int file = (int)luaL_checkinteger(L, 2);
  int64_t offset = opt_int64(L, 3, 0, "offset");
  int64_t count = opt_int64(L, 4, ZCS_COUNT_TO_EOF, "count");
  luaL_argcheck(L, sock >= 0, 1, "closed socket");
  luaL_argcheck(L, file >= 0, 2, "closed file");
  luaL_argcheck(L, offset >= 0, 3, "offset must be non-negative");
  luaL_argcheck(L, count > 0 || count == ZCS_COUNT_TO_EOF || lua_isnoneornil(L, 4), 4,
                "count must be positive");
  ltransfer *x = (ltransfer *)lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  x->restore_flags = -1;
  x->self_ref = x->cb_ref = LUA_NOREF;
  luaL_setmetatable(L, TRANSFER_MT);
  int fl = fcntl(sock, F_GETFL);
  if (fl < 0)
    return push_error(L, -errno);
  if (!(fl & O_NONBLOCK)) {
    if (fcntl(sock, F_SETFL, fl | O_NONBLOCK) < 0)
      return push_error(L, -errno);
    x->restore_flags = fl;
  }
  int rc = zcs_transfer_init(&x->t, sock, file, offset, count, 0);
  if (rc < 0) {
    zcs_transfer_release(&x->t);
    if (x->restore_flags >= 0)
      fcntl(sock, F_SETFL, x->restore_flags);
    x->restore_flags = -1;
    return push_error(L, rc);
  }
  x->ready = 1;
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

static int push_result(lua_State *L, int rc) {
  if (rc < 0)
    return push_error(L, rc);
  lua_pushstring(L, result_name(rc));
  return 1;
}

/* t:step() -> "done" | "write" | "read" | "source" | nil, msg, name */
static int t_step(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  if (!x->ready)
    return luaL_error(L, "transfer is closed");
  if (x->loop)
    return luaL_error(L, "transfer is being driven by a loop");
  x->last = zcs_transfer_step(&x->t);
  return push_result(L, x->last);
}

/* cqueues' pollable protocol: pollfd, events, timeout */
static int t_pollfd(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  int ev = 0;
  int fd = x->ready ? zcs_transfer_wait_fd(&x->t, x->last, &ev) : -1;
  lua_pushinteger(L, fd);
  return 1;
}

static int t_events(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  int ev = 0;
  if (x->ready)
    zcs_transfer_wait_fd(&x->t, x->last, &ev);
  lua_pushstring(L, ev == EV_READ ? "r" : ev == EV_WRITE ? "w" : "");
  return 1;
}

static int t_timeout(lua_State *L) {
  check_transfer(L, 1);
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
  lua_pushboolean(L, x->t.result != 1);
  return 1;
}

/* t:result() -> true | nil, msg, name | false (still running) */
static int t_result(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  if (x->t.result == 1) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (x->t.result == ZCS_DONE) {
    lua_pushboolean(L, 1);
    return 1;
  }
  return push_error(L, x->t.result);
}

static int t_backend(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  lua_pushstring(L, zcs_backend_kind_name(x->t.backend));
  return 1;
}

static int t_cancel(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  zcs_transfer_cancel(&x->t);
  lloop *lp = x->loop;
  if (lp) {
    lua_State *saved = lp->L;
    lp->L = L;
    zcs_ev_kick(&x->w); /* ends it now: its callback runs with ECANCELED (unlinks x) */
    lp->L = saved;
  }
  return 0;
}

static int t_close(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  transfer_release(x);
  return 0;
}

static int t_tostring(lua_State *L) {
  ltransfer *x = check_transfer(L, 1);
  char buf[96];
  snprintf(buf, sizeof buf, "zcsend.transfer (%d -> %d, %llu sent)", x->t.file_fd, x->t.sock_fd,
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
  /* callbacks find their loop's table through a weak map: lp -> loop */
  lua_getfield(L, LUA_REGISTRYINDEX, LOOPS_KEY);
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, lp);
  lua_pop(L, 1);
  return 1;
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
  (void)result;
  ltransfer *x = (ltransfer *)w->data;
  lloop *lp = x->loop;
  lua_State *L = lp->L;
  unlink_driven(x);
  take(L, lp, x->cb_ref);
  take(L, lp, x->self_ref); /* the transfer itself, the callback's argument */
  x->cb_ref = x->self_ref = LUA_NOREF;
  protected_call(lp, L, 1);
}

/* loop:drive(transfer, cb): steps the transfer from the loop (zcsend's libev
   driver) and calls cb(transfer) once it has ended. */
static int lp_drive(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  ltransfer *x = check_transfer(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!x->ready)
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
  x->loop = lp;
  x->prev = NULL;
  x->next = lp->driven;
  if (lp->driven)
    lp->driven->prev = x;
  lp->driven = x;
  lp->active++;
  lua_State *saved = lp->L;
  lp->L = L; /* a first step may finish at once and call back from here */
  zcs_ev_start(&x->w, lp->loop, &x->t, on_driven_done, x);
  lp->L = saved ? saved : L;
  return 0;
}

/* one-shot fd watcher: loop:wait(fd, "r"|"w", cb) calls cb() once the fd is ready */
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
}

static void on_wait_ready(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  (void)revents;
  waiter *wt = (waiter *)io;
  lloop *lp = wt->lp;
  lua_State *L = lp->L;
  unlink_waiter(wt);
  take(L, lp, wt->cb_ref);
  free(wt);
  protected_call(lp, L, 0);
}

static int lp_wait(lua_State *L) {
  lloop *lp = check_loop(L, 1);
  int fd = (int)luaL_checkinteger(L, 2);
  const char *ev = luaL_checkstring(L, 3);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  luaL_argcheck(L, fd >= 0, 2, "closed fd");
  int events = (strchr(ev, 'r') ? EV_READ : 0) | (strchr(ev, 'w') ? EV_WRITE : 0);
  luaL_argcheck(L, events, 3, "\"r\", \"w\" or \"rw\" expected");
  waiter *wt = (waiter *)malloc(sizeof *wt);
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
  ev_io_start(lp->loop, &wt->io);
  lp->active++;
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
  int fd = (int)luaL_checkinteger(L, 1);
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
  lua_pushboolean(L, r > 0);
  return 1;
}

/* core.read(fd, offset, n) -> string ("" at the end) | nil, msg, name.
   offset < 0 reads where a non-seekable fd stands. For the TLS path. */
static int l_read(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  int64_t offset = (int64_t)luaL_checkinteger(L, 2);
  lua_Integer n = luaL_checkinteger(L, 3);
  luaL_argcheck(L, n > 0 && n <= (64 << 20), 3, "1 to 64 MiB");
  char *p = (char *)lua_newuserdata(L, (size_t)n); /* collected, even if a push fails */
  ssize_t got;
  do
    got = offset >= 0 ? pread(fd, p, (size_t)n, (off_t)offset) : read(fd, p, (size_t)n);
  while (got < 0 && errno == EINTR);
  if (got < 0)
    return push_error(L, -errno);
  lua_pushlstring(L, p, (size_t)got);
  return 1;
}

/* core.fileinfo(fd) -> kind ("file", "directory", "pipe", "other"), size | nil, msg, name */
static int l_fileinfo(lua_State *L) {
  int fd = (int)luaL_checkinteger(L, 1);
  struct stat st;
  if (fstat(fd, &st) < 0)
    return push_error(L, -errno);
  lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory"
                    : S_ISFIFO(st.st_mode) ? "pipe" : "other");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  return 2;
}

/* core.fileno(io_handle) -> fd; raises on a closed handle (as the io library does) */
static int l_fileno(lua_State *L) {
  luaL_Stream *s = (luaL_Stream *)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  luaL_argcheck(L, STREAM_OPEN(s), 1, "attempt to use a closed file");
  lua_pushinteger(L, fileno(s->f));
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

/* core.count_host(bytes, ok_or_errname): a TLS transfer done through the
   object's own send() is counted like the core's own */
static int l_host_begin(lua_State *L) {
  (void)L;
  zcs_stats_host_begin();
  return 0;
}

static int l_host_end(lua_State *L) {
  lua_Integer result = luaL_checkinteger(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  zcs_stats_host_end((int)result, (uint64_t)n);
  return 0;
}

static int l_backend(lua_State *L) {
  lua_pushstring(L, zcs_backend_name());
  return 1;
}

static const luaL_Reg transfer_methods[] = {
    {"step", t_step},       {"pollfd", t_pollfd}, {"events", t_events}, {"timeout", t_timeout},
    {"sent", t_sent},       {"done", t_done},     {"result", t_result}, {"backend", t_backend},
    {"cancel", t_cancel},   {"close", t_close},   {NULL, NULL}};

static const luaL_Reg loop_methods[] = {{"drive", lp_drive}, {"wait", lp_wait}, {"run", lp_run},
                                        {"stop", lp_stop},   {"active", lp_active}, {NULL, NULL}};

static const luaL_Reg functions[] = {
    {"transfer", l_transfer}, {"loop", l_loop},         {"poll", l_poll},
    {"read", l_read},         {"fileinfo", l_fileinfo}, {"fileno", l_fileno},
    {"stats", l_stats},       {"backend", l_backend},   {"host_begin", l_host_begin},
    {"host_end", l_host_end}, {NULL, NULL}};

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

int luaopen_zcsend_core(lua_State *L) {
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
  CODE("EPIPE", -EPIPE) CODE("EIO", -EIO)
#undef CODE
  lua_pushinteger(L, ZCS_ETRUNCATED);
  lua_setfield(L, -2, "ETRUNCATED");
  lua_pushinteger(L, -ECANCELED);
  lua_setfield(L, -2, "ECANCELED");
  return 1;
}
