"""Side-by-side perf_analyzer runs against the real Triton, Tritium and the limit server (bench/run.sh runs this).

For every row, the servers are measured in turn, A B C A B C ..., ROUNDS times; every run records infer/s,
p50 and p99 (perf_analyzer's CSV), the number of requests it completed (perf_analyzer's "Request count") and
the server's CPU seconds over the run (utime + stime of its whole session, from /proc). The report takes the
median of each figure over the rounds. Environment: see bench/README.md (ROUNDS, QUICK, ROWS, ...).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
from servers import Processes, Server, cpu_ticks  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20


@dataclass
class Row:
    key: str
    group: str
    title: str
    model: str
    args: list[str]
    concurrency: int
    large: bool = False
    shape: str = ""  # --shape for every server ("" for add_sub's fixed shapes)
    # Tensors in system shared memory both ways (perf_analyzer fills the regions once): only the request's
    # metadata crosses gRPC, so the server is measured rather than the client's serialization. Triton and
    # Tritium only: the limit server has no shared memory.
    shm: bool = False
    # perf_analyzer's -i: "http" rows go to each server's HTTP port (Triton's and Tritium's; the limit server has
    # none). perf_analyzer sends binary tensors over HTTP unless told otherwise.
    protocol: str = "grpc"


def _shm(output_bytes: int) -> list[str]:
    return ["--shared-memory", "system", "--output-shared-memory-size", str(output_bytes)]


ROWS = [
    Row("identity-sync-c1", "identity FP32[16]", "identity FP32[16], sync, c=1", "identity", [], 1, shape="INPUT0:16"),
    Row("identity-async-c4", "identity FP32[16]", "identity FP32[16], --async, c=4", "identity", ["--async"], 4, shape="INPUT0:16"),
    Row("identity-async-c16", "identity FP32[16]", "identity FP32[16], --async, c=16", "identity", ["--async"], 16, shape="INPUT0:16"),
    Row("identity-async-c64", "identity FP32[16]", "identity FP32[16], --async, c=64", "identity", ["--async"], 64, shape="INPUT0:16"),
    Row("add_sub-sync-c1", "add_sub INT32[16]", "add_sub INT32[16] x2, sync, c=1", "add_sub", [], 1),
    Row("add_sub-async-c16", "add_sub INT32[16]", "add_sub INT32[16] x2, --async, c=16", "add_sub", ["--async"], 16),
    Row("identity-stream-c4", "streaming", "identity FP32[16], --async --streaming, c=4", "identity", ["--async", "--streaming"], 4, shape="INPUT0:16"),
    Row("identity-http-sync-c1", "HTTP", "identity FP32[16], HTTP binary, sync, c=1", "identity", [], 1, shape="INPUT0:16", protocol="http"),
    Row("identity-http-async-c16", "HTTP", "identity FP32[16], HTTP binary, --async, c=16", "identity", ["--async"], 16, shape="INPUT0:16", protocol="http"),
    # perf_analyzer 2.60's --input-tensor-format json sends only the first element of each tensor (both servers refuse
    # it), so the JSON rows send binary inputs and ask for JSON outputs.
    Row("identity-http-json-sync-c1", "HTTP", "identity FP32[16], HTTP JSON outputs, sync, c=1", "identity", ["--output-tensor-format", "json"], 1, shape="INPUT0:16", protocol="http"),
    Row("identity-http-json-async-c16", "HTTP", "identity FP32[16], HTTP JSON outputs, --async, c=16", "identity", ["--async", "--output-tensor-format", "json"], 16, shape="INPUT0:16", protocol="http"),
    Row("identity-4MiB", "large tensors", "identity FP32 4 MiB (1,048,576 floats), sync, c=1", "identity", [], 1, True, "INPUT0:1048576"),
    Row("identity-64MiB", "large tensors", "identity FP32 64 MiB (16,777,216 floats), sync, c=1", "identity", [], 1, True, "INPUT0:16777216"),
    Row("identity-4MiB-shm", "large tensors in shared memory", "identity FP32 4 MiB in system shared memory, sync, c=1", "identity", _shm(4 << 20), 1, shape="INPUT0:1048576", shm=True),
    Row("identity-64MiB-shm", "large tensors in shared memory", "identity FP32 64 MiB in system shared memory, sync, c=1", "identity", _shm(64 << 20), 1, shape="INPUT0:16777216", shm=True),
]  # fmt: skip

# The limit runs with `tritium serve`'s default transport (DEFAULT_WINDOW and DEFAULT_MAX_FRAME in
# server/src/config/mod.rs), so that Tritium/limit compares the handling of requests, not HTTP/2 settings.
LIMIT_TRANSPORT = [
    "--grpc-initial-connection-window-size", "16777216",
    "--grpc-initial-stream-window-size", "16777216",
    "--grpc-max-frame-size", "1048576",
]  # fmt: skip

# Tritium's HTTP/2 window variants (issue 4, item 2), measured on the large-tensor rows only:
# key -> (progress label, report label, flags). The first states tonic's (hyper's) defaults explicitly, so the
# experiment stays the same when Tritium's own defaults change.
WINDOW_VARIANTS = {
    "tritium-tonic": (
        "Tritium, tonic default windows",
        "(a) tonic's defaults, explicit: 1 MiB windows, 16 KiB frames",
        [
            "--grpc-initial-connection-window-size", "1048576",
            "--grpc-initial-stream-window-size", "1048576",
            "--grpc-max-frame-size", "16384",
        ],
    ),
    "tritium-adaptive": ("Tritium --grpc-adaptive-window", "(b) adaptive window", ["--grpc-adaptive-window"]),
    "tritium-16mib": (
        "Tritium 16 MiB windows, 1 MiB frames",
        "(c) 16 MiB windows, 1 MiB frames",
        [
            "--grpc-initial-connection-window-size", "16777216",
            "--grpc-initial-stream-window-size", "16777216",
            "--grpc-max-frame-size", "1048576",
        ],
    ),
}  # fmt: skip


@dataclass
class Run:
    row: str
    server: str
    round: int
    ok: bool
    infer_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    requests: int = 0
    cpu_s: float = 0.0
    # The client's CPU over the run, where the caller measures it (bench/protocols.py).
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str = ""
    note: str = ""
    # Share of the machine's CPU time the hypervisor took during the run (/proc/stat steal).
    steal: float = 0.0
    # Tries this run took: a run with more steal than MAX_STEAL is run again.
    tries: int = 1

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / self.requests * 1000 if self.requests else float("nan")


def steal_share(before: list[int], after: list[int]) -> float:
    """The share of all CPU time between two readings that the hypervisor gave to someone else."""
    delta = [b - a for a, b in zip(before, after)]
    return delta[7] / sum(delta) if sum(delta) > 0 else 0.0


def run_perf_analyzer(procs: Processes, work: Path, argv: list[str], timeout: float, server: Server, run, csv_path: Path,
                      out_path: Path) -> str:
    """Runs perf_analyzer (`argv`) against `server` and fills `run`: wall time, the server's CPU seconds and the
    steal over the run, then perf_analyzer's infer/s, p50, p99 and request count with `ok`, or `error`. Returns
    perf_analyzer's output for callers that read more of it."""
    with open(out_path, "wb") as out:
        cpu0, t0, ticks0 = server.cpu_seconds(), time.monotonic(), cpu_ticks()
        proc = procs.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=work)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        run.wall_s = time.monotonic() - t0
        run.cpu_s = server.cpu_seconds() - cpu0 if server.alive() else 0.0
        run.steal = steal_share(ticks0, cpu_ticks())
        procs.stop(proc, grace=2)
    text = out_path.read_text(errors="replace")
    if not server.alive():
        server.failed = f"server exited with {server.proc.returncode if server.proc else '?'} (log: {server.log_path})"
        run.error = server.failed
    elif rc is None:
        run.error = f"timed out after {timeout:.0f} s"
    elif rc != 0 or not csv_path.exists():
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        run.error = f"perf_analyzer exit {rc}: {last[0][:160]}"
    else:
        with open(csv_path, newline="") as f:
            first = next(csv.DictReader(f))
        run.infer_s = float(first["Inferences/Second"])
        run.p50_us = float(first["p50 latency"])
        run.p99_us = float(first["p99 latency"])
        counts = re.findall(r"Request count: (\d+)", text)
        run.requests = int(counts[0]) if counts else 0
        run.ok = True
    return text


