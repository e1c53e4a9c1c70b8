/* zcsend._zcsend: the CPython face of the C core. It translates — argument
 * checks, object lifetime, errors — and holds no transfer logic. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "zcsend_engine.h" /* jobs and channels, and zcsend.h */

#define FAST_TYPES 8
typedef struct {
  PyTypeObject *channel_type;
  PyTypeObject *transfer_type;
  PyTypeObject *chunks_type;
  /* sendfile()'s whole call for the common case (see mod_fast_send): what the
     Python layer told it (fast_setup, fast_type) */
  PyObject *held;              /* _transports._held: ids of transports held now */
  PyObject *reader_type;       /* io.BufferedReader: open(path, "rb") */
  PyObject *raw_type;          /* io.FileIO, its raw: no Python code in closed, fileno() */
  PyObject *raw_fileno;        /* FileIO.fileno, called unbound: an instance's attribute can't shadow it */
  PyObject *writer_type;       /* asyncio.StreamWriter */
  PyObject *running_loop;      /* asyncio._get_running_loop */
  PyObject *fast_types[FAST_TYPES]; /* transport types whose hold _transports decided */
  int fast_modes[FAST_TYPES];  /* FAST_SELECTOR or FAST_UVLOOP */
  int n_fast;
} module_state;

static PyObject *s_is_closing, *s_get_write_buffer_size, *s_empty_waiter, *s_sock, *s_fileno,
    *s_closed, *s_seek, *s_transport, *s_get_extra_info, *s_socket, *s_raw, *s_src_fd, *s_sock_fd;

/* obj.name = fd (an int); 0, or -1 with an error set (fd not stored) */
static int store_fd(PyObject *obj, PyObject *name, int fd) {
  PyObject *v = PyLong_FromLong(fd);
  int rc = v ? PyObject_SetAttr(obj, name, v) : -1;
  Py_XDECREF(v);
  return rc;
}

/* ---- errors ----------------------------------------------------------------- */
/* OSError(code, message); for zcsend's own codes, the code is positive too
   (4001…) and the Python layer turns it into the right exception. */
static PyObject *raise_code(int rc) {
  PyObject *args = Py_BuildValue("(is)", -rc, zcs_strerror(rc));
  if (args) {
    PyErr_SetObject(PyExc_OSError, args);
    Py_DECREF(args);
  }
  return NULL;
}

/* ---- Channel ------------------------------------------------------------------ */
typedef struct {
  PyObject_HEAD
  zcs_channel_t *ch;
} ChannelObject;

static PyObject *channel_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {NULL};
  if (!PyArg_ParseTupleAndKeywords(args, kw, ":Channel", kwlist))
    return NULL;
  ChannelObject *self = (ChannelObject *)type->tp_alloc(type, 0);
  if (!self)
    return NULL;
  self->ch = zcs_channel_new();
  if (!self->ch) {
    Py_DECREF(self);
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  return (PyObject *)self;
}

static void channel_dealloc(ChannelObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  zcs_channel_release(self->ch);
  tp->tp_free(self);
  Py_DECREF(tp);
}

static PyObject *channel_closed(void) {
  PyErr_SetString(PyExc_ValueError, "channel is closed");
  return NULL;
}

static PyObject *channel_fileno(ChannelObject *self, PyObject *unused) {
  (void)unused;
  if (!self->ch)
    return channel_closed();
  return PyLong_FromLong(zcs_channel_fd(self->ch));
}

static PyObject *channel_drain(ChannelObject *self, PyObject *unused) {
  (void)unused;
  if (!self->ch)
    return channel_closed();
  PyObject *out = PyList_New(0);
  uint64_t ids[256];
  size_t n;
  while (out && (n = zcs_channel_drain(self->ch, ids, 256)) > 0) {
    for (size_t i = 0; i < n; i++) {
      PyObject *v = PyLong_FromUnsignedLongLong(ids[i]);
      if (!v || PyList_Append(out, v) < 0) {
        Py_XDECREF(v);
        Py_CLEAR(out);
        break;
      }
      Py_DECREF(v);
    }
    if (n < 256)
      break;
  }
  return out;
}

/* Stops using the channel; the fd closes once no job in flight holds it. */
static PyObject *channel_close(ChannelObject *self, PyObject *unused) {
  (void)unused;
  zcs_channel_release(self->ch);
  self->ch = NULL;
  Py_RETURN_NONE;
}

static PyObject *channel_after_fork(ChannelObject *self, PyObject *unused) {
  (void)unused;
  int rc = self->ch ? zcs_channel_after_fork(self->ch) : 0;
  if (rc < 0)
    return raise_code(rc);
  Py_RETURN_NONE;
}

static PyMethodDef channel_methods[] = {
    {"fileno", (PyCFunction)channel_fileno, METH_NOARGS, "fd that is readable while finished transfers wait"},
    {"drain", (PyCFunction)channel_drain, METH_NOARGS, "ids of finished transfers; clears readiness"},
    {"close", (PyCFunction)channel_close, METH_NOARGS, "release the channel"},
    {"after_fork", (PyCFunction)channel_after_fork, METH_NOARGS,
     "in a forked child: the fd number now names the child's own quiet eventfd"},
    {NULL}};

static PyType_Slot channel_slots[] = {
    {Py_tp_new, channel_new},
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_methods, channel_methods},
    {Py_tp_doc, "Where the engine delivers finished transfers: an fd and a queue."},
    {0, NULL}};

static PyType_Spec channel_spec = {"zcsend._zcsend.Channel", sizeof(ChannelObject), 0,
                                   Py_TPFLAGS_DEFAULT, channel_slots};

/* ---- Transfer ----------------------------------------------------------------- */
static uint64_t transfers_made; /* Transfer objects made (the GIL guards it): a debug count */
static uint64_t fast_sends;     /* fast_send calls that ended all sent (the GIL guards it) */
typedef struct {
  PyObject_HEAD
  zcs_job_t *job;
  int submitted;
  /* dups of both fds step_now took while the GIL proved the numbers the
     caller's, for take_fds_into() to hand over (-1: none); closed by dealloc if
     never taken, in the process that took them */
  int own_sock, own_file;
  long own_pid;
} TransferObject;

static PyObject *transfer_alloc(PyTypeObject *type) {
  TransferObject *self = (TransferObject *)type->tp_alloc(type, 0);
  if (!self)
    return NULL;
  transfers_made++;
  self->own_sock = self->own_file = -1;
  self->job = zcs_job_new();
  if (!self->job) {
    Py_DECREF(self);
    return PyErr_NoMemory();
  }
  return (PyObject *)self;
}

static PyObject *transfer_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"sock_fd", "file_fd", "offset", "count", "fallback", NULL};
  int sock_fd, file_fd, fallback = 1;
  long long offset = 0, count = -1;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "ii|LLp:Transfer", kwlist, &sock_fd, &file_fd,
                                   &offset, &count, &fallback))
    return NULL;
  TransferObject *self = (TransferObject *)transfer_alloc(type);
  if (!self)
    return NULL;
  int rc = zcs_transfer_init(zcs_job_transfer(self->job), sock_fd, file_fd, offset, count,
                             fallback ? 0 : ZCS_F_NO_FALLBACK);
  if (rc < 0) {
    Py_DECREF(self);
    return raise_code(rc);
  }
  return (PyObject *)self;
}

