"""Start, watch and stop the servers under test; read their CPU time from /proc.

Every process runs in its own session (``start_new_session``), so a server and everything it forks (Triton's
python-backend stubs) share one session id: that is what CPU accounting sums over and what cleanup kills.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stats():
    """The fields of every process's /proc/<pid>/stat after the command name (field 3 onwards)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: fields start after the last ')'.
        yield stat[stat.rfind(b")") + 2 :].split()


def cpu_ticks() -> list[int]:
    """The machine's CPU time by state, in clock ticks (user, nice, system, idle, iowait, irq, softirq, steal), from
    `/proc/stat`."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:9]]


def session_cpu_seconds(sid: int) -> float:
    """utime + stime of every live process in session ``sid`` (all threads), in seconds."""
    # fields[0] is field 3 (state): session is field 6, utime 14, stime 15.
    ticks = sum(int(f[11]) + int(f[12]) for f in _proc_stats() if int(f[3]) == sid)
    return ticks / CLK_TCK


def free_port() -> int:
    """A port that was free a moment ago (for Triton, which cannot take a listening socket)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_socket() -> socket.socket:
    """A socket already listening on 127.0.0.1 with an ephemeral port, to hand to a server as a file descriptor."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1024)
    return s


# If the driver itself is killed outright (SIGKILL), its children still get SIGTERM from the kernel.
PDEATHSIG = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []


class Processes:
    """Every child process this run started, so that one call can stop them all (also on Ctrl-C)."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        with self.lock:
            proc = subprocess.Popen(PDEATHSIG + argv, start_new_session=True, **kwargs)
            self.children.append(proc)
            return proc

    def stop(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        stop_all([proc], grace)
        with self.lock:
            if proc in self.children:
                self.children.remove(proc)

    def stop_all(self, grace: float = 10.0) -> None:
        with self.lock:
            children, self.children = self.children, []
        stop_all(children, grace)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _session_alive(sid: int) -> bool:
    return any(int(f[3]) == sid and f[0] != b"Z" for f in _proc_stats())


def stop_all(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds for the groups to go, then SIGKILL."""
    for proc in procs:
        _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        # The leader may be gone while its children (stubs) linger: kill what is left of the group.
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        end = time.monotonic() + 5
        while _session_alive(proc.pid) and time.monotonic() < end:
            time.sleep(0.05)


class Server:
    """One server under test: its name, process, gRPC address and log file."""

    def __init__(self, key: str, label: str, procs: Processes, log: Path) -> None:
        self.key = key
        self.label = label
        self.procs = procs
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.failed = ""

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return session_cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None

    def start_with_ready_line(self, argv: list[str], marker: str, timeout: float, env=None, http: bool = False) -> None:
        """Start a server on a pre-bound listener passed as ``--grpc-listen-fd``; wait for its ready line.
        With ``http``, a second one goes as ``--http-listen-fd`` and its address lands in ``self.http``."""
        listeners = [listening_socket() for _ in range(2 if http else 1)]
        ports = [listener.getsockname()[1] for listener in listeners]
        fds = [listener.fileno() for listener in listeners]
        extra = ["--grpc-listen-fd", str(fds[0])] + (["--http-listen-fd", str(fds[1])] if http else [])
        log = open(self.log_path, "wb")
        try:
            self.proc = self.procs.popen(
                argv + extra,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        finally:
            for listener in listeners:
                listener.close()  # the child holds its own copies
        ready = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if marker.encode() in line:
                    ready.set()
            log.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {proc.returncode} before it was ready (log: {self.log_path})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} not ready after {timeout:.0f} s (log: {self.log_path})")
        self.address = f"127.0.0.1:{ports[0]}"
        if http:
            self.http = f"127.0.0.1:{ports[1]}"

    def start_triton(self, triton: str, backends: str, repo: Path, env: dict, timeout: float) -> None:
        """Start tritonserver on free ports and poll its HTTP readiness endpoint until it answers 200."""
        http, grpc, metrics = free_port(), free_port(), free_port()
        argv = [
            triton,
            "--model-repository", str(repo),
            "--backend-directory", backends,
            "--http-address", "127.0.0.1", "--http-port", str(http),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
        ]  # fmt: skip
        log = open(self.log_path, "wb")
        self.proc = self.procs.popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        url = f"http://127.0.0.1:{http}/v2/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Triton exited with {self.proc.returncode} before it was ready (log: {self.log_path})")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Triton not ready after {timeout:.0f} s (log: {self.log_path})")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{grpc}"
        self.http = f"127.0.0.1:{http}"
