"""Differential test of the python backend (`backend: "python"`): replay every case of
tests/python_backend/cases.py and compare each observation with what the real Triton 2.51 answered
(tests/python_backend/triton_2.51.json, made by tests/python_backend/record_triton.py; FINDINGS.md next to it).

By default the cases run against one Tritium over tests/python_backend/repo, started as Triton was
(`--model-control-mode explicit --load-model '*'`) with the test's own interpreter for the stubs. Every case is sent
once, in order, by a module fixture (cases change state: unloads, loads, a crashed stub); each case is then its own
test.

Environment:
- TRITIUM_PB_DIFF_AGAINST_URL=host:port   replay against that gRPC endpoint instead (e.g. a live Triton on the same
  repository, to check this comparison itself: `record_triton.py --self-check` does that; it must pass 100 %). The
  kept differences are then compared exactly too. TRITIUM_PB_DIFF_AGAINST_HTTP_URL=http://host:port and
  TRITIUM_PB_DIFF_AGAINST_METRICS_URL=http://host:port/metrics: that server's HTTP port and metrics page, for the
  http_infer and metrics cases.
"""

from __future__ import annotations

import difflib
import json
import os
import sys

import pytest

from helpers import REPO, finish_server, start_server

PB_DIR = REPO / "tests" / "python_backend"
sys.path.insert(0, str(PB_DIR))

from cases import CASES, REPO as MODEL_REPO  # noqa: E402
from run_case import clean_pycache, run_case  # noqa: E402

pytestmark = pytest.mark.python_backend

RECORDING = PB_DIR / "triton_2.51.json"
AGAINST = os.environ.get("TRITIUM_PB_DIFF_AGAINST_URL")
AGAINST_HTTP = os.environ.get("TRITIUM_PB_DIFF_AGAINST_HTTP_URL")
AGAINST_METRICS = os.environ.get("TRITIUM_PB_DIFF_AGAINST_METRICS_URL")

# Differences kept on purpose: case id -> (how the observation is still checked, why).
# "code": the same shape of answer and the same status codes; error message texts are free.
# "error": where Triton answered an error, we answer an error too (any code, any text); successes must match.
# "ours": a behaviour of our own; only checked to be an observation at all (the server answered).
_ERROR_ENDS = "an error response ends a decoupled request here; Triton 2.51 keeps the stream open for later sends"
_PARAMS = "InferenceResponse takes `parameters` (the later python-backend API) instead of 2.51's TypeError; not forwarded"
_LOAD = ("a failed initialize is `failed to load '<m>', <Type>: <message>` + the model's frames (INTERNAL), where 2.51 says "
         "`load failed for model '<m>': version 1 is at UNAVAILABLE state: Internal: ...` (INVALID_ARGUMENT)")
_RESTART = "a dead stub is started again for the next request (the issue asks for it); Triton 2.51 fails every later request"
_EAGER = ("a stub's death is seen at once (its pid, not only its socket) and it is started again at once: the model is not "
          "ready meanwhile and the next request waits for the new stub, where Triton 2.51 fails that request and reports "
          "the model ready with a dead stub (test_python_supervision.py checks ours)")
KEPT: dict[str, tuple[str, str]] = {
    "kill_ready": ("ours", _EAGER),
    "add_sub_wrong_shape": ("code", "with two wrong inputs, we name the first; Triton 2.51 names the last it checked"),
    "response_params_plain": ("ours", _PARAMS),
    "response_params_empty": ("ours", _PARAMS),
    "decoupled_params": ("ours", _PARAMS),
    "errors_single": ("code", "the class named in the message is ours (triton_python_backend_utils, not c_python_backend_utils)"),
    "errors_duplicate_output": ("ours", "two outputs of one name: Triton 2.51 sends a malformed reply; we send both as made"),
    "errors_none": ("ours", "execute returning None: an INTERNAL error in Triton's wording, where Triton 2.51 never answers"),
    "errors_none_in_list": ("ours", "None in the list: an INTERNAL error in Triton's wording, where Triton 2.51 never answers"),
    "repeat_stream_bad_input": ("ours", "a request refused on a stream names its model; Triton 2.51 leaves model_name empty"),
    "decoupled_error_then_final": ("ours", _ERROR_ENDS),
    "decoupled_value_error_value_final": ("ours", _ERROR_ENDS),
    "decoupled_raise_after_send": ("ours", _ERROR_ENDS),
    "init_fails_load": ("error", _LOAD),
    "init_fails_index": ("ours", _LOAD),
    "init_fails_index_after_load": ("ours", _LOAD),
    "control_load_init_fails": ("ours", _LOAD),
    "crash_next_request": ("ours", _RESTART),
    "from_files_unloaded_infer": ("code", "a model loaded from a load's files alone, once unloaded, is unknown here "
                                          "('is not found'); Triton 2.51 says it 'has no available versions'"),
    "default_sender_on_stream": ("ours", "a model that is not decoupled answering through its response sender on a stream: "
                                         "we mark its one response final; Triton 2.51 sends it with final false and "
                                         "never ends the request"),
    "api_triton_dtype": ("ours", "Tensor.triton_dtype() answers the data type's number; 2.51's binding cannot convert "
                                 "its own enum and raises TypeError for every tensor"),
    "kill_next_request": ("ours", _RESTART),
}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(RECORDING.read_text())["cases"]


