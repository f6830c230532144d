#!/usr/bin/env python3
"""Record what the real Triton 2.51 answers to every HTTP case in http_cases.py.

    .venv/bin/python tests/differential/record_triton_http.py [--out FILE] [--log-dir DIR]
    .venv/bin/python tests/differential/record_triton_http.py --self-check [pytest args...]

Builds the python-backend repository (triton_http_models.py), creates the shared-memory segments the cases use,
starts tritonserver (bench/lib/triton-env.sh) with --model-control-mode explicit --load-model '*' for the main
cases and again with --model-control-mode none for the `server: "none"` ones, sends the cases in order, stops the
servers, and writes {"meta": ..., "cases": {id: reply}} (reply as in http_replay.normalize) to
tests/differential/triton_http_2.51.json.

--self-check instead starts the two Tritons and runs tests/python/http/test_http_differential.py against them
(TRITIUM_DIFF_AGAINST_URL / _NONE): the comparison must pass every case on Triton itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_cases import CASES, cases_for, shared_memory_segments  # noqa: E402
from http_replay import run_cases  # noqa: E402
from triton_http_models import write_triton_repo  # noqa: E402
from triton_proc import triton_server  # noqa: E402


def record(log_dir: Path) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="triton-http-repo-") as tmp:
        repo = write_triton_repo(Path(tmp) / "models")
        with shared_memory_segments():
            for server in ("main", "none"):
                mode = "explicit" if server == "main" else "none"
                with triton_server(repo, mode=mode, log=log_dir / f"triton-{server}.log") as url:
                    print(f"triton ({mode}) at {url}: {len(cases_for(server))} cases", flush=True)
                    results.update(run_cases(url, cases_for(server)))
    return results


def self_check(log_dir: Path, pytest_args: list[str]) -> int:
    """Run the differential test against live Tritons (both control modes)."""
    with tempfile.TemporaryDirectory(prefix="triton-http-repo-") as tmp:
        repo = write_triton_repo(Path(tmp) / "models")
        with triton_server(repo, mode="explicit", log=log_dir / "triton-selfcheck-main.log") as main_url, \
                triton_server(repo, mode="none", log=log_dir / "triton-selfcheck-none.log") as none_url:  # fmt: skip
            env = dict(os.environ, TRITIUM_DIFF_AGAINST_URL=main_url, TRITIUM_DIFF_AGAINST_URL_NONE=none_url)
            test = HERE.parent / "python" / "http" / "test_http_differential.py"
            return subprocess.run([sys.executable, "-m", "pytest", str(test), "-q", *pytest_args],
                                  env=env, cwd=test.parent).returncode  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "triton_http_2.51.json")
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--self-check", action="store_true", help="run the differential test against live Tritons")
    args, rest = parser.parse_known_args()
    if args.self_check:
        return self_check(args.log_dir, rest)
    if rest:
        parser.error(f"unknown arguments {rest}")
    results = record(args.log_dir)
    broken = {k: v["transport_error"] for k, v in results.items() if v.get("transport_error")}
    if broken:
        print(f"cases without an HTTP reply (did Triton crash? see {args.log_dir}/triton-*.log):", file=sys.stderr)
        for case_id, err in broken.items():
            print(f"  {case_id}: {err}", file=sys.stderr)
        return 1
    ordered = {case["id"]: results[case["id"]] for case in CASES}
    doc = {
        "meta": {
            "server": "tritonserver 2.51.0 (nvidia-pytriton 0.7.0), python backend, CPU",
            "cases": "tests/differential/http_cases.py (sent in that order)",
            "reply_format": "tests/differential/http_replay.py (normalize)",
        },
        "cases": ordered,
    }
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=False) + "\n")
    statuses: dict[int, int] = {}
    for reply in ordered.values():
        statuses[reply["status"]] = statuses.get(reply["status"], 0) + 1
    print(f"wrote {len(ordered)} cases to {args.out}; statuses {dict(sorted(statuses.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
