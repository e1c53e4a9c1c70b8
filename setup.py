"""Declares the C extension; the metadata lives in pyproject.toml.

Nothing here runs at import: libev is looked for when the extension is built
(build_ext), so an sdist builds on a machine without libev's headers. The
extension is built with -DZCS_NO_TLS: it needs no OpenSSL (Python's TLS
transports encrypt in Python and never hand the core an SSL*). The core's
sources come from csrc/sources.mk, the list the Makefiles include too. The core
is compiled into the extension with hidden visibility and -DZCS_API=, so the
extension exports PyInit__zcsend alone.
"""
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"


def read_sources_mk(path=os.path.join(CSRC, "sources.mk")):
    """csrc/sources.mk's `NAME = words` assignments, as {NAME: [words]}."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())  # a trailing backslash continues the line
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_]+)\s*=\s*(.*)", line)
        if not m:
            sys.exit(f"zcsend: {path}: not a plain assignment: {line!r}")
        found[m.group(1)] = m.group(2).split()
    return found


# Every platform's sources ship in the sdist (MANIFEST.in); the build picks one,
# by the name `uname -s` gives (as the Makefiles do).
SOURCES = read_sources_mk()
CORE = SOURCES.get("ZCS_PLATFORM_SOURCES_" + platform.system(), SOURCES["ZCS_PLATFORM_SOURCES_default"]) \
    + SOURCES["ZCS_SOURCES"]


def find_library(name, debian_package, header, lib):
    """(include_dirs, library_dirs, libraries) for a system library, or a clear error."""
    if shutil.which("pkg-config"):
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", name], stderr=subprocess.DEVNULL,
                                             universal_newlines=True).split()
            libs = subprocess.check_output(["pkg-config", "--libs", name], stderr=subprocess.DEVNULL,
                                           universal_newlines=True).split()
            return ([f[2:] for f in cflags if f.startswith("-I")],
                    [f[2:] for f in libs if f.startswith("-L")],
                    [f[2:] for f in libs if f.startswith("-l")])
        except subprocess.CalledProcessError:
            pass  # Debian's libev-dev ships no libev.pc: look for the header
    for d in ("/usr/include", "/usr/local/include", "/opt/homebrew/include"):
        if os.path.exists(os.path.join(d, header)):
            return [d], [], [lib]
    sys.exit(f"zcsend: {header} ({name}) not found, needed to build the extension. "
             f"On Debian/Ubuntu: apt-get install {debian_package}")


class BuildExt(build_ext):
    """Finds libev when the extension is built, not when setup.py is loaded."""

    def build_extensions(self):
        inc, libdirs, libs = find_library("libev", "libev-dev", "ev.h", "ev")
        for ext in self.extensions:
            ext.include_dirs += [d for d in inc if d not in ext.include_dirs]
            ext.library_dirs += libdirs
            ext.libraries += libs
        super().build_extensions()


extra_compile = ["-std=gnu11", "-D_FILE_OFFSET_BITS=64", "-pthread", "-Wall", "-Wextra",
                 "-Wno-missing-field-initializers", "-Wno-cast-function-type", "-fvisibility=hidden"]
extra_link = ["-pthread"]
# ZCSEND_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer; =thread:
# ThreadSanitizer. Either extension runs under a stock CPython with the
# sanitizer's runtime in LD_PRELOAD (scripts/test.sh).
if os.environ.get("ZCSEND_SANITIZE") == "thread":
    extra_compile += ["-fsanitize=thread", "-fno-omit-frame-pointer", "-O1", "-g"]
    extra_link += ["-fsanitize=thread"]
elif os.environ.get("ZCSEND_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-O1", "-g"]
    extra_compile += san
    extra_link += ["-fsanitize=address,undefined"]

setup(
    ext_modules=[
        Extension(
            "zcsend._zcsend",
            sources=["python/zcsend/_zcsend.c"] + [os.path.join(CSRC, f) for f in CORE],
            include_dirs=[CSRC],
            define_macros=[("ZCS_NO_TLS", None), ("ZCS_API", "")],
            extra_compile_args=extra_compile,
            extra_link_args=extra_link,
            depends=[os.path.join(CSRC, f) for f in SOURCES["ZCS_HEADERS"] + ["sources.mk"]],
        )
    ],
    cmdclass={"build_ext": BuildExt},
)