static PyObject *transfer_from_bytes(PyTypeObject *type, PyObject *args) {
  int sock_fd, counted = 1;
  Py_buffer data;
  if (!PyArg_ParseTuple(args, "iy*|p:from_bytes", &sock_fd, &data, &counted))
    return NULL;
  TransferObject *self = (TransferObject *)transfer_alloc(type);
  if (self) {
    int rc = zcs_transfer_init_memory(zcs_job_transfer(self->job), sock_fd, data.buf,
                                      (size_t)data.len, counted ? 0 : ZCS_F_UNCOUNTED);
    if (rc < 0) {
      Py_CLEAR(self);
      raise_code(rc);
    }
  }
  PyBuffer_Release(&data);
  return (PyObject *)self;
}

/* The transfer while it is still the caller's; NULL (RuntimeError) once it was
   submitted: the engine's thread then steps it, and its fields (offset,
   remaining, head_pos, backend) are the engine's to write until it is freed;
   only sent/sent_zero_copy/result/id (atomic, or fixed) read safely then */
static zcs_transfer_t *callers_transfer(TransferObject *self) {
  if (self->submitted) {
    PyErr_SetString(PyExc_RuntimeError, "transfer belongs to the engine now");
    return NULL;
  }
  return zcs_job_transfer(self->job);
}

static PyObject *transfer_set_head(TransferObject *self, PyObject *arg) {
  zcs_transfer_t *t = callers_transfer(self);
  if (!t)
    return NULL;
  Py_buffer head;
  if (PyObject_GetBuffer(arg, &head, PyBUF_SIMPLE) < 0)
    return NULL;
  int rc = zcs_transfer_set_head(t, head.buf, (size_t)head.len);
  PyBuffer_Release(&head);
  if (rc < 0)
    return raise_code(rc);
  Py_RETURN_NONE;
}

/* Transfer.read(fd, offset, nbytes): a read job — the engine reads, the host writes */
static PyObject *transfer_read(PyTypeObject *type, PyObject *args) {
  int fd;
  long long offset;
  Py_ssize_t nbytes;
  if (!PyArg_ParseTuple(args, "iLn:read", &fd, &offset, &nbytes))
    return NULL;
  if (nbytes <= 0) {
    PyErr_SetString(PyExc_ValueError, "nbytes must be positive");
    return NULL;
  }
  TransferObject *self = (TransferObject *)transfer_alloc(type);
  if (!self)
    return NULL;
  int rc = zcs_job_init_read(self->job, fd, offset, (size_t)nbytes);
  if (rc < 0) {
    Py_DECREF(self);
    return raise_code(rc);
  }
  return (PyObject *)self;
}

/* A finished read job exposes the bytes it read (read-only, no copy); the
   buffer lives as long as the Transfer does. */
static int transfer_getbuffer(TransferObject *self, Py_buffer *view, int flags) {
  const void *data = zcs_job_data(self->job);
  if (!data || zcs_job_result(self->job) != 0) {
    PyErr_SetString(PyExc_BufferError, "only a finished read job has bytes to give");
    view->obj = NULL;
    return -1;
  }
  return PyBuffer_FillInfo(view, (PyObject *)self, (void *)data,
                           (Py_ssize_t)zcs_job_sent(self->job), 1, flags);
}

static void transfer_dealloc(TransferObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  if (self->job) {
    if (self->submitted) {
      Py_BEGIN_ALLOW_THREADS
      zcs_job_cancel(self->job); /* nobody is left to hear of it: stop it */
      Py_END_ALLOW_THREADS
    }
    zcs_job_release(self->job);
  }
  /* never taken: never submitted either (the Python layer takes them first), so
     no engine step can still use them */
  if (!self->submitted && self->own_pid == (long)getpid()) {
    if (self->own_sock >= 0)
      close(self->own_sock);
    if (self->own_file >= 0)
      close(self->own_file);
  }
  tp->tp_free(self);
  Py_DECREF(tp);
}

static PyObject *transfer_step(TransferObject *self, PyObject *args) {
  Py_ssize_t budget = 0;
  if (!PyArg_ParseTuple(args, "|n:step", &budget))
    return NULL;
  zcs_transfer_t *t = callers_transfer(self);
  if (!t)
    return NULL;
  size_t saved = t->budget;
  if (budget > 0)
    t->budget = (size_t)budget;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = zcs_transfer_step(t);
  Py_END_ALLOW_THREADS
  t->budget = saved;
  return PyLong_FromLong(rc);
}

static PyObject *transfer_cached(TransferObject *self, PyObject *args) {
  Py_ssize_t len = 0;
  if (!PyArg_ParseTuple(args, "n:cached", &len))
    return NULL;
  if (self->submitted)
    Py_RETURN_TRUE; /* the engine steps it: nothing for the caller to decide */
  /* about to be stepped: a small rest may be read in now (zcs_transfer_ready) */
  return PyBool_FromLong(zcs_transfer_ready(zcs_job_transfer(self->job), len > 0 ? (size_t)len : 0));
}

static PyObject *transfer_submit(TransferObject *self, PyObject *arg) {
  module_state *st = PyType_GetModuleState(Py_TYPE(self));
  if (!st || !PyObject_TypeCheck(arg, st->channel_type)) {
    PyErr_SetString(PyExc_TypeError, "submit() takes a Channel");
    return NULL;
  }
  ChannelObject *ch = (ChannelObject *)arg;
  if (!ch->ch)
    return channel_closed();
  if (self->submitted) {
    PyErr_SetString(PyExc_RuntimeError, "transfer was submitted already");
    return NULL;
  }
  int rc = zcs_job_submit(self->job, ch->ch);
  if (rc < 0)
    return raise_code(rc);
  self->submitted = 1;
  Py_RETURN_NONE;
}

