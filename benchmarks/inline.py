"""Inline first step vs handing every transfer to the engine at once.

A client process makes sequential requests over one loopback connection; the
server answers each with zcsend.sendfile of a file of the given size. Prints
requests/s and server CPU (user+sys) per request, median of --runs (min–max),
for each size, with zcsend's inline step (1 MiB budget) on and off.

    python benchmarks/inline.py [--requests 20000] [--runs 3]
"""
import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = [(16 << 10, "16 KiB"), (256 << 10, "256 KiB"), (1 << 20, "1 MiB"), (8 << 20, "8 MiB")]


def serve(path, size, inline, requests):
    import zcsend
    zcsend._core.INLINE_BUDGET = (1 << 20) if inline == "on" else 0

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        async def handle(r, w):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                for _ in range(requests):
                    await r.readexactly(1)
                    await zcsend.sendfile(w, f, 0, size)
            t1 = time.perf_counter()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            w.close()
            done.set_result((t1 - t0, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime))

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(srv.sockets[0].getsockname()[1], flush=True)
        secs, cpu = await done
        print(secs, cpu, flush=True)
        srv.close()
    asyncio.run(main())


def measure(path, size, inline, requests):
    proc = subprocess.Popen([sys.executable, __file__, "--serve", path, str(size), inline, str(requests)],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 20)
    for _ in range(requests):
        s.sendall(b"g")
        left = size
        while left:
            n = s.recv_into(buf, min(left, len(buf)))
            assert n, "connection closed early"
            left -= n
    secs, cpu = map(float, proc.stdout.readline().split())
    s.close()
    proc.wait()
    return requests / secs, cpu / requests * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--serve", nargs=4)
    a = ap.parse_args()
    if a.serve:
        return serve(a.serve[0], int(a.serve[1]), a.serve[2], int(a.serve[3]))
    tmp = tempfile.mkdtemp(prefix="zcs-inline-")
    path = os.path.join(tmp, "f")
    with open(path, "wb") as f:
        f.write(os.urandom(SIZES[-1][0]))
    print("| file | inline | requests/s | server CPU µs/request |\n|---|---|---|---|")
    for size, label in SIZES:
        n = max(200, a.requests * (16 << 10) // size) if size > (16 << 10) else a.requests
        res = {"on": [], "off": []}
        for _ in range(a.runs):
            for mode in ("on", "off"):
                res[mode].append(measure(path, size, mode, n))
        for mode in ("on", "off"):
            rps = [r[0] for r in res[mode]]
            cpu = [r[1] for r in res[mode]]
            print(f"| {label} | {mode} | {statistics.median(rps):,.0f} ({min(rps):,.0f}–{max(rps):,.0f}) | "
                  f"{statistics.median(cpu):.0f} ({min(cpu):.0f}–{max(cpu):.0f}) |")
    os.unlink(path)


if __name__ == "__main__":
    main()
