"""zcsend against the field, in one run: every server on the same files, the
same load generators, the same machine minute. Writes a markdown table, a PNG
chart and the raw numbers, and prints the table.

    python benchmarks/run.py [--runs 3] [--out benchmarks/results] [--only a,b] [--pin] [--quick]

(`bash scripts/bench.sh` installs what this needs, then runs it.)

Each server is its own process with one event loop thread (nginx: one worker),
started fresh for every round; rounds go through all servers in turn, so the
machine's drift spreads over everyone. Per round and server:
  stream    three GETs (TLS: one) of a 1 GiB file by benchmarks/loadgen.c (C,
            256 KiB reads): GB/s, and the server's CPU seconds (user+sys, /proc)
            per GiB sent
  1 MiB     wrk -t1 -c100 for --secs seconds on a 1 MiB file: requests/s, and
            the server's CPU per request (wrk can be the ceiling; CPU shows past it)
  16 KiB    the same on a 16 KiB file
  latency   50 connections downloading the 1 GiB file back to back
            (loadgen drain, at nice 10) while one more connection GETs a 64-byte
            file every 2 ms (loadgen latency): p50 and p99 of that round trip,
            i.e. how long the event loop leaves a ready request waiting; a probe
            with no answer STARVED s after the phase counts as that wait
  peak RSS  the server's VmHWM over the four phases above (reset between rounds)
Once, in the last round: 1,000 slow downloads of the 1 GiB file (16 KiB
receive buffers, 16 KiB read per connection every 100 ms) held for
--slow-secs; the server's peak RSS then, and the growth per connection over
its idle RSS (not for the two read+write TLS servers: a minute of handshakes
that shows nothing loop.sendfile TLS doesn't).
Every figure printed is the median of the rounds, with min-max.
"""
import argparse
import importlib.util
import json
import os
import platform
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
GIB = 1 << 30
from _process import ServerProcess, pinned  # beside this script
STREAMS = 3  # 1 GiB GETs per server and round
STARVED = 5  # seconds past the latency phase after which the probe counts as starved


# ---------------------------------------------------------------- servers

class Server:
    """One contender: how to start it and which metrics it takes part in."""

    def __init__(self, name, argv, tls=False, group="plain", single_only=False, slow=True, cwd=REPO):
        self.name, self.argv, self.tls, self.group = name, argv, tls, group
        self.single_only = single_only  # serves one connection at a time
        self.slow = slow and not single_only  # takes the 1,000 slow downloads
        self.cwd = cwd


def contenders(tmp, crt, key, root):
    py = sys.executable
    srv = [py, os.path.join(HERE, "servers.py")]
    tls = ["--tls", crt, key]
    zc = [py, "-m", "zcsend", "serve", root, "--port", "{port}"]
    zc_tls = ["--tls-cert", crt, "--tls-key", key]
    servers = [
        Server("zcsend, asyncio", zc),
        Server("zcsend, uvloop", zc + ["--loop", "uvloop"]),
        Server("asyncio loop.sendfile", srv + ["loop-sendfile", root, "{port}"]),
        Server("asyncio read+write 64 KiB", srv + ["readwrite", root, "{port}"]),
        Server("uvloop read+write 256 KiB", srv + ["uvloop-readwrite", root, "{port}"]),
        Server("aiohttp FileResponse", srv + ["aiohttp", root, "{port}"]),
        Server("aiohttp + zcsend.install()", srv + ["aiohttp-zcsend", root, "{port}"]),
        Server("aiofastnet loop.sendfile", srv + ["aiofastnet", root, "{port}"])
        if importlib.util.find_spec("aiofastnet") else None,  # a wheel may not exist for this Python
        Server("nginx, sendfile on", ["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx-{port}.conf"),
                                      "-g", "daemon off;"]),
        Server("Lua module (zcsend.loop)", [os.environ.get("ZCSEND_LUA", "lua5.4"),
                                            "lua/examples/fileserver.lua", root, "{port}"]),
        Server("C blocking sendfile loop", [os.path.join(tmp, "c_sendfile"), root, "{port}"],
               single_only=True),
        Server("zcsend TLS, asyncio", zc + zc_tls, tls=True, group="tls"),
        Server("zcsend TLS, uvloop", zc + zc_tls + ["--loop", "uvloop"], tls=True, group="tls"),
        Server("asyncio loop.sendfile TLS", srv + ["loop-sendfile", root, "{port}"] + tls,
               tls=True, group="tls"),
        # (1,000 TLS handshakes on a Python loop take a minute; these two add
        # nothing there that loop.sendfile TLS doesn't show: the time goes elsewhere)
        Server("asyncio read+write 64 KiB TLS", srv + ["readwrite", root, "{port}"] + tls,
               tls=True, group="tls", slow=False),
        Server("uvloop read+write 256 KiB TLS", srv + ["uvloop-readwrite", root, "{port}"] + tls,
               tls=True, group="tls", slow=False),
        Server("nginx TLS", ["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx-{port}.conf"),
                             "-g", "daemon off;"], tls=True, group="tls"),
    ]
    return [sv for sv in servers if sv is not None]


