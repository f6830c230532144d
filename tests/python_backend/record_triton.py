#!/usr/bin/env python3
"""Record what the real Triton 2.51 python backend answers to every case of cases.py.

    .venv/bin/python tests/python_backend/record_triton.py [--out FILE] [--log FILE] [--only ID...]
    .venv/bin/python tests/python_backend/record_triton.py --self-check [pytest args...]

Starts tritonserver on ./repo (explicit model control, every model loaded; `--exit-on-error false` and
`--strict-readiness false` because init_fails fails to load on purpose), sends the cases in order, and writes
{"meta": ..., "cases": {id: observation}} to triton_2.51.json. Each case's wall time goes to stdout (never into the
file). --only runs just those cases (in CASES order) and prints their observations. When tritonserver does not
survive the run (load_model of a model that cannot load sometimes aborts it: the may_abort_triton cases)
the whole run is made again on a fresh server. The `own_server` cases (Triton dies of them more often than not) are
left out of that run and recorded after it, each on a fresh server of its own, again until one survives.

Every __pycache__ in the repository is removed first: the stubs write them while the models load, and Triton
reloads a model whose directory changed since its load (crash_load_again depends on it), so every run is the same.

--self-check instead starts Triton the same way and runs tests/python/python_backend/test_python_backend_differential.py against
it (TRITIUM_PB_DIFF_AGAINST_URL), again on a fresh server when Triton died: the comparison must pass every case on
Triton itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASES, REPO  # noqa: E402
from run_case import clean_pycache, run_case  # noqa: E402
from triton_run import triton_grpc_server  # noqa: E402


def record(log: Path, only: set[str] | None, attempts: int = 6) -> dict:
    """Run the cases on a fresh Triton; again (up to `attempts` times) when a case marked may_abort_triton killed it."""
    for attempt in range(1, attempts + 1):
        clean_pycache()
        results = {}
        with triton_grpc_server(REPO, log=log) as (grpc_url, http_url, metrics_url):
            print(f"triton at {grpc_url} (log {log})", flush=True)
            for case in CASES:
                if (only and case["id"] not in only) or case.get("own_server"):
                    continue
                start = time.monotonic()
                results[case["id"]] = run_case(grpc_url, case, http_url, metrics_url)
                print(f"{time.monotonic() - start:7.3f}s  {case['id']}", flush=True)
            alive = server_alive(http_url)
        if alive:
            for case in CASES:
                if case.get("own_server") and (not only or case["id"] in only):
                    results[case["id"]] = record_apart(case, log, attempts * 2)
            return results
        print(f"tritonserver died during the run (attempt {attempt}; see {log}); recording again", flush=True)
    raise RuntimeError(f"tritonserver died in each of {attempts} runs")


def record_apart(case: dict, log: Path, attempts: int) -> dict:
    """One case on a fresh server of its own, again until the server survives it."""
    for attempt in range(1, attempts + 1):
        clean_pycache()
        with triton_grpc_server(REPO, log=log) as (grpc_url, http_url, metrics_url):
            observation = run_case(grpc_url, case, http_url, metrics_url)
            alive = server_alive(http_url)
        print(f"{case['id']}: recorded on a server of its own (attempt {attempt}, survived: {alive})", flush=True)
        if alive:
            return observation
    raise RuntimeError(f"tritonserver died of {case['id']} in each of {attempts} runs")


def server_alive(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(http_url + "/v2/health/live", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def self_check(log: Path, pytest_args: list[str], attempts: int = 6) -> int:
    """Run the differential test against a live Triton; again when Triton died under it (see record)."""
    test = HERE.parent / "python" / "python_backend" / "test_python_backend_differential.py"
    for attempt in range(1, attempts + 1):
        clean_pycache()
        with triton_grpc_server(REPO, log=log) as (grpc_url, http_url, metrics_url):
            env = dict(os.environ, TRITIUM_PB_DIFF_AGAINST_URL=grpc_url, TRITIUM_PB_DIFF_AGAINST_HTTP_URL=http_url,
                       TRITIUM_PB_DIFF_AGAINST_METRICS_URL=metrics_url)
            code = subprocess.run([sys.executable, "-m", "pytest", str(test), "-q", *pytest_args],
                                  env=env, cwd=test.parent).returncode  # fmt: skip
            alive = server_alive(http_url)
        if alive:
            return code
        print(f"tritonserver died during the self-check (attempt {attempt}; see {log}); checking again", flush=True)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "triton_2.51.json")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "triton-python-backend.log")
    parser.add_argument("--only", nargs="+", help="run only these case ids and print what they got")
    parser.add_argument("--self-check", action="store_true", help="run the differential test against a live Triton")
    args, rest = parser.parse_known_args()
    if args.self_check:
        return self_check(args.log, rest)
    if rest:
        parser.error(f"unknown arguments {rest}")
    ids = [case["id"] for case in CASES]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        parser.error(f"duplicate case ids: {sorted(duplicates)}")
    results = record(args.log, set(args.only) if args.only else None)
    if args.only:
        print(json.dumps(results, indent=1, ensure_ascii=False))
        return 0
    doc = {
        "meta": {
            "server": "tritonserver 2.51.0 (nvidia-pytriton 0.7.0), python backend, CPU",
            "cases": "tests/python_backend/cases.py (sent in that order, one server)",
            "recorder": "tests/python_backend/record_triton.py",
        },
        "cases": results,
    }
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    print(f"wrote {len(results)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
