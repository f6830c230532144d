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


# Differences kept on purpose (docs/src/protocol.md, the differences kept on purpose): case id -> (how the reply is still
# checked, why). "error": both answers are errors with an {"error": "..."} body; "prefix": the same status, and
# Triton's message begins ours (ours adds the detail); "shape": the same status and the same JSON members and
# kinds (counters differ because an earlier kept difference succeeded on one side only); "ours": a behaviour of our
# own (a well-formed answer, no server error); "refused": Triton served it, we answer with an error.
KEPT = {
    "unknown_path_v1": ("ours", "/v1/* is the OpenAI API on the same port"),
    "infer_int32_overflow": ("ours", "an integer out of the datatype's range is refused, not narrowed silently (400)"),
    "infer_int8_out_of_range": ("refused", "an integer out of the datatype's range is refused (400): Triton narrows it "
                                "silently (200 -> -56), losing the value"),
    "infer_uint8_out_of_range": ("refused", "an integer out of the datatype's range is refused (400): Triton narrows "
                                 "it silently (256 -> 0), losing the value"),
    "infer_bytes_not_utf8_json": ("refused", "a body that is not UTF-8 is not JSON (RFC 8259) and is refused as malformed "
                                  "(500); Triton takes it and answers with a body that is not JSON either, which "
                                  "tritonclient cannot read; bytes that are not text go as binary data"),
    "infer_gzip_corrupt_body_one_input": ("refused", "a corrupt gzip body is refused as such; Triton reads it as an empty "
                                          "raw request and runs the model on no data (200)"),
    "infer_gzip_truncated_body": ("error", "a truncated gzip body is refused as such (400), not read as far as it goes"),
    "infer_gzip_without_trailer": ("refused", "a gzip body cut before its CRC and length is refused (400): nothing shows "
                                   "it arrived whole; Triton runs what it inflated"),
    "infer_raw_wrong_size": ("error", "a raw binary request's errors name the model's input, not 'raw_input'"),
    "infer_raw_json_body": ("error", "a raw binary request's errors name the model's input, not 'raw_input'"),
    "infer_gzip_corrupt_body": ("error", "a corrupt gzip body is refused as such, not read as an empty body"),
    "infer_huge_shape_product": ("error", "a shape whose element count overflows is refused while the JSON is read"),
    "infer_batch_zero": ("ours", "a batch of zero rows is answered with zero rows"),
    "stats_after_add_sub": ("shape", "counts follow infer_int32_overflow and infer_gzip_without_trailer"),
    "stats_after_identity": ("shape", "counts follow infer_gzip_corrupt_body_one_input"),
    "stats_after_identity_batch": ("shape", "counts follow infer_batch_zero"),
    "stats_after_identity_bytes": ("shape", "counts follow infer_bytes_not_utf8_json"),
    "stats_after_identity_int8": ("shape", "counts follow infer_int8_out_of_range"),
    "stats_after_identity_uint8": ("shape", "counts follow infer_uint8_out_of_range"),
    "stats_after_all": ("shape", "counts follow the kept differences of the infer cases above"),
    "shm_register_unaligned_offset": ("ours", "a region may start at any offset of its segment, not only a page boundary"),
    "shm_register_past_end": ("error", "follows shm_register_unaligned_offset (the region is already registered)"),
    "shm_register_page_offset": ("refused", "follows shm_register_unaligned_offset (the region is already registered)"),
    "shm_status_all": ("shape", "follows shm_register_unaligned_offset (the region registered at offset 64)"),
    "shm_status_after_unregister": ("shape", "follows shm_register_unaligned_offset"),
    "shm_infer_output_past_region": ("prefix", "the message adds the offset, size and region size"),
    "shm_infer_input_out_of_bounds": ("prefix", "the message adds the offset, size and region size"),
    "shm_infer_unknown_region": ("error", "worded as for every other use of an unknown system region"),
    "shm_infer_no_byte_size": ("error", "a region without 'shared_memory_byte_size' is refused as such"),
    "repo_load_bad_config_json": ("error", "the config's own parse error is reported (400), not a generic 500"),
    "repo_load_file_without_config": ("error", "'file:' load overrides are not supported"),
    "repo_config_after_plain_load": ("ours", "a load without a config override reads config.pbtxt again"),
}


def _json_shape(value):
    if isinstance(value, dict):
        return {k: _json_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_shape(v) for v in value]
    return type(value).__name__


def _check_kept(case: dict, expected: dict, actual: dict) -> None:
    how, why = KEPT[case["id"]]
    body = actual.get("body")
    where = f"{case['method']} {case['path']} (kept difference: {why}); got {actual}"
    if how == "ours":
        assert actual["status"] < 500, where
        assert actual["status"] == 200 or (isinstance(body, dict) and isinstance(body.get("error"), str)), where
    elif how in ("error", "refused"):
        assert actual["status"] >= 400 and (how == "refused" or expected["status"] >= 400), where
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], where
    elif how == "prefix":
        assert actual["status"] == expected["status"], where
        assert body["error"].startswith(expected["body"]["error"]), where
    elif how == "shape":
        assert actual["status"] == expected["status"], where
        assert _json_shape(body) == _json_shape(expected["body"]), where


def test_kept_differences_name_real_cases() -> None:
    assert set(KEPT) <= {case["id"] for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_http_matches_triton(case: dict, recorded: dict, replies: dict) -> None:
    if case["id"] not in recorded:
        pytest.fail(f"case {case['id']} is not in {RECORDING.name}: run tests/differential/record_triton_http.py")
    if case["id"] not in replies:
        pytest.skip("no server for this case's control mode (set TRITIUM_DIFF_AGAINST_URL_NONE)")
    expected, actual = recorded[case["id"]], replies[case["id"]]
    if case["id"] in KEPT and not AGAINST:
        _check_kept(case, expected, actual)
        return
    diffs = compare_reply(expected, actual, case.get("allow"))
    assert not diffs, describe(case, expected, actual, diffs)
