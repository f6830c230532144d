"""The same numpy function served by PyTriton 0.7 (PyPI `nvidia-pytriton`, its tritonserver 2.51 and
proxy backend) and by Tritium's `tritium.pytriton` (the function in-process), from one script that
differs only in its import prefix; perf_analyzer over gRPC, sync at concurrency 1 and `--async` at
concurrency 16, in the same run.

    .venv/bin/python bench/pytriton.py            # about 3 min once installed (3 rounds of 3 s windows)
    QUICK=1 .venv/bin/python bench/pytriton.py    # smoke run: 1 round, 1 s windows

The model: `@batch def double(INPUT0): return {"OUTPUT0": INPUT0 * 2}`, FP32[16], max_batch_size 64,
the dynamic batcher with no queue delay. PyTriton runs from `.tools/triton-venv` (bench/lib/install-triton.sh);
Tritium from a virtual environment with `pip install ./python` (a release build), `.tools/tritium-py-venv`
unless TRITIUM_PY names a python that has it. Each round runs both rows against each server in turn
(reversed every other round); runs are exactly three windows (`-s 1000`). The report (medians over rounds:
infer/s, p50, p99, server CPU per request; Tritium / PyTriton paired within a round) goes to
bench/results/pytriton-<UTC date>-<host>.md with the raw runs in the .json beside it.
Environment: ROUNDS (3; QUICK: 1), QUICK, WINDOW_MS (3000; QUICK: 1000), TRITIUM_PY, STARTUP_TIMEOUT
(180 s), PA_TIMEOUT (120 s), BENCH_OUT.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import Run, machine, run_perf_analyzer  # noqa: E402
from servers import Processes, Server, free_port  # noqa: E402


def setting(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


QUICK = setting("QUICK", "0") not in ("", "0")
ROUNDS = max(1, int(setting("ROUNDS", "1" if QUICK else "3")))
WINDOW_MS = int(setting("WINDOW_MS", "1000" if QUICK else "3000"))
STARTUP_TIMEOUT = float(setting("STARTUP_TIMEOUT", "180"))
PA_TIMEOUT = float(setting("PA_TIMEOUT", "120"))
PERF_ANALYZER = REPO / "scripts" / "perf_analyzer"
PYTRITON_PY = REPO / ".tools" / "triton-venv" / "bin" / "python"

ROWS = {"sync c=1": ["--concurrency-range", "1"], "async c=16": ["--async", "--concurrency-range", "16"]}
TARGETS = ["pytriton", "tritium"]
LABELS = {"pytriton": "PyTriton 0.7.0", "tritium": "Tritium (tritium.pytriton)"}

# The served script; PREFIX is `pytriton` or `tritium.pytriton`, nothing else differs.
SCRIPT = """
import numpy as np
from PREFIX.decorators import batch
from PREFIX.model_config import DynamicBatcher, ModelConfig, Tensor
from PREFIX.triton import Triton, TritonSecurityConfig


@batch
def double(INPUT0):
    return {"OUTPUT0": INPUT0 * 2}


# PyTriton protects some endpoints with a token by default; perf_analyzer sends none.
with Triton(security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
    triton.bind(
        model_name="double",
        infer_func=double,
        inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(16,))],
        outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(16,))],
        config=ModelConfig(max_batch_size=64, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
    )
    triton.serve()
