"""A server process every benchmark starts and measures: started in its own
session (so stop() ends a master's workers too), ready once it accepts on its
port, its CPU and memory read from /proc for it and its children."""
import os
import signal
import socket
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")


def pinned(tool):
    """--pin (two cores or more): the taskset prefixes that put a server, all its
    threads with it, on core 0 and the load generators on the other cores."""
    if os.cpu_count() < 2:
        raise SystemExit(f"{tool}: --pin needs two cores or more")
    return ["taskset", "-c", "0"], ["taskset", "-c", f"1-{os.cpu_count() - 1}"]


class ServerProcess:
    def __init__(self, name, argv, port, log, *, cwd=None, env=None, start_timeout=20):
        self.name, self.port = name, port
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=log,
                                     start_new_session=True)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start (code {self.proc.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} did not listen on {port}")
                time.sleep(0.05)

    def pids(self):
        """The server process and its children (nginx's worker)."""
        pids = [self.proc.pid]
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return pids

    def cpu(self):
        """CPU seconds (user + sys, all threads) of the server and its children."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except OSError:
                pass
        return total / TICK

    def _status(self, key):
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key + ":"):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total / 1024  # MiB

    def rss(self):
        return self._status("VmRSS")

    def peak_rss(self):
        return self._status("VmHWM")

    def reset_peak(self):
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            except OSError:
                pass

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
