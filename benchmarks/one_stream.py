"""One large file over loopback TCP: zcsend.sendfile vs asyncio's loop.sendfile
vs a 64 KiB read+write loop, in the same run. Prints a markdown table with the
median of --runs runs: throughput, and server CPU seconds (user+sys of the
sending process) per GiB.

    python benchmarks/one_stream.py [--size-mib 1024] [--runs 3]
"""
import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _client import fetch  # noqa: E402

SENDERS = ["zcsend", "loop.sendfile", "read+write 64KiB"]


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def serve_once(kind, path, port_fut):
    import zcsend
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    async def handle(r, w):
        await r.readexactly(1)
        t0, c0 = time.perf_counter(), cpu()
        with open(path, "rb") as f:
            if kind == "zcsend":
                await zcsend.sendfile(w, f)
            elif kind == "loop.sendfile":
                await loop.sendfile(w.transport, f)
            else:
                while True:
                    b = f.read(65536)
                    if not b:
                        break
                    w.write(b)
                    await w.drain()
        await w.drain()
        w.close()
        done.set_result((time.perf_counter() - t0, cpu() - c0))

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_fut.set_result(srv.sockets[0].getsockname()[1])
    res = await done
    srv.close()
    return res


def client(port, size):
    got = fetch(port)
    assert got == size, (got, size)


def run_one(kind, path, size):
    """The client is another process, so the CPU counted is the server's alone."""
    async def main():
        port_fut = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve_once(kind, path, port_fut))
        port = await port_fut
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--client", str(port), str(size))
        res = await task
        assert await proc.wait() == 0
        return res
    return asyncio.run(main())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--client", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client(*args.client)
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "big")
        with open(path, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL)  # warm the page cache
        results = {k: [] for k in SENDERS}
        for _ in range(args.runs):
            for k in SENDERS:  # interleaved, so drift hits everyone alike
                results[k].append(run_one(k, path, size))
    gib = size / (1 << 30)
    print(f"\n{args.size_mib} MiB over loopback TCP, median of {args.runs} runs (spread min–max)\n")
    print("| sender | GB/s | server CPU s per GiB |")
    print("|---|---|---|")
    for k in SENDERS:
        rates = [size / t / 1e9 for t, _ in results[k]]
        cpus = [c / gib for _, c in results[k]]
        print(f"| {k} | {statistics.median(rates):.2f} ({min(rates):.2f}–{max(rates):.2f}) "
              f"| {statistics.median(cpus):.3f} ({min(cpus):.3f}–{max(cpus):.3f}) |")
    z = statistics.median(size / t for t, _ in results["zcsend"])
    l = statistics.median(size / t for t, _ in results["loop.sendfile"])
    print(f"\nzcsend / loop.sendfile throughput ratio: {z / l:.2f}")


if __name__ == "__main__":
    sys.exit(main())
