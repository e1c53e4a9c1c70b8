"""nginx + lua-nginx-module + zcsend against nginx's own static file serving,
on the same files, the same load, the same machine minute. Prints a markdown
table of medians (min-max) and the ratios issue 11 asks about.

    python3 benchmarks/nginx_lua.py [--runs 3] [--secs 5] [--quick] [--out FILE]

Servers, each an nginx master with one worker, started fresh for every round
(rounds go through the servers in turn, so the machine's drift spreads):
  nginx static            `sendfile on; tcp_nopush on;`, keep-alive: nginx at its best
  nginx static, close     the same with `keepalive_timeout 0`: every response
                          closes its connection, as with a raw request socket
                          (lua-nginx-module turns keep-alive off for
                          ngx.req.socket(true)): the same connection cost
  nginx + lua + zcsend    lua/examples/nginx as shipped: files.lua, the response
                          head and zcsend.sendfile through ngx.req.socket(true)
Per round and server:
  1 MiB, 16 KiB  wrk -t1 -c100 for --secs seconds: requests/s, and the server's
                 CPU (user+sys of master and worker, /proc) per request
  latency        50 slow downloads of a large file (benchmarks/loadgen.c slow:
                 16 KiB receive buffers, 16 KiB read per connection every 100 ms)
                 while this script GETs a 64-byte file on a fresh connection
                 every 5 ms: p50, p99 and max of that round trip, i.e. how long
                 the worker leaves a ready request waiting; and the server's
                 CPU per second meanwhile (what waiting on 50 full sockets costs)
--mode sleep|probe sets zcsend.nginx's wait for full sockets in the worker
(default: the module's own); --lua-path DIR puts DIR first on the worker's
lua_package_path (to measure a zcsend.lua of your own).
"""
import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
EXAMPLE = os.path.join(REPO, "lua", "examples", "nginx")
from _process import ServerProcess  # beside this script
SLOW_CONNS = 50
STARVED = 5.0  # a probe with no answer after this many seconds counts as this long

STATIC_CONF = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  {keepalive}
  default_type application/octet-stream;
  client_body_temp_path {prefix}/t; proxy_temp_path {prefix}/t; fastcgi_temp_path {prefix}/t;
  uwsgi_temp_path {prefix}/t; scgi_temp_path {prefix}/t;
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    root {root};
  }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static_conf(prefix, port, root, close):
    return STATIC_CONF.format(prefix=prefix, port=port, root=root,
                              keepalive="keepalive_timeout 0;" if close else "")


def zcsend_conf(prefix, port, tls_port, root, crt, key, mode, lua_path):
    with open(os.path.join(EXAMPLE, "nginx.conf")) as f:
        conf = f.read()
    for name, value in (("PREFIX", prefix), ("PORT", port), ("TLS_PORT", tls_port), ("CERT", crt),
                        ("KEY", key), ("ROOT", root), ("LUA", os.path.join(REPO, "lua")),
                        ("HANDLER", EXAMPLE)):
        conf = conf.replace(f"@{name}@", str(value))
    conf = conf.replace("error_log " + prefix + "/error.log warn;", "error_log " + prefix + "/error.log error;")
    conf = conf.replace(f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} backlog=1024;")
    if lua_path:
        conf = conf.replace('lua_package_path "', f'lua_package_path "{lua_path}/?.lua;')
    if mode:
        conf = conf.replace("#@HTTP@", 'init_worker_by_lua_block { require("zcsend.nginx").mode = "%s" }' % mode)
    return conf