def nginx_conf(tmp, root, port, tls, crt, key):
    """One worker, like every Python contender's one loop thread; sendfile on."""
    os.makedirs(os.path.join(tmp, "nginx-temp"), exist_ok=True)
    temp = os.path.join(tmp, "nginx-temp")
    ssl = f"ssl_certificate {crt}; ssl_certificate_key {key};" if tls else ""
    user = "user root;" if os.geteuid() == 0 else ""  # the files live in a 0700 temp dir
    conf = f"""{user}
worker_processes 1;
worker_rlimit_nofile 8192;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path {temp}; proxy_temp_path {temp}; fastcgi_temp_path {temp};
  uwsgi_temp_path {temp}; scgi_temp_path {temp};
  server {{
    listen 127.0.0.1:{port} backlog=1024 {"ssl" if tls else ""};
    {ssl}
    root {root};
  }}
}}
"""
    with open(os.path.join(tmp, f"nginx-{port}.conf"), "w") as f:
        f.write(conf)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --pin (two cores or more): every server runs on core 0, all its threads with it,
# and every load generator on the others. Off by default: the scheduler places
# threads where there is room, as it would in production, and zcsend's engine
# thread exists to use a second core. Pinned, the engine shares the loop's core.
SERVER_CPUS, CLIENT_CPUS = [], []


def pin():
    global SERVER_CPUS, CLIENT_CPUS
    SERVER_CPUS, CLIENT_CPUS = pinned("run.py")


class Running(ServerProcess):
    """A started server process (group); stop() leaves nothing behind."""

    def __init__(self, server, port, log):
        self.server = server
        argv = SERVER_CPUS + [a.replace("{port}", str(port)) for a in server.argv]
        super().__init__(server.name, argv, port, log, cwd=server.cwd)


# ---------------------------------------------------------------- load

def loadgen(tmp, mode, running, path, *args, timeout=600):
    argv = CLIENT_CPUS + [os.path.join(tmp, "loadgen"), mode] + (["--tls"] if running.server.tls else [])
    argv += [str(running.port), path] + [str(a) for a in args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"loadgen {mode} on {running.server.name}: {out.stderr.strip()}")
    return out.stdout.split()


