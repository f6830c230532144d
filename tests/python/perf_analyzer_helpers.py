"""Run the real perf_analyzer 2.60.0 (scripts/perf_analyzer, installed by scripts/install-perf-analyzer.sh) against a
server, bounded: count windows, a wall-time limit (subprocess timeout) and an address-space cap (`prlimit --as`,
util-linux), because perf_analyzer's memory grows per request and is never released (peers.md). Used by
grpc/test_perf_analyzer.py and by the tests in other folders that drive a server with it (their tests carry the
`perf_analyzer` marker)."""

from __future__ import annotations

import subprocess

import pytest

from helpers import REPO

PERF_ANALYZER = REPO / "scripts" / "perf_analyzer"
MEMORY_CAP = 8 * 1024**3
RUN_TIMEOUT_S = 180


def perf_analyzer(
    url: str, *args: str, request_count: int = 200, timeout: float = RUN_TIMEOUT_S, protocol: str = "grpc"
) -> subprocess.CompletedProcess:
    if not PERF_ANALYZER.exists():
        pytest.fail(f"{PERF_ANALYZER} missing")
    cmd = [
        "prlimit", f"--as={MEMORY_CAP}", "--",
        str(PERF_ANALYZER),
        "-i", protocol,
        "-u", url,
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(request_count),
        "-s", "50",
        "--max-trials", "10",
        # These runs check that perf_analyzer works against us, not speed: on a loaded 2-core CI
        # machine its default 10 % stability rule can fail a run that worked ("Failed to obtain
        # stable measurement"), so accept any stable-enough window.
        "--stability-percentage", "100",
        *args,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired as e:
        partial = "".join(p.decode(errors="replace") if isinstance(p, bytes) else p for p in (e.stdout or "", e.stderr or ""))
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout:.0f}s\n{partial[-6000:]}")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} -> exit {proc.returncode}\n{output[-6000:]}"
    assert "Throughput:" in output, output[-6000:]
    return proc