"""


def say(text: str) -> None:
    print(f"pytriton: {text}", flush=True)


def tritium_python() -> pathlib.Path:
    """A python with the `tritium` package (a release build of ./python)."""
    if os.environ.get("TRITIUM_PY"):
        return pathlib.Path(os.environ["TRITIUM_PY"])
    venv = REPO / ".tools" / "tritium-py-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(python), "-c", "import tritium.pytriton"], capture_output=True).returncode != 0:
        say("installing ./python into .tools/tritium-py-venv (a release build: many minutes on 2 cores)")
        pins = (REPO / "tests" / "python" / "requirements.txt").read_text()
        numpy = next(line for line in pins.splitlines() if line.startswith("numpy=="))
        maturin = next(part for part in (REPO / "python" / "pyproject.toml").read_text().split('"') if part.startswith("maturin=="))
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, numpy, maturin], check=True)
        env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", CARGO_BUILD_JOBS="2")
        subprocess.run([*pip, "--no-build-isolation", str(REPO / "python")], check=True, env=env)
    return python


def start(procs: Processes, work: pathlib.Path, key: str, python: pathlib.Path) -> Server:
    """Starts the script under `python` on free ports; ready once the model answers ready on HTTP."""
    script = work / f"serve_{key}.py"
    script.write_text(SCRIPT.replace("PREFIX", "pytriton" if key == "pytriton" else "tritium.pytriton"))
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ)
    for name, port in (("HTTP", http), ("GRPC", grpc), ("METRICS", metrics)):
        env[f"PYTRITON_TRITON_CONFIG_{name}_PORT"] = str(port)
    env["PYTRITON_TRITON_CONFIG_GRPC_ADDRESS"] = env["PYTRITON_TRITON_CONFIG_HTTP_ADDRESS"] = "127.0.0.1"
    if key == "pytriton":
        # Its python backend's stub needs the libpython of the venv's own interpreter (see peers.md).
        libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
    server = Server(key, LABELS[key], procs, work / f"{key}.log")
    log = open(server.log_path, "wb")
    server.proc = procs.popen([str(python), str(script)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    log.close()
    url = f"http://127.0.0.1:{http}/v2/models/double/ready"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            sys.exit(f"pytriton: {LABELS[key]} exited with {server.proc.returncode} (log: {server.log_path})")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"pytriton: {LABELS[key]} not ready after {STARTUP_TIMEOUT:.0f} s (log: {server.log_path})")
        time.sleep(0.1)
    server.address = f"127.0.0.1:{grpc}"
    return server


def perf_analyzer(procs: Processes, work: pathlib.Path, server: Server, row: str, window_ms: int, tag: str) -> Run:
    csv_path, out_path = work / f"{tag}.csv", work / f"{tag}.out"
    argv = [str(PERF_ANALYZER), "-i", "grpc", "-u", server.address, "-m", "double", *ROWS[row]]
    argv += ["-p", str(window_ms), "-s", "1000", "-f", str(csv_path)]
    run = Run(row, server.key, 0, False)
    run_perf_analyzer(procs, work, argv, PA_TIMEOUT, server, run, csv_path, out_path)
    return run


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[Run], meta: dict) -> str:
    lines = [
        "# The same numpy function: PyTriton 0.7 against Tritium's tritium.pytriton",
        "",
        f"{meta['date']}, {meta['machine']['cpu']} ({meta['machine']['cores']} cores), rev {meta['rev']}, "
        f"{meta['rounds']} round(s) of three {meta['window_ms']} ms windows, perf_analyzer over gRPC; "
        "`@batch` FP32[16] doubling, max_batch_size 64, no endpoint restricted by a token. Server CPU counts every process of the server "
        "(PyTriton: the script, tritonserver and its stub).",
        "",
        "| row | server | infer/s | p50 µs | p99 µs | server CPU µs/request |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in ROWS:
        for target in TARGETS:
            ok = [r for r in runs if r.row == row and r.server == target and r.ok]
            cpu = median([r.cpu_s / r.requests * 1e6 for r in ok if r.requests])
            lines.append(
                f"| {row} | {LABELS[target]} | {median([r.infer_s for r in ok]):,.0f} | {median([r.p50_us for r in ok]):,.0f} "
                f"| {median([r.p99_us for r in ok]):,.0f} | {cpu:,.1f} |"
            )
    lines += ["", "Tritium / PyTriton, infer/s paired within a round (median over rounds; the issue's target is 2x):", ""]
    for row in ROWS:
        pairs = []
        for n in range(meta["rounds"]):
            x = [r.infer_s for r in runs if (r.row, r.server, r.round, r.ok) == (row, "tritium", n, True)]
            y = [r.infer_s for r in runs if (r.row, r.server, r.round, r.ok) == (row, "pytriton", n, True)]
            if x and y and y[0] > 0:
                pairs.append(x[0] / y[0])
        lines.append(f"- {row}: {median(pairs):.2f}")
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r.row}, {LABELS[r.server]}, round {r.round}: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> int:
    if not PYTRITON_PY.exists():
        sys.exit("pytriton: no .tools/triton-venv: run bash bench/lib/install-triton.sh")
    pythons = {"pytriton": PYTRITON_PY, "tritium": tritium_python()}
    procs = Processes()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-bench-pytriton-"))
    servers: dict[str, Server] = {}
    runs: list[Run] = []
    try:
        for key in TARGETS:
            say(f"starting {LABELS[key]}")
            servers[key] = start(procs, work, key, pythons[key])
        say("warming up")
        for row in ROWS:
            for target in TARGETS:
                warm = perf_analyzer(procs, work, servers[target], row, 300, f"warm-{target}-{row[:4]}")
                if not warm.ok:
                    sys.exit(f"pytriton: warm-up of {row} on {LABELS[target]} failed: {warm.error}")
        for n in range(ROUNDS):
            for row in ROWS:
                for target in TARGETS if n % 2 == 0 else list(reversed(TARGETS)):
                    run = perf_analyzer(procs, work, servers[target], row, WINDOW_MS, f"r{n}-{target}-{row[:4]}")
                    run.round = n
                    runs.append(run)
                    say(f"round {n + 1}/{ROUNDS} {row} {LABELS[target]}: {run.infer_s:,.0f} infer/s {run.error}")
    finally:
        procs.stop_all()
    date = datetime.datetime.now(datetime.timezone.utc)
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    meta = {"date": date.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "rev": rev, "rounds": ROUNDS, "window_ms": WINDOW_MS}
    out = pathlib.Path(setting("BENCH_OUT", str(REPO / "bench" / "results")))
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"pytriton-{date:%Y-%m-%d}-{os.uname().nodename}{'-quick' if QUICK else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": [dataclasses.asdict(r) for r in runs]}, indent=1))
    stem.with_suffix(".md").write_text(report(runs, meta))
    print(stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
