/* Compiled, not run (csrc/Makefile's `headers` target, once per public header,
 * -DHEADER='"zcsend.h"'): each header is complete on its own in ISO C11, and
 * with -DLEAN it must not have pulled in libev or pthread.h, so that a host that
 * only wants transfers (zcsend.h) or the engine (zcsend_engine.h) needs neither. */
#include HEADER

#ifdef LEAN
#if defined(EV_VERSION_MAJOR) || defined(EV_READ)
#error "this header includes <ev.h>"
#endif
#if defined(PTHREAD_ONCE_INIT) || defined(PTHREAD_MUTEX_INITIALIZER)
#error "this header includes <pthread.h>"
#endif
#endif

/* ISO C wants at least one declaration in a translation unit. */
typedef int zcs_header_compiles;
