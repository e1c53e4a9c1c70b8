"""One 1 GiB transfer through the Lua module, the Python binding, and a plain
blocking C sendfile loop, in the same run. Each server is its own process and
reports its wall time and CPU; the client (this process) reads to EOF.

    python benchmarks/bindings.py [--size-mib 1024] [--runs 3]     (from the repo root)
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _client import fetch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PY_SERVER = r'''
import asyncio, resource, sys, time, zcsend
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
async def main():
    done = asyncio.get_running_loop().create_future()
    async def handle(r, w):
        await r.readexactly(1)
        t0, c0 = time.perf_counter(), cpu()
        with open(sys.argv[1], "rb") as f:
            await zcsend.sendfile(w, f)
        w.close()
        done.set_result(f"{time.perf_counter() - t0} {cpu() - c0}")
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    print(await done, flush=True)
asyncio.run(main())
'''


def measure(cmd, size):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    port = int(p.stdout.readline())
    got = fetch(port)
    secs, cpu = map(float, p.stdout.readline().split())
    p.wait()
    assert got == size, (cmd, got, size)
    return size / secs / 1e9, cpu / (size / (1 << 30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="zcs-bind-")
    path = os.path.join(tmp, "f")
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(a.size_mib):
            f.write(block)
    cbin = os.path.join(tmp, "c_sendfile")
    subprocess.run(["cc", "-O2", "-o", cbin, os.path.join(HERE, "c_sendfile.c")], check=True)
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "lua")], check=True)
    contenders = {
        "C blocking sendfile loop": [cbin, path],
        "Lua module (zcsend.loop)": ["lua5.4", "benchmarks/lua_server.lua", path],
        "Python binding (asyncio)": [sys.executable, "-c", PY_SERVER, path],
    }
    res = {k: [] for k in contenders}
    for _ in range(a.runs):
        for k, cmd in contenders.items():
            res[k].append(measure(cmd, a.size_mib << 20))
    print(f"\n{a.size_mib} MiB over loopback, one connection, medians of {a.runs} (min–max)\n")
    print("| sender | GB/s | server CPU s/GiB | vs C |\n|---|---|---|---|")
    c_med = statistics.median(r[0] for r in res["C blocking sendfile loop"])
    for k, rs in res.items():
        g = [r[0] for r in rs]
        c = [r[1] for r in rs]
        print(f"| {k} | {statistics.median(g):.2f} ({min(g):.2f}–{max(g):.2f}) | "
              f"{statistics.median(c):.3f} ({min(c):.3f}–{max(c):.3f}) | {statistics.median(g) / c_med:.2f}× |")
    os.unlink(path)


if __name__ == "__main__":
    main()
