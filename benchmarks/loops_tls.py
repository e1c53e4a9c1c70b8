"""TLS and uvloop, in one run: each figure is a fresh server process sending one
file to a client in this process; the server reports its wall time, its CPU
(user+sys) and its peak RSS. Prints markdown tables of medians (min-max).

    python benchmarks/loops_tls.py [--size-mib 1024] [--runs 3]

Contenders:
- TLS on stock asyncio: zcsend.sendfile vs asyncio's loop.sendfile (its
  16 KiB run_in_executor fallback), fast reader; then the same two with a slow
  reader (256 KiB per ms), for peak RSS.
- plain TCP on uvloop: zcsend.sendfile vs a 256 KiB read + write loop (what
  aiohttp does on uvloop, whose loop.sendfile raises NotImplementedError).
"""
import argparse
import asyncio
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _client import fetch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def cert_files(d):
    crt, key = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
    if not os.path.exists(crt):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
    return crt, key


# ---- server side (a subprocess per figure) -------------------------------------
def serve(kind, loop_kind, tls_dir, path):
    import zcsend
    if os.environ.get("ZCS_WRITE_CHUNK"):  # for measuring the TLS chunk size
        zcsend._core.WRITE_CHUNK = int(os.environ["ZCS_WRITE_CHUNK"])
    sctx = None
    if tls_dir != "-":
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(*cert_files(tls_dir))

    def rusage():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime, r.ru_maxrss

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        async def handle(r, w):
            await r.readexactly(1)
            t0, (c0, m0) = time.perf_counter(), rusage()
            with open(path, "rb") as f:
                if kind == "zcsend":
                    await zcsend.sendfile(w, f)
                elif kind == "loop.sendfile":
                    await loop.sendfile(w.transport, f)
                else:  # read + write, 256 KiB
                    while True:
                        b = f.read(256 << 10)
                        if not b:
                            break
                        w.write(b)
                        await w.drain()
            w.close()
            await w.wait_closed()  # TLS: the last records and close_notify are out
            t1, (c1, m1) = time.perf_counter(), rusage()
            done.set_result({"secs": t1 - t0, "cpu": c1 - c0, "rss0_kib": m0, "peak_kib": m1})

        srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
        print(srv.sockets[0].getsockname()[1], flush=True)
        print(json.dumps(await done), flush=True)
        srv.close()

    if loop_kind == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


# ---- client side ------------------------------------------------------------------
def measure(kind, loop_kind, tls_dir, path, size, slow):
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, loop_kind, tls_dir, path],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    wrap = None
    if tls_dir != "-":
        ctx = ssl.create_default_context(cafile=cert_files(tls_dir)[0])
        ctx.check_hostname = False
        wrap = ctx.wrap_socket
    got = fetch(port, wrap, slow)
    res = json.loads(proc.stdout.readline())
    proc.wait()
    assert got == size, (kind, got, size)
    return res


def chunk_sweep(a):
    tmp = tempfile.mkdtemp(prefix="zcs-bench-")
    path = os.path.join(tmp, "f")
    size = a.size_mib << 20
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) * a.size_mib)
    cert_files(tmp)
    print("| write chunk | TLS GB/s (asyncio) | server CPU s/GiB |\n|---|---|---|")
    for chunk in (16 << 10, 64 << 10, 256 << 10, 1 << 20):
        os.environ["ZCS_WRITE_CHUNK"] = str(chunk)
        rs = [measure("zcsend", "asyncio", tmp, path, size, False) for _ in range(a.runs)]
        gbs = [size / r["secs"] / 1e9 for r in rs]
        cpu = [r["cpu"] / (size / (1 << 30)) for r in rs]
        print(f"| {chunk >> 10} KiB | {fmt(gbs)} | {fmt(cpu, '{:.3f}')} |")
    os.environ.pop("ZCS_WRITE_CHUNK")
    os.unlink(path)


def fmt(values, f="{:.2f}"):
    m = statistics.median(values)
    return f"{f.format(m)} ({f.format(min(values))}–{f.format(max(values))})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--serve", nargs=4)
    ap.add_argument("--chunk-sweep", action="store_true", help="only zcsend over TLS, per write chunk size")
    a = ap.parse_args()
    if a.serve:
        return serve(*a.serve)
    if a.chunk_sweep:
        return chunk_sweep(a)
    tmp = tempfile.mkdtemp(prefix="zcs-bench-")
    path = os.path.join(tmp, "f")
    size = a.size_mib << 20
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(a.size_mib):
            f.write(block)
    cert_files(tmp)
    gib = size / (1 << 30)
    rows = [
        ("TLS, asyncio", "zcsend", "asyncio", tmp, False),
        ("TLS, asyncio", "loop.sendfile", "asyncio", tmp, False),
        ("TLS, asyncio, slow reader", "zcsend", "asyncio", tmp, True),
        ("TLS, asyncio, slow reader", "loop.sendfile", "asyncio", tmp, True),
        ("TLS, uvloop", "zcsend", "uvloop", tmp, False),
        ("TLS, uvloop", "read+write 256KiB", "uvloop", tmp, False),
        ("TCP, uvloop", "zcsend", "uvloop", "-", False),
        ("TCP, uvloop", "read+write 256KiB", "uvloop", "-", False),
    ]
    results = {}
    for _ in range(a.runs):  # interleaved, so drift hits every contender alike
        for row in rows:
            results.setdefault(row, []).append(measure(row[1], row[2], row[3], path, size, row[4]))
    print(f"\n{a.size_mib} MiB, one connection, medians of {a.runs} (min–max)\n")
    print("| case | sender | GB/s | server CPU s/GiB | server peak RSS MiB (start) |")
    print("|---|---|---|---|---|")
    med = {}
    for row in rows:
        rs = results[row]
        gbs = [size / r["secs"] / 1e9 for r in rs]
        cpu = [r["cpu"] / gib for r in rs]
        peak = [r["peak_kib"] / 1024 for r in rs]
        start = statistics.median(r["rss0_kib"] / 1024 for r in rs)
        med[row[:2]] = statistics.median(gbs), statistics.median(cpu), statistics.median(peak)
        print(f"| {row[0]} | {row[1]} | {fmt(gbs)} | {fmt(cpu, '{:.3f}')} | {fmt(peak, '{:.0f}')} ({start:.0f}) |")
    print()
    for case, other in (("TLS, asyncio", "loop.sendfile"), ("TLS, uvloop", "read+write 256KiB"),
                        ("TCP, uvloop", "read+write 256KiB")):
        z, o = med[(case, "zcsend")], med[(case, other)]
        print(f"- {case}: zcsend {z[0] / o[0]:.2f}× the throughput of {other}, "
              f"{z[1] / o[1]:.2f}× its CPU per GiB")
    z, o = med[("TLS, asyncio, slow reader", "zcsend")], med[("TLS, asyncio, slow reader", "loop.sendfile")]
    print(f"- TLS slow reader: peak RSS zcsend {z[2]:.0f} MiB, loop.sendfile {o[2]:.0f} MiB")
    os.unlink(path)


if __name__ == "__main__":
    main()
