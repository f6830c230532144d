"""Records what Triton 2.51 answers to response_cache_scenario.run into response_cache_triton.json, which
test_response_cache.py compares Tritium with. Needs the Triton of bench/lib/install-triton.sh (its python backend
and its local cache); the CI replays the recording and does not run this.

    .venv/bin/python tests/python/record_response_cache_triton.py
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))
sys.path.insert(0, str(HERE))

import response_cache_scenario as scenario  # noqa: E402
from servers import free_port  # noqa: E402


def triton_env() -> dict[str, str]:
    names = ("TRITONSERVER", "TRITON_BACKENDS", "TRITON_LD_LIBRARY_PATH", "TRITON_PATH")
    script = "source bench/lib/triton-env.sh && " + " && ".join(f'printf "%s\\n" "${n}"' for n in names)
    out = subprocess.run(["bash", "-c", script], cwd=REPO, check=True, capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def main() -> int:
    env = triton_env()
    caches = pathlib.Path(env["TRITONSERVER"]).parent.parent / "caches"
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as work:
        repo = pathlib.Path(work) / "models"
        scenario.write_repository(repo, "python")
        http, grpc, metrics = free_port(), free_port(), free_port()
        argv = [
            env["TRITONSERVER"], "--model-repository", str(repo), "--backend-directory", env["TRITON_BACKENDS"],
            "--cache-directory", str(caches), "--cache-config", "local,size=1048576",
            "--http-address", "127.0.0.1", "--grpc-address", "127.0.0.1", "--metrics-address", "127.0.0.1",
            "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        ]  # fmt: skip
        run_env = {"LD_LIBRARY_PATH": env["TRITON_LD_LIBRARY_PATH"], "PATH": env["TRITON_PATH"]}
        log = open(pathlib.Path(work) / "triton.log", "wb")
        triton = subprocess.Popen(argv, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if triton.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"tritonserver did not start:\n{(pathlib.Path(work) / 'triton.log').read_text()[-3000:]}")
                time.sleep(0.2)
            recorded = scenario.run(f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics")
        finally:
            triton.terminate()
            triton.wait(timeout=60)
    recorded["triton"] = "2.51.0 (nvidia-pytriton 0.7.0), local cache, python backend"
    (HERE / "response_cache_triton.json").write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    print(HERE / "response_cache_triton.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
