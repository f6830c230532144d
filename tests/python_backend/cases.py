"""The python-backend differential cases, as data (run_case.py sends them).

Every case is a dict with an `id`, a `kind`, and the fields of that kind (run_case.py's docstring says what each
kind sends and observes). The cases are sent in the order of CASES: some change state (unload/load, a crashed stub)
for the cases after them. The models are in ./repo.

A case with `may_abort_triton` may kill tritonserver 2.51 itself (see record_triton.py); one with `own_server` kills
it so often that it is recorded apart, on a fresh server of its own, and must not depend on the cases before it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE / "repo"


def t(name: str, datatype: str, values: list, shape: list[int] | None = None) -> tuple:
    return (name, datatype, [len(values)] if shape is None else shape, values)


def mode(model: str, value: str, **extra) -> dict:
    """A request to a model that switches on its MODE input."""
    return {"model": model, "inputs": [t("MODE", "BYTES", [value])], **extra}


FP = [t("INPUT0", "FP32", [1.5, -2.0, 0.25])]
REPEAT = [t("IN", "INT32", [4, 5, 6]), t("DELAY", "UINT32", [10, 10, 10]), t("WAIT", "UINT32", [0])]
ERROR_CODES = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
               "CANCELLED"]  # fmt: skip
ERROR_MODES = ["raise", "raise_value_error", "model_exception", "error_response", "error_and_outputs",
               "empty_message", "fewer", "more", "single", "tuple", "not_a_response", "unknown_output", "wrong_dtype",
               "wrong_shape", "wrong_rank", "no_outputs", "duplicate_output", "bytes_from_object",
               "bytes_from_bytes_", "bytes_from_str_", "int_as_bytes_output"]  # fmt: skip
DECOUPLED_MODES = ["two_then_final", "with_final", "zero", "error_then_final", "error_with_final",
                   "value_error_value_final", "params", "raise", "raise_after_send", "raise_after_final",
                   "return_list", "return_list_after_final", "send_after_final", "send_after_final_caught",
                   "last_error", "unknown_output", "wrong_dtype"]  # fmt: skip
# The groups of questions api_probe asks of the documented pb_utils API (its model.py).
API_GROUPS = ["names", "model_dir", "types", "bytes", "tensor", "dlpack", "triton_dtype", "errors", "request_api",
              "bls_request_info", "response_api", "config_api", "logger"]  # fmt: skip
INFO = {"model": "request_info", "inputs": [t("INPUT0", "INT32", [1])],
        "json": ["CORRELATION_ID", "PARAMETERS", "REQUESTED_OUTPUTS", "ARGS", "CONFIG_KEYS", "INPUT_CONFIG",
                 "OUTPUT_CONFIG"]}  # fmt: skip


def tensor_io(bf16=None, fp32=None, strings=None, bools=None, fp32_shape=None) -> dict:
    """A request to tensor_io with the inputs given (all are optional)."""
    inputs = []
    if bf16 is not None:
        inputs.append(t("IN_BF16", "BF16", bf16))
    if fp32 is not None:
        shape = fp32_shape or [len(fp32), len(fp32[0]) if fp32 else 0]
        inputs.append(t("IN_FP32", "FP32", [v for row in fp32 for v in row], shape))
    if strings is not None:
        inputs.append(t("IN_BYTES", "BYTES", strings))
    if bools is not None:
        inputs.append(t("IN_BOOL", "BOOL", bools))
    return {"model": "tensor_io", "inputs": inputs, "json": ["INFO"]}


def batched(value: str) -> dict:
    """A one-row request to stats_batched."""
    return {"model": "stats_batched", "inputs": [t("MODE", "BYTES", [value], [1, 1])]}


def bls_error(target: str, how: str) -> dict:
    return {"model": "bls_errors", "inputs": [t("TARGET", "BYTES", [target]), t("MODE", "BYTES", [how])],
            "json": ["TEXT"]}  # fmt: skip


def bls_decoupled(how: str) -> dict:
    return {"model": "bls_decoupled", "inputs": [t("IN", "INT32", [5, 6, 7]), t("MODE", "BYTES", [how])],
            "json": ["TEXT"]}  # fmt: skip


def bls_timeout(target: str, ms: int, timeout_us: int) -> dict:
    inputs = [t("TARGET", "BYTES", [target]), t("MS", "UINT32", [ms]), t("TIMEOUT_US", "UINT64", [timeout_us])]
    return {"model": "bls_timeout", "inputs": inputs, "json": ["TEXT"]}


def control(action: str, name: str) -> dict:
    return {"model": "model_control", "inputs": [t("ACTION", "BYTES", [action]), t("NAME", "BYTES", [name])]}


def sleep(model: str, ms: int, **extra) -> dict:
    shape = [1, 1] if model == "sleeper_queued" else [1]
    return {"model": model, "inputs": [t("MS", "UINT32", [ms], shape)], **extra}


CRASH_PID = mode("crasher", "pid", mask=["PID"])

CASES: list[dict] = [
    # Plain models.
    {"id": "identity_fp32", "kind": "infer", **{"model": "identity_fp32", "inputs": FP}},
    {"id": "identity_fp32_request_id", "kind": "infer", "model": "identity_fp32", "inputs": FP, "request_id": "r-7"},
    {"id": "identity_fp32_empty", "kind": "infer", "model": "identity_fp32", "inputs": [t("INPUT0", "FP32", [])]},
    {"id": "add_sub", "kind": "infer", "model": "add_sub",
     "inputs": [t("INPUT0", "INT32", list(range(16))), t("INPUT1", "INT32", [2] * 16)]},
    {"id": "add_sub_only_output1", "kind": "infer", "model": "add_sub", "outputs": ["OUTPUT1"],
     "inputs": [t("INPUT0", "INT32", list(range(16))), t("INPUT1", "INT32", [2] * 16)]},
    {"id": "add_sub_wrong_dtype", "kind": "infer", "model": "add_sub",
     "inputs": [t("INPUT0", "FP32", [0.0] * 16), t("INPUT1", "INT32", [2] * 16)]},
    {"id": "add_sub_missing_input", "kind": "infer", "model": "add_sub", "inputs": [t("INPUT0", "INT32", [0] * 16)]},
    {"id": "add_sub_wrong_shape", "kind": "infer", "model": "add_sub",
     "inputs": [t("INPUT0", "INT32", [0] * 8), t("INPUT1", "INT32", [2] * 8)]},
    {"id": "metadata_identity_fp32", "kind": "metadata", "model": "identity_fp32"},
    {"id": "config_identity_fp32", "kind": "config", "model": "identity_fp32"},
    {"id": "metadata_batcher", "kind": "metadata", "model": "batcher"},
    {"id": "config_batcher", "kind": "config", "model": "batcher"},
    {"id": "config_repeat_int32", "kind": "config", "model": "repeat_int32"},
    # Request and model information as the model sees it.
    {"id": "request_info_plain", "kind": "infer", **INFO},
    {"id": "request_info_everything", "kind": "infer", **INFO, "request_id": "req-1", "sequence_id": 42,
     "sequence_start": True, "timeout_us": 5000, "parameters": {"a": 1, "b": "x", "c": True, "d": 1.5}},
    {"id": "request_info_string_sequence", "kind": "infer", **INFO, "sequence_id": "seq-a", "sequence_end": True},
    {"id": "request_info_some_outputs", "kind": "infer", **INFO,
     "outputs": ["REQUEST_ID", "REQUESTED_OUTPUTS", "FLAGS"], "request_id": "only-3"},
    {"id": "request_info_start_end", "kind": "infer", **INFO, "sequence_id": 7, "sequence_start": True,
     "sequence_end": True},
    # The same through tritonclient.http, which adds request parameters of its own (binary_data_output when no
    # outputs are named; `binary_data` on each output it names, which is not a request parameter).
    {"id": "http_request_info_plain", "kind": "http_infer", **INFO},
    {"id": "http_request_info_outputs", "kind": "http_infer", **INFO, "outputs": ["PARAMETERS", "REQUESTED_OUTPUTS"]},
    {"id": "http_request_info_json_outputs", "kind": "http_infer", **INFO, "binary_outputs": False,
     "binary_inputs": False, "outputs": ["PARAMETERS", "TIMEOUT", "FLAGS"]},
    {"id": "http_request_info_everything", "kind": "http_infer", **INFO, "request_id": "h-1", "sequence_id": 9,
     "sequence_start": True, "timeout_us": 7000, "priority": 2, "parameters": {"a": 1, "b": "x", "c": False}},
    {"id": "http_request_info_string_sequence", "kind": "http_infer", **INFO, "sequence_id": "s-1", "sequence_end": True},
    # Triton's reserved parameters sent raw (tritonclient refuses them before sending): `headers` and
    # `binary_data_output` reach the model over gRPC (the HTTP door consumes binary_data_output), the sequence's and
    # `triton_` keys do not; each door refuses other `triton_` keys in its own words, HTTP even the stream switch.
    {"id": "raw_request_info_passthrough", "kind": "raw_infer", **INFO, "raw_parameters": {
        "headers": "x", "binary_data_output": True, "triton_enable_empty_final_response": True, "priority": 1, "a": 1}},
    {"id": "raw_request_info_triton_key", "kind": "raw_infer", **INFO, "raw_parameters": {"triton_foo": 1}},
    {"id": "raw_http_request_info_passthrough", "kind": "raw_http_infer", **INFO,
     "raw_parameters": {"headers": "x", "binary_data_output": False, "a": 1}},
    {"id": "raw_http_request_info_triton_key", "kind": "raw_http_infer", **INFO,
     "raw_parameters": {"triton_enable_empty_final_response": True}},
    {"id": "response_params_plain", "kind": "infer", **mode("response_params", "plain")},
    {"id": "response_params_empty", "kind": "infer", **mode("response_params", "empty")},
    # Dynamic batching: four requests inside the 100 ms window run in one execute call.
    {"id": "batcher_single", "kind": "infer", "model": "batcher",
     "inputs": [t("INPUT0", "FP32", [1, 2, 3, 4, 5, 6], [2, 3])]},
    {"id": "batcher_four_at_once", "kind": "concurrent", "requests": [
        {"model": "batcher", "inputs": [t("INPUT0", "FP32", [i, i + 0.5], [1, 2])]} for i in range(4)]},
    {"id": "batcher_too_big", "kind": "infer", "model": "batcher", "inputs": [t("INPUT0", "FP32", [0.0] * 9, [9, 1])]},
    # Non-decoupled errors and misbehaviour.
    {"id": "errors_ok", "kind": "infer", **mode("errors", "ok")},
    *({"id": f"errors_{m}", "kind": "infer", **mode("errors", m)} for m in ERROR_MODES),
    *({"id": f"errors_code_{c}", "kind": "infer", **mode("errors", f"code_{c}")} for c in ERROR_CODES),
    {"id": "errors_none", "kind": "infer", **mode("errors", "none", client_timeout=2)},
    {"id": "errors_none_in_list", "kind": "infer", **mode("errors", "none_in_list", client_timeout=2)},
    {"id": "errors_ok_after_hangs", "kind": "infer", **mode("errors", "ok")},
    {"id": "errors_raise_on_stream", "kind": "stream", "requests": [mode("errors", "raise")]},
    {"id": "errors_code_on_stream", "kind": "stream", "requests": [mode("errors", "code_NOT_FOUND")]},
    # Decoupled.
    {"id": "repeat_stream", "kind": "stream", "requests": [{"model": "repeat_int32", "inputs": REPEAT}]},
    {"id": "repeat_stream_no_empty_final", "kind": "stream", "idle_s": 1.5,
     "requests": [{"model": "repeat_int32", "inputs": REPEAT, "empty_final": False}]},
    {"id": "repeat_stream_zero", "kind": "stream", "requests": [{"model": "repeat_int32", "inputs": [
        t("IN", "INT32", []), t("DELAY", "UINT32", []), t("WAIT", "UINT32", [0])]}]},
    {"id": "repeat_stream_sent_during_execute", "kind": "stream", "requests": [{"model": "repeat_int32", "inputs": [
        t("IN", "INT32", [1, 2]), t("DELAY", "UINT32", [0, 0]), t("WAIT", "UINT32", [300])]}]},
    {"id": "repeat_stream_two_requests", "kind": "stream", "requests": [
        {"model": "repeat_int32", "inputs": REPEAT, "request_id": "a"},
        {"model": "repeat_int32", "inputs": [t("IN", "INT32", [9]), t("DELAY", "UINT32", [0]),
                                             t("WAIT", "UINT32", [0])], "request_id": "b"}]},
    {"id": "repeat_unary", "kind": "infer", "model": "repeat_int32", "inputs": REPEAT},
    {"id": "repeat_stream_bad_input", "kind": "stream", "requests": [
        {"model": "repeat_int32", "inputs": [t("IN", "FP32", [1.0]), t("DELAY", "UINT32", [0]),
                                             t("WAIT", "UINT32", [0])]}]},
    *({"id": f"decoupled_{m}", "kind": "stream", "requests": [mode("decoupled_errors", m)]} for m in DECOUPLED_MODES),
    {"id": "decoupled_no_final", "kind": "stream", "idle_s": 1.5, "requests": [mode("decoupled_errors", "no_final")]},
    {"id": "decoupled_after_no_final", "kind": "stream", "requests": [mode("decoupled_errors", "two_then_final")]},
    # async def execute in a decoupled model: a request that waits runs alongside the next one.
    {"id": "async_decoupled_overlap", "kind": "stream", "requests": [
        {"model": "async_decoupled", "inputs": [t("MS", "UINT32", [600])], "request_id": "slow"},
        {"model": "async_decoupled", "inputs": [t("MS", "UINT32", [0])], "request_id": "quick"}]},
    {"id": "identity_on_stream", "kind": "stream", "requests": [{"model": "identity_fp32", "inputs": FP}]},
    {"id": "identity_on_stream_no_empty_final", "kind": "stream", "idle_s": 1.0,
     "requests": [{"model": "identity_fp32", "inputs": FP, "empty_final": False}]},
    # A model that is not decoupled answering through response senders (allowed since 24.06).
    *({"id": f"default_sender_{m}", "kind": "infer", **mode("default_sender", m, client_timeout=3)}
      for m in ("send_final", "send_then_final", "final_only", "send_and_return", "send_twice", "return_list_of_none",
                "is_cancelled", "send_from_thread")),
    {"id": "default_sender_after", "kind": "infer", **mode("default_sender", "send_final")},
    {"id": "default_sender_on_stream", "kind": "stream", "requests": [mode("default_sender", "send_then_final")]},
    # BLS.
    {"id": "bls_sync", "kind": "infer", "model": "bls_sync", "inputs": FP},
    {"id": "bls_async", "kind": "infer", "model": "bls_async", "inputs": FP},
    *({"id": f"bls_{target}_{how}", "kind": "infer", **bls_error(target, how)}
      for target in ("missing", "not_ready", "bad_input", "wrong_dtype", "bad_output", "child_raise", "child_error",
                     "child_code", "child_fewer")
      for how in ("report", "raise", "return_error")),
    *({"id": f"bls_decoupled_{how}", "kind": "infer", **bls_decoupled(how)}
      for how in ("decoupled", "not_decoupled", "decoupled_on_plain")),
    # BLS with a stateful model: correlation ids (int and str) and the sequence flags reach it.
    *({"id": f"bls_seq_{m}", "kind": "infer", **mode("bls_seq", m, json=["TEXT"])}
      for m in ("int", "str", "both", "no_start", "zero_id")),
    {"id": "bls_timeout_running", "kind": "infer", **bls_timeout("sleeper", 300, 100000)},
    {"id": "bls_timeout_queued", "kind": "overlap", "first": sleep("sleeper_queued", 1000), "after_s": 0.3,
     "during": [bls_timeout("sleeper_queued", 10, 100000)], "then": []},
    # Timeouts and slow models.
    {"id": "sleeper_client_timeout", "kind": "overlap", "first": sleep("sleeper", 1500, client_timeout=0.3),
     "after_s": 0.0, "during": [], "then": [{"model": "identity_fp32", "inputs": FP}, sleep("sleeper", 0)]},
    {"id": "sleeper_other_model_answers", "kind": "overlap", "first": sleep("sleeper", 1500), "after_s": 0.3,
     "check_order": True,
     "during": [{"model": "identity_fp32", "inputs": FP}, sleep("sleeper_queued", 0)], "then": [sleep("sleeper", 0)]},
    {"id": "sleeper_queued_request_timeout", "kind": "overlap", "first": sleep("sleeper_queued", 1000),
     "after_s": 0.3, "during": [sleep("sleeper_queued", 10, timeout_us=100000)], "then": []},
    {"id": "sleeper_request_timeout_not_queued", "kind": "infer", **sleep("sleeper", 300, timeout_us=100000)},
    # auto_complete_config.
    {"id": "config_auto_complete", "kind": "config", "model": "auto_complete"},
    {"id": "config_auto_complete_decoupled", "kind": "config", "model": "auto_complete_decoupled"},
    {"id": "auto_complete_infer", "kind": "infer", "model": "auto_complete",
     "inputs": [t("INPUT0", "FP32", [1, 2, 3, 4, 5, 6], [2, 3])]},
    {"id": "auto_complete_decoupled_stream", "kind": "stream",
     "requests": [{"model": "auto_complete_decoupled", "inputs": [t("N", "INT32", [2])]}]},
    # Logging, BYTES, DLPack.
    {"id": "logger", "kind": "infer", "model": "logger", "inputs": FP},
    {"id": "bytes_io", "kind": "infer", "model": "bytes_io", "json": ["INFO"],
     "inputs": [t("TEXT", "BYTES", ["abc", "", "h\u00e9llo", b"\x00\xff"]), t("NUM", "FP32", [1.5, -2.0])]},
    {"id": "bytes_io_empty", "kind": "infer", "model": "bytes_io", "json": ["INFO"],
     "inputs": [t("TEXT", "BYTES", []), t("NUM", "FP32", [])]},
    # The documented pb_utils API, asked from inside a model; get_model_dir() in auto_complete_config names an output.
    *({"id": f"api_{group}", "kind": "infer", **mode("api_probe", group, json=["TEXT"])} for group in API_GROUPS),
    {"id": "config_api_probe", "kind": "config", "model": "api_probe"},
    # Optional inputs, empty tensors and BF16 (through DLPack: as_numpy() has no BF16).
    {"id": "tensor_io_all", "kind": "infer", **tensor_io(bf16=[1.5, -2.0, 0.25], fp32=[[1, 2], [3, 4]],
                                                          strings=["a", "bc"], bools=[True, False])},
    {"id": "tensor_io_none", "kind": "infer", **tensor_io()},
    {"id": "tensor_io_bf16_only", "kind": "infer", **tensor_io(bf16=[3.0, 1e30, -0.0])},
    {"id": "tensor_io_fp32_only", "kind": "infer", **tensor_io(fp32=[[0.5]])},
    {"id": "tensor_io_empty", "kind": "infer", **tensor_io(bf16=[], fp32=[[], []], strings=[], bools=[])},
    {"id": "tensor_io_empty_rows", "kind": "infer", **tensor_io(fp32=np.zeros((0, 3)).tolist(), fp32_shape=[0, 3])},
    {"id": "tensor_io_bf16_wrong_type", "kind": "infer", "model": "tensor_io", "json": ["INFO"],
     "inputs": [t("IN_BF16", "FP16", [1.0])]},
    # ModelStatistics (counts; durations and timestamps left out) after executions that succeed, raise or return
    # errors, alone, batched, and as BLS children.
    {"id": "stats_plain_fresh", "kind": "stats", "model": "stats_plain"},
    *({"id": f"stats_plain_{m}", "kind": "infer", **mode("stats_plain", m)} for m in ("ok", "raise", "error", "fewer")),
    {"id": "stats_plain_ok_again", "kind": "infer", **mode("stats_plain", "ok")},
    {"id": "stats_plain", "kind": "stats", "model": "stats_plain"},
    {"id": "stats_batched_mixed", "kind": "concurrent", "requests": [batched(m) for m in ("ok", "error", "ok")]},
    {"id": "stats_batched_raise", "kind": "concurrent", "requests": [batched(m) for m in ("ok", "raise")]},
    {"id": "stats_batched", "kind": "stats", "model": "stats_batched"},
    {"id": "stats_bls_mixed", "kind": "infer", "model": "stats_bls", "json": ["TEXT"],
     "inputs": [t("MODE", "BYTES", ["ok", "raise", "error", "fewer", "ok"])]},
    {"id": "stats_bls_parent", "kind": "stats", "model": "stats_bls"},
    {"id": "stats_bls_child", "kind": "stats", "model": "stats_child"},
    # Custom metrics (pb_utils.MetricFamily): what the model sees, and the metrics page.
    {"id": "metrics_before", "kind": "metrics", "prefix": "pb_custom_"},
    *({"id": f"custom_metrics_{m}", "kind": "infer", **mode("custom_metrics", m, json=["TEXT"])}
      for m in ("touch", "families", "temporary")),
    # What the metrics API refuses: Triton 2.51 often dies of these (lock_exception after an error answer from the
    # server): recorded on a server of its own (record_triton.py tries again until one survives).
    {"id": "custom_metrics_errors", "kind": "infer", **mode("custom_metrics", "errors", json=["TEXT"]),
     "own_server": True},
    {"id": "metrics_after", "kind": "metrics", "prefix": "pb_custom_"},
    {"id": "custom_metrics_unload", "kind": "unload", "model": "custom_metrics"},
    {"id": "metrics_after_unload", "kind": "metrics", "prefix": "pb_custom_"},
    # Model control from inside a model, and initialize failing.
    *({"id": f"control_{action}_{name}", "kind": "infer", **control(action, name)} for action, name in [
        ("ready", "identity_fp32"), ("ready_v1", "identity_fp32"), ("ready_v2", "identity_fp32"), ("ready", "nope"),
        ("ready", "init_fails"), ("unload", "spare")]),
    {"id": "spare_unloaded_ready", "kind": "ready", "model": "spare"},
    {"id": "spare_unloaded_infer", "kind": "infer", "model": "spare", "inputs": FP},
    {"id": "control_load_spare", "kind": "infer", **control("load", "spare")},
    {"id": "spare_reloaded_infer", "kind": "infer", "model": "spare", "inputs": FP},
    {"id": "control_unload_nope", "kind": "infer", **control("unload", "nope")},
    # load_model with files: a model that is in no repository, made of the files the call sends.
    {"id": "control_load_files", "kind": "infer", **control("load_files", "from_files")},
    {"id": "from_files_infer", "kind": "infer", "model": "from_files", "inputs": FP},
    {"id": "from_files_index", "kind": "index", "models": ["from_files"]},
    {"id": "control_unload_from_files", "kind": "infer", **control("unload", "from_files")},
    {"id": "from_files_unloaded_infer", "kind": "infer", "model": "from_files", "inputs": FP},
    {"id": "control_load_files_no_config", "kind": "infer", **control("load_files_no_config", "from_files"),
     "may_abort_triton": True},
    {"id": "control_load_files_not_a_dict", "kind": "infer", **control("load_files_not_a_dict", "from_files")},
    {"id": "control_load_config", "kind": "infer", **control("load_config", "spare")},
    {"id": "spare_config_after_load_config", "kind": "config", "model": "spare"},
    {"id": "spare_infer_after_load_config", "kind": "infer", "model": "spare", "inputs": FP},
    {"id": "init_fails_index", "kind": "index", "models": ["init_fails", "spare", "crasher"]},
    {"id": "init_fails_ready", "kind": "ready", "model": "init_fails"},
    {"id": "init_fails_infer", "kind": "infer", "model": "init_fails", "inputs": FP},
    {"id": "init_fails_config", "kind": "config", "model": "init_fails"},
    {"id": "init_fails_load", "kind": "load", "model": "init_fails"},
    {"id": "init_fails_index_after_load", "kind": "index", "models": ["init_fails"]},
    # pb_utils.load_model of a model that cannot load sometimes aborts tritonserver 2.51 (an uncaught
    # boost::interprocess::lock_exception); record_triton.py records again when the server did not survive.
    {"id": "control_load_init_fails", "kind": "infer", **control("load", "init_fails"), "may_abort_triton": True},
    {"id": "control_load_nope", "kind": "infer", **control("load", "nope"), "may_abort_triton": True},
    {"id": "control_after_failed_loads", "kind": "infer", **control("ready", "identity_fp32")},
    # A stub that dies: os._exit inside execute, then SIGKILL from outside. Last: Triton does not restart a stub.
    {"id": "crash_before", "kind": "infer", **CRASH_PID},
    {"id": "crash_exit_in_execute", "kind": "infer", **mode("crasher", "exit")},
    {"id": "crash_next_request", "kind": "infer", **CRASH_PID},
    {"id": "crash_ready", "kind": "ready", "model": "crasher"},
    {"id": "crash_index", "kind": "index", "models": ["crasher"]},
    {"id": "crash_load_again", "kind": "load", "model": "crasher"},
    {"id": "crash_after_load_again", "kind": "infer", **CRASH_PID},
    {"id": "crash_unload", "kind": "unload", "model": "crasher"},
    {"id": "crash_load", "kind": "load", "model": "crasher"},
    {"id": "crash_after_reload", "kind": "infer", **CRASH_PID},
    {"id": "kill_stub", "kind": "kill_stub", "model": "crasher"},
    {"id": "kill_next_request", "kind": "infer", **CRASH_PID},
    {"id": "kill_ready", "kind": "ready", "model": "crasher"},
    {"id": "kill_unload", "kind": "unload", "model": "crasher"},
    {"id": "kill_load", "kind": "load", "model": "crasher"},
    {"id": "kill_after_reload", "kind": "infer", **CRASH_PID},
    {"id": "others_still_answer", "kind": "infer", "model": "identity_fp32", "inputs": FP},
]
