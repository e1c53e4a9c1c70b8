"""Packaging: the version written once, an extension without OpenSSL, and what
scripts/wheels.sh builds: an sdist that is complete, builds without libev's
headers and installs; and per CPython a wheel that runs in a fresh venv with
the system's libev made unreachable (on every Python but the one running this
file, the contract and error tests run against that wheel, so hidden).

The sdist and wheel tests look at the directory ZCSEND_DIST names (scripts/test.sh
sets it to where wheels.sh wrote): without it they are skipped. They hide files
with a private mount namespace (`unshare -m`, bind mounts): root only.
"""
import base64
import csv
import glob
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIST = os.environ.get("ZCSEND_DIST")
# what runs against the wheel on every Python but this one (ZCSEND_WHEEL_TESTS
# replaces it: pytest arguments, e.g. adding -k "not uvloop" halves the time)
CONTRACT_TESTS = "tests/python/test_sendfile.py tests/python/test_errors.py"
dist_only = pytest.mark.skipif(not DIST, reason="set ZCSEND_DIST to scripts/wheels.sh's output (scripts/test.sh does)")


@pytest.fixture(autouse=True)
def loop_kind():
    """Once per test, not once per event loop: the checks below run both loops
    themselves where a loop matters (this overrides conftest's parametrised one)."""
    yield "asyncio"


def source_version():
    text = open(os.path.join(ROOT, "python", "zcsend", "_version.py")).read()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def test_version_is_written_once():
    """python/zcsend/_version.py is the one place: pyproject.toml reads it
    (dynamic), zcsend.__version__ imports it. The C header's ZCS_VERSION must
    agree with it."""
    import zcsend
    version = source_version()
    assert zcsend.__version__ == version
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    project = pyproject.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    assert not re.search(r"^version\s*=", project, re.M), "pyproject.toml's [project] writes the version again"
    assert 'attr = "zcsend._version.__version__"' in pyproject
    header = open(os.path.join(ROOT, "csrc", "zcsend.h")).read()
    assert re.search(r'#define ZCS_VERSION "([^"]+)"', header).group(1) == version, \
        "csrc/zcsend.h's ZCS_VERSION differs from python/zcsend/_version.py"
    lua = open(os.path.join(ROOT, "lua", "zcsend.lua")).read()
    assert "M._VERSION = core.version" in lua, "lua/zcsend.lua must take its version from the core's header"
    assert version not in lua


def elf_dynamic(path):
    """(NEEDED names, RUNPATH/RPATH) of a shared object, from readelf."""
    if not shutil.which("readelf"):
        pytest.skip("readelf (binutils) not installed")
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    runpath = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]+)\]", out)
    return needed, runpath


def test_extension_links_no_openssl():
    """The Python build leaves the core's TLS sink out (-DZCS_NO_TLS): Python's
    TLS transports go through transport.write, so the extension needs no libssl
    or libcrypto beside CPython's own _ssl."""
    from zcsend import _zcsend
    needed, _ = elf_dynamic(_zcsend.__file__)
    assert not [n for n in needed if n.startswith(("libssl", "libcrypto"))], needed
    assert [n for n in needed if n.startswith("libev")], needed


def test_extension_exports_only_its_init():
    """setup.py compiles the core into the extension with -fvisibility=hidden and
    -DZCS_API=: PyInit__zcsend is its one export, and no zcs_* symbol of this
    copy of the core can bind to, or be interposed by, another copy in the
    process (the Lua module's, a C host's libzcsend)."""
    from zcsend import _zcsend
    if not shutil.which("nm"):
        pytest.skip("nm (binutils) not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", _zcsend.__file__], check=True, capture_output=True,
                         text=True).stdout
    names = [line.split()[-1] for line in out.splitlines() if line.strip()]
    assert "PyInit__zcsend" in names
    assert not [n for n in names if n.startswith("zcs")], names


# ---- what scripts/wheels.sh built -------------------------------------------

