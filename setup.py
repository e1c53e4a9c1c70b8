"""Declares the C extension; the metadata lives in pyproject.toml."""
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")


def pkg_config(name, debian_package, header):
    """(include_dirs, library_dirs, libraries) for a system library, or a clear error."""
    if shutil.which("pkg-config"):
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", name], stderr=subprocess.DEVNULL, text=True).split()
            libs = subprocess.check_output(["pkg-config", "--libs", name], stderr=subprocess.DEVNULL, text=True).split()
            return ([f[2:] for f in cflags if f.startswith("-I")],
                    [f[2:] for f in libs if f.startswith("-L")],
                    [f[2:] for f in libs if f.startswith("-l")])
        except subprocess.CalledProcessError:
            pass
    for d in ("/usr/include", "/usr/local/include", "/opt/homebrew/include"):
        if os.path.exists(os.path.join(d, header)):
            return [d], [], [name.replace("lib", "", 1) if name.startswith("lib") else name]
    sys.exit(f"zcsend: {header} not found. On Debian/Ubuntu: apt-get install {debian_package}")


ev = pkg_config("libev", "libev-dev", "ev.h")
ssl = pkg_config("openssl", "libssl-dev", "openssl/ssl.h")

platform_backend = "backend_linux.c" if sys.platform.startswith("linux") else "backend_bsd.c"
core = [platform_backend, "backend_emulated.c", "sink_tls.c", "transfer.c", "driver_ev.c", "engine.c"]

extra_compile = ["-std=gnu11", "-D_FILE_OFFSET_BITS=64", "-pthread", "-Wall", "-Wextra", "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
extra_link = ["-pthread"]
if os.environ.get("ZCSEND_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined", "-O1", "-g"]
    extra_compile += san
    extra_link += ["-fsanitize=address,undefined"]

setup(
    ext_modules=[
        Extension(
            "zcsend._zcsend",
            sources=["python/zcsend/_zcsend.c"] + [os.path.join(CSRC, f) for f in core],
            include_dirs=[CSRC] + ev[0] + ssl[0],
            library_dirs=ev[1] + ssl[1],
            libraries=ev[2] + ssl[2],
            extra_compile_args=extra_compile,
            extra_link_args=extra_link,
            depends=[os.path.join(CSRC, "zcsend.h"), os.path.join(CSRC, "zcs_internal.h")],
        )
    ],
)
