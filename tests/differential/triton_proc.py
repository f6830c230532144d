"""Start and stop the real Triton 2.51 (from bench/lib/install-triton.sh) on the python-backend repository.

    with triton_server(repo, mode="explicit") as url: ...

Triton runs in its own session; stopping it signals that whole process group (the python-backend stubs too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def triton_env() -> dict[str, str]:
    """TRITONSERVER, TRITON_BACKENDS, TRITON_LD_LIBRARY_PATH, TRITON_PATH from bench/lib/triton-env.sh."""
    script = ROOT / "bench" / "lib" / "triton-env.sh"
    out = subprocess.run(
        ["bash", "-c", f'source "{script}" && for v in TRITONSERVER TRITON_BACKENDS TRITON_LD_LIBRARY_PATH TRITON_PATH; '
         'do printf "%s=%s\\0" "$v" "${!v}"; done'],
        check=True, capture_output=True, text=True,
    ).stdout
    env = dict(item.split("=", 1) for item in out.split("\0") if item)
    if not Path(env["TRITONSERVER"]).is_file():
        raise RuntimeError(f"tritonserver not installed at {env['TRITONSERVER']} (run bench/lib/install-triton.sh)")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def triton_server(repo: Path, mode: str = "explicit", log: Path | None = None, timeout: float = 120.0):
    """Run tritonserver on `repo` (`--model-control-mode mode`, every model loaded); yield its HTTP base URL."""
    tenv = triton_env()
    http, grpc, metrics = free_port(), free_port(), free_port()
    argv = [
        tenv["TRITONSERVER"], "--model-repository", str(repo), "--backend-directory", tenv["TRITON_BACKENDS"],
        "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--model-control-mode", mode,
    ]  # fmt: skip
    if mode == "explicit":
        argv += ["--load-model", "*"]
    env = dict(os.environ, LD_LIBRARY_PATH=tenv["TRITON_LD_LIBRARY_PATH"], PATH=tenv["TRITON_PATH"])
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {proc.returncode} before it was ready (log: {log})")
            try:
                with urllib.request.urlopen(url + "/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {timeout:.0f}s (log: {log})")
            time.sleep(0.2)
        yield url
    finally:
        _stop_group(proc)
        if log:
            out.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it leads its own session), then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give its stubs a moment, then make sure none is left behind.
        time.sleep(0.5)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return