static PyObject *transfer_cancel(TransferObject *self, PyObject *args) {
  int code = -ECANCELED;
  if (!PyArg_ParseTuple(args, "|i:cancel", &code))
    return NULL;
  if (code >= 0) {
    PyErr_SetString(PyExc_ValueError, "cancel: code must be a negative error");
    return NULL;
  }
  Py_BEGIN_ALLOW_THREADS
  zcs_job_abort(self->job, code);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

/* take_fds_into(hold) -> whether it held any: hold.src_fd and hold.sock_fd
   become the dups this transfer was made with (by send_now or fast_send, when
   it had to go on), now the hold's to close. Stored here, not returned: no
   bytecode runs between, so an exception a signal handler raises can't come
   between their hand-over and their store and lose them. Each stays the
   transfer's (its dealloc closes it) until stored. */
static PyObject *transfer_take_fds_into(TransferObject *self, PyObject *hold) {
  if (self->own_sock < 0)
    Py_RETURN_FALSE;
  if (store_fd(hold, s_src_fd, self->own_file) < 0)
    return NULL;
  self->own_file = -1;
  if (store_fd(hold, s_sock_fd, self->own_sock) < 0)
    return NULL;
  self->own_sock = -1;
  Py_RETURN_TRUE;
}

/* use_fds(sock_fd, file_fd=-1): the same transfer, from here on over these fds
   (dups the caller owns, taken while the originals were provably its own). */
static PyObject *transfer_use_fds(TransferObject *self, PyObject *args) {
  int sock_fd, file_fd = -1;
  if (!PyArg_ParseTuple(args, "i|i:use_fds", &sock_fd, &file_fd))
    return NULL;
  zcs_transfer_t *t = zcs_job_transfer(self->job);
  /* callers_transfer()'s refusal, and a read job's too (its fd is its own) */
  if (self->submitted || zcs_job_data(self->job)) {
    PyErr_SetString(PyExc_RuntimeError, "transfer belongs to the engine now");
    return NULL;
  }
  if (sock_fd < 0 || (file_fd >= 0) != (t->file_fd >= 0)) {
    PyErr_SetString(PyExc_ValueError, "use_fds: a socket, and a file exactly where the transfer has one");
    return NULL;
  }
  t->sock_fd = sock_fd;
  if (file_fd >= 0)
    t->file_fd = file_fd;
  Py_RETURN_NONE;
}

static PyObject *transfer_get_owns_fds(TransferObject *self, void *c) {
  (void)c;
  return PyBool_FromLong(self->own_sock >= 0);
}
static PyObject *transfer_get_sent(TransferObject *self, void *c) {
  (void)c;
  return PyLong_FromUnsignedLongLong(zcs_job_sent(self->job));
}
static PyObject *transfer_get_sent_zc(TransferObject *self, void *c) {
  (void)c;
  return PyLong_FromUnsignedLongLong(zcs_job_sent_zero_copy(self->job));
}
static PyObject *transfer_get_result(TransferObject *self, void *c) {
  (void)c;
  return PyLong_FromLong(zcs_job_result(self->job));
}
static PyObject *transfer_get_id(TransferObject *self, void *c) {
  (void)c;
  return PyLong_FromUnsignedLongLong(zcs_job_id(self->job));
}
static PyObject *transfer_get_backend(TransferObject *self, void *c) {
  (void)c;
  zcs_transfer_t *t = callers_transfer(self);
  return t ? PyUnicode_FromString(zcs_backend_kind_name(t->backend)) : NULL;
}
static PyObject *transfer_get_head_sent(TransferObject *self, void *c) {
  (void)c;
  zcs_transfer_t *t = callers_transfer(self);
  return t ? PyLong_FromSize_t(zcs_transfer_head_sent(t)) : NULL;
}
static PyObject *transfer_get_seekable(TransferObject *self, void *c) {
  (void)c;
  zcs_transfer_t *t = callers_transfer(self);
  return t ? PyBool_FromLong(t->offset >= 0) : NULL;
}
static PyObject *transfer_get_remaining(TransferObject *self, void *c) {
  (void)c;
  zcs_transfer_t *t = callers_transfer(self);
  return t ? PyLong_FromLongLong(t->remaining) : NULL;
}

static PyGetSetDef transfer_getset[] = {
    {"sent", (getter)transfer_get_sent, NULL, "bytes delivered to the socket", NULL},
    {"sent_zero_copy", (getter)transfer_get_sent_zc, NULL, "part of sent that was not copied", NULL},
    {"result", (getter)transfer_get_result, NULL, "RUNNING (1) while running, DONE (0) done, else -error", NULL},
    {"owns_fds", (getter)transfer_get_owns_fds, NULL, "it holds dups for take_fds_into()", NULL},
    {"id", (getter)transfer_get_id, NULL, "id that Channel.drain() reports", NULL},
    {"backend", (getter)transfer_get_backend, NULL, "sendfile, splice, emulated or memory; until submit", NULL},
    {"remaining", (getter)transfer_get_remaining, NULL, "bytes left, -1 if unknown; until submit", NULL},
    {"seekable", (getter)transfer_get_seekable, NULL, "the source has offsets; until submit", NULL},
    {"head_sent", (getter)transfer_get_head_sent, NULL, "head bytes sent (not in sent); until submit", NULL},
    {NULL}};

static PyMethodDef transfer_methods[] = {
    {"from_bytes", (PyCFunction)transfer_from_bytes, METH_VARARGS | METH_CLASS,
     "from_bytes(sock_fd, data, counted=True): a transfer of a copy of data (not counted as a "
     "transfer in the stats where counted is false: one of a call's chunks)"},
    {"read", (PyCFunction)transfer_read, METH_VARARGS | METH_CLASS,
     "read(fd, offset, nbytes): a job that reads a regular file in the engine; "
     "when done, the Transfer is a buffer of the bytes read (sent of them)"},
    {"set_head", (PyCFunction)transfer_set_head, METH_O,
     "set_head(data): bytes sent before the source's, in the same packets; before the first step"},
    {"step", (PyCFunction)transfer_step, METH_VARARGS,
     "step([budget]) -> DONE, WANT_* or -error; non-blocking, in this thread"},
    {"submit", (PyCFunction)transfer_submit, METH_O, "hand the transfer to the engine thread"},
    {"cached", (PyCFunction)transfer_cached, METH_VARARGS,
     "cached(nbytes) -> False when some of the next nbytes of a file are not in the page "
     "cache (a step would wait for the disk: let the engine take it); a small rest is read "
     "in now, for the step"},
    {"cancel", (PyCFunction)transfer_cancel, METH_VARARGS,
     "cancel([code]): stop; once this returns no further byte is written and sent is final; "
     "the transfer ends with code (default -ECANCELED; another error counts as failed)"},
    {"take_fds_into", (PyCFunction)transfer_take_fds_into, METH_O,
     "take_fds_into(hold) -> whether it had dups: hold.src_fd, hold.sock_fd are them now"},
    {"use_fds", (PyCFunction)transfer_use_fds, METH_VARARGS,
     "use_fds(sock_fd, file_fd=-1): go on over these fds (before submit)"},
    {NULL}};

static PyType_Slot transfer_slots[] = {
    {Py_tp_new, transfer_new},
    {Py_tp_dealloc, transfer_dealloc},
    {Py_tp_methods, transfer_methods},
    {Py_tp_getset, transfer_getset},
    {Py_bf_getbuffer, transfer_getbuffer},
    {Py_tp_doc, "Transfer(sock_fd, file_fd, offset=0, count=-1, fallback=True)"},
    {0, NULL}};

static PyType_Spec transfer_spec = {"zcsend._zcsend.Transfer", sizeof(TransferObject), 0,
                                    Py_TPFLAGS_DEFAULT, transfer_slots};

/* ---- Chunks -------------------------------------------------------------------- */
/* The core's chunk source (zcs_chunks_t) for the write path: it sizes the range,
   checks what was read against it (ETRUNCATED), and counts the transfer in the
   stats. The reads happen where the Python layer puts them (the page cache here,
   read jobs, an executor); only read_cached() reads, and never waits. */
typedef struct {
  PyObject_HEAD
  zcs_chunks_t c;
} ChunksObject;

static PyObject *chunks_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"fd", "offset", "count", NULL};
  int fd;
  long long offset = 0, count = -1;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "i|LL:Chunks", kwlist, &fd, &offset, &count))
    return NULL;
  ChunksObject *self = (ChunksObject *)type->tp_alloc(type, 0);
  if (!self)
    return NULL;
  int rc = zcs_chunks_init(&self->c, fd, offset, count, 0);
  if (rc < 0) {
    Py_DECREF(self);
    return raise_code(rc);
  }
  return (PyObject *)self;
}

