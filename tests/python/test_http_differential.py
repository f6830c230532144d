"""Differential test of the KServe v2 / Triton HTTP/REST API: replay every case of tests/differential/http_cases.py
and compare each reply with what the real Triton 2.51 answered (tests/differential/triton_http_2.51.json, made by
tests/differential/record_triton_http.py).

By default the cases run against Tritium: one server with the models of tests/differential/triton_http_models.py
(`--model-control-mode explicit --load-model '*'`, as Triton was run), and one with `--model-control-mode none` for
the cases marked `server: "none"`. Every case is sent once, in order, by a module fixture (cases change state:
stats counters, settings, regions, loaded models); each case is then its own test.

Environment:
- TRITIUM_DIFF_AGAINST_URL=http://host:port   replay against that server instead (e.g. a live Triton, to check
  this comparison itself: it must pass 100 %); TRITIUM_DIFF_AGAINST_URL_NONE gives the `none`-mode server (its
  cases are skipped without one). The server must serve the same models (triton_http_models.write_triton_repo).
- TRITIUM_DIFF_BACKENDS=python|builtin   what "@BACKEND@" in a load request becomes; default python with
  TRITIUM_DIFF_AGAINST_URL, builtin otherwise.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from helpers import REPO, finish_server, start_server

DIFF_DIR = REPO / "tests" / "differential"
sys.path.insert(0, str(DIFF_DIR))

from http_cases import CASES, cases_for, shared_memory_segments  # noqa: E402
from http_compare import compare_reply, describe  # noqa: E402
from http_replay import run_cases  # noqa: E402
from triton_http_models import MODELS, write_tritium_repo  # noqa: E402

RECORDING = DIFF_DIR / "triton_http_2.51.json"
AGAINST = os.environ.get("TRITIUM_DIFF_AGAINST_URL")
AGAINST_NONE = os.environ.get("TRITIUM_DIFF_AGAINST_URL_NONE")


def _backends() -> dict[str, str] | None:
    choice = os.environ.get("TRITIUM_DIFF_BACKENDS", "python" if AGAINST else "builtin")
    if choice == "python":
        return None  # run_cases then substitutes "python"
    return {name: builtin for name, (builtin, _) in MODELS.items()}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(RECORDING.read_text())["cases"]


@pytest.fixture(scope="module")
def replies(tmp_path_factory) -> dict:
    """Every case's reply from the server under test, sent in order (None for a server that is not there)."""
    backends = _backends()
    results: dict[str, dict | None] = {}
    with shared_memory_segments():
        if AGAINST:
            results.update(run_cases(AGAINST, cases_for("main"), backends))
            if AGAINST_NONE:
                results.update(run_cases(AGAINST_NONE, cases_for("none"), backends))
            return results
        repo = write_tritium_repo(tmp_path_factory.mktemp("http-diff") / "models")
        common = ["--model-repository", str(repo), "--allow-shared-memory"]
        for server, mode in (("main", ["--model-control-mode", "explicit", "--load-model", "*"]),
                             ("none", ["--model-control-mode", "none"])):  # fmt: skip
            tritium = start_server(*common, *mode)
            try:
                results.update(run_cases(f"http://127.0.0.1:{tritium.http_port}", cases_for(server), backends))
            finally:
                finish_server(tritium)
    return results


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_http_matches_triton(case: dict, recorded: dict, replies: dict) -> None:
    if case["id"] not in recorded:
        pytest.fail(f"case {case['id']} is not in {RECORDING.name}: run tests/differential/record_triton_http.py")
    if case["id"] not in replies:
        pytest.skip("no server for this case's control mode (set TRITIUM_DIFF_AGAINST_URL_NONE)")
    expected, actual = recorded[case["id"]], replies[case["id"]]
    diffs = compare_reply(expected, actual, case.get("allow"))
    assert not diffs, describe(case, expected, actual, diffs)