class Nginx(ServerProcess):
    """One nginx (master + 1 worker) on its own conf; stop() leaves nothing behind."""

    def __init__(self, name, prefix, conf, port, log):
        os.makedirs(os.path.join(prefix, "t"), exist_ok=True)
        path = os.path.join(prefix, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        super().__init__(name, ["nginx", "-p", prefix, "-c", path, "-e", os.path.join(prefix, "error.log")],
                         port, log)


def wrk(port, path, secs):
    out = subprocess.run(["wrk", "-t1", "-c100", f"-d{secs}s", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, timeout=secs + 60)
    text = out.stdout
    if out.returncode or "Requests/sec:" not in text:
        raise RuntimeError(f"wrk: {out.stderr.strip() or text}")
    bad = [line.strip() for line in text.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    return float(text.split("Requests/sec:")[1].split()[0]), bad


def get_once(port, path, body):
    """One GET on a fresh connection ("Connection: close"); checks status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=STARVED) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        parts = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            parts.append(chunk)
    data = b"".join(parts)
    head, _, got = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 ") or got != body:
        raise RuntimeError(f"bad answer to {path}: {head[:60]!r}, {len(got)} body bytes")


def latency(port, loadgen, big, tiny_body, secs):
    """p50, p99, max seconds of a 64-byte GET every 5 ms during SLOW_CONNS slow
    downloads; the server CPU they cost is measured by the caller."""
    slow = subprocess.Popen([loadgen, "slow", str(port), big, str(SLOW_CONNS), str(secs + 1.0)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the downloads open and fill their sockets
    rtts, end = [], time.monotonic() + secs
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            get_once(port, "/tiny.txt", tiny_body)
            rtts.append(time.perf_counter() - t0)
        except socket.timeout:
            rtts.append(STARVED)
        time.sleep(0.005)
    out, err = slow.communicate(timeout=secs + 30)
    if slow.returncode:
        raise RuntimeError(f"loadgen slow: {err.strip()}")
    opened = int(out.split()[0])
    if opened != SLOW_CONNS:
        raise RuntimeError(f"loadgen slow opened {opened} of {SLOW_CONNS}")
    rtts.sort()
    return rtts[len(rtts) // 2], rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], rtts[-1], len(rtts)


def one_round(server, opts, loadgen, tiny_body):
    r = {}
    for label, path in (("1m", "/1m.bin"), ("16k", "/16k.bin")):
        c0 = server.cpu()
        rps, bad = wrk(server.port, path, opts.secs)
        r["rps_" + label] = rps
        if rps > 0:
            r["cpu_us_" + label] = (server.cpu() - c0) / (rps * opts.secs) * 1e6
        if bad:
            r.setdefault("errors", []).extend(f"{path}: {b}" for b in bad)
    c0, t0 = server.cpu(), time.monotonic()
    p50, p99, worst, count = latency(server.port, loadgen, "/big.bin", tiny_body, opts.secs)
    r["slow_cpu_pct"] = (server.cpu() - c0) / (time.monotonic() - t0) * 100
    r["lat_p50_ms"], r["lat_p99_ms"], r["lat_max_ms"] = p50 * 1e3, p99 * 1e3, worst * 1e3
    r["lat_count"] = count
    return r


COLUMNS = [
    ("rps_1m", "1 MiB req/s", "{:,.0f}"),
    ("cpu_us_1m", "1 MiB CPU µs/req", "{:,.0f}"),
    ("rps_16k", "16 KiB req/s", "{:,.0f}"),
    ("cpu_us_16k", "16 KiB CPU µs/req", "{:,.0f}"),
    ("lat_p50_ms", "latency p50 ms", "{:.2f}"),
    ("lat_p99_ms", "latency p99 ms", "{:.2f}"),
    ("lat_max_ms", "latency max ms", "{:.2f}"),
    ("slow_cpu_pct", "CPU % during 50 slow downloads", "{:.1f}"),
]


def med(rounds, key):
    vals = [r[key] for r in rounds if key in r]
    return (statistics.median(vals), min(vals), max(vals)) if vals else None


def cell(stat, fmt):
    if stat is None:
        return "—"
    m, lo, hi = stat
    return fmt.format(m) if lo == hi else f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"


def report(results, opts):
    lines = [f"nginx {nginx_version()}, lua-nginx-module {lua_module_version()}, {os.cpu_count()} cores; "
             f"medians of {opts.runs} round(s), (min–max); wrk -t1 -c100 -d{opts.secs}s"
             + (f"; zcsend.nginx mode {opts.mode}" if opts.mode else ""), ""]
    lines.append("| server | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name, rounds in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(med(rounds, k), f) for k, _, f in COLUMNS) + " |")
    errors = [(n, e) for n, rounds in results.items() for r in rounds for e in r.get("errors", [])]
    if errors:
        lines += ["", "wrk reported:"] + [f"- {n}: {e}" for n, e in errors]
    z = results.get("nginx + lua + zcsend")
    lines += ["", "| ratio (zcsend / nginx) | vs static | vs static, close | target |", "|---|---|---|---|"]
    for key, label, target in (("rps_1m", "1 MiB req/s", "≥ 0.9× static"),
                               ("cpu_us_1m", "1 MiB CPU per request", "≤ 1.2× static"),
                               ("rps_16k", "16 KiB req/s", ""),
                               ("cpu_us_16k", "16 KiB CPU per request", "")):
        row = []
        for base in ("nginx static", "nginx static, close"):
            a, b = med(z or [], key), med(results.get(base, []), key)
            row.append(f"{a[0] / b[0]:.2f}×" if a and b and b[0] else "—")
        met = ""
        if target:
            a, b = med(z or [], key), med(results.get("nginx static", []), key)
            if a and b and b[0]:
                x = a[0] / b[0]
                met = " (met)" if (x >= 0.9 if key.startswith("rps") else x <= 1.2) else " (**not met**)"
        lines.append(f"| {label} | {row[0]} | {row[1]} | {target}{met} |")
    lines += ["", "lua-nginx-module closes the connection after every response sent through "
              "ngx.req.socket(true): \"vs static, close\" (the same connection per request) is "
              "what zcsend and the Lua handler cost; \"vs static\" adds keep-alive's advantage."]
    return "\n".join(lines) + "\n"


def nginx_version():
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return out.stderr.strip().split("/")[-1]


def lua_module_version():
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-lua"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="rounds; each figure is their median")
    p.add_argument("--secs", type=int, default=5, help="seconds per wrk and latency phase")
    p.add_argument("--big-mib", type=int, default=256, help="the slow downloads' file")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 2 s phases (< 60 s)")
    p.add_argument("--mode", choices=("probe", "sleep"), help="zcsend.nginx.mode in the worker")
    p.add_argument("--lua-path", help="a directory put first on the worker's lua_package_path")
    p.add_argument("--only", help="comma-separated substrings of server names to run")
    p.add_argument("--out", help="also write the table to this file")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.runs, opts.secs, opts.big_mib = 1, 2, 64
    for tool in ("wrk", "nginx", "cc", "openssl", "make"):
        if not shutil.which(tool):
            raise SystemExit(f"nginx_lua.py: {tool} not found")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    subprocess.run(["make", "-s", "-C", os.path.join(REPO, "lua"), "LUA=luajit"], check=True)
    with tempfile.TemporaryDirectory(prefix="zcsend-nginx-bench-") as tmp:
        os.chmod(tmp, 0o755)  # nginx's worker (nobody) reads the files
        loadgen = os.path.join(tmp, "loadgen")
        subprocess.run(["cc", "-O2", "-o", loadgen, os.path.join(HERE, "loadgen.c"),
                        "-lssl", "-lcrypto", "-lpthread"], check=True)
        crt, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
        os.chmod(key, 0o644)
        root = os.path.join(tmp, "www")
        os.mkdir(root)
        os.chmod(root, 0o755)
        block = os.urandom(1 << 20)
        with open(os.path.join(root, "big.bin"), "wb") as f:
            for _ in range(opts.big_mib):
                f.write(block)
        tiny = os.urandom(64)
        for name, data in (("1m.bin", os.urandom(1 << 20)), ("16k.bin", os.urandom(16 << 10)), ("tiny.txt", tiny)):
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        servers = ["nginx static", "nginx static, close", "nginx + lua + zcsend"]
        if opts.only:
            wanted = [w.strip() for w in opts.only.split(",")]
            servers = [s for s in servers if any(w in s for w in wanted)]
        results = {s: [] for s in servers}
        log = open(os.path.join(tmp, "servers.log"), "w")
        for rnd in range(opts.runs):
            for name in servers:
                prefix = os.path.join(tmp, f"{name.replace(' ', '_').replace(',', '').replace('+', '')}-{rnd}")
                os.makedirs(prefix)
                port = free_port()
                if name.startswith("nginx static"):
                    conf = static_conf(prefix, port, root, close=name.endswith("close"))
                else:
                    conf = zcsend_conf(prefix, port, free_port(), root, crt, key, opts.mode, opts.lua_path)
                t = time.monotonic()
                server = Nginx(name, prefix, conf, port, log)
                try:
                    r = one_round(server, opts, loadgen, tiny)
                finally:
                    server.stop()
                results[name].append(r)
                print(f"round {rnd + 1}/{opts.runs} {name}: {time.monotonic() - t:.1f} s "
                      + ", ".join(f"{k} {v:.3g}" for k, v in r.items() if isinstance(v, float)),
                      file=sys.stderr, flush=True)
        log.close()
    text = report(results, opts)
    print(text)
    if opts.out:
        with open(opts.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