static void chunks_dealloc(ChunksObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  zcs_chunks_release(&self->c); /* never ended: cancelled */
  tp->tp_free(self);
  Py_DECREF(tp);
}

static PyObject *chunks_want(ChunksObject *self, PyObject *arg) {
  Py_ssize_t cap = PyLong_AsSsize_t(arg);
  if (cap == -1 && PyErr_Occurred())
    return NULL;
  return PyLong_FromSize_t(zcs_chunks_want(&self->c, cap < 0 ? 0 : (size_t)cap));
}

/* read_cached(n): the next min(n, remaining) bytes if all are in the page cache
   (consumed), else None (nothing consumed: read them elsewhere, then take()) */
static PyObject *chunks_read_cached(ChunksObject *self, PyObject *arg) {
  Py_ssize_t n = PyLong_AsSsize_t(arg);
  if (n == -1 && PyErr_Occurred())
    return NULL;
  size_t len = zcs_chunks_want(&self->c, n < 0 ? 0 : (size_t)n);
  if (len == 0)
    Py_RETURN_NONE;
  PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len); /* every byte is read or dropped */
  if (!b)
    return NULL;
  ssize_t got = zcs_chunks_read(&self->c, PyBytes_AS_STRING(b), len, ZCS_READ_NOWAIT);
  if (got == (ssize_t)len)
    return b;
  Py_DECREF(b);
  if (got < 0 && got != -EAGAIN)
    return raise_code((int)got);
  Py_RETURN_NONE;
}

static PyObject *chunks_take(ChunksObject *self, PyObject *args) {
  Py_ssize_t got, asked;
  if (!PyArg_ParseTuple(args, "nn:take", &got, &asked))
    return NULL;
  int rc = got < 0 || asked < 0 ? -EINVAL : zcs_chunks_take(&self->c, (size_t)got, (size_t)asked);
  if (rc == -EINVAL) {
    PyErr_Format(PyExc_ValueError, "take(%zd, %zd): not the range's next bytes", got, asked);
    return NULL;
  }
  return PyLong_FromLong(rc);
}

static PyObject *chunks_wrote(ChunksObject *self, PyObject *arg) {
  Py_ssize_t n = PyLong_AsSsize_t(arg);
  if (n == -1 && PyErr_Occurred())
    return NULL;
  if (n < 0) {
    PyErr_SetString(PyExc_ValueError, "wrote: n must be non-negative");
    return NULL;
  }
  zcs_chunks_wrote(&self->c, (size_t)n);
  Py_RETURN_NONE;
}

static PyObject *chunks_end(ChunksObject *self, PyObject *arg) {
  int code = (int)PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred())
    return NULL;
  zcs_chunks_end(&self->c, code);
  Py_RETURN_NONE;
}

static PyObject *chunks_close(ChunksObject *self, PyObject *unused) {
  (void)unused;
  zcs_chunks_release(&self->c);
  Py_RETURN_NONE;
}

static PyObject *chunks_get_remaining(ChunksObject *self, void *c) {
  (void)c;
  return PyLong_FromLongLong(self->c.result == ZCS_RUNNING ? self->c.remaining : 0);
}
static PyObject *chunks_get_offset(ChunksObject *self, void *c) {
  (void)c;
  return PyLong_FromLongLong(self->c.offset);
}
static PyObject *chunks_get_sized(ChunksObject *self, void *c) {
  (void)c;
  return PyBool_FromLong(self->c.sized);
}
static PyObject *chunks_get_sent(ChunksObject *self, void *c) {
  (void)c;
  return PyLong_FromUnsignedLongLong(self->c.sent);
}
static PyObject *chunks_get_result(ChunksObject *self, void *c) {
  (void)c;
  return PyLong_FromLong(self->c.result);
}

static PyGetSetDef chunks_getset[] = {
    {"remaining", (getter)chunks_get_remaining, NULL, "bytes still to read, -1 if unknown, 0 once done", NULL},
    {"offset", (getter)chunks_get_offset, NULL, "offset of the next byte, -1: read where the source stands", NULL},
    {"sized", (getter)chunks_get_sized, NULL, "the count came from a regular file's size", NULL},
    {"sent", (getter)chunks_get_sent, NULL, "bytes the writer took (wrote())", NULL},
    {"result", (getter)chunks_get_result, NULL, "RUNNING (1), then DONE (0) or -error", NULL},
    {NULL}};

static PyMethodDef chunks_methods[] = {
    {"want", (PyCFunction)chunks_want, METH_O, "want(cap) -> bytes to read next (0: done)"},
    {"read_cached", (PyCFunction)chunks_read_cached, METH_O,
     "read_cached(n) -> the next bytes if all are in the page cache, else None; never waits"},
    {"take", (PyCFunction)chunks_take, METH_VARARGS,
     "take(got, asked) -> 0, or ETRUNCATED: the file shrank (the got bytes are its last)"},
    {"wrote", (PyCFunction)chunks_wrote, METH_O, "wrote(n): the writer took n bytes"},
    {"end", (PyCFunction)chunks_end, METH_O, "end(result): DONE, -ECANCELED or -error; the first wins"},
    {"close", (PyCFunction)chunks_close, METH_NOARGS, "done with it: never ended counts as cancelled"},
    {NULL}};

static PyType_Slot chunks_slots[] = {
    {Py_tp_new, chunks_new},
    {Py_tp_dealloc, chunks_dealloc},
    {Py_tp_methods, chunks_methods},
    {Py_tp_getset, chunks_getset},
    {Py_tp_doc, "Chunks(fd, offset=0, count=-1): a file range for the write path (fd -1: "
                "the caller reads a source with no fd)"},
    {0, NULL}};

static PyType_Spec chunks_spec = {"zcsend._zcsend.Chunks", sizeof(ChunksObject), 0,
                                  Py_TPFLAGS_DEFAULT, chunks_slots};

/* ---- module functions ----------------------------------------------------------- */
static PyObject *mod_stats(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  zcs_stats_t s;
  zcs_stats(&s);
  return Py_BuildValue("{sKsKsKsKsKsKsK}", "bytes_zero_copy", (unsigned long long)s.bytes_zero_copy,
                       "bytes_fallback", (unsigned long long)s.bytes_fallback, "started",
                       (unsigned long long)s.started, "completed", (unsigned long long)s.completed,
                       "failed", (unsigned long long)s.failed, "cancelled",
                       (unsigned long long)s.cancelled, "active", (unsigned long long)s.active);
}

static PyObject *mod_backend(PyObject *m, PyObject *unused) {
  (void)m;
  (void)unused;
  return PyUnicode_FromString(zcs_backend_name());
}