def _pythons():
    """{(major, minor): interpreter} of the CPythons 3.9-3.13 found (wheels.sh's list)."""
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "wheels.sh"), "--pythons"],
                         check=True, capture_output=True, text=True).stdout.split()
    found = {}
    for exe in out:
        v = subprocess.run([exe, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
                           check=True, capture_output=True, text=True).stdout.split()
        found[int(v[0]), int(v[1])] = exe
    return found


def _wheels():
    return sorted(glob.glob(os.path.join(DIST, "zcsend-*.whl"))) if DIST else []


def _sdist():
    found = sorted(glob.glob(os.path.join(DIST, "zcsend-*.tar.gz")))
    assert len(found) == 1, f"expected one sdist in {DIST}: {found}"
    return found[0]


def _can_unshare():
    return os.geteuid() == 0 and shutil.which("unshare") and \
        subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


def in_namespace(cmd, *, hide_files=(), empty_dirs=(), **kw):
    """Runs cmd in a private mount namespace where each of hide_files is
    /dev/null and each of empty_dirs an empty tmpfs; nothing outside it changes."""
    assert _can_unshare(), "these checks need root and unshare -m (a private mount namespace)"
    script = "set -e\n"
    script += "".join(f"mount --bind /dev/null {shlex.quote(f)}\n" for f in hide_files)
    script += "".join(f"mount -t tmpfs tmpfs {shlex.quote(d)}\n" for d in empty_dirs)
    script += 'exec "$@"'
    return subprocess.run(["unshare", "-m", "--", "sh", "-c", script, "sh", *cmd],
                          capture_output=True, text=True, **kw)


def system_libev():
    """The files behind every libev.so* the dynamic linker knows (ldconfig -p)."""
    out = subprocess.run(["ldconfig", "-p"], check=True, capture_output=True, text=True).stdout
    files = set()
    for line in out.splitlines():
        name, _, path = line.strip().partition(" => ")
        if name.startswith("libev.so"):
            files.add(os.path.realpath(path.strip()))
    return sorted(files)


def make_venv(python, path):
    """A fresh venv: pip comes from the base interpreter, and so do pytest and
    uvloop; zcsend only from what is installed into it (checked by smoke.py)."""
    subprocess.run([python, "-m", "venv", "--without-pip", "--system-site-packages", path], check=True)
    return os.path.join(path, "bin", "python")


def pip_install(vpython, *args):
    r = subprocess.run([vpython, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index",
                        "--no-deps", "--ignore-installed", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


SMOKE = r'''
import asyncio, ctypes, hashlib, json, os, sys, tempfile
venv, mode = sys.argv[1], sys.argv[2]
if mode == "hidden":
    try:
        ctypes.CDLL("libev.so.4")
    except OSError:
        pass
    else:
        sys.exit("the system's libev.so.4 is still reachable")
import zcsend
from zcsend import _zcsend
here = os.path.realpath(zcsend.__file__)
assert here.startswith(os.path.realpath(venv) + os.sep), f"zcsend imported from {here}, not the venv"
libev = sorted({l.split()[-1] for l in open("/proc/self/maps") if "/libev" in l})
assert libev, "no libev mapped"
if mode == "hidden":
    libs = os.path.join(os.path.dirname(os.path.dirname(here)), "zcsend.libs")
    assert all(p.startswith(libs + os.sep) for p in libev), libev

data = os.urandom(3 << 20)
path = os.path.join(tempfile.mkdtemp(), "f")
with open(path, "wb") as f:
    f.write(data)
head = b"HTTP/1.1 200 OK\r\n\r\n"

async def once():
    async def handle(r, w):
        with open(path, "rb") as f:
            assert await zcsend.sendfile(w, f, head=head) == len(data)
            assert f.tell() == len(data)
        w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[0].getsockname()[1])
    got = await r.read()
    w.close()
    srv.close()
    await srv.wait_closed()
    assert got == head + data, (len(got), len(head + data))

loops = {"asyncio": asyncio.new_event_loop}
try:
    import uvloop
    loops["uvloop"] = uvloop.new_event_loop
except ImportError:
    pass
for name, factory in loops.items():
    loop = factory()
    try:
        loop.run_until_complete(once())
    finally:
        loop.close()
stats = zcsend.stats()
if zcsend.backend() != "emulated":
    assert stats["bytes_zero_copy"] > 0, stats
print(json.dumps({"version": zcsend.__version__, "backend": zcsend.backend(), "loops": list(loops),
                  "libev": libev, "stats": stats}))
'''


@pytest.fixture
def smoke(tmp_path):
    p = tmp_path / "smoke.py"
    p.write_text(SMOKE)
    return str(p)


@dist_only
def test_sdist_is_complete():
    """Every source for every platform (backend_bsd.c too) and their list
    (csrc/sources.mk, which setup.py reads), the licence, the README, the C API
    guide and its example, the stubs and the tests, at the one version."""
    with tarfile.open(_sdist()) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        pkg_info = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO")
                                        and m.name.count("/") == 1)).read().decode()
    want = {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "setup.py", "MANIFEST.in", "csrc/Makefile",
            "csrc/sources.mk", "csrc/backend_bsd.c", "csrc/backend_linux.c", "python/zcsend/py.typed",
            "docs/C_API.md", "docs/example_host.c"}
    for pattern in ("csrc/*.c", "csrc/*.h", "python/zcsend/*.py", "python/zcsend/*.pyi", "python/zcsend/*.c",
                    "docs/*", "tests/python/**/*", "tests/c/**/*"):
        want |= {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
                 if os.path.isfile(p) and "__pycache__" not in p and not p.endswith((".pyc", ".so", ".o"))}
    assert not want - names, f"missing from the sdist: {sorted(want - names)}"
    assert f"\nVersion: {source_version()}\n" in pkg_info
    assert "\nLicense-Expression: MIT\n" in pkg_info and "\nLicense-File: LICENSE\n" in pkg_info
    for minor in range(9, 14):
        assert f"Classifier: Programming Language :: Python :: 3.{minor}\n" in pkg_info


@dist_only
def test_sdist_builds_without_libev_headers_and_the_extension_says_what_is_missing(tmp_path):
    """`python -m build --sdist` with no header at all under /usr/include and no
    pkg-config data: the sdist builds (nothing is probed then); building the
    extension from it stops with a message naming Debian's libev-dev."""
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path / "no-pc"), PKG_CONFIG_PATH="")
    hidden = [d for d in ("/usr/include", "/usr/local/include") if os.path.isdir(d)]
    out = tmp_path / "out"
    r = in_namespace(["sh", "-c", 'test ! -e /usr/include/ev.h && exec "$@"', "sh",
                      sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ROOT],
                     empty_dirs=hidden, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdists = glob.glob(str(out / "zcsend-*.tar.gz"))
    assert len(sdists) == 1
    r = in_namespace([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                      "--disable-pip-version-check", "-w", str(tmp_path / "whl"), sdists[0]],
                     empty_dirs=hidden, env=env)
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert "zcsend: ev.h (libev) not found" in text and "apt-get install libev-dev" in text, text[-3000:]


@dist_only
def test_sdist_installs_in_a_fresh_venv(tmp_path, smoke):
    vpython = make_venv(sys.executable, str(tmp_path / "venv"))
    pip_install(vpython, "--no-build-isolation", _sdist())
    r = subprocess.run([vpython, smoke, str(tmp_path / "venv"), "system"], capture_output=True, text=True,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'"version": "{source_version()}"' in r.stdout


def record_ok(wheel):
    """Every file of the wheel is in its RECORD with the right hash and size."""
    with zipfile.ZipFile(wheel) as z:
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(z.read(record).decode())) if row}
        for name in z.namelist():
            if name.endswith("/") or name == record:
                continue
            data = z.read(name)
            digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert rows.get(name) == [digest, str(len(data))], name


