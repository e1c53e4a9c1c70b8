"""FastAPI and Starlette FileResponse on uvicorn: stock against zcsend.uvicorn,
beside `python -m zcsend serve` and nginx, on the same files and load.

    python benchmarks/asgi.py [--runs 3] [--secs 5] [--loop uvloop] [--only a,b] [--quick] [--json out.json]

Each server is one process with one event loop (nginx: one worker, sendfile
on), started fresh for every run; runs go through all servers in turn. Per run
and server: `wrk -t1 -c100 -d<secs>s` on a 1 MiB and on a 16 KiB file (after a
one-second warm-up), giving requests/s and the server's CPU (user+sys of all its
threads, from /proc/PID/stat) per request completed. The raw ASGI row (a head
and a pathsend, no framework) shows what the server itself costs. Printed: a
markdown table of medians over the runs (min-max), and the CPU ratios stock /
zcsend.uvicorn.
Access logs are off everywhere (uvicorn --no-access-log, nginx access_log off).

This file is also the app module the uvicorn contenders serve
(`uvicorn asgi:fastapi_app --app-dir benchmarks`); ZCS_BENCH_ROOT names the files.
"""
import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
from _process import ServerProcess  # beside this script
SIZES = {"1 MiB": ("one-mib.bin", 1 << 20), "16 KiB": ("sixteen-kib.bin", 16 << 10)}


# ---------------------------------------------------------------- the apps served

def _apps():
    from fastapi import FastAPI
    from fastapi.responses import FileResponse
    from starlette.applications import Starlette
    from starlette.responses import FileResponse as StarletteFileResponse
    from starlette.routing import Route

    root = os.environ.get("ZCS_BENCH_ROOT", ".")
    fast = FastAPI()

    @fast.get("/{name}")
    async def fastapi_file(name: str):
        return FileResponse(os.path.join(root, name))

    async def starlette_file(request):
        return StarletteFileResponse(os.path.join(root, request.path_params["name"]))

    async def raw(scope, receive, send):
        """No framework: a head with the file's size, then a pathsend."""
        path = os.path.join(root, scope["path"].lstrip("/"))
        size = os.stat(path).st_size
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", b"%d" % size)]})
        await send({"type": "http.response.pathsend", "path": path})

    return fast, Starlette(routes=[Route("/{name}", starlette_file)]), raw


if __name__ != "__main__":  # imported by uvicorn as the app module
    fastapi_app, starlette_app, raw_pathsend_app = _apps()


# ---------------------------------------------------------------- servers

def contenders(tmp, root, loop):
    py = sys.executable
    uv = [py, "-m", "uvicorn", "--app-dir", HERE, "--host", "127.0.0.1", "--port", "{port}", "--loop", loop,
          "--no-access-log", "--log-level", "warning"]
    zc = ["--http", "zcsend.uvicorn:HttpToolsProtocol"]
    stock = ["--http", "httptools"]
    return {
        "FastAPI FileResponse, uvicorn": uv + ["asgi:fastapi_app"] + stock,
        "FastAPI FileResponse, uvicorn + zcsend.uvicorn": uv + ["asgi:fastapi_app"] + zc,
        "Starlette FileResponse, uvicorn": uv + ["asgi:starlette_app"] + stock,
        "Starlette FileResponse, uvicorn + zcsend.uvicorn": uv + ["asgi:starlette_app"] + zc,
        "raw ASGI app (pathsend), uvicorn + zcsend.uvicorn": uv + ["asgi:raw_pathsend_app"] + zc,
        "python -m zcsend serve": [py, "-m", "zcsend", "serve", root, "--port", "{port}", "--loop", loop],
        "nginx (1 worker, sendfile on)": ["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx-{port}.conf"),
                                          "-g", "daemon off;"],
    }


