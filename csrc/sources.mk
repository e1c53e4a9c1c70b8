# The C core's sources: the one list every build reads. csrc/Makefile and
# lua/Makefile (and through it the rockspec) include this file; setup.py parses
# it, so keep to plain `NAME = words` lines (a trailing \ continues a line).
# Names are relative to csrc/.

# every platform
ZCS_SOURCES = backend_emulated.c sink_tls.c transfer.c chunks.c errors.c driver_ev.c engine.c

# the one backend per platform, chosen by `uname -s` (Python: platform.system());
# any other system gets ZCS_PLATFORM_SOURCES_default, which refuses with #error
ZCS_PLATFORM_SOURCES_Linux = backend_linux.c
ZCS_PLATFORM_SOURCES_default = backend_bsd.c

# the headers (public ones first), for dependencies and the sdist
ZCS_HEADERS = zcsend.h zcsend_ev.h zcsend_engine.h zcs_internal.h
