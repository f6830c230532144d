"""The request path before and after a change, with the real perf_analyzer: two release `tritium serve`
binaries (BEFORE_BIN and AFTER_BIN, e.g. a worktree of the commit before and this tree's
target/release/tritium) serve the built-in repository side by side; perf_analyzer drives `identity`
(FP32[16]) over gRPC, sync c=1 and async c=16, ROUNDS rounds whose order alternates. Reports each binary's
median infer/s per row and the ratio after/before (on a shared 2-core VM the machine's speed drifts between
rounds, so only same-round ratios mean much). Writes bench/results/before-after-<UTC date>.md.

    BEFORE_BIN=../before/target/release/tritium .venv/bin/python bench/before_after.py
Environment: BEFORE_BIN (required), AFTER_BIN (target/release/tritium), ROUNDS (5), WINDOW_MS (3000).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from helpers import finish_server, start_server  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
WINDOW_MS = os.environ.get("WINDOW_MS", "3000")
ROWS = {"sync-c1": ["--concurrency-range", "1"], "async-c16": ["--async", "--concurrency-range", "16"]}


def start(binary: str):
    os.environ["TRITIUM_BIN"] = binary
    return start_server()


def infer_per_second(url: str, row: list[str]) -> float:
    argv = [str(REPO / "scripts" / "perf_analyzer"), "-m", "identity", "-i", "grpc", "-u", url, "--shape", "INPUT0:16",
            "--measurement-interval", WINDOW_MS, "--stability-percentage", "50", *row]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    found = re.findall(r"Throughput: ([0-9.]+) infer/sec", done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit(f"perf_analyzer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(found[-1])


def main() -> int:
    before_bin = os.environ["BEFORE_BIN"]
    after_bin = os.environ.get("AFTER_BIN", str(REPO / "target" / "release" / "tritium"))
    servers = {"before": start(before_bin), "after": start(after_bin)}
    results: dict[str, dict[str, list[float]]] = {row: {"before": [], "after": []} for row in ROWS}
    try:
        for round_ in range(ROUNDS):
            for row, args in ROWS.items():
                order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
                for name in order:
                    value = infer_per_second(servers[name].url, args)
                    results[row][name].append(value)
                    print(f"round {round_ + 1} {row} {name}: {value:.0f} infer/s", flush=True)
    finally:
        for server in servers.values():
            finish_server(server)
    lines = [
        f"# The request path before and after ({datetime.datetime.now(datetime.timezone.utc).date()})",
        "",
        f"`bench/before_after.py` on {platform.node()} ({os.cpu_count()} CPUs): perf_analyzer, `identity` FP32[16] over "
        f"gRPC, {ROUNDS} rounds of {WINDOW_MS} ms windows, order alternating. Before: `{before_bin}`; after: `{after_bin}`.",
        "",
        "| row | before (infer/s, median) | after (infer/s, median) | after/before (median of same-round ratios) |",
        "|---|---|---|---|",
    ]
    for row, values in results.items():
        ratios = [a / b for a, b in zip(values["after"], values["before"])]
        lines.append(
            f"| {row} | {statistics.median(values['before']):.0f} | {statistics.median(values['after']):.0f} | "
            f"{statistics.median(ratios):.2f} |"
        )
    out = REPO / "bench" / "results" / f"before-after-{datetime.datetime.now(datetime.timezone.utc).date()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