def nginx_conf(tmp, root, port):
    temp = os.path.join(tmp, "nginx-temp")
    os.makedirs(temp, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""  # the files live in a 0700 temp dir
    with open(os.path.join(tmp, f"nginx-{port}.conf"), "w") as f:
        f.write(f"""{user}
worker_processes 1;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
  uwsgi_temp_path {temp}; scgi_temp_path {temp};
  server {{ listen 127.0.0.1:{port} backlog=1024; root {root}; }}
}}
""")


class Running(ServerProcess):
    """A started server (its own session, so stop() ends nginx's worker too)."""

    def __init__(self, name, argv, port, env, log):
        super().__init__(name, [a.replace("{port}", str(port)) for a in argv], port, log,
                         cwd=HERE, env=env, start_timeout=30)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(port, path, secs):
    """(requests completed, requests/s, errors) of one wrk run."""
    out = subprocess.run(["wrk", "-t1", "-c100", f"-d{secs}s", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=secs + 60)
    text = out.stdout
    if out.returncode or "Requests/sec:" not in text:
        raise RuntimeError(f"wrk: {out.stderr.strip() or text}")
    done = int(text.split(" requests in ")[0].split()[-1])
    bad = [line.strip() for line in text.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    return done, float(text.split("Requests/sec:")[1].split()[0]), bad


def measure(running, path, secs):
    wrk(running.port, path, 1)  # warm-up: imports, page cache, the engine thread
    cpu0 = running.cpu()
    done, rps, bad = wrk(running.port, path, secs)
    cpu = running.cpu() - cpu0
    return {"rps": rps, "cpu_us": cpu / max(done, 1) * 1e6, "requests": done, "errors": bad}


# ---------------------------------------------------------------- report

def versions():
    out = {"python": platform.python_version(), "kernel": platform.release(), "cores": os.cpu_count()}
    for mod in ("uvicorn", "starlette", "fastapi", "httptools", "uvloop", "zcsend"):
        try:
            out[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            out[mod] = "-"
    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
        out["nginx"] = nginx.split("/")[-1]
    except OSError:
        out["nginx"] = "-"
    return out


def cell(values, fmt):
    if not values:
        return "—"
    med = statistics.median(values)
    text = fmt.format(med)
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return text


def report(results, names, opts, ver):
    lines = [f"`python benchmarks/asgi.py --runs {opts.runs} --secs {opts.secs} --loop {opts.loop}`; "
             f"wrk -t1 -c100, {opts.runs} run(s) of {opts.secs} s, medians (min–max); "
             + ", ".join(f"{k} {v}" for k, v in ver.items()), "",
             "| server | 1 MiB req/s | 1 MiB server CPU/req | 16 KiB req/s | 16 KiB server CPU/req |",
             "|---|---|---|---|---|"]
    for name in names:
        r = results.get(name, {})
        row = [name]
        for size in SIZES:
            got = r.get(size, [])
            row += [cell([g["rps"] for g in got], "{:,.0f}"), cell([g["cpu_us"] for g in got], "{:,.0f} µs")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for app in ("FastAPI", "Starlette"):
        stock = results.get(f"{app} FileResponse, uvicorn")
        zc = results.get(f"{app} FileResponse, uvicorn + zcsend.uvicorn")
        if not stock or not zc:
            continue
        for size, need in (("1 MiB", 3.0), ("16 KiB", 1.0)):
            if not stock.get(size) or not zc.get(size):
                continue
            a = statistics.median(g["cpu_us"] for g in stock[size])
            b = statistics.median(g["cpu_us"] for g in zc[size])
            c = statistics.median(g["rps"] for g in zc[size]) / statistics.median(g["rps"] for g in stock[size])
            verdict = "met" if a / b >= need else "NOT met"
            lines.append(f"- {app}, {size}: zcsend.uvicorn uses {a / b:.2f}× less server CPU per request than "
                         f"stock uvicorn (target ≥ {need:g}×: {verdict}); {c:.2f}× the requests/s")
    errors = [f"- {n} {s}: {e}" for n, r in results.items() for s, got in r.items() for g in got
              for e in g["errors"]]
    if errors:
        lines += ["", "wrk reported errors:"] + errors
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--secs", type=int, default=5, help="seconds per wrk run")
    p.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"], help="the loop of every Python server")
    p.add_argument("--only", help="comma-separated substrings of the server names to run")
    p.add_argument("--quick", action="store_true", help="one run of one second: a smoke test")
    p.add_argument("--json", help="write the raw numbers here")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.runs, opts.secs = 1, 1
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise SystemExit(f"asgi.py: {tool} is required")
    tmp = tempfile.mkdtemp(prefix="zcs-asgi-bench-")
    try:
        root = os.path.join(tmp, "files")
        os.makedirs(root)
        for name, size in SIZES.values():
            with open(os.path.join(root, name), "wb") as f:
                f.write(os.urandom(size))
        servers = contenders(tmp, root, opts.loop)
        if not shutil.which("nginx"):
            servers = {n: a for n, a in servers.items() if not n.startswith("nginx")}
        if opts.only:
            keep = [s.strip() for s in opts.only.split(",")]
            servers = {n: a for n, a in servers.items() if any(k in n for k in keep)}
        env = dict(os.environ, ZCS_BENCH_ROOT=root)
        results = {}
        with open(os.path.join(tmp, "servers.log"), "w") as log:
            for run in range(opts.runs):
                for name, argv in servers.items():
                    port = free_port()
                    if name.startswith("nginx"):
                        nginx_conf(tmp, root, port)
                    running = Running(name, argv, port, env, log)
                    try:
                        for size, (fname, _) in SIZES.items():
                            got = measure(running, "/" + fname, opts.secs)
                            results.setdefault(name, {}).setdefault(size, []).append(got)
                            print(f"run {run + 1}/{opts.runs} {name}, {size}: {got['rps']:,.0f} req/s, "
                                  f"{got['cpu_us']:,.0f} µs CPU/req", file=sys.stderr, flush=True)
                    finally:
                        running.stop()
        ver = versions()
        print(report(results, list(servers), opts, ver))
        if opts.json:
            with open(opts.json, "w") as f:
                json.dump({"versions": ver, "results": results, "runs": opts.runs, "secs": opts.secs}, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
