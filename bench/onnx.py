"""ONNX rows: Tritium's onnxruntime backend against Triton 2.51 serving the same model through its python backend,
and against ONNX Runtime called in-process from Python (the engine's limit), for two real models from
tests/python/onnx_models.py: `cnn` (SqueezeNet 1.1 from the onnx wheel with seeded weights, FP32 [3, 224, 224] per
request) and `sklearn` (StandardScaler + LogisticRegression through skl2onnx, FP32 [6] per request).

    .venv/bin/python bench/onnx.py           # about 18 minutes on a 2-core machine once built (3 rounds)
    QUICK=1 .venv/bin/python bench/onnx.py   # smoke run: 1 round, 1 s windows, about 2 minutes

Rows, for each model: perf_analyzer over gRPC, `sync` c=1, `--async` c=16 and `--async` c=64, against
- Tritium: `tritium serve --model-repository` with the model as tests/python/onnx/test_onnxruntime.py writes it
  (`platform: "onnxruntime_onnx"`, max_batch_size 8, no dynamic_batching, instance_group and parameters left to
  their defaults: 2 CPU instances, ONNX Runtime's own thread count), ORT_DYLIB_PATH = the library that
  scripts/install-onnxruntime.sh installs;
- Triton 2.51.0 (bench/lib/install-triton.sh): the same config with `backend: "python"` and a model.py that opens an
  onnxruntime.InferenceSession in initialize() and runs it in execute(); the Triton in nvidia-pytriton has no
  onnxruntime backend. onnxruntime is installed into .tools/triton-venv (its pip, pinned versions);
- in-process ONNX Runtime (c=1 and c=16 only): a Python process that calls session.run on one fixed input in a loop
  for as long as a perf_analyzer run lasts (three windows), from 1 thread for the c=1 row and from 16 threads sharing
  the session for the c=16 row; session options are ONNX Runtime's defaults, as Tritium's are;
- with dynamic batching (c=16 and c=64 only; BATCHING=0 skips them): a second Tritium and a second Triton with the
  same configs plus `dynamic_batching { }` (no queue delay, no preferred size). Triton's python backend then hands
  execute() several requests at once and batches nothing itself, so that model.py stacks the requests' inputs along
  the batch dim, runs the session once and splits every output back by request, as a python-backend user would.
The c=64 rows (C64=0 skips them) run against these four servers only.
For the CNN, three more Tritium servers give the "defaults" table (c=1 and c=16): instance_group count 1 or 2 (2 being
Triton's default for CPU and Tritium's) crossed with the parameter intra_op_thread_count 1 or 0 (0: ONNX Runtime
chooses).

Every server and the in-process process start once and stay up; every round runs each row against each of them in
turn, in reversed order every other round; perf_analyzer's runs are exactly three fixed windows (`-s 1000`, as
bench/lib/bench.py). The report gives medians over rounds and ratios paired within a round (median over rounds),
and writes bench/results/onnx-<UTC date>-<host>.md with every run's figures in the .json beside it
(`.venv/bin/python bench/onnx.py --render X.json` rewrites the markdown).

Installs what it needs first (idempotent): perf_analyzer (scripts/install-perf-analyzer.sh), Triton
(bench/lib/install-triton.sh), the ONNX Runtime library (scripts/install-onnxruntime.sh), onnxruntime in
.tools/triton-venv; and builds the release `tritium` (cargo build --release -j2; a no-op when fresh).
Environment: ROUNDS (3; QUICK: 1), QUICK, WINDOW_MS (3000; QUICK: 1000), MODELS (cnn,sklearn), DEFAULTS (1; 0 skips
the defaults servers), BATCHING (1; 0 skips the dynamic-batching servers), C64 (1; 0 skips the c=64 rows),
TRITIUM_BIN (default target/release/tritium, not built when set), NO_BUILD, STARTUP_TIMEOUT (120 s), PA_TIMEOUT
(120 s), PA_MEM_CAP_GIB (12), MAX_STEAL_PCT (10), STEAL_TRIES (2), BENCH_OUT (the report's path).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# This file is named onnx.py: its folder must not be on the path, or `import onnx` (onnx_models.py) finds it.
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import machine, run_perf_analyzer, steal_share  # noqa: E402
from onnx_report import BATCHED, LABELS, MODELS, MODES, VARIANTS, Run, write_report  # noqa: E402
from onnx_triton_model import TRITON_MODEL_PY, TRITON_MODEL_PY_BATCHED  # noqa: E402
from servers import Processes, Server, cpu_ticks, session_cpu_seconds  # noqa: E402

TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
ORT_LIBRARY = REPO / ".tools" / "onnxruntime" / "lib" / "libonnxruntime.so"
PERF_ANALYZER = REPO / "scripts" / "perf_analyzer"
TRITON_VENV = REPO / ".tools" / "triton-venv"
TRITON_ORT_STAMP = REPO / ".tools" / "triton-onnxruntime.stamp"
REQUIREMENTS = REPO / "tests" / "python" / "requirements.txt"
# onnxruntime and its dependencies in Triton's venv, at tests/python/requirements.txt's pins, except numpy:
# nvidia-pytriton 0.7.0 requires numpy<2, and with numpy 2 Triton 2.51's python backend answers with empty output
# tensors (seen here with bench/triton-models/identity), so numpy stays at the last 1.x release there.
TRITON_ORT_PACKAGES = ("onnxruntime", "flatbuffers", "packaging", "protobuf")
TRITON_NUMPY = "numpy==1.26.4"


def setting(name: str, default: str) -> str:
    value = os.environ.get(name, "")
    return value.strip() if value.strip() else default


QUICK = setting("QUICK", "0") not in ("", "0")
ROUNDS = max(1, int(setting("ROUNDS", "1" if QUICK else "3")))
WINDOW_MS = int(setting("WINDOW_MS", "1000" if QUICK else "3000"))
WANTED_MODELS = [m for m in setting("MODELS", ",".join(MODELS)).split(",") if m in MODELS]
DEFAULTS = setting("DEFAULTS", "1") != "0" and "cnn" in WANTED_MODELS
BATCHING = setting("BATCHING", "1") != "0"
C64 = setting("C64", "1") != "0"
STARTUP_TIMEOUT = float(setting("STARTUP_TIMEOUT", "120"))
PA_TIMEOUT = float(setting("PA_TIMEOUT", "120"))
PA_MEM_CAP = int(setting("PA_MEM_CAP_GIB", "12")) << 30
MAX_STEAL = int(setting("MAX_STEAL_PCT", "10")) / 100
STEAL_TRIES = max(1, int(setting("STEAL_TRIES", "2")))


def say(text: str) -> None:
    print(f"onnx: {text}", flush=True)


# ---- in-process ONNX Runtime ------------------------------------------------------------------------------------


def ort_worker(paths: list[str]) -> None:
    """`--ort-worker name=path ...`: opens one session per model with default options and prints `ready`; then for
    every line `model threads seconds` on stdin runs session.run on one fixed input from `threads` threads sharing
    the session for `seconds`, and prints {count, elapsed, p50_us, p99_us} as one JSON line."""
    import numpy as np
    import onnxruntime as ort

    sessions, feeds = {}, {}
    for item in paths:
        name, path = item.split("=", 1)
        session = ort.InferenceSession(path, ort.SessionOptions(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        sessions[name] = session
        feeds[name] = {
            i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
            for i in session.get_inputs()
        }  # both models take FP32 only
    print("ready", flush=True)
    for line in sys.stdin:
        name, threads, seconds = line.split()
        session, feed, n = sessions[name], feeds[name], int(threads)
        barrier = threading.Barrier(n + 1)
        latencies: list[list[float]] = [[] for _ in range(n)]
        ends = [0.0] * n
        deadline = [0.0]

        def loop(i: int) -> None:
            barrier.wait()
            own, stop = latencies[i], deadline[0]
            now = time.perf_counter()
            while now < stop:
                session.run(None, feed)
                done = time.perf_counter()
                own.append(done - now)
                now = done
            ends[i] = now

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        start = time.perf_counter()
        deadline[0] = start + float(seconds)
        barrier.wait()
        for w in workers:
            w.join()
        every = np.array([x for own in latencies for x in own])
        print(json.dumps({
            "count": int(every.size),
            "elapsed": max(ends) - start,
            "p50_us": float(np.percentile(every, 50)) * 1e6 if every.size else 0.0,
            "p99_us": float(np.percentile(every, 99)) * 1e6 if every.size else 0.0,
        }), flush=True)  # fmt: skip


class InProcess:
    """The `--ort-worker` process, driven line by line."""

    def __init__(self, procs: Processes, models: dict[str, pathlib.Path], log: pathlib.Path) -> None:
        argv = [sys.executable, str(pathlib.Path(__file__).resolve()), "--ort-worker", *(f"{k}={v}" for k, v in models.items())]
        with open(log, "wb") as stderr:
            self.proc = procs.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        self.log = log
        self.lines: list[str] = []
        self.ready = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        if self._line(STARTUP_TIMEOUT) != "ready":
            raise RuntimeError(f"the in-process ONNX Runtime process did not start (log: {log})")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.ready:
                self.lines.append(line.strip())
                self.ready.notify()
        with self.ready:
            self.lines.append("")
            self.ready.notify()

    def _line(self, timeout: float) -> str:
        with self.ready:
            if not self.ready.wait_for(lambda: self.lines, timeout):
                raise RuntimeError(f"the in-process ONNX Runtime process gave no answer in {timeout:.0f} s (log: {self.log})")
            line = self.lines.pop(0)
        if not line:
            raise RuntimeError(f"the in-process ONNX Runtime process exited with {self.proc.wait()} (log: {self.log})")
        return line

    def run(self, model: str, threads: int, seconds: float) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{model} {threads} {seconds}\n")
        self.proc.stdin.flush()
        return json.loads(self._line(seconds + PA_TIMEOUT))


# ---- models and repositories ------------------------------------------------------------------------------------

DYNAMIC_BATCHING = "dynamic_batching { }\n"


def variant_config(count: int, threads: int) -> str:
    return (
        f"instance_group [ {{ count: {count} kind: KIND_CPU }} ]\n"
        f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}\n'
    )


def write_repositories(work: pathlib.Path) -> dict[str, pathlib.Path]:
    """Model repositories under `work`: `tritium` (the wanted models, default settings), `triton` (the same through
    the python backend), `tritium-db` and `triton-db` (both with dynamic_batching) and one per variant (the CNN
    alone). Returns them with each model's .onnx file (`onnx:<model>`)."""
    sys.path.insert(0, str(REPO / "tests" / "python"))
    import onnx_models

    builders = {"cnn": onnx_models.cnn, "sklearn": onnx_models.sklearn_pipeline}
    repos = {key: work / f"{key}-models" for key in ["tritium", "triton", *(BATCHED if BATCHING else [])]}
    for name in WANTED_MODELS:
        model = builders[name](repos["tritium"], name)
        config = model.config()  # as test_onnxruntime.py writes it: max_batch_size 8, every tensor listed
        model.write_config(config)
        repos[f"onnx:{name}"] = model.path
        triton = builders[name](repos["triton"], name)
        triton.write_config(config.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
        (triton.path.parent / "model.py").write_text(TRITON_MODEL_PY)
        if BATCHING:
            batched = builders[name](repos["tritium-db"], name)
            batched.write_config(config + DYNAMIC_BATCHING)
            triton = builders[name](repos["triton-db"], name)
            triton.write_config(config.replace('platform: "onnxruntime_onnx"', 'backend: "python"') + DYNAMIC_BATCHING)
            (triton.path.parent / "model.py").write_text(TRITON_MODEL_PY_BATCHED)
        if name == "cnn" and DEFAULTS:
            for key, (count, threads) in VARIANTS.items():
                repos[key] = work / f"{key}-models"
                variant = builders[name](repos[key], name)
                variant.write_config(variant.config(extra=variant_config(count, threads)))
    return repos


# ---- setup ------------------------------------------------------------------------------------------------------


def step(name: str, argv: list[str]) -> str:
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"onnx: {name} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


def pins() -> list[str]:
    """TRITON_ORT_PACKAGES at tests/python/requirements.txt's pins, and TRITON_NUMPY."""
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m and m.group(1).lower() in TRITON_ORT_PACKAGES:
            found[m.group(1).lower()] = f"{m.group(1)}=={m.group(2)}"
    missing = [p for p in TRITON_ORT_PACKAGES if p not in found]
    if missing:
        sys.exit(f"onnx: {REQUIREMENTS} pins none of {', '.join(missing)}")
    return [found[p] for p in TRITON_ORT_PACKAGES] + [TRITON_NUMPY]


def triton_venv_versions() -> str:
    python = TRITON_VENV / "bin" / "python"
    code = "import numpy, onnxruntime; print(f'onnxruntime=={onnxruntime.__version__} numpy=={numpy.__version__}')"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def install_triton_onnxruntime() -> None:
    """onnxruntime (and numpy) importable by Triton's embedded interpreter: pip-installed into .tools/triton-venv at
    pinned versions; stamped, and checked by importing both."""
    want = " ".join(pins())
    expect = " ".join(p for p in want.split() if p.startswith(("onnxruntime==", "numpy==")))
    if TRITON_ORT_STAMP.is_file() and TRITON_ORT_STAMP.read_text().strip() == want and triton_venv_versions() == expect:
        return
    say(f"installing {want} into {TRITON_VENV.relative_to(REPO)}")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    argv = [str(TRITON_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--no-input", *want.split()]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0 or triton_venv_versions() != expect:
        sys.exit(f"onnx: installing onnxruntime into {TRITON_VENV} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    TRITON_ORT_STAMP.write_text(want + "\n")


def install() -> None:
    say("installing pinned tools (perf_analyzer, Triton 2.51.0, the ONNX Runtime library; idempotent)")
    step("scripts/install-perf-analyzer.sh", ["bash", "scripts/install-perf-analyzer.sh"])
    step("bench/lib/install-triton.sh", ["bash", "bench/lib/install-triton.sh"])
    step("scripts/install-onnxruntime.sh", ["bash", "scripts/install-onnxruntime.sh"])
    install_triton_onnxruntime()


def tritium_binary() -> pathlib.Path:
    if os.environ.get("TRITIUM_BIN"):
        return pathlib.Path(os.environ["TRITIUM_BIN"]).resolve()
    binary = TARGET / "tritium"
    if os.environ.get("NO_BUILD"):
        if not binary.is_file():
            sys.exit(f"onnx: {binary} missing: run cargo build --release -j2 -p tritium-server --bin tritium")
        return binary
    say("building release tritium (cargo build --release -j2)")
    step("cargo build", ["cargo", "build", "--release", "--quiet", "-j2", "-p", "tritium-server", "--bin", "tritium"])
    return binary


def triton_env() -> dict[str, str]:
    """What bench/lib/triton-env.sh exports."""
    names = ("TRITONSERVER", "TRITON_BACKENDS", "TRITON_LD_LIBRARY_PATH", "TRITON_PATH")
    script = "source bench/lib/triton-env.sh && " + " && ".join(f'printf "%s\\n" "${n}"' for n in names)
    return dict(zip(names, step("bench/lib/triton-env.sh", ["bash", "-c", script]).splitlines()))


def version_of(python: pathlib.Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version('{package}'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def rev() -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, env=env).stdout.strip()  # noqa: E731
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


# ---- runs -------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, work: pathlib.Path) -> None:
        self.work = work
        self.procs = Processes()
        self.servers: dict[str, Server] = {}
        self.ort: InProcess | None = None
        self.runs: list[Run] = []
        self.triton_version = "?"

    def start(self, tritium: pathlib.Path, repos: dict[str, pathlib.Path]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_GRPC_"))}
        env["ORT_DYLIB_PATH"] = str(ORT_LIBRARY)
        for key in ["tritium", *(["tritium-db"] if BATCHING else []), *(VARIANTS if DEFAULTS else [])]:
            server = Server(key, LABELS[key], self.procs, self.work / f"{key}.log")
            argv = [str(tritium), "serve", "--allow-http=false", "--allow-metrics=false", "--model-repository", str(repos[key])]
            server.start_with_ready_line(argv, "tritium ready grpc=", STARTUP_TIMEOUT, env=env)
            self.servers[key] = server
        tenv = triton_env()
        env = dict(os.environ, LD_LIBRARY_PATH=tenv["TRITON_LD_LIBRARY_PATH"], PATH=tenv["TRITON_PATH"])
        for key in ["triton", *(["triton-db"] if BATCHING else [])]:
            triton = Server(key, LABELS[key], self.procs, self.work / f"{key}.log")
            triton.start_triton(tenv["TRITONSERVER"], tenv["TRITON_BACKENDS"], repos[key], env, STARTUP_TIMEOUT)
            self.servers[key] = triton
        self.triton_version = triton_version(self.servers["triton"])
        models = {m: repos[f"onnx:{m}"] for m in WANTED_MODELS}
        self.ort = InProcess(self.procs, models, self.work / "ort.log")
        for s in self.servers.values():
            say(f"  {s.label} ready on {s.address}")

    def targets(self, model: str, mode: str) -> list[str]:
        """What runs `mode` on `model`: c=1 without the batching servers, c=64 with only the four servers."""
        keys = ["triton", "tritium"]
        if mode != "c64":
            keys.append("ort")
        if mode != "c1" and BATCHING:
            keys += ["triton-db", "tritium-db"]
        if model == "cnn" and DEFAULTS and mode != "c64":
            keys += list(VARIANTS)
        return keys

    def modes(self) -> list[str]:
        return [m for m in MODES if m != "c64" or C64]

    def perf_analyzer(self, server: Server, model: str, mode: str, window_ms: int, tag: str) -> Run:
        _, args, concurrency = MODES[mode]
        csv_path, out_path = self.work / f"{tag}.csv", self.work / f"{tag}.out"
        argv = ["prlimit", f"--as={PA_MEM_CAP}", "--", str(PERF_ANALYZER), "-i", "grpc", "-u", server.address, "-m", model]
        # -s 1000: "stable" after the first three windows, so every run is exactly three windows (bench/lib/bench.py).
        argv += ["--concurrency-range", str(concurrency), *args, "-p", str(window_ms), "-s", "1000", "-f", str(csv_path)]
        run = Run(model, mode, server.key, 0, False)
        if not server.alive():
            run.error = server.failed or "server is not running"
            return run
        text = run_perf_analyzer(self.procs, self.work, argv, PA_TIMEOUT, server, run, csv_path, out_path)
        server_side = re.search(r"Inference count: (\d+)\s+Execution count: (\d+)", text)
        if run.ok and server_side:
            run.inferences, run.executions = int(server_side.group(1)), int(server_side.group(2))
        return run

    def in_process(self, model: str, mode: str, seconds: float) -> Run:
        assert self.ort is not None
        run = Run(model, mode, "ort", 0, False)
        cpu0, t0 = session_cpu_seconds(self.ort.proc.pid), time.monotonic()
        try:
            result = self.ort.run(model, MODES[mode][2], seconds)
        except RuntimeError as e:
            run.error = str(e)
            return run
        run.wall_s = time.monotonic() - t0
        run.cpu_s = session_cpu_seconds(self.ort.proc.pid) - cpu0
        run.requests = result["count"]
        run.infer_s = result["count"] / result["elapsed"] if result["elapsed"] > 0 else 0.0
        run.p50_us, run.p99_us = result["p50_us"], result["p99_us"]
        run.ok = run.requests > 0
        return run

    def once(self, key: str, model: str, mode: str, rnd: int, window_ms: int) -> Run:
        ticks = cpu_ticks()
        if key == "ort":
            run = self.in_process(model, mode, 3 * window_ms / 1000)  # as long as perf_analyzer's three windows
        else:
            run = self.perf_analyzer(self.servers[key], model, mode, window_ms, f"{model}-{mode}-{key}-r{rnd}")
        run.round = rnd
        run.steal = steal_share(ticks, cpu_ticks())
        return run

    def warm_up(self) -> None:
        """A short sync run per model and target, so no measurement pays for first runs and lazy setup."""
        for model in WANTED_MODELS:
            for key in self.targets(model, "c1"):
                run = self.once(key, model, "c1", 0, 300)
                if not run.ok:
                    raise RuntimeError(f"warm-up of {LABELS[key]} on {model} failed: {run.error}")
            # The batching servers also run batches of every size once (ONNX Runtime plans memory per shape).
            for key in (BATCHED if BATCHING else []):
                for mode in ("c1", "c16"):
                    run = self.once(key, model, mode, 0, 300)
                    if not run.ok:
                        raise RuntimeError(f"warm-up of {LABELS[key]} on {model} failed: {run.error}")

    def measure(self) -> None:
        plan = []
        for rnd in range(1, ROUNDS + 1):
            for model in WANTED_MODELS:
                for mode in self.modes():
                    keys = self.targets(model, mode)
                    plan += [(rnd, model, mode, key) for key in (keys if rnd % 2 else keys[::-1])]
        width = len(str(len(plan)))
        for i, (rnd, model, mode, key) in enumerate(plan, 1):
            for tries in range(1, STEAL_TRIES + 1):
                run = self.once(key, model, mode, rnd, WINDOW_MS)
                run.tries = tries
                if not run.ok or run.steal <= MAX_STEAL or tries == STEAL_TRIES:
                    break
                say(f"{model} {mode} r{rnd} {LABELS[key]}: {run.steal:.0%} of the CPU time was stolen; again")
            self.runs.append(run)
            if run.ok:
                result = f"{run.infer_s:>9,.1f} infer/s  p50 {run.p50_us:>8,.0f} µs  p99 {run.p99_us:>8,.0f} µs"
            else:
                result = f"FAILED: {run.error}"
            say(f"[{i:>{width}}/{len(plan)}] r{rnd} {model:<7} {mode:<3} {LABELS[key][:44]:<44} {result}")


def triton_version(server: Server) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{server.http}/v2", timeout=5) as r:
            return json.load(r).get("version", "?")
    except (OSError, ValueError):
        return "?"


# ---- report -----------------------------------------------------------------------------------------------------


def report_path() -> pathlib.Path:
    if os.environ.get("BENCH_OUT"):
        return pathlib.Path(os.environ["BENCH_OUT"]).resolve()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", os.uname().nodename) or "host"
    return REPO / "bench" / "results" / f"onnx-{date}-{host}{'-quick' if QUICK else ''}.md"


# ---- driver -----------------------------------------------------------------------------------------------------


def interrupted(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    if sys.argv[1:2] == ["--ort-worker"]:
        ort_worker(sys.argv[2:])
        return 0
    if sys.argv[1:2] == ["--render"]:
        raw = pathlib.Path(sys.argv[2])
        data = json.loads(raw.read_text())
        write_report(raw.with_suffix(".md"), data["meta"], [Run(**r) for r in data["runs"]])
        print(raw.with_suffix(".md"))
        return 0
    if not WANTED_MODELS:
        sys.exit(f"onnx: MODELS={os.environ.get('MODELS')!r} names none of {', '.join(MODELS)}")
    install()
    tritium = tritium_binary()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    info = machine()  # the load average before this run's own servers start
    started = time.monotonic()
    start_utc = datetime.datetime.now(datetime.timezone.utc)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-onnx-bench-"))
    bench = Bench(work)
    failed = True
    try:
        say(f"building the models ({', '.join(WANTED_MODELS)}) in {work}")
        repos = write_repositories(work)
        say("starting Tritium" + (f" (and {len(VARIANTS)} variants)" if DEFAULTS else "") + ", Triton, in-process ONNX Runtime")
        bench.start(tritium, repos)
        say(f"warming up; then {ROUNDS} round(s)")
        bench.warm_up()
        bench.measure()
        failed = False
    except KeyboardInterrupt:
        say("interrupted; stopping every server")
        return 130
    except RuntimeError as e:
        say(f"error: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        bench.procs.stop_all()
        if failed:
            say(f"logs kept in {work}")
    knobs = ("ROUNDS", "QUICK", "WINDOW_MS", "MODELS", "DEFAULTS", "BATCHING", "C64", "NO_BUILD", "MAX_STEAL_PCT", "STEAL_TRIES")
    envs = " ".join(f"{k}={os.environ[k]}" for k in knobs if os.environ.get(k))
    meta = {
        "date": start_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.monotonic() - started,
        "machine": info,
        "command": (envs + " " if envs else "") + ".venv/bin/python bench/onnx.py",
        "rounds": ROUNDS,
        "window_ms": WINDOW_MS,
        "max_steal": MAX_STEAL,
        "steal_tries": STEAL_TRIES,
        "models": WANTED_MODELS,
        "triton_version": bench.triton_version,
        "versions": {
            "tritium": rev(),
            "pytriton": version_of(TRITON_VENV / "bin" / "python", "nvidia-pytriton"),
            "onnxruntime": version_of(pathlib.Path(sys.executable), "onnxruntime"),
            "perf_analyzer": version_of(pathlib.Path(sys.executable), "perf-analyzer"),
            "triton_venv": triton_venv_versions(),
        },
        "tritium_bin": str(tritium),
        "lifo": True,  # ONNX instances: the most recently idle one takes the next request (since d5f472b)
        # Findings added by hand after the run (rendered under the summary; --render keeps them).
        "notes": [],
    }
    out = report_path()
    write_report(out, meta, bench.runs)
    failures = sum(not r.ok for r in bench.runs)
    if failures:
        say(f"{failures} run(s) failed; perf_analyzer output and server logs kept in {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    say(f"done in {meta['duration_s'] / 60:.1f} min")
    say(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