static PyObject *mod_read_cached(PyObject *m, PyObject *args) {
  (void)m;
  int fd;
  long long offset;
  Py_ssize_t n;
  if (!PyArg_ParseTuple(args, "iLn:read_cached", &fd, &offset, &n))
    return NULL;
  if (n <= 0) {
    PyErr_SetString(PyExc_ValueError, "read_cached: n must be positive");
    return NULL;
  }
  PyObject *b = PyBytes_FromStringAndSize(NULL, n); /* not zeroed: every byte is read or dropped */
  if (!b)
    return NULL;
  int rc = zcs_read_cached(fd, PyBytes_AS_STRING(b), (size_t)n, offset);
  if (rc == 1)
    return b;
  Py_DECREF(b);
  if (rc < 0)
    return raise_code(rc);
  Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *m, PyObject *arg) {
  (void)m;
  int code = (int)PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred())
    return NULL;
  return PyUnicode_FromString(zcs_strerror(code));
}

static PyObject *mod_errname(PyObject *m, PyObject *arg) {
  (void)m;
  int code = (int)PyLong_AsLong(arg);
  if (code == -1 && PyErr_Occurred())
    return NULL;
  return PyUnicode_FromString(zcs_err_name(code));
}

/* ---- the small-file path ----------------------------------------------------------
 * send_now(sock, file, offset, count, fallback, head, budget, readable): one
 * call for a send that ends in its first step. sock and file: fds, or objects
 * whose fileno() is read here, just before the step (no other thread runs in
 * between). The transfer lives on the C stack: no job, no lock, no object. sock
 * is an asyncio transport's socket (known non-blocking); readable: the caller
 * vouches for file's access mode (the Python layer passes False: a file object
 * can't, see _core.py). Syscalls for a cached range of 16 KiB or less: one
 * preadv2(RWF_NOWAIT) and one sendmsg (zcs_transfer_start; an fstat too where
 * it goes to EOF). For a larger one: fstat, fcntl (unless readable), cachestat
 * and the RWF_NOWAIT probes, sigaction (SIGPIPE is ignored in CPython: no mask
 * then), sendfile.
 * Returns (result, sent, total, seekable) when the transfer ended (total: -1 when
 * unknown); else (a range not in the page cache, which the loop thread must not
 * read; the socket full; the budget spent) a Transfer that goes on from where it
 * stands over dups of its own (take_fds_into), never submitted. Errors of init raise
 * as Transfer() does. */
static int long_arg(PyObject *o, long long *v) {
  *v = PyLong_AsLongLong(o);
  return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

static int dup_cloexec(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 0); }

/* step_now's answer for a transfer that ended in it (rc <= 0), released:
   (rc, bytes sent, total or -1, seekable) */
static PyObject *step_ended(zcs_transfer_t *t, int rc, int64_t total) {
  uint64_t sent = t->sent;
  int seekable = t->offset >= 0;
  zcs_transfer_release(t);
  return Py_BuildValue("(iKLO)", rc, (unsigned long long)sent, (long long)total,
                       seekable ? Py_True : Py_False);
}

/* the inline step of (sock_fd, file_fd): a tuple or a Transfer as send_now says;
   head: None or a bytes-like object. *stepped: a step was taken, or the start
   found the socket full and holds the range, so a NULL may follow bytes sent
   (an allocation failed after it): never "nothing done".
   The GIL is held from the caller's look at the fds to the end, except in a
   step of more than 64 KiB, which works on dups taken first: another thread may
   close either number and reuse it meanwhile. A transfer that goes on gets dups
   too (taken while the GIL still proves the numbers the caller's) for the
   caller to go on with (take_fds_into): never the numbers again. */
static PyObject *step_now(PyObject *m, int sock_fd, int file_fd, long long offset,
                          long long count, int flags, PyObject *head_obj, long long budget,
                          int *stepped) {
  zcs_transfer_t t;
  *stepped = 0;
  Py_buffer head = {.buf = NULL, .len = 0};
  int has_head = head_obj != Py_None;
  if (has_head && PyObject_GetBuffer(head_obj, &head, PyBUF_SIMPLE) < 0)
    return NULL;
  /* most small files go in this call: one read and one send (zcs_transfer_start),
     where the budget lets a step send that much */
  int start = budget >= (long long)ZCS_SMALL_COPY;
  int rc = start ? zcs_transfer_start(&t, sock_fd, file_fd, offset, count, head.buf,
                                      (size_t)head.len, flags)
                 : zcs_transfer_init(&t, sock_fd, file_fd, offset, count, flags);
  if (rc == 0 && head.len && !start)
    rc = zcs_transfer_set_head(&t, head.buf, (size_t)head.len);
  if (has_head)
    PyBuffer_Release(&head);
  if (rc < 0) {
    zcs_transfer_release(&t);
    return raise_code(rc);
  }
  int64_t total = t.remaining < 0 ? t.remaining : (int64_t)t.sent + t.remaining;
  int sd = -1, fd = -1; /* our dups, once taken */
  if (t.result != ZCS_RUNNING || t.sent || zcs_transfer_head_sent(&t) || t.blocked) {
    /* bytes went: all (done), or part, t holding the rest; or the socket was
       full, t holding all (read already): it waits for writability */
    *stepped = 1;
    rc = t.result == ZCS_RUNNING ? ZCS_WANT_WRITE : t.result;
    if (rc <= 0)
      return step_ended(&t, rc, total);
  } else if (zcs_transfer_ready(&t, (size_t)budget)) {
    *stepped = 1;
    t.budget = (size_t)budget;
    if (t.remaining < 0 || t.remaining > (64 << 10)) {
      sd = dup_cloexec(sock_fd);
      fd = sd < 0 ? -1 : dup_cloexec(file_fd);
      if (fd < 0 && sd >= 0)
        close(sd), sd = -1; /* none to be had: stepped holding the GIL */
    }
    if (fd < 0) {
      rc = zcs_transfer_step(&t); /* short: cheaper than handing the GIL over and back */
    } else {
      t.sock_fd = sd, t.file_fd = fd;
      Py_BEGIN_ALLOW_THREADS
      rc = zcs_transfer_step(&t);
      Py_END_ALLOW_THREADS
    }
    t.budget = ZCS_DEFAULT_BUDGET;
    if (rc <= 0) {
      if (fd >= 0)
        close(sd), close(fd);
      return step_ended(&t, rc, total);
    }
  }
  if (fd < 0) { /* it goes on: over dups of its own */
    sd = dup_cloexec(sock_fd);
    fd = sd < 0 ? -1 : dup_cloexec(file_fd);
    if (fd < 0) {
      /* none to be had (EMFILE): it ends here, never going on over the numbers
         (once this returns, another thread may have closed and reused them) */
      int err = errno ? -errno : -EMFILE;
      if (sd >= 0)
        close(sd);
      zcs_transfer_abort(&t, err);
      rc = zcs_transfer_step(&t); /* a cancelled step ends it and touches no fd */
      return step_ended(&t, rc, total);
    }
  }
  module_state *st = PyModule_GetState(m);
  TransferObject *self = (TransferObject *)transfer_alloc(st->transfer_type);
  if (!self) {
    if (fd >= 0)
      close(sd), close(fd);
    zcs_transfer_release(&t); /* counted as cancelled: it never went on */
    return NULL;
  }
  if (fd >= 0) {
    t.sock_fd = sd, t.file_fd = fd;
    self->own_sock = sd, self->own_file = fd, self->own_pid = (long)getpid();
  }
  zcs_transfer_move(zcs_job_transfer(self->job), &t);
  return (PyObject *)self;
}