@dataclass
class Settings:
    rounds: int
    quick: bool
    rows: list[Row]
    window_ms: int
    large_count: dict[str, int]
    mem_cap: int
    pa_timeout: float
    large_timeout: float
    startup_timeout: float
    out: Path
    command: str
    max_steal: float
    steal_tries: int
    extra: dict = field(default_factory=dict)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def settings() -> Settings:
    quick = os.environ.get("QUICK", "") not in ("", "0")
    rounds = env_int("ROUNDS", 1 if quick else 3)
    wanted = [w.strip() for w in os.environ.get("ROWS", "").split(",") if w.strip()]
    # A token names a row by its key, a prefix of it, or one of its dash-separated parts ("4MiB", "sync", "c16").
    rows = [r for r in ROWS if not wanted or any(r.key.startswith(w) or w in r.key.split("-") for w in wanted)]
    if not rows:
        sys.exit(f"bench: ROWS={os.environ['ROWS']!r} matches none of: {', '.join(r.key for r in ROWS)}")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    host = re.sub(r"[^A-Za-z0-9._-]", "_", os.uname().nodename) or "host"
    suffix = "-quick" if quick else ("-partial" if wanted else "")
    out = Path(os.environ.get("BENCH_OUT") or REPO / "bench" / "results" / f"{date}-{host}{suffix}.md")
    envs = " ".join(
        f"{k}={os.environ[k]}" for k in ("ROUNDS", "QUICK", "ROWS", "WINDOW_MS", "PA_MEM_CAP_GIB", "MAX_STEAL_PCT", "STEAL_TRIES")
        if os.environ.get(k)
    )
    return Settings(
        rounds=max(1, rounds),
        quick=quick,
        rows=rows,
        window_ms=env_int("WINDOW_MS", 1000 if quick else 3000),
        large_count={"identity-4MiB": 10 if quick else 100, "identity-64MiB": 2 if quick else 5},
        mem_cap=env_int("PA_MEM_CAP_GIB", 12) << 30,
        pa_timeout=float(env_int("PA_TIMEOUT", 120)),
        large_timeout=float(env_int("PA_LARGE_TIMEOUT", 300)),
        max_steal=env_int("MAX_STEAL_PCT", 10) / 100,
        steal_tries=max(1, env_int("STEAL_TRIES", 3)),
        startup_timeout=float(env_int("STARTUP_TIMEOUT", 120)),
        out=out,
        command=(envs + " " if envs else "") + "bash bench/run.sh",
    )