def wrk(running, path, secs):
    scheme = "https" if running.server.tls else "http"
    argv = CLIENT_CPUS + ["wrk", "-t1", "-c100", f"-d{max(1, round(secs))}s",
                          f"{scheme}://127.0.0.1:{running.port}{path}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60)
    text = out.stdout
    if out.returncode or "Requests/sec:" not in text:
        raise RuntimeError(f"wrk on {running.server.name}: {out.stderr.strip() or text}")
    bad = [line.strip() for line in text.splitlines()
           if "Non-2xx" in line or "Socket errors" in line]
    rps = float(text.split("Requests/sec:")[1].split()[0])
    return rps, bad


def one_round(tmp, running, opts, big, slow):
    """The metrics of one server in one round, as a dict."""
    r = {}
    running.reset_peak()
    speeds, sent = [], 0
    # one stream is short and this machine is noisy: the median of 3 (TLS: 1, it is
    # slow); CPU over all of them, as /proc counts it in 10 ms ticks
    c0 = running.cpu()
    for _ in range(1 if running.server.tls else STREAMS):
        nbytes, secs = loadgen(tmp, "get", running, "/big.bin")
        sent += int(nbytes)
        speeds.append(int(nbytes) / float(secs) / 1e9)
    r["stream_gbps"] = statistics.median(speeds)
    r["cpu_per_gib"] = (running.cpu() - c0) / (sent / GIB)
    if not running.server.single_only:
        for label, path in (("rps_1m", "/1m.bin"), ("rps_16k", "/16k.bin")):
            c0 = running.cpu()
            rps, bad = wrk(running, path, opts.secs)
            r[label] = rps
            # server CPU per request: who was the bottleneck, the server or wrk
            # (none when no request ended in the phase: a --quick second of a slow server)
            if rps > 0:
                r[label.replace("rps", "cpu_us")] = (running.cpu() - c0) / (rps * max(1, round(opts.secs))) * 1e6
            if bad:
                r.setdefault("errors", []).extend(f"{path}: {b}" for b in bad)
        # the downloads' readers at a lower priority than the probe: with few cores
        # their decrypting would otherwise decide how soon the probe runs at all
        drain = subprocess.Popen(
            CLIENT_CPUS + ["nice", "-n", "10", os.path.join(tmp, "loadgen"), "drain"] + (["--tls"] if running.server.tls else [])
            + [str(running.port), "/big.bin", "50", str(opts.secs + 1.0)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # let the 50 downloads get going
        try:
            count, p50, p99, worst = loadgen(tmp, "latency", running, "/tiny.txt", opts.secs,
                                             timeout=opts.secs + STARVED)
        except subprocess.TimeoutExpired:  # the loop never came back to the probe
            count, p50, p99 = 0, (opts.secs + STARVED) * 1e6, (opts.secs + STARVED) * 1e6
            r["starved"] = True
        try:
            out, err = drain.communicate(timeout=opts.secs + STARVED)
        except subprocess.TimeoutExpired:  # readers stuck behind a starved loop: enough
            drain.kill()
            out, err = drain.communicate()
            out = out or "0"
        if drain.returncode and drain.returncode != -signal.SIGKILL:
            raise RuntimeError(f"loadgen drain on {running.server.name}: {err.strip()}")
        r["lat_p50_ms"], r["lat_p99_ms"] = float(p50) / 1e3, float(p99) / 1e3
        r["lat_count"] = int(count)
        r["drain_gbps"] = int(out.split()[0]) / (opts.secs + 1.0) / 1e9
    r["peak_rss_mib"] = running.peak_rss()
    if slow and running.server.slow:
        idle = running.rss()
        running.reset_peak()
        opened, _ = loadgen(tmp, "slow", running, "/big.bin", opts.slow_conns, opts.slow_secs)
        r["slow_conns"] = int(opened)
        r["slow_peak_mib"] = running.peak_rss()
        r["slow_kib_per_conn"] = (r["slow_peak_mib"] - idle) * 1024 / int(opened)
    return r


# ---------------------------------------------------------------- setup

def build(tmp):
    for src, out, libs in (("loadgen.c", "loadgen", ["-lssl", "-lcrypto", "-lpthread"]),
                           ("c_sendfile.c", "c_sendfile", [])):
        subprocess.run(["cc", "-O2", "-o", os.path.join(tmp, out), os.path.join(HERE, src)] + libs,
                       check=True)
    subprocess.run(["make", "-s", "-C", os.path.join(REPO, "lua")], check=True)


def make_files(root, big_mib):
    block = os.urandom(1 << 20)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        for _ in range(big_mib):
            f.write(block)
    for name, size in (("1m.bin", 1 << 20), ("16k.bin", 16 << 10), ("tiny.txt", 64)):
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(size))
    for name in os.listdir(root):  # warm the page cache
        with open(os.path.join(root, name), "rb") as f:
            while f.read(8 << 20):
                pass


def cert(tmp):
    crt, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", crt],
                   check=True, capture_output=True)
    return crt, key


def machine():
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GiB, Linux {platform.release()}, " \
           f"Python {platform.python_version()}"


# ---------------------------------------------------------------- report

COLUMNS = [  # key, heading, format
    ("stream_gbps", "1 GiB stream, GB/s", "{:.2f}"),
    ("cpu_per_gib", "server CPU s/GiB", "{:.2f}"),
    ("rps_1m", "1 MiB req/s, 100 conns", "{:,.0f}"),
    ("cpu_us_1m", "1 MiB server CPU µs/req", "{:,.0f}"),
    ("rps_16k", "16 KiB req/s, 100 conns", "{:,.0f}"),
    ("cpu_us_16k", "16 KiB server CPU µs/req", "{:,.0f}"),
    ("lat_p50_ms", "loop latency p50 ms", "{:.2f}"),
    ("lat_p99_ms", "loop latency p99 ms", "{:.2f}"),
    ("lat_count", "probes answered", "{:,.0f}"),
    ("peak_rss_mib", "peak RSS MiB", "{:.0f}"),
    ("slow_peak_mib", "RSS MiB, 1,000 slow", "{:.0f}"),
    ("slow_kib_per_conn", "KiB per slow conn", "{:.0f}"),
]


def summary(rounds):
    """{metric: (median, min, max)} over the rounds that have it."""
    out = {}
    for key, _, _ in COLUMNS:
        vals = [r[key] for r in rounds if key in r]
        if vals:
            out[key] = (statistics.median(vals), min(vals), max(vals))
    return out


def cell(stat, fmt):
    if stat is None:
        return "—"
    med, lo, hi = stat
    if lo == hi:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})"


