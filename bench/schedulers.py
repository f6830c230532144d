"""Scheduler rows: Tritium's dynamic batcher, sequence batcher and ensembles against Triton 2.51 serving the same
configs through its python backend (numpy model.py files; bench/lib/schedulers_triton_model.py writes both sides'
model repositories), with perf_analyzer over gRPC, in the same run.

    .venv/bin/python bench/schedulers.py           # about 13 minutes on a 2-core machine once built (3 rounds)
    QUICK=1 .venv/bin/python bench/schedulers.py   # smoke run: 1 round, 1 s windows, about 2 minutes

Sections and rows (perf_analyzer, random input data, three fixed windows per run):
- dense (`--async` c=16 and c=64): the built-in `dense` backend, OUTPUT0 = INPUT0 · W, FP32 [4096] -> [4096],
  W[i][j] = ((7i + 13j) mod 17) / 64 - 8 / 64, max_batch_size 16, one CPU instance; on four servers: Tritium
  without and with `dynamic_batching { max_queue_delay_microseconds: 1000 }` (two processes), Triton without and
  with it (two processes; model.py builds W once, stacks the rows of every request execute() is handed, runs one
  numpy matmul and splits the result back). The issue's target: with dynamic batching at least 2x the infer/s at
  c=64, with a p99 no worse than 1.5x. The report gives Tritium with / without, Tritium / Triton, and the average
  batch formed (the model's inference count / execution count, from perf_analyzer's server-side statistics).
- sequence (sync c=1, `--async` c=16; `--sequence-length 20 --sequence-id-range 1:1000`): `accumulate`, the running
  sum of a sequence's INT32 [1] inputs. Tritium: worker/models/accumulate.pbtxt (sequence_batching `oldest`,
  max_batch_size 8, the sum kept as implicit state by the server). Triton: the same without the state (its python
  backend does not store implicit state) plus END and a TYPE_UINT64 CORRID control input, and a model.py keeping
  the sum per CORRID.
- ensemble (sync c=1, `--async` c=16): the `add_sub_twice` ensemble (worker/models/add_sub_twice.pbtxt, two add_sub
  steps over INT32 [16] x2) against `add_sub` alone, on Tritium (built-in add_sub) and on Triton (the python
  add_sub of bench/triton-models and the same ensemble config); ensemble / add_sub on each, Tritium / Triton.
Before measuring, one request per model and server (tritonclient) checks that both compute the same answers.

Every server starts once and stays up; every round runs each row against each of its targets in turn, in reversed
order every other round; runs are exactly three windows (`-s 1000`, as bench/lib/bench.py). The report gives
medians over rounds and ratios paired within a round (median over rounds), and goes to
bench/results/schedulers-<UTC date>-<host>.md with every run's figures in the .json beside it
(`.venv/bin/python bench/schedulers.py --render X.json` rewrites the markdown).

Installs perf_analyzer and Triton first (idempotent; numpy is held at 1.26.4 in Triton's venv) and builds the
release `tritium` (cargo build --release -j2, a no-op when fresh; not with NO_BUILD or TRITIUM_BIN).
Environment: ROUNDS (3; QUICK: 1), QUICK, WINDOW_MS (3000; QUICK: 1000), SECTIONS (dense,sequence,ensemble),
TRITIUM_BIN, NO_BUILD, STARTUP_TIMEOUT (120 s), PA_TIMEOUT (120 s), MAX_STEAL_PCT (10), STEAL_TRIES (2), BENCH_OUT.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import machine, run_perf_analyzer, triton_version  # noqa: E402
from schedulers_report import MODES, SECTIONS, SEQUENCE_ARGS, SERVERS, TARGETS, Run, label, write_report  # noqa: E402
from schedulers_triton_model import DENSE_N, write_repositories  # noqa: E402
from servers import Processes, Server  # noqa: E402

# bench/onnx.py's setup helpers (it is a script, and `onnx` is also the ONNX package's name: load it by path).
_spec = importlib.util.spec_from_file_location("onnx_bench", REPO / "bench" / "onnx.py")
onnx_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(onnx_bench)
setting, step, triton_env = onnx_bench.setting, onnx_bench.step, onnx_bench.triton_env
rev, version_of = onnx_bench.rev, onnx_bench.version_of
PERF_ANALYZER, TRITON_VENV, TRITON_NUMPY = onnx_bench.PERF_ANALYZER, onnx_bench.TRITON_VENV, onnx_bench.TRITON_NUMPY

QUICK = setting("QUICK", "0") not in ("", "0")
ROUNDS = max(1, int(setting("ROUNDS", "1" if QUICK else "3")))
WINDOW_MS = int(setting("WINDOW_MS", "1000" if QUICK else "3000"))
WANTED = [s for s in setting("SECTIONS", ",".join(SECTIONS)).split(",") if s in SECTIONS]
STARTUP_TIMEOUT = float(setting("STARTUP_TIMEOUT", "120"))
PA_TIMEOUT = float(setting("PA_TIMEOUT", "120"))
MAX_STEAL = int(setting("MAX_STEAL_PCT", "10")) / 100
STEAL_TRIES = max(1, int(setting("STEAL_TRIES", "2")))


def say(text: str) -> None:
    print(f"schedulers: {text}", flush=True)


# ---- setup ------------------------------------------------------------------------------------------------------


def triton_numpy() -> str:
    done = subprocess.run([str(TRITON_VENV / "bin" / "python"), "-c", "import numpy; print(numpy.__version__)"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip()


def install() -> None:
    say("installing pinned tools (perf_analyzer, Triton 2.51.0; idempotent)")
    step("scripts/install-perf-analyzer.sh", ["bash", "scripts/install-perf-analyzer.sh"])
    step("bench/lib/install-triton.sh", ["bash", "bench/lib/install-triton.sh"])
    want = TRITON_NUMPY.split("==")[1]
    if triton_numpy() != want:  # with numpy 2 Triton 2.51's python backend answers with empty tensors (onnx.py)
        say(f"installing {TRITON_NUMPY} into {TRITON_VENV.relative_to(REPO)}")
        step("pip install numpy", [str(TRITON_VENV / "bin" / "python"), "-m", "pip", "install", "-q", TRITON_NUMPY])


def tritium_binary() -> pathlib.Path:
    if os.environ.get("TRITIUM_BIN") or os.environ.get("NO_BUILD"):
        binary = pathlib.Path(os.environ.get("TRITIUM_BIN") or onnx_bench.TARGET / "tritium").resolve()
        if not binary.is_file():
            sys.exit(f"schedulers: {binary} missing: run cargo build --release -j2 -p tritium-server --bin tritium")
        return binary
    say("building release tritium (cargo build --release -j2)")
    step("cargo build", ["cargo", "build", "--release", "--quiet", "-j2", "-p", "tritium-server", "--bin", "tritium"])
    return onnx_bench.TARGET / "tritium"


# ---- the answers --------------------------------------------------------------------------------------------------


def check(server: Server, models: set[str]) -> None:
    """One request per model: dense against numpy, a three-step sequence, the ensemble's doubled inputs."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    def tensor(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    client = grpcclient.InferenceServerClient(server.address)
    try:
        if "dense" in models:
            x = np.random.default_rng(0).standard_normal((1, DENSE_N)).astype(np.float32)
            i, j = np.arange(DENSE_N).reshape(-1, 1), np.arange(DENSE_N).reshape(1, -1)
            want = x.astype(np.float64) @ (((7 * i + 13 * j) % 17) / 64 - 8 / 64)
            got = client.infer("dense", [tensor("INPUT0", x, "FP32")]).as_numpy("OUTPUT0")
            if got is None or got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-2):
                raise RuntimeError(f"{server.label}: dense answered {got if got is None else got[0, :4]}, not {want[0, :4]}")
        if "accumulate" in models:
            sums = []
            for k, value in enumerate((3, 4, 5)):
                answer = client.infer("accumulate", [tensor("INPUT", np.array([[value]], np.int32), "INT32")],
                                      sequence_id=424242, sequence_start=k == 0, sequence_end=k == 2)  # fmt: skip
                sums.append(int(answer.as_numpy("OUTPUT").reshape(-1)[0]))
            if sums != [3, 7, 12]:
                raise RuntimeError(f"{server.label}: accumulate answered {sums} to 3, 4, 5, not [3, 7, 12]")
        if "add_sub_twice" in models:
            a, b = np.arange(16, dtype=np.int32), np.arange(16, dtype=np.int32)[::-1].copy()
            answer = client.infer("add_sub_twice", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")])
            if not (np.array_equal(answer.as_numpy("DOUBLE0"), 2 * a) and np.array_equal(answer.as_numpy("DOUBLE1"), 2 * b)):
                raise RuntimeError(f"{server.label}: add_sub_twice did not double its inputs")
    except grpcclient.InferenceServerException as e:
        raise RuntimeError(f"{server.label}: {e}") from e
    finally:
        client.close()


# ---- runs -------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, work: pathlib.Path) -> None:
        self.work = work
        self.procs = Processes()
        self.servers: dict[str, Server] = {}
        self.runs: list[Run] = []
        self.triton_version = "?"

    def keys(self) -> list[str]:
        return [k for k in SERVERS if k in ("tritium", "triton") or "dense" in WANTED]

    def start(self, tritium: pathlib.Path, repos: dict[str, pathlib.Path]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_GRPC_"))}
        tenv = triton_env()
        triton = dict(os.environ, LD_LIBRARY_PATH=tenv["TRITON_LD_LIBRARY_PATH"], PATH=tenv["TRITON_PATH"])
        for key in self.keys():
            server = Server(key, SERVERS[key], self.procs, self.work / f"{key}.log")
            if key.startswith("tritium"):
                argv = [str(tritium), "serve", "--allow-http=false", "--allow-metrics=false", "--model-repository", str(repos[key])]
                server.start_with_ready_line(argv, "tritium ready grpc=", STARTUP_TIMEOUT, env=env)
            else:
                server.start_triton(tenv["TRITONSERVER"], tenv["TRITON_BACKENDS"], repos[key], triton, STARTUP_TIMEOUT)
            self.servers[key] = server
            say(f"  {server.label} ready on {server.address}")
        self.triton_version = triton_version(self.servers["triton"])
        for key, server in self.servers.items():
            check(server, {m for s in WANTED for k, m in TARGETS[s] if k == key})
        say("every server gives the expected answers")

    def perf_analyzer(self, section: str, mode: str, target: tuple[str, str], window_ms: int, tag: str) -> Run:
        key, model = target
        server = self.servers[key]
        _, args, concurrency = MODES[mode]
        csv_path, out_path = self.work / f"{tag}.csv", self.work / f"{tag}.out"
        argv = [str(PERF_ANALYZER), "-i", "grpc", "-u", server.address, "-m", model, "--concurrency-range", str(concurrency)]
        argv += [*args, *(SEQUENCE_ARGS if section == "sequence" else [])]
        # -s 1000: "stable" after the first three windows, so every run is exactly three windows (bench/lib/bench.py).
        argv += ["-p", str(window_ms), "-s", "1000", "-f", str(csv_path)]
        run = Run(section, mode, key, model, 0, False)
        if not server.alive():
            run.error = server.failed or "server is not running"
            return run
        text = run_perf_analyzer(self.procs, self.work, argv, PA_TIMEOUT, server, run, csv_path, out_path)
        # The first server-side block is the model's own (an ensemble's composing models follow it).
        server_side = re.search(r"Inference count: (\d+)\s+Execution count: (\d+)", text)
        if run.ok and server_side:
            run.inferences, run.executions = int(server_side.group(1)), int(server_side.group(2))
        return run

    def warm_up(self) -> None:
        """A short run per row and target, so no measurement pays for first runs and lazy setup."""
        for section in WANTED:
            for mode in SECTIONS[section][1]:
                for target in TARGETS[section]:
                    run = self.perf_analyzer(section, mode, target, 300, f"warm-{section}-{mode}-{'-'.join(target)}")
                    if not run.ok:
                        raise RuntimeError(f"warm-up of {label(*target)} ({section}, {mode}) failed: {run.error}")

    def measure(self) -> None:
        plan = []
        for rnd in range(1, ROUNDS + 1):
            for section in WANTED:
                for mode in SECTIONS[section][1]:
                    targets = TARGETS[section] if rnd % 2 else TARGETS[section][::-1]
                    plan += [(rnd, section, mode, target) for target in targets]
        width = len(str(len(plan)))
        for i, (rnd, section, mode, target) in enumerate(plan, 1):
            name = f"{section} {MODES[mode][0]} r{rnd} {label(*target)}"
            for tries in range(1, STEAL_TRIES + 1):
                run = self.perf_analyzer(section, mode, target, WINDOW_MS, f"{section}-{mode}-{'-'.join(target)}-r{rnd}")
                run.round, run.tries = rnd, tries
                if not run.ok or run.steal <= MAX_STEAL or tries == STEAL_TRIES:
                    break
                say(f"{name}: {run.steal:.0%} of the CPU time was stolen; again")
            self.runs.append(run)
            if run.ok:
                result = f"{run.infer_s:>9,.1f} infer/s  p50 {run.p50_us:>8,.0f} µs  p99 {run.p99_us:>8,.0f} µs"
                if run.executions:
                    result += f"  {run.rows_per_execution:5.2f} rows/exec"
            else:
                result = f"FAILED: {run.error}"
            say(f"[{i:>{width}}/{len(plan)}] r{rnd} {section:<8} {mode:<3} {label(*target)[:44]:<44} {result}")


# ---- driver -----------------------------------------------------------------------------------------------------


def report_path() -> pathlib.Path:
    if os.environ.get("BENCH_OUT"):
        return pathlib.Path(os.environ["BENCH_OUT"]).resolve()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", os.uname().nodename) or "host"
    return REPO / "bench" / "results" / f"schedulers-{date}-{host}{'-quick' if QUICK else ''}.md"


def interrupted(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    if sys.argv[1:2] == ["--render"]:
        raw = pathlib.Path(sys.argv[2])
        data = json.loads(raw.read_text())
        write_report(raw.with_suffix(".md"), data["meta"], [Run(**r) for r in data["runs"]])
        print(raw.with_suffix(".md"))
        return 0
    if not WANTED:
        sys.exit(f"schedulers: SECTIONS={os.environ.get('SECTIONS')!r} names none of {', '.join(SECTIONS)}")
    install()
    tritium = tritium_binary()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    info = machine()  # the load average before this run's own servers start
    started = time.monotonic()
    start_utc = datetime.datetime.now(datetime.timezone.utc)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-schedulers-bench-"))
    bench = Bench(work)
    failed = True
    try:
        repos = write_repositories(work, WANTED)
        say(f"starting {len(bench.keys())} servers ({', '.join(WANTED)}; model repositories in {work})")
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
    knobs = ("ROUNDS", "QUICK", "WINDOW_MS", "SECTIONS", "NO_BUILD", "MAX_STEAL_PCT", "STEAL_TRIES")
    envs = " ".join(f"{k}={os.environ[k]}" for k in knobs if os.environ.get(k))
    meta = {
        "date": start_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.monotonic() - started,
        "machine": info,
        "command": (envs + " " if envs else "") + ".venv/bin/python bench/schedulers.py",
        "rounds": ROUNDS,
        "window_ms": WINDOW_MS,
        "max_steal": MAX_STEAL,
        "steal_tries": STEAL_TRIES,
        "sections": WANTED,
        "triton_version": bench.triton_version,
        "versions": {
            "tritium": rev(),
            "pytriton": version_of(TRITON_VENV / "bin" / "python", "nvidia-pytriton"),
            "perf_analyzer": version_of(pathlib.Path(sys.executable), "perf-analyzer"),
            "triton_venv": f"numpy {triton_numpy()}",
        },
        "tritium_bin": str(tritium),
        "notes": [],  # findings added by hand after the run (rendered under the summary; --render keeps them)
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
