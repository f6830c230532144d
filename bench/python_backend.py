"""Python-backend rows: the same model.py files (bench/triton-models: identity and add_sub) served by Tritium's
python backend and by Triton 2.51's, with perf_analyzer over gRPC, in the same run.

    .venv/bin/python bench/python_backend.py           # about 5 minutes on a 2-core machine once built (3 rounds)
    QUICK=1 .venv/bin/python bench/python_backend.py   # smoke run: 1 round, 1 s windows, about 1 minute

Rows (perf_analyzer, random input data, three fixed windows per run), each against both servers:
- identity FP32 [16] (`--shape INPUT0:16`), sync c=1 and `--async` c=16;
- add_sub INT32 [16] x2, sync c=1 and `--async` c=16.
Servers, both on the same folder bench/triton-models, unchanged (`backend: "python"`, instance_group left to each
server's default, which the report records as each server reports it):
- Tritium: `tritium serve --model-repository bench/triton-models --python-interpreter <PYTHON>`; PYTHON defaults to
  Triton's venv python (.tools/triton-venv/bin/python, numpy 1.26.4), so both servers run the same Python and numpy.
- Triton 2.51.0 (bench/lib/install-triton.sh) with its python backend.
CPU per request counts every process of the server's session (bench/lib/servers.py): the server and its stub
processes (Tritium's stubs have their own process group but stay in the server's session; Triton's too). Every run
records how many processes the session held and how much of the CPU went to processes other than the server's own,
and whether a process of the session went away during the run (a stub that died or restarted); the report says so.
Targets (the issue's), Tritium / Triton: at least 1.5x the infer/s at c=16, at most 0.6x the CPU per request (every
row), a p99 no worse (at most 1.0x) at c=1.

Before measuring, one request per model and server (tritonclient) checks that both give the same answers (and the
right ones). Servers start once and stay up; every round runs each row against both servers in turn, in reversed
order every other round; runs are exactly three windows (`-s 1000`, as bench/lib/bench.py). The report gives medians
over rounds and ratios paired within a round (median over rounds), the server logs' error and warning lines, and
goes to bench/results/python-<UTC date>-<host>.md with every run's figures in the .json beside it
(`.venv/bin/python bench/python_backend.py --render X.json` rewrites the markdown).

Installs perf_analyzer and Triton first (idempotent; numpy is held at 1.26.4 in Triton's venv) and builds the
release `tritium` (cargo build --release -j2, a no-op when fresh; not with NO_BUILD or TRITIUM_BIN).
Environment: ROUNDS (3; QUICK: 1), QUICK, WINDOW_MS (3000; QUICK: 1000), MODELS (identity,add_sub), PYTHON (Tritium's
interpreter), TRITIUM_BIN, NO_BUILD, STARTUP_TIMEOUT (120 s), PA_TIMEOUT (120 s), MAX_STEAL_PCT (10), STEAL_TRIES (2),
BENCH_OUT.
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
from python_backend_report import MODELS, ROW_MODES, SERVERS, Run, row_label, write_report  # noqa: E402
from schedulers_report import MODES  # noqa: E402
from servers import Processes, Server  # noqa: E402


def _load(name: str, path: pathlib.Path):
    """A bench script as a module (onnx.py's name is also the ONNX package's: load by path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


onnx_bench = _load("onnx_bench", REPO / "bench" / "onnx.py")
schedulers_bench = _load("schedulers_bench", REPO / "bench" / "schedulers.py")
setting, step, triton_env = onnx_bench.setting, onnx_bench.step, onnx_bench.triton_env
rev, version_of = onnx_bench.rev, onnx_bench.version_of
PERF_ANALYZER, TRITON_VENV, TRITON_NUMPY = onnx_bench.PERF_ANALYZER, onnx_bench.TRITON_VENV, onnx_bench.TRITON_NUMPY
triton_numpy = schedulers_bench.triton_numpy

MODEL_REPOSITORY = REPO / "bench" / "triton-models"
QUICK = setting("QUICK", "0") not in ("", "0")
ROUNDS = max(1, int(setting("ROUNDS", "1" if QUICK else "3")))
WINDOW_MS = int(setting("WINDOW_MS", "1000" if QUICK else "3000"))
WANTED = [m for m in setting("MODELS", ",".join(MODELS)).split(",") if m in MODELS]
PYTHON = pathlib.Path(setting("PYTHON", str(TRITON_VENV / "bin" / "python"))).absolute()  # not resolved: a venv
STARTUP_TIMEOUT = float(setting("STARTUP_TIMEOUT", "120"))
PA_TIMEOUT = float(setting("PA_TIMEOUT", "120"))
MAX_STEAL = int(setting("MAX_STEAL_PCT", "10")) / 100
STEAL_TRIES = max(1, int(setting("STEAL_TRIES", "2")))
# Server log lines worth a look: Triton's E/W lines, Tritium's ERROR/WARN events, tracebacks and panics from either.
LOG_PROBLEM = re.compile(r"^[EW]\d{4} |\b(ERROR|WARN|WARNING)\b|Traceback|panicked|Exception|[Ee]rror:")
# What Triton says at every start on a machine without a GPU: left out.
LOG_NO_GPU = re.compile(r"pinned memory pool will not be available|CudaDriverHelper has not been initialized|"
                        r"Failed to initialize NVML|DCGM unable to start")
LOG_LINES_KEPT = 30


def say(text: str) -> None:
    print(f"python_backend: {text}", flush=True)


# ---- setup ------------------------------------------------------------------------------------------------------


def install() -> None:
    say("installing pinned tools (perf_analyzer, Triton 2.51.0; idempotent)")
    step("scripts/install-perf-analyzer.sh", ["bash", "scripts/install-perf-analyzer.sh"])
    step("bench/lib/install-triton.sh", ["bash", "bench/lib/install-triton.sh"])
    want = TRITON_NUMPY.split("==")[1]
    if triton_numpy() != want:  # with numpy 2 Triton 2.51's python backend answers with empty tensors (onnx.py)
        say(f"installing {TRITON_NUMPY} into {TRITON_VENV.relative_to(REPO)}")
        step("pip install numpy", [str(TRITON_VENV / "bin" / "python"), "-m", "pip", "install", "-q", TRITON_NUMPY])
    done = subprocess.run([str(PYTHON), "-c", "import numpy"], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"python_backend: {PYTHON} cannot import numpy (PYTHON names Tritium's interpreter):\n{done.stderr[-1000:]}")


def tritium_binary() -> pathlib.Path:
    if os.environ.get("TRITIUM_BIN") or os.environ.get("NO_BUILD"):
        binary = pathlib.Path(os.environ.get("TRITIUM_BIN") or onnx_bench.TARGET / "tritium").resolve()
        if not binary.is_file():
            sys.exit(f"python_backend: {binary} missing: run cargo build --release -j2 -p tritium-server --bin tritium")
        return binary
    say("building release tritium (cargo build --release -j2)")
    step("cargo build", ["cargo", "build", "--release", "--quiet", "-j2", "-p", "tritium-server", "--bin", "tritium"])
    return onnx_bench.TARGET / "tritium"


def python_version() -> str:
    done = subprocess.run([str(PYTHON), "-c", "import sys; print(sys.version.split()[0])"], capture_output=True, text=True)
    return f"Python {done.stdout.strip() or '?'}"


# ---- the server's session ------------------------------------------------------------------------------------------


def session(sid: int) -> dict[int, tuple[str, int]]:
    """pid -> (command name, utime + stime in ticks) of every live process in session ``sid``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        close = stat.rfind(b")")
        fields = stat[close + 2 :].split()  # fields[0] is field 3 (state): session is 6, utime 14, stime 15
        if int(fields[3]) == sid and fields[0] != b"Z":
            name = stat[stat.find(b"(") + 1 : close].decode(errors="replace")
            found[int(entry)] = (name, int(fields[11]) + int(fields[12]))
    return found


def kill_leftovers(sids: dict[str, int]) -> dict[str, str]:
    """Processes still in a stopped server's session (stubs that outlived their server), each killed by its pid."""
    left = {}
    for key, sid in sids.items():
        procs = session(sid)
        if procs:
            left[key] = ", ".join(f"{name} (pid {pid})" for pid, (name, _) in sorted(procs.items()))
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    return left


def log_problems(path: pathlib.Path) -> dict:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if LOG_PROBLEM.search(line)]
    except OSError:
        return {"count": 0, "lines": [], "no_gpu": 0}
    kept = [line for line in lines if not LOG_NO_GPU.search(line)]
    return {"count": len(kept), "lines": kept[:LOG_LINES_KEPT], "no_gpu": len(lines) - len(kept)}