@dist_only
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("wheel", _wheels(), ids=lambda w: os.path.basename(w).split("-")[2])
def test_wheel_runs_without_the_systems_libev(wheel, tmp_path, smoke):
    """Installed into a fresh venv of its Python, with every libev.so* the
    linker knows bound to /dev/null: zcsend loads the libev the wheel carries and
    sends (asyncio and uvloop). On a Python other than the one running this, the
    contract and error tests then run against it, hidden the same way."""
    tag = os.path.basename(wheel).split("-")[2]
    m = re.fullmatch(r"cp3(\d+)", tag)
    python = _pythons().get((3, int(m.group(1))))
    assert python, f"no Python 3.{m.group(1)} here for {wheel}"
    assert re.search(r"-manylinux_\d+_\d+_x86_64\.whl$|-manylinux\d+_x86_64\.whl$", wheel), wheel
    record_ok(wheel)
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert [n for n in names if re.fullmatch(r"zcsend\.libs/libev-[0-9a-f]+\.so\.4[.0-9]*", n)], names
        assert [n for n in names if n.endswith(".dist-info/licenses/libev-COPYRIGHT")], names
        assert not [n for n in names if n.endswith(".c")], names
    venv = str(tmp_path / "venv")
    vpython = make_venv(python, venv)
    pip_install(vpython, wheel)
    ext = glob.glob(os.path.join(venv, "lib", "python3.*", "site-packages", "zcsend", "_zcsend*.so"))
    needed, runpath = elf_dynamic(ext[0])
    assert not [n for n in needed if n.startswith(("libssl", "libcrypto", "libev.so"))], needed
    assert any("$ORIGIN" in p for p in runpath), runpath

    hide = system_libev()
    assert hide, "ldconfig -p lists no libev: nothing to hide, nothing proved"
    r = in_namespace([vpython, smoke, venv, "hidden"], hide_files=hide, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "zcsend.libs/libev-" in r.stdout, r.stdout
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return  # this Python ran the whole suite already
    tests = shlex.split(os.environ.get("ZCSEND_WHEEL_TESTS", "") or CONTRACT_TESTS)
    r = in_namespace([vpython, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=300", *tests],
                     hide_files=hide, cwd=ROOT)
    summary = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"Python 3.{m.group(1)}, wheel, system libev hidden: {summary}")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
