"""Start the real Triton 2.51 on a python-backend repository and yield both of its URLs.

    with triton_grpc_server(repo, log=path) as (grpc_url, http_url, metrics_url): ...

grpc_url is "127.0.0.1:PORT" (what tritonclient.grpc takes), http_url "http://127.0.0.1:PORT", metrics_url
"http://127.0.0.1:PORT/metrics". Triton runs with
`--model-control-mode explicit --load-model '*'` and, because the repository holds a model whose initialize raises
on purpose, `--exit-on-error false` and `--strict-readiness false` (the server starts and reports ready with that
one model failed). Triton runs in its own session; stopping it signals the whole group, its stubs included.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "differential"))

from triton_proc import _stop_group, free_port, triton_env  # noqa: E402


@contextlib.contextmanager
def triton_grpc_server(repo: Path, log: Path | None = None, timeout: float = 300.0, extra: tuple[str, ...] = ()):
    """Run tritonserver on `repo` (explicit mode, every model loaded); yield (grpc_url, http_url, metrics_url)."""
    tenv = triton_env()
    http, grpc, metrics = free_port(), free_port(), free_port()
    argv = [
        tenv["TRITONSERVER"], "--model-repository", str(repo), "--backend-directory", tenv["TRITON_BACKENDS"],
        "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1",
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--model-control-mode", "explicit", "--load-model", "*",
        "--exit-on-error", "false", "--strict-readiness", "false", *extra,
    ]  # fmt: skip
    env = dict(os.environ, LD_LIBRARY_PATH=tenv["TRITON_LD_LIBRARY_PATH"], PATH=tenv["TRITON_PATH"])
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    http_url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {proc.returncode} before it was ready (log: {log})")
            try:
                with urllib.request.urlopen(http_url + "/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"tritonserver not ready after {timeout:.0f}s (log: {log})")
            time.sleep(0.2)
        yield f"127.0.0.1:{grpc}", http_url, f"http://127.0.0.1:{metrics}/metrics"
    finally:
        _stop_group(proc)
        if log:
            out.close()