/* the fd an int is, or an object's fileno() says now; -1 with OSError(EBADF)
   set for a negative one (a socket object closed: fileno() is -1) */
static int fd_of(PyObject *o) {
  int fd = PyObject_AsFileDescriptor(o);
  if (fd < 0 && PyErr_ExceptionMatches(PyExc_ValueError)) {
    PyErr_Clear();
    errno = EBADF;
    PyErr_SetFromErrno(PyExc_OSError);
  }
  return fd;
}

/* dup_into(obj, name, fd or object with fileno()): obj.name = a close-on-exec
   dup of the fd it names now: read and dup'ed in one C call, so no other
   thread's close and reuse of the number can come between the look at it and
   the dup; and stored with no bytecode between (a signal handler's exception
   can't lose it) */
static PyObject *mod_dup_into(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *obj, *name, *o;
  if (!PyArg_ParseTuple(args, "OUO:dup_into", &obj, &name, &o))
    return NULL;
  int fd = fd_of(o);
  if (fd < 0)
    return NULL;
  int d = dup_cloexec(fd);
  if (d < 0)
    return PyErr_SetFromErrno(PyExc_OSError);
  if (store_fd(obj, name, d) < 0) {
    close(d);
    return NULL;
  }
  Py_RETURN_NONE;
}

static PyObject *mod_send_now(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
  if (nargs != 8) {
    PyErr_SetString(PyExc_TypeError, "send_now takes 8 arguments");
    return NULL;
  }
  long long offset, count = -1, budget;
  if (long_arg(args[2], &offset) < 0 || (args[3] != Py_None && long_arg(args[3], &count) < 0) ||
      long_arg(args[6], &budget) < 0)
    return NULL;
  if (budget <= 0) {
    PyErr_SetString(PyExc_ValueError, "send_now: bad budget");
    return NULL;
  }
  int flags = ZCS_F_SOCK_NONBLOCKING | ZCS_F_SIGPIPE_IF_DEFAULT;
  int fallback = PyObject_IsTrue(args[4]), readable = PyObject_IsTrue(args[7]);
  if (fallback < 0 || readable < 0)
    return NULL; /* -1 is an exception, not "true": nothing may be sent */
  if (!fallback)
    flags |= ZCS_F_NO_FALLBACK;
  if (readable)
    flags |= ZCS_F_SOURCE_READABLE;
  /* the numbers read last, just before the step: from here to the end of the
     call no other thread runs unless the step lets it, on dups. The file's
     first: its fileno() may be Python code, during which another thread may run */
  int file_fd = fd_of(args[1]), sock_fd = file_fd < 0 ? -1 : fd_of(args[0]);
  if (sock_fd < 0)
    return NULL;
  int stepped;
  return step_now(m, sock_fd, file_fd, offset, count, flags, args[5], budget, &stepped);
}

/* ---- sendfile()'s whole call, for the common case ---------------------------------
 * fast_send(transport, file, offset, count, fallback, head, budget): what
 * zcsend.sendfile does up to and with its inline step, in one C call, where
 * everything is as most calls have it: a StreamWriter or a transport of a type
 * _transports registered (fast_type), not closing, not held, nothing queued; a
 * running loop; open(path, "rb") not closed; plain ints; fallback True; head
 * None or bytes. Returns None, having done nothing, where any of that is not so
 * or init fails (the Python path then checks, raises or sends exactly as it
 * always did); the bytes sent (an int) once all went and the file's position
 * is offset + sent; else send_now's tuple or Transfer, for the Python path to
 * go on with (its checks pass: they are the ones made here). Nothing can run
 * between the checks and the step (no Python code runs but the transport's and
 * the file's own getters), so both fds are still the caller's. */
static int fast_setup_done(module_state *st) { return st->held != NULL; }

static int fast_mode(module_state *st, PyTypeObject *tp) {
  for (int i = 0; i < st->n_fast; i++)
    if (st->fast_types[i] == (PyObject *)tp)
      return st->fast_modes[i];
  return 0;
}
#define FAST_SELECTOR 1 /* asyncio's selector socket transports: the fd is t._sock.fileno() */
#define FAST_UVLOOP 2   /* uvloop's TCP and Unix transports: get_extra_info("socket").fileno() */

