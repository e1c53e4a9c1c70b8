/* Names and messages of error codes: zcsend's own (ZCS_ERRNO_MAP) and every
 * errno the platform defines, since a step passes on whatever the kernel said.
 * Each name is guarded: the table holds what this platform has. */
#include <errno.h>
#include <string.h>
#include "zcsend.h"

static const struct {
  int code;
  const char *name;
} errno_names[] = {
#define N(name) {name, #name},
/* Linux's, by value */
#ifdef EPERM
  N(EPERM)
#endif
#ifdef ENOENT
  N(ENOENT)
#endif
#ifdef ESRCH
  N(ESRCH)
#endif
#ifdef EINTR
  N(EINTR)
#endif
#ifdef EIO
  N(EIO)
#endif
#ifdef ENXIO
  N(ENXIO)
#endif
#ifdef E2BIG
  N(E2BIG)
#endif
#ifdef ENOEXEC
  N(ENOEXEC)
#endif
#ifdef EBADF
  N(EBADF)
#endif
#ifdef ECHILD
  N(ECHILD)
#endif
#ifdef EAGAIN
  N(EAGAIN)
#endif
#ifdef ENOMEM
  N(ENOMEM)
#endif
#ifdef EACCES
  N(EACCES)
#endif
#ifdef EFAULT
  N(EFAULT)
#endif
#ifdef ENOTBLK
  N(ENOTBLK)
#endif
#ifdef EBUSY
  N(EBUSY)
#endif
#ifdef EEXIST
  N(EEXIST)
#endif
#ifdef EXDEV
  N(EXDEV)
#endif
#ifdef ENODEV
  N(ENODEV)
#endif
#ifdef ENOTDIR
  N(ENOTDIR)
#endif
#ifdef EISDIR
  N(EISDIR)
#endif
#ifdef EINVAL
  N(EINVAL)
#endif
#ifdef ENFILE
  N(ENFILE)
#endif
#ifdef EMFILE
  N(EMFILE)
#endif
#ifdef ENOTTY
  N(ENOTTY)
#endif
#ifdef ETXTBSY
  N(ETXTBSY)
#endif
#ifdef EFBIG
  N(EFBIG)
#endif
#ifdef ENOSPC
  N(ENOSPC)
#endif
#ifdef ESPIPE
  N(ESPIPE)
#endif
#ifdef EROFS
  N(EROFS)
#endif
#ifdef EMLINK
  N(EMLINK)
#endif
#ifdef EPIPE
  N(EPIPE)
#endif
#ifdef EDOM
  N(EDOM)
#endif
#ifdef ERANGE
  N(ERANGE)
#endif
#ifdef EDEADLK
  N(EDEADLK)
#endif
#ifdef ENAMETOOLONG
  N(ENAMETOOLONG)
#endif
#ifdef ENOLCK
  N(ENOLCK)
#endif
#ifdef ENOSYS
  N(ENOSYS)
#endif
#ifdef ENOTEMPTY
  N(ENOTEMPTY)
#endif
#ifdef ELOOP
  N(ELOOP)
#endif
#ifdef ENOMSG
  N(ENOMSG)
#endif
#ifdef EIDRM
  N(EIDRM)
#endif
#ifdef ECHRNG
  N(ECHRNG)
#endif
#ifdef EL2NSYNC
  N(EL2NSYNC)
#endif
#ifdef EL3HLT
  N(EL3HLT)
#endif
#ifdef EL3RST
  N(EL3RST)
#endif
#ifdef ELNRNG
  N(ELNRNG)
#endif
#ifdef EUNATCH
  N(EUNATCH)
#endif
#ifdef ENOCSI
  N(ENOCSI)
#endif
#ifdef EL2HLT
  N(EL2HLT)
#endif
#ifdef EBADE
  N(EBADE)
#endif
#ifdef EBADR
  N(EBADR)
#endif
#ifdef EXFULL
  N(EXFULL)
#endif
#ifdef ENOANO
  N(ENOANO)
#endif
#ifdef EBADRQC
  N(EBADRQC)
#endif
#ifdef EBADSLT
  N(EBADSLT)
#endif
#ifdef EBFONT
  N(EBFONT)
#endif
#ifdef ENOSTR
  N(ENOSTR)
#endif
#ifdef ENODATA
  N(ENODATA)
#endif
#ifdef ETIME
  N(ETIME)
#endif
#ifdef ENOSR
  N(ENOSR)
#endif
#ifdef ENONET
  N(ENONET)
#endif
#ifdef ENOPKG
  N(ENOPKG)
#endif
#ifdef EREMOTE
  N(EREMOTE)
#endif
#ifdef ENOLINK
  N(ENOLINK)
#endif
#ifdef EADV
  N(EADV)
#endif
#ifdef ESRMNT
  N(ESRMNT)
#endif
#ifdef ECOMM
  N(ECOMM)
#endif
#ifdef EPROTO
  N(EPROTO)
#endif
#ifdef EMULTIHOP
  N(EMULTIHOP)
#endif
#ifdef EDOTDOT
  N(EDOTDOT)
#endif
#ifdef EBADMSG
  N(EBADMSG)
#endif
#ifdef EOVERFLOW
  N(EOVERFLOW)
#endif
#ifdef ENOTUNIQ
  N(ENOTUNIQ)
#endif
#ifdef EBADFD
  N(EBADFD)
#endif
#ifdef EREMCHG
  N(EREMCHG)
#endif
#ifdef ELIBACC
  N(ELIBACC)
#endif
#ifdef ELIBBAD
  N(ELIBBAD)
#endif
#ifdef ELIBSCN
  N(ELIBSCN)
#endif
#ifdef ELIBMAX
  N(ELIBMAX)
#endif
#ifdef ELIBEXEC
  N(ELIBEXEC)
#endif
#ifdef EILSEQ
  N(EILSEQ)
#endif
#ifdef ERESTART
  N(ERESTART)
#endif
#ifdef ESTRPIPE
  N(ESTRPIPE)
#endif
#ifdef EUSERS
  N(EUSERS)
#endif
#ifdef ENOTSOCK
  N(ENOTSOCK)
#endif
#ifdef EDESTADDRREQ
  N(EDESTADDRREQ)
#endif
#ifdef EMSGSIZE
  N(EMSGSIZE)
#endif
#ifdef EPROTOTYPE
  N(EPROTOTYPE)
#endif
#ifdef ENOPROTOOPT
  N(ENOPROTOOPT)
#endif
#ifdef EPROTONOSUPPORT
  N(EPROTONOSUPPORT)
#endif
#ifdef ESOCKTNOSUPPORT
  N(ESOCKTNOSUPPORT)
#endif
#ifdef EOPNOTSUPP
  N(EOPNOTSUPP)
#endif
#ifdef EPFNOSUPPORT
  N(EPFNOSUPPORT)
#endif
#ifdef EAFNOSUPPORT
  N(EAFNOSUPPORT)
#endif
#ifdef EADDRINUSE
  N(EADDRINUSE)
#endif
#ifdef EADDRNOTAVAIL
  N(EADDRNOTAVAIL)
#endif
#ifdef ENETDOWN
  N(ENETDOWN)
#endif
#ifdef ENETUNREACH
  N(ENETUNREACH)
#endif
#ifdef ENETRESET
  N(ENETRESET)
#endif
#ifdef ECONNABORTED
  N(ECONNABORTED)
#endif
#ifdef ECONNRESET
  N(ECONNRESET)
#endif
#ifdef ENOBUFS
  N(ENOBUFS)
#endif
#ifdef EISCONN
  N(EISCONN)
#endif
#ifdef ENOTCONN
  N(ENOTCONN)
#endif
#ifdef ESHUTDOWN
  N(ESHUTDOWN)
#endif
#ifdef ETOOMANYREFS
  N(ETOOMANYREFS)
#endif
#ifdef ETIMEDOUT
  N(ETIMEDOUT)
#endif
#ifdef ECONNREFUSED
  N(ECONNREFUSED)
#endif
#ifdef EHOSTDOWN
  N(EHOSTDOWN)
#endif
#ifdef EHOSTUNREACH
  N(EHOSTUNREACH)
#endif
#ifdef EALREADY
  N(EALREADY)
#endif
#ifdef EINPROGRESS
  N(EINPROGRESS)
#endif
#ifdef ESTALE
  N(ESTALE)
#endif
#ifdef EUCLEAN
  N(EUCLEAN)
#endif
#ifdef ENOTNAM
  N(ENOTNAM)
#endif
#ifdef ENAVAIL
  N(ENAVAIL)
#endif
#ifdef EISNAM
  N(EISNAM)
#endif
#ifdef EREMOTEIO
  N(EREMOTEIO)
#endif
#ifdef EDQUOT
  N(EDQUOT)
#endif
#ifdef ENOMEDIUM
  N(ENOMEDIUM)
#endif
#ifdef EMEDIUMTYPE
  N(EMEDIUMTYPE)
#endif
#ifdef ECANCELED
  N(ECANCELED)
#endif
#ifdef ENOKEY
  N(ENOKEY)
#endif
#ifdef EKEYEXPIRED
  N(EKEYEXPIRED)
#endif
#ifdef EKEYREVOKED
  N(EKEYREVOKED)
#endif
#ifdef EKEYREJECTED
  N(EKEYREJECTED)
#endif
#ifdef EOWNERDEAD
  N(EOWNERDEAD)
#endif
#ifdef ENOTRECOVERABLE
  N(ENOTRECOVERABLE)
#endif
#ifdef ERFKILL
  N(ERFKILL)
#endif
#ifdef EHWPOISON
  N(EHWPOISON)
#endif
/* aliases: the same value as a name above on Linux, so they never win there */
#ifdef EWOULDBLOCK
  N(EWOULDBLOCK)
#endif
#ifdef EDEADLOCK
  N(EDEADLOCK)
#endif
#ifdef ENOTSUP
  N(ENOTSUP)
#endif
/* macOS and FreeBSD only */
#ifdef EAUTH
  N(EAUTH)
#endif
#ifdef EBADARCH
  N(EBADARCH)
#endif
#ifdef EBADEXEC
  N(EBADEXEC)
#endif
#ifdef EBADMACHO
  N(EBADMACHO)
#endif
#ifdef EBADRPC
  N(EBADRPC)
#endif
#ifdef ECAPMODE
  N(ECAPMODE)
#endif
#ifdef EDEVERR
  N(EDEVERR)
#endif
#ifdef EDOOFUS
  N(EDOOFUS)
#endif
#ifdef EFTYPE
  N(EFTYPE)
#endif
#ifdef EINTEGRITY
  N(EINTEGRITY)
#endif
#ifdef ENEEDAUTH
  N(ENEEDAUTH)
#endif
#ifdef ENOATTR
  N(ENOATTR)
#endif
#ifdef ENOPOLICY
  N(ENOPOLICY)
#endif
#ifdef ENOTCAPABLE
  N(ENOTCAPABLE)
#endif
#ifdef EPROCLIM
  N(EPROCLIM)
#endif
#ifdef EPROCUNAVAIL
  N(EPROCUNAVAIL)
#endif
#ifdef EPROGMISMATCH
  N(EPROGMISMATCH)
#endif
#ifdef EPROGUNAVAIL
  N(EPROGUNAVAIL)
#endif
#ifdef EPWROFF
  N(EPWROFF)
#endif
#ifdef EQFULL
  N(EQFULL)
#endif
#ifdef ERPCMISMATCH
  N(ERPCMISMATCH)
#endif
#ifdef ESHLIBVERS
  N(ESHLIBVERS)
#endif
#undef N
};

const char *zcs_err_name(int err) {
  switch (err) {
#define XX(name, value, msg) case ZCS_##name: return #name;
    ZCS_ERRNO_MAP(XX)
#undef XX
  default: break;
  }
  if (err < 0)
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
      if (errno_names[i].code == -err)
        return errno_names[i].name;
  return "EUNKNOWN";
}

const char *zcs_strerror(int err) {
  switch (err) {
#define XX(name, value, msg) case ZCS_##name: return msg;
    ZCS_ERRNO_MAP(XX)
#undef XX
  default: return strerror(-err);
  }
}