def progress(message: str) -> None:
    print(f"bench: {message}", flush=True)


class Bench:
    def __init__(self, cfg: Settings, work: Path) -> None:
        self.cfg = cfg
        self.work = work
        self.procs = Processes()
        self.servers: dict[str, Server] = {}
        self.notes: list[str] = []
        self.runs: list[Run] = []
        self.pa = str(REPO / "scripts" / "perf_analyzer")

    # ---- servers -------------------------------------------------------------------------------------------

    def start_servers(self) -> None:
        env = os.environ
        tritium = env["TRITIUM_BIN"]
        triton = Server("triton", "Triton 2.51.0", self.procs, self.work / "triton.log")
        progress("starting Triton (python backend), Tritium" + (", limit-server" if env.get("LIMIT_BIN") else ""))
        triton_env = dict(env, LD_LIBRARY_PATH=env["TRITON_LD_LIBRARY_PATH"], PATH=env["TRITON_PATH"])
        triton.start_triton(
            env["TRITONSERVER"], env["TRITON_BACKENDS"], REPO / "bench" / "triton-models", triton_env, self.cfg.startup_timeout
        )
        self.servers["triton"] = triton
        self.triton_version = triton_version(triton)

        server = Server("tritium", "Tritium", self.procs, self.work / "tritium.log")
        server.start_with_ready_line([tritium, "serve", "--allow-metrics=false", "--allow-shared-memory"], "tritium ready grpc=", self.cfg.startup_timeout, http=True)
        self.servers["tritium"] = server

        limit = env.get("LIMIT_BIN", "")
        if limit:
            server = Server("limit", "limit", self.procs, self.work / "limit.log")
            server.start_with_ready_line([limit, *LIMIT_TRANSPORT], "limit ready grpc=", self.cfg.startup_timeout)
            self.servers["limit"] = server
        else:
            self.notes.append(f"No limit column: {env.get('LIMIT_MISSING', 'limit-server was not built')}.")

        if any(r.large for r in self.cfg.rows):
            for key, (label, _, flags) in WINDOW_VARIANTS.items():
                server = Server(key, label, self.procs, self.work / f"{key}.log")
                server.start_with_ready_line([tritium, "serve", "--allow-http=false", "--allow-metrics=false", "--allow-shared-memory", *flags], "tritium ready grpc=", self.cfg.startup_timeout)
                self.servers[key] = server
        for s in self.servers.values():
            progress(f"  {s.label} ready on {s.address}")

    def server_order(self, row: Row, rnd: int) -> list[str]:
        # Tritium and the limit swap places every other round, so that whatever a place in the order does to a run
        # (following Triton's run, or another one) falls on both alike.
        if row.shm or row.protocol == "http":
            order = ["triton", "tritium"]
        else:
            order = ["triton", "tritium", "limit"] if rnd % 2 else ["triton", "limit", "tritium"]
        if row.large:
            order += list(WINDOW_VARIANTS)
        return [k for k in order if k in self.servers]

    # ---- perf_analyzer -------------------------------------------------------------------------------------

    def pa_argv(self, row: Row, server: Server, csv_path: Path) -> tuple[list[str], float, str]:
        address = server.http if row.protocol == "http" else server.address
        argv = [self.pa, "-i", row.protocol, "-u", address, "-m", row.model, "--concurrency-range", str(row.concurrency)]
        argv += row.args
        note = ""
        shape = row.shape
        if shape:
            argv += ["--shape", shape]
        # -s 1000: "stable" after the first three windows, so every run is exactly three windows long and all
        # three are reported (perf_analyzer's "Request count" then covers nearly the whole run); the noise is
        # handled by alternating servers and taking medians over rounds instead.
        argv += ["-s", "1000", "-f", str(csv_path)]
        if row.large:
            argv += ["--measurement-mode", "count_windows", "--measurement-request-count", str(self.cfg.large_count[row.key])]
            # perf_analyzer keeps about one request's worth of memory per request: cap its address space.
            argv = ["prlimit", f"--as={self.cfg.mem_cap}", "--", *argv]
            timeout = self.cfg.large_timeout
        else:
            argv += ["-p", str(self.cfg.window_ms)]
            timeout = self.cfg.pa_timeout
        return argv, timeout, note

    def run_once(self, row: Row, server: Server, rnd: int) -> Run:
        tag = f"{row.key}.{server.key}.r{rnd}"
        csv_path, out_path = self.work / f"{tag}.csv", self.work / f"{tag}.out"
        argv, timeout, note = self.pa_argv(row, server, csv_path)
        run = Run(row.key, server.key, rnd, False, note=note)
        if not server.alive():
            run.error = server.failed or "server is not running"
            return run
        run_perf_analyzer(self.procs, self.work, argv, timeout, server, run, csv_path, out_path)
        return run

    def warm_up(self) -> None:
        """One short sync run per server, so no first measurement pays for cold caches or lazy setup."""
        for server in self.servers.values():
            argv = [self.pa, "-i", "grpc", "-u", server.address, "-m", "identity", "--shape", "INPUT0:16",
                    "-p", "500", "-s", "1000", "-f", str(self.work / f"warm-{server.key}.csv")]  # fmt: skip
            with open(self.work / f"warm-{server.key}.out", "wb") as out:
                proc = self.procs.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
                try:
                    proc.wait(timeout=self.cfg.pa_timeout)
                except subprocess.TimeoutExpired:
                    pass
                self.procs.stop(proc, grace=2)

    def measure(self) -> None:
        plan = [(row, rnd, key) for row in self.cfg.rows for rnd in range(1, self.cfg.rounds + 1) for key in self.server_order(row, rnd)]
        width = len(str(len(plan)))
        for i, (row, rnd, key) in enumerate(plan, 1):
            server = self.servers[key]
            # The hypervisor takes CPU from this VM at times (steal): a run it disturbed says little
            # about either server, so it is run again, and the last try is kept.
            for tries in range(1, self.cfg.steal_tries + 1):
                run = self.run_once(row, server, rnd)
                run.tries = tries
                if not run.ok or run.steal <= self.cfg.max_steal or tries == self.cfg.steal_tries:
                    break
                progress(f"{row.key} r{rnd} {server.label[:38]}: {run.steal:.0%} of the CPU time was stolen; again")
            self.runs.append(run)
            if run.ok:
                result = f"{run.infer_s:>10,.1f} infer/s  p99 {run.p99_us:>9,.0f} µs  cpu {run.cpu_per_1k:7.3f} s/1k"
            else:
                result = f"FAILED: {run.error}"
            progress(f"[{i:>{width}}/{len(plan)}] {row.key:<19} r{rnd} {server.label[:38]:<38} {result}")

    def stop(self) -> None:
        self.procs.stop_all()