# ---- the answers --------------------------------------------------------------------------------------------------


def answers(server: Server) -> dict[str, list]:
    """One request per model; raises unless each answer is the right one. Returns the outputs, to compare servers."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    def tensor(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, list(value.shape), dtype)
        t.set_data_from_numpy(value)
        return t

    got: dict[str, list] = {}
    client = grpcclient.InferenceServerClient(server.address)
    try:
        if "identity" in WANTED:
            x = (np.arange(16, dtype=np.float32) - 7.5) / 3
            out = client.infer("identity", [tensor("INPUT0", x, "FP32")]).as_numpy("OUTPUT0")
            if out is None or out.dtype != np.float32 or not np.array_equal(out, x):
                raise RuntimeError(f"{server.label}: identity answered {out!r}, not {x!r}")
            got["identity"] = [out]
        if "add_sub" in WANTED:
            a = np.arange(16, dtype=np.int32) * 3 - 20
            b = np.arange(16, dtype=np.int32)[::-1] * 7 + 1
            answer = client.infer("add_sub", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")])
            outs = [answer.as_numpy("OUTPUT0"), answer.as_numpy("OUTPUT1")]
            if any(o is None or o.dtype != np.int32 for o in outs) or not (
                np.array_equal(outs[0], a + b) and np.array_equal(outs[1], a - b)
            ):
                raise RuntimeError(f"{server.label}: add_sub answered {outs!r}, not {[a + b, a - b]!r}")
            got["add_sub"] = outs
    except grpcclient.InferenceServerException as e:
        raise RuntimeError(f"{server.label}: {e}") from e
    finally:
        client.close()
    return got


def instance_groups(server: Server) -> dict[str, object]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.address)
    try:
        return {m: client.get_model_config(m, as_json=True)["config"].get("instance_group", "?") for m in WANTED}
    except grpcclient.InferenceServerException as e:
        return {m: f"? ({e})" for m in WANTED}
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
        self.instance_groups: dict[str, dict] = {}

    def start(self, tritium: pathlib.Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_GRPC_"))}
        tenv = triton_env()
        triton = dict(os.environ, LD_LIBRARY_PATH=tenv["TRITON_LD_LIBRARY_PATH"], PATH=tenv["TRITON_PATH"])
        for key in SERVERS:
            server = Server(key, SERVERS[key], self.procs, self.work / f"{key}.log")
            if key == "tritium":
                argv = [str(tritium), "serve", "--allow-http=false", "--allow-metrics=false",
                        "--model-repository", str(MODEL_REPOSITORY), "--python-interpreter", str(PYTHON)]  # fmt: skip
                server.start_with_ready_line(argv, "tritium ready grpc=", STARTUP_TIMEOUT, env=env)
            else:
                server.start_triton(tenv["TRITONSERVER"], tenv["TRITON_BACKENDS"], MODEL_REPOSITORY, triton, STARTUP_TIMEOUT)
            self.servers[key] = server
            say(f"  {server.label} ready on {server.address}")
        self.triton_version = triton_version(self.servers["triton"])
        got = {key: answers(server) for key, server in self.servers.items()}
        import numpy as np

        for model in WANTED:
            if not all(np.array_equal(a, b) for a, b in zip(got["tritium"][model], got["triton"][model])):
                raise RuntimeError(f"{model}: Tritium answered {got['tritium'][model]!r}, Triton {got['triton'][model]!r}")
        say("both servers give the same (expected) answers")
        for key, server in self.servers.items():
            self.instance_groups[key] = instance_groups(server)
            procs = session(server.proc.pid)
            say(f"  {server.label}: {len(procs)} processes in its session ({', '.join(sorted(n for n, _ in procs.values()))})")
            if len(procs) < 2:
                raise RuntimeError(f"{server.label}: no stub process in the server's session; CPU accounting would miss them")

    def perf_analyzer(self, model: str, mode: str, key: str, window_ms: int, tag: str) -> Run:
        server = self.servers[key]
        _, args, concurrency = MODES[mode]
        csv_path, out_path = self.work / f"{tag}.csv", self.work / f"{tag}.out"
        argv = [str(PERF_ANALYZER), "-i", "grpc", "-u", server.address, "-m", model, "--concurrency-range", str(concurrency)]
        argv += [*args, *MODELS[model][1]]
        # -s 1000: "stable" after the first three windows, so every run is exactly three windows (bench/lib/bench.py).
        argv += ["-p", str(window_ms), "-s", "1000", "-f", str(csv_path)]
        run = Run(model, mode, key, 0, False)
        if not server.alive():
            run.error = server.failed or "server is not running"
            return run
        leader = server.proc.pid
        before = session(leader)
        run_perf_analyzer(self.procs, self.work, argv, PA_TIMEOUT, server, run, csv_path, out_path)
        after = session(leader)
        # The stubs' share: CPU ticks of every process but the server's own (a process new in the session counts whole).
        ticks = sum(t - before.get(pid, ("", 0))[1] for pid, (_, t) in after.items() if pid != leader)
        run.stub_cpu_s = ticks / os.sysconf("SC_CLK_TCK")
        run.processes = len(after)
        run.gone = ", ".join(f"{before[pid][0]} (pid {pid})" for pid in sorted(set(before) - set(after)))
        return run

    def warm_up(self) -> None:
        """A short run per row and server, so no measurement pays for first runs and lazy setup."""
        for model in WANTED:
            for mode in ROW_MODES:
                for key in SERVERS:
                    run = self.perf_analyzer(model, mode, key, 300, f"warm-{model}-{mode}-{key}")
                    if not run.ok:
                        raise RuntimeError(f"warm-up of {SERVERS[key]} ({row_label(model, mode)}) failed: {run.error}")

    def measure(self) -> None:
        plan = []
        for rnd in range(1, ROUNDS + 1):
            for model in WANTED:
                for mode in ROW_MODES:
                    keys = list(SERVERS) if rnd % 2 else list(SERVERS)[::-1]
                    plan += [(rnd, model, mode, key) for key in keys]
        width = len(str(len(plan)))
        for i, (rnd, model, mode, key) in enumerate(plan, 1):
            name = f"{row_label(model, mode)} r{rnd} {SERVERS[key]}"
            for tries in range(1, STEAL_TRIES + 1):
                run = self.perf_analyzer(model, mode, key, WINDOW_MS, f"{model}-{mode}-{key}-r{rnd}")
                run.round, run.tries = rnd, tries
                if not run.ok or run.steal <= MAX_STEAL or tries == STEAL_TRIES:
                    break
                say(f"{name}: {run.steal:.0%} of the CPU time was stolen; again")
            self.runs.append(run)
            if run.ok:
                result = (f"{run.infer_s:>9,.1f} infer/s  p50 {run.p50_us:>7,.0f} µs  p99 {run.p99_us:>7,.0f} µs  "
                          f"cpu {run.cpu_us_per_request:>6,.0f} µs/req (stubs {run.stub_cpu_us_per_request:>5,.0f}), "
                          f"{run.processes} procs")  # fmt: skip
                if run.gone:
                    result += f"  GONE: {run.gone}"
            else:
                result = f"FAILED: {run.error}"
            say(f"[{i:>{width}}/{len(plan)}] r{rnd} {row_label(model, mode):<36} {SERVERS[key][:28]:<28} {result}")


# ---- driver -----------------------------------------------------------------------------------------------------


def report_path() -> pathlib.Path:
    if os.environ.get("BENCH_OUT"):
        return pathlib.Path(os.environ["BENCH_OUT"]).resolve()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", os.uname().nodename) or "host"
    return REPO / "bench" / "results" / f"python-{date}-{host}{'-quick' if QUICK else ''}.md"


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
        sys.exit(f"python_backend: MODELS={os.environ.get('MODELS')!r} names none of {', '.join(MODELS)}")
    install()
    tritium = tritium_binary()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    info = machine()  # the load average before this run's own servers start
    started = time.monotonic()
    start_utc = datetime.datetime.now(datetime.timezone.utc)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-python-bench-"))
    bench = Bench(work)
    failed = True
    sids: dict[str, int] = {}
    leftovers: dict[str, str] = {}
    try:
        say(f"starting Tritium and Triton on {MODEL_REPOSITORY.relative_to(REPO)} (logs in {work})")
        try:
            bench.start(tritium)
        finally:
            sids = {key: s.proc.pid for key, s in bench.servers.items() if s.proc is not None}
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
        leftovers = kill_leftovers(sids)
        for key, left in leftovers.items():
            say(f"{SERVERS[key]}: still alive after the server stopped, killed: {left}")
        for key, s in bench.servers.items():
            found = log_problems(s.log_path)
            if found["count"]:
                say(f"{SERVERS[key]} log: {found['count']} line(s) that look like errors or warnings, e.g. "
                    f"{found['lines'][0][:200]}")
        if failed:
            say(f"logs kept in {work}")
    knobs = ("ROUNDS", "QUICK", "WINDOW_MS", "MODELS", "PYTHON", "NO_BUILD", "MAX_STEAL_PCT", "STEAL_TRIES")
    envs = " ".join(f"{k}={os.environ[k]}" for k in knobs if os.environ.get(k))
    meta = {
        "date": start_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": time.monotonic() - started,
        "machine": info,
        "command": (envs + " " if envs else "") + ".venv/bin/python bench/python_backend.py",
        "rounds": ROUNDS,
        "window_ms": WINDOW_MS,
        "max_steal": MAX_STEAL,
        "steal_tries": STEAL_TRIES,
        "models": WANTED,
        "python": str(PYTHON.relative_to(REPO) if PYTHON.is_relative_to(REPO) else PYTHON),
        "triton_version": bench.triton_version,
        "versions": {
            "tritium": rev(),
            "pytriton": version_of(TRITON_VENV / "bin" / "python", "nvidia-pytriton"),
            "perf_analyzer": version_of(pathlib.Path(sys.executable), "perf-analyzer"),
            "triton_venv": f"numpy {triton_numpy()}",
            "python": python_version(),
        },
        "tritium_bin": str(tritium),
        "instance_groups": bench.instance_groups,
        "leftovers": leftovers,
        "log_lines": {key: log_problems(s.log_path) for key, s in bench.servers.items()},
        "notes": [],  # findings added by hand after the run (rendered under the targets; --render keeps them)
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
