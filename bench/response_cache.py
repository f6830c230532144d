"""The response cache (`--cache-config local,size=...`, `response_cache { enable: true }`): one repeated input at
concurrency 16, cache on against cache off, and the cache's hit path against the limit server, with perf_analyzer
over gRPC in one run.

    .venv/bin/python bench/response_cache.py           # about 4 minutes on a 2-core machine once built (3 rounds)
    QUICK=1 .venv/bin/python bench/response_cache.py   # smoke run: 1 round, 1 s windows

Rows (perf_analyzer `--async --concurrency-range 16 --input-data zero`: every request carries the same input, so
with the cache on every request after the first is a hit):
- identity FP32[16]: Tritium's built-in identity backend without the cache, with it, and the limit server (a bare
  tonic echo with no validation and no backend, bench/src/bin/limit-server.rs): the hit path's cost against the
  thinnest server.
- dense FP32[4096]: the built-in `dense` backend (a 4096 x 4096 layer, dynamic batching) without and with the
  cache: what a hit saves when the model costs something.
Servers: two `tritium serve` processes with the same model names, one with `--cache-config local,size=64MiB` and
the models' `response_cache { enable: true }`, one without; the release `limit-server`. Each round runs every row
against each of its targets in turn (reversed every other round); runs are exactly three windows (`-s 1000`). The
report (medians over rounds: infer/s, p50, p99, server CPU per request; cache on / off and on / limit paired within
a round) goes to bench/results/response-cache-<UTC date>-<host>.md with the raw runs in the .json beside it.
Environment: ROUNDS (3; QUICK: 1), QUICK, WINDOW_MS (3000; QUICK: 1000), TRITIUM_BIN, LIMIT_BIN, NO_BUILD,
STARTUP_TIMEOUT (120 s), PA_TIMEOUT (120 s), BENCH_OUT.
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

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import Run, machine, run_perf_analyzer  # noqa: E402
from servers import Processes, Server  # noqa: E402


def setting(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


QUICK = setting("QUICK", "0") not in ("", "0")
ROUNDS = max(1, int(setting("ROUNDS", "1" if QUICK else "3")))
WINDOW_MS = int(setting("WINDOW_MS", "1000" if QUICK else "3000"))
STARTUP_TIMEOUT = float(setting("STARTUP_TIMEOUT", "120"))
PA_TIMEOUT = float(setting("PA_TIMEOUT", "120"))
PERF_ANALYZER = REPO / "scripts" / "perf_analyzer"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
CACHE_BYTES = 64 << 20

# Row -> (model, perf_analyzer shape arguments, targets).
ROWS = {
    "identity FP32[16]": ("idc", ["--shape", "INPUT0:16"], ["off", "on", "limit"]),
    "dense FP32[4096]": ("densec", [], ["off", "on"]),
}
LABELS = {"off": "Tritium, cache off", "on": "Tritium, cache on", "limit": "limit server"}


def say(text: str) -> None:
    print(f"response_cache: {text}", flush=True)


def models(repo: pathlib.Path, cached: bool) -> None:
    """The two models, with or without `response_cache`."""
    cache = "response_cache { enable: true }\n" if cached else ""
    identity = (
        'name: "idc"\nbackend: "identity"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
    )
    dense = (REPO / "worker" / "models" / "dense.pbtxt").read_text().replace('name: "dense"', 'name: "densec"')
    for name, config in (("idc", identity), ("densec", dense)):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(config + cache)


def binary(env: str, name: str, package: str) -> pathlib.Path:
    if os.environ.get(env):
        return pathlib.Path(os.environ[env]).resolve()
    if not os.environ.get("NO_BUILD"):
        say(f"building release {name} (cargo build --release -j2)")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-j2", "-p", package, "--bin", name], cwd=REPO, check=True)
    return TARGET / name


def perf_analyzer(procs: Processes, work: pathlib.Path, server: Server, row: str, target: str, window_ms: int, tag: str) -> Run:
    model, shape, _ = ROWS[row]
    csv_path, out_path = work / f"{tag}.csv", work / f"{tag}.out"
    argv = [str(PERF_ANALYZER), "-i", "grpc", "-u", server.address, "-m", model, "--async", "--concurrency-range", "16"]
    argv += [*shape, "--input-data", "zero", "-p", str(window_ms), "-s", "1000", "-f", str(csv_path)]
    run = Run(row, target, 0, False)
    run_perf_analyzer(procs, work, argv, PA_TIMEOUT, server, run, csv_path, out_path)
    return run


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(runs: list[Run], meta: dict) -> str:
    lines = [
        "# Response cache: one repeated input at concurrency 16",
        "",
        f"{meta['date']}, {meta['machine']['cpu']} ({meta['machine']['cores']} cores), rev {meta['rev']}, "
        f"{meta['rounds']} round(s) of three {meta['window_ms']} ms windows, perf_analyzer `--async "
        f"--concurrency-range 16 --input-data zero` over gRPC; `--cache-config local,size={CACHE_BYTES}`.",
        "",
        "| row | server | infer/s | p50 µs | p99 µs | server CPU µs/request |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row, (_, _, targets) in ROWS.items():
        for target in targets:
            ok = [r for r in runs if r.row == row and r.server == target and r.ok]
            cpu = median([r.cpu_s / r.requests * 1e6 for r in ok if r.requests])
            lines.append(
                f"| {row} | {LABELS[target]} | {median([r.infer_s for r in ok]):,.0f} | {median([r.p50_us for r in ok]):,.0f} "
                f"| {median([r.p99_us for r in ok]):,.0f} | {cpu:,.1f} |"
            )
    lines += ["", "Ratios of infer/s, paired within a round (median over rounds):", ""]
    for row, (_, _, targets) in ROWS.items():
        for a, b in (("on", "off"), ("on", "limit")):
            if b not in targets:
                continue
            pairs = []
            for n in range(meta["rounds"]):
                x = [r.infer_s for r in runs if (r.row, r.server, r.round, r.ok) == (row, a, n, True)]
                y = [r.infer_s for r in runs if (r.row, r.server, r.round, r.ok) == (row, b, n, True)]
                if x and y and y[0] > 0:
                    pairs.append(x[0] / y[0])
            lines.append(f"- {row}: {LABELS[a]} / {LABELS[b]} = {median(pairs):.2f}")
    failed = [r for r in runs if not r.ok]
    if failed:
        lines += ["", "Failed runs:", ""] + [f"- {r.row}, {LABELS[r.server]}, round {r.round}: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def main() -> int:
    tritium = binary("TRITIUM_BIN", "tritium", "tritium-server")
    limit = binary("LIMIT_BIN", "limit-server", "tritium-bench")
    procs = Processes()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-bench-cache-"))
    servers: dict[str, Server] = {}
    try:
        for key, cached in (("off", False), ("on", True)):
            repo = work / f"models-{key}"
            models(repo, cached)
            argv = [str(tritium), "serve", "--allow-http=false", "--allow-metrics=false", "--model-repository", str(repo)]
            argv += ["--cache-config", f"local,size={CACHE_BYTES}"] if cached else []
            servers[key] = Server(key, LABELS[key], procs, work / f"{key}.log")
            servers[key].start_with_ready_line(argv, "tritium ready grpc=", STARTUP_TIMEOUT)
        servers["limit"] = Server("limit", LABELS["limit"], procs, work / "limit.log")
        servers["limit"].start_with_ready_line([str(limit)], "limit ready grpc=", STARTUP_TIMEOUT)
        say("warming up")
        for row, (_, _, targets) in ROWS.items():
            for target in targets:
                warm = perf_analyzer(procs, work, servers[target], row, target, 300, f"warm-{target}-{row[:5]}")
                if not warm.ok:
                    sys.exit(f"response_cache: warm-up of {row} on {LABELS[target]} failed: {warm.error}")
        runs: list[Run] = []
        for n in range(ROUNDS):
            for row, (_, _, targets) in ROWS.items():
                for target in targets if n % 2 == 0 else list(reversed(targets)):
                    run = perf_analyzer(procs, work, servers[target], row, target, WINDOW_MS, f"r{n}-{target}-{row[:5]}")
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
    stem = out / f"response-cache-{date:%Y-%m-%d}-{os.uname().nodename}{'-quick' if QUICK else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": [dataclasses.asdict(r) for r in runs]}, indent=1))
    stem.with_suffix(".md").write_text(report(runs, meta))
    print(stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