/* obj.name(), or NULL (an exception) */
static PyObject *call0(PyObject *obj, PyObject *name) {
  return PyObject_VectorcallMethod(name, &obj, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* an int result of a no-argument method; -1 for anything else (with the
   error set if one was raised) */
static long long call0_int(PyObject *obj, PyObject *name) {
  PyObject *r = call0(obj, name);
  if (!r)
    return -1;
  long long v = PyLong_CheckExact(r) ? PyLong_AsLongLong(r) : -1;
  Py_DECREF(r);
  return v;
}

/* the socket fd of transport t, a mode's transport that may be written now; -1
   when not (closing, held, queued bytes, no socket), or with an error set */
static int fast_sock_fd(module_state *st, PyObject *t, int mode) {
  PyObject *r = call0(t, s_is_closing);
  if (!r)
    return -1;
  int closing = PyObject_IsTrue(r);
  Py_DECREF(r);
  if (closing != 0)
    return -1;
  PyObject *id = PyLong_FromVoidPtr(t);
  if (!id)
    return -1;
  int held = PySet_Contains(st->held, id);
  Py_DECREF(id);
  if (held != 0 || call0_int(t, s_get_write_buffer_size) != 0)
    return -1;
  PyObject *sock;
  if (mode == FAST_SELECTOR) {
    PyObject *w = PyObject_GetAttr(t, s_empty_waiter);
    if (!w)
      return -1;
    int busy = w != Py_None;
    Py_DECREF(w);
    if (busy)
      return -1; /* asyncio's own loop.sendfile is on it: the Python path says so */
    sock = PyObject_GetAttr(t, s_sock);
  } else {
    sock = PyObject_CallMethodOneArg(t, s_get_extra_info, s_socket);
  }
  if (!sock)
    return -1;
  long long fd = sock != Py_None ? call0_int(sock, s_fileno) : -1;
  Py_DECREF(sock);
  return fd >= 0 && fd <= INT32_MAX ? (int)fd : -1;
}

/* file (a BufferedReader) over a FileIO and open: 1, and its fd in *fd where
   fd; closed, or over another raw (whose getters may be Python code): 0; -1
   with an error set. Runs no Python code: raw and closed are the types' data
   descriptors (an instance's __dict__ can't shadow those), and fileno() is
   FileIO's own, called unbound (a fileno attribute set on either object would
   shadow the method). */
static int fast_file_open(module_state *st, PyObject *file, long long *fd) {
  PyObject *raw = PyObject_GetAttr(file, s_raw); /* detached: ValueError */
  if (!raw)
    return -1;
  int open = 0;
  if ((PyObject *)Py_TYPE(raw) == st->raw_type) {
    PyObject *closed = PyObject_GetAttr(file, s_closed);
    open = !closed ? -1 : closed == Py_False;
    Py_XDECREF(closed);
    if (open == 1 && fd) {
      PyObject *r = PyObject_CallOneArg(st->raw_fileno, raw);
      *fd = r && PyLong_CheckExact(r) ? PyLong_AsLongLong(r) : -1;
      open = r ? 1 : -1;
      Py_XDECREF(r);
    }
  }
  Py_DECREF(raw);
  return open;
}

static PyObject *mod_fast_send(PyObject *m, PyObject *const *args, Py_ssize_t nargs) {
  module_state *st = PyModule_GetState(m);
  if (nargs != 7) {
    PyErr_SetString(PyExc_TypeError, "fast_send takes 7 arguments");
    return NULL;
  }
  PyObject *t = args[0], *file = args[1], *off_o = args[2], *count_o = args[3], *head = args[5];
  if (!fast_setup_done(st) || args[4] != Py_True || (head != Py_None && !PyBytes_CheckExact(head)) ||
      (PyObject *)Py_TYPE(file) != st->reader_type || !PyLong_CheckExact(off_o) ||
      (count_o != Py_None && !PyLong_CheckExact(count_o)) || !PyLong_CheckExact(args[6]))
    Py_RETURN_NONE;
  int overflow = 0;
  long long offset = PyLong_AsLongLongAndOverflow(off_o, &overflow), count = -1;
  if (overflow || offset < 0)
    Py_RETURN_NONE;
  if (count_o != Py_None) {
    count = PyLong_AsLongLongAndOverflow(count_o, &overflow);
    if (overflow || count <= 0)
      Py_RETURN_NONE;
  }
  long long budget = PyLong_AsLongLongAndOverflow(args[6], &overflow);
  if (overflow || budget <= 0)
    Py_RETURN_NONE;
  PyObject *writer = NULL, *result = NULL;
  int sock_fd;
  long long file_fd;
  if ((PyObject *)Py_TYPE(t) == st->writer_type) {
    if (!(writer = PyObject_GetAttr(t, s_transport)))
      goto not_taken;
    t = writer;
  }
  int mode = fast_mode(st, Py_TYPE(t));
  if (!mode)
    goto not_taken;
  PyObject *loop = PyObject_CallNoArgs(st->running_loop);
  if (!loop)
    goto not_taken;
  int no_loop = loop == Py_None;
  Py_DECREF(loop);
  /* the socket's number is read last of what may run Python code (the
     transport's getters; another thread may run meanwhile, close and reuse a
     number): from here to the step nothing does, as the file's raw is checked
     to be a FileIO, whose closed and fileno() are C */
  if (no_loop || (sock_fd = fast_sock_fd(st, t, mode)) < 0 || fast_file_open(st, file, &file_fd) != 1 ||
      file_fd < 0 || file_fd > INT32_MAX)
    goto not_taken;
  int stepped;
  PyObject *r = step_now(m, sock_fd, (int)file_fd, offset, count,
                         ZCS_F_SOCK_NONBLOCKING | ZCS_F_SIGPIPE_IF_DEFAULT | ZCS_F_SEEKABLE_ONLY,
                         head, budget, &stepped);
  if (!r) {
    if (stepped)
      goto out; /* bytes may have gone out: the error, never a second send */
    goto not_taken; /* init refused it before a byte: the Python path says why (a
                       pipe, ZCS_F_SEEKABLE_ONLY: it reads it through the object) */
  }
  if (!PyTuple_CheckExact(r) || PyLong_AsLong(PyTuple_GET_ITEM(r, 0)) != 0) {
    result = r; /* it ended with an error, or goes on */
    goto out;
  }
  /* all sent: asyncio's contract puts the file's position after it */
  result = PyTuple_GET_ITEM(r, 1);
  Py_INCREF(result);
  fast_sends++;
  /* not where another thread closed (or detached) the file during a step that
     let go of the GIL (the Python path skips a closed one too): every byte went
     all the same */
  int still_open = PyTuple_GET_ITEM(r, 3) == Py_True ? fast_file_open(st, file, NULL) : 0;
  if (still_open < 0)
    PyErr_Clear();
  if (still_open == 1) {
    PyObject *pos = PyLong_FromLongLong(offset + PyLong_AsLongLong(result));
    PyObject *seek_args[2] = {file, pos};
    PyObject *sk = pos ? PyObject_VectorcallMethod(s_seek, seek_args,
                                                   2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                       : NULL;
    Py_XDECREF(pos);
    if (!sk)
      Py_CLEAR(result); /* the seek's own error, as file.seek() in Python raises it */
    Py_XDECREF(sk);
  }
  Py_DECREF(r);
  goto out;
not_taken:
  /* nothing was done. An ordinary exception from a getter is the Python path's
     to meet and raise; KeyboardInterrupt, SystemExit (a signal handler ran in a
     getter) go on now, as they would have from the Python path */
  if (PyErr_Occurred()) {
    if (!PyErr_ExceptionMatches(PyExc_Exception))
      goto out;
    PyErr_Clear();
  }
  result = Py_None;
  Py_INCREF(result);
out:
  Py_XDECREF(writer);
  return result;
}

/* fast_setup(held, BufferedReader, FileIO, StreamWriter, get_running_loop) */
static PyObject *mod_fast_setup(PyObject *m, PyObject *args) {
  module_state *st = PyModule_GetState(m);
  PyObject *held, *reader, *raw, *writer, *loop;
  if (!PyArg_ParseTuple(args, "O!OOOO", &PySet_Type, &held, &reader, &raw, &writer, &loop))
    return NULL;
  Py_INCREF(held), Py_INCREF(reader), Py_INCREF(raw), Py_INCREF(writer), Py_INCREF(loop);
  Py_XSETREF(st->held, held);
  Py_XSETREF(st->reader_type, reader);
  PyObject *raw_fileno = PyObject_GetAttr(raw, s_fileno);
  if (!raw_fileno) {
    Py_DECREF(held), Py_DECREF(reader), Py_DECREF(raw), Py_DECREF(writer), Py_DECREF(loop);
    return NULL;
  }
  Py_XSETREF(st->raw_fileno, raw_fileno);
  Py_XSETREF(st->raw_type, raw);
  Py_XSETREF(st->writer_type, writer);
  Py_XSETREF(st->running_loop, loop);
  Py_RETURN_NONE;
}

/* fast_type(cls, mode) -> whether registered (a few types only: kept for good) */
static PyObject *mod_fast_type(PyObject *m, PyObject *args) {
  module_state *st = PyModule_GetState(m);
  PyObject *cls;
  int mode;
  if (!PyArg_ParseTuple(args, "O!i", &PyType_Type, &cls, &mode))
    return NULL;
  if (mode != FAST_SELECTOR && mode != FAST_UVLOOP) {
    PyErr_SetString(PyExc_ValueError, "fast_type: mode is 1 (selector) or 2 (uvloop)");
    return NULL;
  }
  if (fast_mode(st, (PyTypeObject *)cls))
    Py_RETURN_TRUE;
  if (st->n_fast == FAST_TYPES)
    Py_RETURN_FALSE;
  Py_INCREF(cls);
  st->fast_types[st->n_fast] = cls;
  st->fast_modes[st->n_fast++] = mode;
  Py_RETURN_TRUE;
}

static PyObject *mod_engine_stats(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  zcs_engine_stats_t s;
  zcs_engine_stats(&s);
  return Py_BuildValue("{sKsKsKsK}", "prefetches", (unsigned long long)s.prefetches,
                       "prefetch_bytes", (unsigned long long)s.prefetch_bytes, "prefetching",
                       (unsigned long long)s.prefetching, "workers", (unsigned long long)s.workers);
}

static PyObject *mod_debug_counts(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return Py_BuildValue("{sKsK}", "transfers", (unsigned long long)transfers_made, "fast_sends",
                       (unsigned long long)fast_sends);
}

static PyMethodDef module_methods[] = {
    {"dup_into", mod_dup_into, METH_VARARGS,
     "dup_into(obj, name, fd or object with fileno()): obj.name = a close-on-exec dup of "
     "the fd it names now"},
    {"send_now", (PyCFunction)(void (*)(void))mod_send_now, METH_FASTCALL,
     "send_now(sock, file, offset, count, fallback, head, budget, readable) -> "
     "(result, sent, total, seekable) when the send ended in its first step, else a "
     "Transfer that goes on"},
    {"fast_send", (PyCFunction)(void (*)(void))mod_fast_send, METH_FASTCALL,
     "fast_send(transport, file, offset, count, fallback, head, budget) -> None (not the "
     "common case: nothing done), the bytes sent, or what send_now returns"},
    {"fast_setup", mod_fast_setup, METH_VARARGS,
     "fast_setup(held, BufferedReader, FileIO, StreamWriter, get_running_loop)"},
    {"fast_type", mod_fast_type, METH_VARARGS,
     "fast_type(cls, mode) -> registered: fast_send may take transports of type cls "
     "(mode 1: asyncio selector socket transport; 2: uvloop stream transport)"},
    {"engine_stats", mod_engine_stats, METH_NOARGS,
     "the engine's prefetch counters: prefetches, prefetch_bytes, prefetching, workers"},
    {"debug_counts", mod_debug_counts, METH_NOARGS,
     "{'transfers': Transfer objects made so far (send_now makes one only when it must go on), "
     "'fast_sends': fast_send calls that ended all sent}"},
    {"stats", mod_stats, METH_NOARGS, "process-wide transfer counters"},
    {"backend", mod_backend, METH_NOARGS, "name of the active backend"},
    {"strerror", mod_strerror, METH_O, "message for a negative error code"},
    {"read_cached", mod_read_cached, METH_VARARGS,
     "read_cached(fd, offset, n) -> n bytes if all are in the page cache, else None; never waits for the disk"},
    {"errname", mod_errname, METH_O, "name (EPIPE, ETRUNCATED, ...) of a negative error code"},
    {NULL}};

static int module_exec(PyObject *m) {
  module_state *st = PyModule_GetState(m);
  int rc = zcs_backend_init();
  if (rc < 0) {
    PyErr_Format(PyExc_ValueError, "ZCSEND_BACKEND=%s: %s (use 'auto' or 'emulated')",
                 getenv("ZCSEND_BACKEND"), zcs_strerror(rc));
    return -1;
  }
#define INTERN(var, text) if (!var && !(var = PyUnicode_InternFromString(text))) return -1;
  INTERN(s_is_closing, "is_closing")
  INTERN(s_get_write_buffer_size, "get_write_buffer_size")
  INTERN(s_empty_waiter, "_empty_waiter")
  INTERN(s_sock, "_sock")
  INTERN(s_fileno, "fileno")
  INTERN(s_closed, "closed")
  INTERN(s_raw, "raw")
  INTERN(s_src_fd, "src_fd")
  INTERN(s_sock_fd, "sock_fd")
  INTERN(s_seek, "seek")
  INTERN(s_transport, "transport")
  INTERN(s_get_extra_info, "get_extra_info")
  INTERN(s_socket, "socket")
#undef INTERN
  st->channel_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &channel_spec, NULL);
  st->transfer_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &transfer_spec, NULL);
  st->chunks_type = (PyTypeObject *)PyType_FromModuleAndSpec(m, &chunks_spec, NULL);
  if (!st->channel_type || !st->transfer_type || !st->chunks_type)
    return -1;
  if (PyModule_AddType(m, st->channel_type) < 0 || PyModule_AddType(m, st->transfer_type) < 0 ||
      PyModule_AddType(m, st->chunks_type) < 0)
    return -1;
#define CONST(name, v) if (PyModule_AddIntConstant(m, name, v) < 0) return -1;
  CONST("RUNNING", ZCS_RUNNING)
  CONST("DONE", ZCS_DONE)
  CONST("WANT_WRITE", ZCS_WANT_WRITE)
  CONST("WANT_READ", ZCS_WANT_READ)
  CONST("WANT_SOURCE", ZCS_WANT_SOURCE)
  CONST("ECANCELED", -ECANCELED)
  CONST("ETIMEDOUT", -ETIMEDOUT)
  CONST("SMALL_COPY", ZCS_SMALL_COPY)
#define XX(name, value, msg) CONST(#name, value)
  ZCS_ERRNO_MAP(XX)
#undef XX
#undef CONST
  return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  module_state *st = PyModule_GetState(m);
  Py_VISIT(st->channel_type);
  Py_VISIT(st->transfer_type);
  Py_VISIT(st->chunks_type);
  Py_VISIT(st->held);
  Py_VISIT(st->reader_type);
  Py_VISIT(st->raw_type);
  Py_VISIT(st->raw_fileno);
  Py_VISIT(st->writer_type);
  Py_VISIT(st->running_loop);
  for (int i = 0; i < st->n_fast; i++)
    Py_VISIT(st->fast_types[i]);
  return 0;
}

static int module_clear(PyObject *m) {
  module_state *st = PyModule_GetState(m);
  Py_CLEAR(st->channel_type);
  Py_CLEAR(st->transfer_type);
  Py_CLEAR(st->chunks_type);
  Py_CLEAR(st->held);
  Py_CLEAR(st->reader_type);
  Py_CLEAR(st->raw_type);
  Py_CLEAR(st->raw_fileno);
  Py_CLEAR(st->writer_type);
  Py_CLEAR(st->running_loop);
  for (int i = 0; i < st->n_fast; i++)
    Py_CLEAR(st->fast_types[i]);
  st->n_fast = 0;
  return 0;
}

static PyModuleDef_Slot module_slots[] = {{Py_mod_exec, module_exec}, {0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "zcsend._zcsend", "zcsend's C core, translated for CPython.",
    sizeof(module_state), module_methods, module_slots, module_traverse, module_clear, NULL};

PyMODINIT_FUNC PyInit__zcsend(void) { return PyModuleDef_Init(&module_def); }
