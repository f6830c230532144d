"""What request tracing costs (issue 42): the same release `tritium serve` with tracing off (the default), with
Triton's default sampling on (`--trace-config rate=1000`, level TIMESTAMPS, a trace file), and tracing every
request (`rate=1`, to a trace file and over OTLP to a collector that refuses connections, so span building and
export are paid and nothing waits on a collector), against the release before tracing was wired when
`TRITIUM_PREVIOUS_BIN` names one (built from `8875bd8`, the last commit without it), with the real perf_analyzer
(identity FP32[16], gRPC, sync c=1 and --async c=16). Within each round the runs of a row follow each other in
an order that rotates every round; each figure is the median over rounds of that round's ratio (a shared 2-core
VM drifts between rounds by more than the differences measured). Writes bench/results/tracing-<UTC date>-<host>.md
and prints its path.

    .venv/bin/python bench/tracing.py     # about 8 min; needs target/release/tritium (bash bench/run.sh builds it)
    TRITIUM_PREVIOUS_BIN=/tmp/tritium-8875bd8 ROUNDS=7 .venv/bin/python bench/tracing.py
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import socket
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import Run, machine, run_perf_analyzer  # noqa: E402
from servers import Processes, Server  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
WINDOW_MS = int(os.environ.get("WINDOW_MS", "3000"))
ROWS = {"sync-c1": ([], 1), "async-c16": (["--async"], 16)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def modes(work: pathlib.Path) -> dict[str, list[str]]:
    trace = lambda *extra: [f"--trace-config={e}" for e in extra]  # noqa: E731
    out = {}
    if os.environ.get("TRITIUM_PREVIOUS_BIN"):
        out["previous"] = []
    out["off"] = []
    out["rate-1000"] = trace("level=TIMESTAMPS", "rate=1000", f"triton,file={work / 'rate1000.json'}")
    out["every-file"] = trace("level=TIMESTAMPS", "rate=1", f"triton,file={work / 'every.json'}", "triton,log-frequency=10000")
    out["every-otlp"] = trace("mode=opentelemetry", "level=TIMESTAMPS", "rate=1",
                              f"opentelemetry,url=http://127.0.0.1:{closed_port()}/v1/traces")
    return out


def main() -> int:
    binary = os.environ.get("TRITIUM_BIN", str(REPO / "target" / "release" / "tritium"))
    previous = os.environ.get("TRITIUM_PREVIOUS_BIN")
    pa = str(REPO / "scripts" / "perf_analyzer")
    procs = Processes()
    results: dict[tuple[str, str], dict[int, Run]] = {}
    with tempfile.TemporaryDirectory(prefix="tritium-tracing-bench-") as tmp:
        work = pathlib.Path(tmp)
        configs = modes(work)
        try:
            servers = {}
            for mode, extra in configs.items():
                server = Server(mode, mode, procs, work / f"{mode}.log")
                argv = [previous if mode == "previous" else binary, "serve", "--allow-metrics=false", "--allow-http=false", *extra]
                server.start_with_ready_line(argv, "tritium ready grpc=", 120)
                servers[mode] = server
            names = list(configs)
            for rnd in range(ROUNDS):
                for row, (args, concurrency) in ROWS.items():
                    for mode in names[rnd % len(names):] + names[: rnd % len(names)]:
                        server = servers[mode]
                        csv_path = work / f"{row}.{mode}.r{rnd}.csv"
                        argv = [pa, "-i", "grpc", "-u", server.address, "-m", "identity", "--shape", "INPUT0:16",
                                "--concurrency-range", str(concurrency), "-p", str(WINDOW_MS), "-s", "1000", "-f", str(csv_path), *args]
                        run = Run(row, mode, rnd, False)
                        run_perf_analyzer(procs, work, argv, 120, server, run, csv_path, work / f"{row}.{mode}.r{rnd}.out")
                        results.setdefault((row, mode), {})[rnd] = run
                        print(f"tracing bench: {row} {mode} round {rnd}: {run.infer_s:.0f} infer/s {run.error}", flush=True)
        finally:
            procs.stop_all()
        out = write_report(results, list(configs))
    print(out)
    return 0


def write_report(results: dict[tuple[str, str], dict[int, Run]], names: list[str]) -> pathlib.Path:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = REPO / "bench" / "results" / f"tracing-{date}-{platform.node() or 'host'}{os.environ.get('SUFFIX', '')}.md"
    box = machine()
    ratios = [(m, "off") for m in names if m != "off"]
    lines = [
        f"# What tracing costs ({date})",
        "",
        f"Machine: {box['cpu']}, {box['cores']} cores, {box['memory']}; perf_analyzer shares them with the servers.",
        f"Release `tritium serve` processes side by side (gRPC, identity FP32[16]), {WINDOW_MS} ms windows, {ROUNDS} rounds, the",
        "order of a row's runs rotating every round. `off`: no `--trace-config`; `rate-1000`: Triton's default rate with",
        "TIMESTAMPS to a trace file; `every-file`: every request to a trace file (written every 10,000 traces);",
        "`every-otlp`: every request as OTLP spans to a collector that refuses connections; `previous`: the release",
        "before tracing was wired, when measured. Ratios are medians over rounds of each round's ratio to `off` (range).",
        "",
        "| row | " + " | ".join(f"{m} infer/s" for m in names) + " | " + " | ".join(f"{m}/off" for m, _ in ratios) + " | p99 us " + " / ".join(names) + " |",
        "|---|" + "---:|" * (len(names) + len(ratios)) + "---|",
    ]
    for row in ROWS:
        runs = {m: results.get((row, m), {}) for m in names}
        med = {m: statistics.median([r.infer_s for r in runs[m].values() if r.ok] or [0.0]) for m in names}
        p99 = {m: statistics.median([r.p99_us for r in runs[m].values() if r.ok] or [0.0]) for m in names}
        cells = []
        for mode, against in ratios:
            per_round = [runs[mode][i].infer_s / runs[against][i].infer_s for i in runs[mode]
                         if i in runs[against] and runs[mode][i].ok and runs[against][i].ok and runs[against][i].infer_s]
            ratio = statistics.median(per_round) if per_round else 0.0
            spread = f"{min(per_round):.2f}-{max(per_round):.2f}" if per_round else "-"
            cells.append(f"{ratio:.3f} ({spread})")
        lines.append(f"| {row} | " + " | ".join(f"{med[m]:.0f}" for m in names) + " | " + " | ".join(cells) + " | "
                     + " / ".join(f"{p99[m]:.0f}" for m in names) + " |")
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