@pytest.fixture(scope="module")
def observed() -> dict:
    """Every case's observation from the server under test, sent in order."""
    if AGAINST:
        # The own_server cases kill Triton 2.51 more often than not: recorded apart, not replayed on it.
        return {case["id"]: _observe(AGAINST, case, AGAINST_HTTP, AGAINST_METRICS) for case in CASES
                if not case.get("own_server")}  # fmt: skip
    clean_pycache()
    tritium = start_server(
        "--model-repository", str(MODEL_REPO), "--model-control-mode", "explicit", "--load-model", "*",
        "--python-interpreter", sys.executable,
    )  # fmt: skip
    try:
        return {case["id"]: _observe(tritium.url, case, tritium.http_url, tritium.metrics_url) for case in CASES}
    finally:
        finish_server(tritium)


def _observe(url: str, case: dict, http_url: str | None, metrics_url: str | None) -> dict:
    """run_case, with a client-side failure (a case the runner could not finish) kept as the observation."""
    try:
        return run_case(url, case, http_url, metrics_url)
    except Exception as e:  # one broken case must not hide the others
        return {"runner_exception": f"{type(e).__name__}: {e}"}


def _without_messages(value):
    """The observation with every error text replaced by a marker (codes and structure kept)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "error" and isinstance(item, str):
                out[key] = "<message>"
            elif key == "message" and isinstance(item, str) and "code" in value:
                out[key] = "<message>"
            else:
                out[key] = _without_messages(item)
        return out
    if isinstance(value, list):
        return [_without_messages(v) for v in value]
    return value


def _errors_only(value):
    """Every error (unary {"error": {...}} or a stream message's "error") reduced to "<error>"."""
    if isinstance(value, dict):
        if "error" in value and isinstance(value["error"], dict):
            return "<error>"
        return {k: ("<error>" if k == "error" else _errors_only(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_errors_only(v) for v in value]
    return value


def describe(case: dict, expected, actual) -> str:
    want = json.dumps(expected, indent=1, ensure_ascii=False, sort_keys=True).splitlines()
    got = json.dumps(actual, indent=1, ensure_ascii=False, sort_keys=True).splitlines()
    diff = "\n".join(difflib.unified_diff(want, got, "triton 2.51", "tritium", lineterm="", n=2))
    return f"case {case['id']} ({case['kind']}) differs from Triton:\n{diff}"


def _check_kept(case: dict, expected, actual) -> None:
    how, why = KEPT[case["id"]]
    note = f" (kept difference: {why})"
    if how == "code":
        assert _without_messages(actual) == _without_messages(expected), describe(case, expected, actual) + note
    elif how == "error":
        assert _errors_only(actual) == _errors_only(expected), describe(case, expected, actual) + note
    elif how == "ours":
        assert isinstance(actual, dict) and actual, f"case {case['id']}: no observation{note}"
    else:
        pytest.fail(f"unknown kept-difference rule {how!r} for {case['id']}")


def test_kept_differences_name_real_cases() -> None:
    assert set(KEPT) <= {case["id"] for case in CASES}


def test_recording_has_every_case(recorded: dict) -> None:
    missing = [case["id"] for case in CASES if case["id"] not in recorded]
    assert not missing, f"not in {RECORDING.name} (run tests/python_backend/record_triton.py): {missing}"


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_python_backend_matches_triton(case: dict, recorded: dict, observed: dict) -> None:
    if case["id"] not in recorded:
        pytest.fail(f"case {case['id']} is not in {RECORDING.name}: run tests/python_backend/record_triton.py")
    if AGAINST and case.get("own_server"):
        pytest.skip("recorded on a Triton of its own (record_triton.py): Triton 2.51 often dies of it")
    expected, actual = recorded[case["id"]], observed[case["id"]]
    if case["id"] in KEPT and not AGAINST:
        _check_kept(case, expected, actual)
        return
    assert actual == expected, describe(case, expected, actual)