def targets(s):
    """(target, measured ratio text, met) for each of issue 5's goals."""
    def med(name, key):
        return s.get(name, {}).get(key, (None,))[0]

    rows = []

    def ratio(label, a, b, need, higher=True):
        if a is None or b is None or b == 0:
            rows.append((label, "not measured", None))
            return
        x = a / b
        met = None if need is None else (x >= need if higher else x <= need)
        rows.append((label, f"{x:.2f}×", met))

    for z in ("zcsend, asyncio", "zcsend, uvloop"):
        ratio(f"{z}: 1 MiB req/s ≥ 0.9× nginx", med(z, "rps_1m"), med("nginx, sendfile on", "rps_1m"), 0.9)
        ratio(f"{z}: 1 MiB req/s ≥ 1.3× asyncio loop.sendfile", med(z, "rps_1m"),
              med("asyncio loop.sendfile", "rps_1m"), 1.3)
        ratio(f"{z}: 1 MiB server CPU per request vs asyncio loop.sendfile (lower is better; "
              "shows what wrk's ceiling hides)", med(z, "cpu_us_1m"),
              med("asyncio loop.sendfile", "cpu_us_1m"), None)
        ratio(f"{z}: 16 KiB req/s ≥ 1.0× asyncio read+write", med(z, "rps_16k"),
              med("asyncio read+write 64 KiB", "rps_16k"), 1.0)
        ratio(f"{z}: 1 GiB stream ≥ 0.95× C blocking loop", med(z, "stream_gbps"),
              med("C blocking sendfile loop", "stream_gbps"), 0.95)
        ratio(f"{z}: CPU per GiB ≤ 1.1× nginx", med(z, "cpu_per_gib"),
              med("nginx, sendfile on", "cpu_per_gib"), 1.1, higher=False)
        ratio(f"{z}: loop latency p99 < asyncio loop.sendfile (ratio < 1)", med(z, "lat_p99_ms"),
              med("asyncio loop.sendfile", "lat_p99_ms"), 0.999, higher=False)
    for z in ("zcsend TLS, asyncio", "zcsend TLS, uvloop"):
        ratio(f"{z}: 1 MiB req/s ≥ 5× asyncio loop.sendfile TLS", med(z, "rps_1m"),
              med("asyncio loop.sendfile TLS", "rps_1m"), 5.0)
        ratio(f"{z}: 1 MiB req/s vs nginx TLS (as close as Python's TLS allows)", med(z, "rps_1m"),
              med("nginx TLS", "rps_1m"), None)
    return rows


def report(results, opts, started, elapsed):
    s = {name: summary(rounds) for name, rounds in results.items()}
    shown, skip = [], False
    for a in sys.argv[1:]:  # the command as run, less where it wrote
        if skip or a.startswith("--out"):
            skip = a == "--out"
            continue
        shown.append(a)
    cmd = " ".join(["python benchmarks/run.py"] + shown)
    lines = [f"Measured {started} on {machine()}; `{cmd}` "
             f"({elapsed / 60:.1f} min). Medians of {opts.runs} rounds, (min–max).", ""]
    lines.append("| server | " + " | ".join(h for _, h, _ in COLUMNS) + " |")
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name in results:
        lines.append(f"| {name} | " + " | ".join(cell(s[name].get(k), f) for k, _, f in COLUMNS) + " |")
    starved = sorted({n for n, rounds in results.items() for r in rounds if r.get("starved")})
    if starved:
        lines += ["", f"Starved: the latency probe got no answer within {STARVED} s after the "
                  f"downloads ended (its figure is that wait): {', '.join(starved)}."]
    errors = [(n, e) for n, rounds in results.items() for r in rounds for e in r.get("errors", [])]
    if errors:
        lines += ["", "Errors reported by wrk:"] + [f"- {n}: {e}" for n, e in errors]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for label, text, met in targets(s):
        lines.append(f"| {label} | {text} | {'—' if met is None else ('yes' if met else '**no**')} |")
    return "\n".join(lines) + "\n", s