def triton_version(server: Server) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{server.http}/v2", timeout=5) as r:
            return json.load(r).get("version", "?")
    except (OSError, ValueError):
        return "?"


def machine() -> dict:
    info = {"cpu": "?", "cores": os.cpu_count() or 0, "memory": "?", "kernel": os.uname().release}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def write_report(out: Path, meta: dict, runs: list[Run]) -> None:
    """``out`` (markdown) and, beside it, the same run as JSON (``--render`` turns that back into markdown)."""
    rows = [r for r in ROWS if r.key in meta["rows"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".json")
    tmp = raw.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    tmp.replace(raw)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(report.render(meta, rows, WINDOW_VARIANTS, runs))
    tmp.replace(out)


def render(raw: Path) -> int:
    data = json.loads(raw.read_text())
    write_report(raw.with_suffix(".md"), data["meta"], [Run(**r) for r in data["runs"]])
    print(raw.with_suffix(".md"))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--render"]:
        return render(Path(sys.argv[2]))
    cfg = settings()
    started = time.monotonic()
    start_utc = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="tritium-bench-"))
    bench = Bench(cfg, work)

    def terminate(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, terminate)  # also when started in the background, where SIGINT starts ignored
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    failed = True
    try:
        bench.start_servers()
        progress(f"warming up; then {len(cfg.rows)} rows x {cfg.rounds} round(s), servers alternating (work dir {work})")
        bench.warm_up()
        bench.measure()
        failed = False
    except KeyboardInterrupt:
        progress("interrupted; stopping every server")
        return 130
    except RuntimeError as e:
        progress(f"error: {e}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        bench.stop()
        if failed:
            progress(f"logs kept in {work}")
    meta = {
        "date": start_utc.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "command": cfg.command,
        "duration_s": time.monotonic() - started,
        "triton_version": bench.triton_version,
        "versions": json.loads(os.environ.get("BENCH_VERSIONS", "{}")),
        "servers": {k: s.label for k, s in bench.servers.items()},
        "notes": bench.notes,
        "settings": {"rounds": cfg.rounds, "quick": cfg.quick, "window_ms": cfg.window_ms,
                     "large_count": cfg.large_count, "mem_cap_gib": cfg.mem_cap >> 30,
                     "max_steal": cfg.max_steal, "steal_tries": cfg.steal_tries,
                     "limit_args": LIMIT_TRANSPORT},  # fmt: skip
    }
    meta["rows"] = [r.key for r in cfg.rows]
    write_report(cfg.out, meta, bench.runs)
    failures = sum(1 for r in bench.runs if not r.ok)
    if failures:
        progress(f"{failures} run(s) failed; perf_analyzer output and server logs kept in {work}")
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    progress(f"done in {meta['duration_s'] / 60:.1f} min")
    print(cfg.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