def chart(s, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("stream_gbps", "1 GiB stream, GB/s (higher is better)"),
              ("cpu_per_gib", "server CPU s per GiB (lower is better)"),
              ("rps_1m", "1 MiB files, req/s at 100 conns"),
              ("rps_16k", "16 KiB files, req/s at 100 conns"),
              ("lat_p99_ms", "loop latency p99 ms, 50 downloads (lower; log scale)"),
              ("slow_peak_mib", "RSS MiB at 1,000 slow downloads (lower)")]
    names = list(s)
    fig, axes = plt.subplots(2, 3, figsize=(20, 11))
    for ax, (key, title) in zip(axes.flat, panels):
        ys, meds, errs, colors = [], [], [[], []], []
        for i, n in enumerate(names):
            if key in s[n]:
                m, lo, hi = s[n][key]
                ys.append(n)
                meds.append(m)
                errs[0].append(m - lo)
                errs[1].append(hi - m)
                colors.append("tab:orange" if n.startswith("zcsend") or "zcsend" in n or "Lua" in n
                              else "tab:gray" if "nginx" in n or n.startswith("C ") else "tab:blue")
        ax.barh(range(len(ys)), meds, xerr=errs, color=colors, capsize=2)
        if key == "lat_p99_ms":
            ax.set_xscale("log")  # 5 ms next to a starved 7 s
        ax.set_yticks(range(len(ys)))
        ax.set_yticklabels(ys, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("zcsend vs the field (orange: zcsend; grey: native; blue: Python alternatives)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="rounds; each figure is their median")
    p.add_argument("--secs", type=float, default=2.0, help="seconds per wrk and latency phase")
    p.add_argument("--big-mib", type=int, default=1024, help="size of the large file")
    p.add_argument("--slow-conns", type=int, default=1000)
    p.add_argument("--slow-secs", type=float, default=2.0)
    p.add_argument("--only", help="comma-separated substrings of server names to run")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--replot", metavar="RESULTS_JSON",
                   help="only draw the chart again from a run's results.json (into --out)")
    p.add_argument("--pin", action="store_true",
                   help="servers on core 0, load generators on the other cores")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 round, 1 s phases, a 64 MiB file, 100 slow downloads")
    opts = p.parse_args(argv)
    if opts.replot:
        with open(opts.replot) as f:
            runs = json.load(f)["runs"]
        chart({name: summary(rounds) for name, rounds in runs.items()},
              os.path.join(opts.out, "chart.png"))
        return
    if opts.pin:
        pin()
    if opts.quick:
        opts.runs, opts.secs, opts.big_mib, opts.slow_conns, opts.slow_secs = 1, 1.0, 64, 100, 1.0
    for tool in ("wrk", "nginx", "cc", "openssl"):
        if not shutil.which(tool):
            raise SystemExit(f"run.py: {tool} not found; `bash scripts/bench.sh` installs it")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    t0 = time.monotonic()
    os.makedirs(opts.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zcsend-bench-") as tmp:
        root = os.path.join(tmp, "www")
        os.mkdir(root)
        build(tmp)
        crt, key = cert(tmp)
        make_files(root, opts.big_mib)
        servers = contenders(tmp, crt, key, root)
        if opts.only:
            wanted = [w.strip() for w in opts.only.split(",")]
            servers = [sv for sv in servers if any(w in sv.name for w in wanted)]
        results = {sv.name: [] for sv in servers}
        log = open(os.path.join(tmp, "servers.log"), "w")
        for rnd in range(opts.runs):
            for sv in servers:
                port = free_port()
                if sv.name.startswith("nginx"):
                    nginx_conf(tmp, root, port, sv.tls, crt, key)
                t = time.monotonic()
                running = Running(sv, port, log)
                try:
                    r = one_round(tmp, running, opts, opts.big_mib, slow=rnd == opts.runs - 1)
                finally:
                    running.stop()
                results[sv.name].append(r)
                print(f"round {rnd + 1}/{opts.runs} {sv.name}: {time.monotonic() - t:.1f} s "
                      + json.dumps({k: round(v, 3) for k, v in r.items() if isinstance(v, float)}),
                      file=sys.stderr, flush=True)
        log.close()
    elapsed = time.monotonic() - t0
    text, s = report(results, opts, started, elapsed)
    with open(os.path.join(opts.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(opts.out, "results.json"), "w") as f:
        json.dump({"started": started, "machine": machine(), "runs": results}, f, indent=1)
    chart(s, os.path.join(opts.out, "chart.png"))
    print(text)
    print(f"wrote {opts.out}/results.md, results.json, chart.png in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()
