"""tritonclient.http (KServe v2 REST on the HTTP port) against the built-in repository: health, metadata, config,
statistics (agreeing with gRPC), the repository API, infer with JSON and binary tensors in every mix, BYTES / BOOL /
INT64 / FP16, classification, async_infer, gzip and deflate both ways, Triton's error codes and messages (the same
message as over gRPC). System shared memory is in test_http_tritonclient_shm.py.

Status codes and wordings were recorded from Triton 2.51 over HTTP (kserve-triton.md §6.2): NOT_FOUND is 404,
INTERNAL 500, every other error 400; the body is {"error": "<the same message gRPC gives>"}.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import add_sub_config, finish_server, identity_config, start_server, write_model
from http_helpers import add_sub_data, expect_http_error, http_address, same_error_both_ways, tensor

UNLOAD_DEADLINE_S = 30.0
STATS_DEADLINE_S = 10.0


@pytest.fixture
def hclient(tritium):
    c = httpclient.InferenceServerClient(url=http_address(tritium))
    yield c
    c.close()


def add_sub_inputs(binary0: bool = True, binary1: bool = True):
    a, b = add_sub_data()
    return a, b, [tensor("INPUT0", a, "INT32", binary0), tensor("INPUT1", b, "INT32", binary1)]


def outputs_of(result) -> dict[str, dict]:
    return {o["name"]: o for o in result.get_response()["outputs"]}


# --- health and metadata ---------------------------------------------------------------------------


def test_server_live_and_ready(hclient):
    assert hclient.is_server_live() is True
    assert hclient.is_server_ready() is True


def test_model_ready(hclient):
    for model in ("identity", "identity_batch", "add_sub", "repeat"):
        assert hclient.is_model_ready(model) is True, model
    assert hclient.is_model_ready("no_such_model") is False  # Triton 2.51: 400 {"error":"Model version not ready"}
    assert hclient.is_model_ready("identity", "7") is False


def test_server_metadata_matches_grpc(hclient, client):
    metadata = hclient.get_server_metadata()
    assert metadata["name"] and metadata["version"]
    assert all(isinstance(e, str) and e for e in metadata["extensions"]), metadata
    assert "binary_tensor_data" in metadata["extensions"]
    grpc = client.get_server_metadata()
    assert (metadata["name"], metadata["version"]) == (grpc.name, grpc.version)
    assert metadata["extensions"] == list(grpc.extensions)


def io_of(metadata: dict, key: str) -> list[tuple]:
    return [(t["name"], t["datatype"], t["shape"]) for t in metadata[key]]


def test_model_metadata(hclient):
    identity = hclient.get_model_metadata("identity")
    assert identity["name"] == "identity"
    assert identity["versions"] and all(v.isdigit() for v in identity["versions"]), identity
    assert io_of(identity, "inputs") == [("INPUT0", "FP32", [-1])]
    assert io_of(identity, "outputs") == [("OUTPUT0", "FP32", [-1])]
    batch = hclient.get_model_metadata("identity_batch")
    assert io_of(batch, "inputs") == [("INPUT0", "FP32", [-1, -1])]  # the batch dimension comes first
    assert io_of(batch, "outputs") == [("OUTPUT0", "FP32", [-1, -1])]
    add_sub = hclient.get_model_metadata("add_sub", model_version=identity["versions"][-1])
    assert io_of(add_sub, "inputs") == [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])]
    assert io_of(add_sub, "outputs") == [("OUTPUT0", "INT32", [16]), ("OUTPUT1", "INT32", [16])]


def test_model_metadata_unknown_model(hclient, client):
    same_error_both_ways(
        hclient, lambda: hclient.get_model_metadata("no_such_model"), lambda: client.get_model_metadata("no_such_model"),
        404, "Request for unknown model: 'no_such_model' is not found",
    )


def test_model_config(hclient):
    # Over HTTP the config itself is the body (gRPC wraps it in {"config": ...}); dims are JSON numbers.
    identity = hclient.get_model_config("identity")
    assert (identity["name"], identity["backend"], identity.get("max_batch_size", 0)) == ("identity", "identity", 0)
    assert [(i["name"], i["data_type"], i["dims"]) for i in identity["input"]] == [("INPUT0", "TYPE_FP32", [-1])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in identity["output"]] == [("OUTPUT0", "TYPE_FP32", [-1])]
    assert hclient.get_model_config("identity_batch")["max_batch_size"] == 8
    repeat = hclient.get_model_config("repeat")
    assert repeat["model_transaction_policy"]["decoupled"] is True
    assert {i["name"]: i.get("optional", False) for i in repeat["input"]} == {"IN": False, "DELAY_MS": True}
    add_sub = hclient.get_model_config("add_sub")
    assert [(i["name"], i["data_type"], i["dims"]) for i in add_sub["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]),
        ("INPUT1", "TYPE_INT32", [16]),
    ]


def test_model_config_unknown_model(hclient):
    expect_http_error(hclient, 404, "Request for unknown model", hclient.get_model_config, "no_such_model")


# --- statistics ------------------------------------------------------------------------------------------

STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def http_stats(hclient, model: str) -> dict:
    stats = hclient.get_inference_statistics(model)["model_stats"]
    assert len(stats) == 1 and stats[0]["name"] == model, stats
    return stats[0]


def settled_stats(hclient, model: str, success: int) -> dict:
    """The model's statistics once `success` requests are counted. Triton 2.51 records a request's statistics when it
    releases the request, which can be just after the client has its response, so read until they are there."""
    deadline = threading.Event()
    timer = threading.Timer(STATS_DEADLINE_S, deadline.set)
    timer.start()
    try:
        while True:
            stats = http_stats(hclient, model)
            if stats["inference_stats"]["success"]["count"] >= success:
                return stats
            if deadline.wait(0.01):
                pytest.fail(f"{model}: {success} successes not counted within {STATS_DEADLINE_S}s: {stats}")
    finally:
        timer.cancel()


def test_inference_statistics_count_and_agree_with_grpc(hclient, client):
    data = np.ones(4, dtype=np.float32)
    start = http_stats(hclient, "identity")["inference_stats"]["success"]["count"]
    hclient.infer("identity", [tensor("INPUT0", data, "FP32")])
    before = settled_stats(hclient, "identity", start + 1)
    assert before["version"].isdigit()
    n = 5
    for _ in range(n):
        hclient.infer("identity", [tensor("INPUT0", data, "FP32", binary=False)])
    after = settled_stats(hclient, "identity", start + 1 + n)
    for field in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert after["inference_stats"][field]["count"] - before["inference_stats"][field]["count"] == n, field
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert after["inference_count"] - before["inference_count"] == n
    assert after["execution_count"] - before["execution_count"] == n
    assert after["last_inference"] >= before["last_inference"] > 0
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]

    # Nothing runs in between: gRPC reads the same counters.
    (grpc,) = [s for s in client.get_inference_statistics("identity").model_stats if s.version == after["version"]]
    assert (grpc.inference_count, grpc.execution_count, grpc.last_inference) == (
        after["inference_count"], after["execution_count"], after["last_inference"],
    )
    for field in STAT_FIELDS:
        g, h = getattr(grpc.inference_stats, field), after["inference_stats"][field]
        assert (g.count, g.ns) == (h["count"], h["ns"]), field


def test_inference_statistics_all_models(hclient):
    names = {s["name"] for s in hclient.get_inference_statistics()["model_stats"]}
    assert {"identity", "identity_batch", "add_sub", "repeat"} <= names


def test_inference_statistics_unknown_model(hclient):
    expect_http_error(hclient, 400, "", hclient.get_inference_statistics, "no_such_model")


# --- inference: JSON and binary tensors ---------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [False, True], ids=["json_in", "binary_in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json_out", "binary_out"])
def test_infer_add_sub(hclient, binary_in, binary_out):
    a, b, inputs = add_sub_inputs(binary_in, binary_in)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("OUTPUT0", "OUTPUT1")]
    result = hclient.infer("add_sub", inputs, outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert (response["id"], response["model_name"]) == ("req-7", "add_sub")
    assert response["model_version"].isdigit()
    for name, want in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
        out = outputs_of(result)[name]
        assert (out["datatype"], out["shape"]) == ("INT32", [16])
        if binary_out:
            assert out["parameters"]["binary_data_size"] == 64 and "data" not in out, out
        else:
            assert out["data"] == want.tolist() and "binary_data_size" not in out.get("parameters", {}), out
        got = result.as_numpy(name)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_infer_default_outputs_are_binary(hclient):
    # No `outputs` in the request: tritonclient asks for binary_data_output, so every output comes back binary.
    a, b, inputs = add_sub_inputs(False, True)
    result = hclient.infer("add_sub", inputs)
    assert [o["parameters"]["binary_data_size"] for o in result.get_response()["outputs"]] == [64, 64]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_infer_mixed_json_and_binary(hclient):
    a, b, inputs = add_sub_inputs(binary0=False, binary1=True)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=False), httpclient.InferRequestedOutput("OUTPUT0")]
    result = hclient.infer("add_sub", inputs, outputs=outputs)
    by_name = outputs_of(result)
    assert by_name["OUTPUT1"]["data"] == (a - b).tolist()
    assert by_name["OUTPUT0"]["parameters"]["binary_data_size"] == 64
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_requested_output_selection(hclient):
    a, b, inputs = add_sub_inputs()
    result = hclient.infer("add_sub", inputs, outputs=[httpclient.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_infer_identity_batch_and_version(hclient):
    data = np.arange(15, dtype=np.float32).reshape(3, 5) / 4
    result = hclient.infer("identity_batch", [tensor("INPUT0", data, "FP32", binary=False)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    version = hclient.get_model_metadata("identity")["versions"][-1]
    result = hclient.infer("identity", [tensor("INPUT0", data[0], "FP32")], model_version=version)
    assert result.get_response()["model_version"] == version
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data[0])


def test_nan_and_infinities_in_json_data_round_trip_as_in_triton(hclient):
    # tritonclient.http writes these as NaN / Infinity / -Infinity (not JSON); Triton's reader takes them.
    data = np.array([[np.nan, np.inf, -np.inf, 1.5, -0.0]], dtype=np.float32)
    for binary_out in (False, True):
        result = hclient.infer("identity_batch", [tensor("INPUT0", data, "FP32", binary=False)],
                               outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_infer_with_parameters(hclient):
    data = np.ones(2, dtype=np.float32)
    result = hclient.infer(
        "identity", [tensor("INPUT0", data, "FP32")], priority=1, timeout=1_000_000,
        parameters={"custom_str": "x", "custom_int": 5, "custom_bool": True},
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


# --- classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_classification_add_sub(hclient, binary):
    # a + b = 6i - 37 and a - b = 8i - 43: the top entries are the last indices, as "value:index" strings.
    _, _, inputs = add_sub_inputs()
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary, class_count=2),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary, class_count=3),
    ]
    result = hclient.infer("add_sub", inputs, outputs=outputs)
    by_name = outputs_of(result)
    assert [(o["datatype"], o["shape"]) for o in by_name.values()] == [("BYTES", [2]), ("BYTES", [3])]
    top0, top1 = result.as_numpy("OUTPUT0").tolist(), result.as_numpy("OUTPUT1").tolist()
    if binary:
        top0, top1 = [v.decode() for v in top0], [v.decode() for v in top1]
    assert top0 == ["53:15", "47:14"]
    assert top1 == ["77:15", "69:14", "61:13"]


def test_classification_count_larger_than_output(hclient):
    a, b, inputs = add_sub_inputs()
    output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=20)
    result = hclient.infer("add_sub", inputs, outputs=[output])
    want = [f"{v}:{i}" for i, v in sorted(enumerate((a + b).tolist()), key=lambda p: -p[1])]
    assert result.as_numpy("OUTPUT0").tolist() == want  # clipped to the 16 elements there are


def test_classification_fp32_format(hclient):
    data = np.array([[0.5, 2.25, -1.0, 3.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False, class_count=2)
    result = hclient.infer("identity_batch", [tensor("INPUT0", data, "FP32")], outputs=[out])
    assert outputs_of(result)["OUTPUT0"]["shape"] == [2, 2]  # per batch row
    assert outputs_of(result)["OUTPUT0"]["data"] == ["3.000000:3", "2.250000:1", "4.000000:3", "3.000000:2"]


# --- other datatypes (identity models in their own repository) -------------------------------------------


DTYPE_MODELS = {"id_bytes": "TYPE_STRING", "id_bool": "TYPE_BOOL", "id_int64": "TYPE_INT64", "id_fp16": "TYPE_FP16"}


@pytest.fixture(scope="module")
def dtype_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("http_dtypes")
    for name, data_type in DTYPE_MODELS.items():
        write_model(repo, name, identity_config(name, data_type))
    server = start_server("--model-repository", str(repo))
    yield server
    finish_server(server)


@pytest.fixture
def dclient(dtype_server):
    c = httpclient.InferenceServerClient(url=http_address(dtype_server))
    yield c
    c.close()


def roundtrip(client, model: str, data: np.ndarray, datatype: str, binary_in: bool, binary_out: bool):
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
    result = client.infer(model, [tensor("INPUT0", data, datatype, binary_in)], outputs=[out])
    output = outputs_of(result)["OUTPUT0"]
    assert (output["datatype"], output["shape"]) == (datatype, list(data.shape))
    assert ("data" in output) is not binary_out, output
    return result.as_numpy("OUTPUT0")


@pytest.mark.parametrize("binary_in", [False, True], ids=["json_in", "binary_in"])
@pytest.mark.parametrize("binary_out", [False, True], ids=["json_out", "binary_out"])
def test_bytes(dclient, binary_in, binary_out):
    data = np.array([b"hello", b"", "h\u00e9llo w\u00f6rld".encode(), b"x" * 300], dtype=np.object_)
    got = roundtrip(dclient, "id_bytes", data, "BYTES", binary_in, binary_out)
    # JSON outputs are strings, binary ones bytes.
    assert got.tolist() == (data.tolist() if binary_out else [v.decode() for v in data.tolist()])


def test_bytes_non_utf8_binary(dclient):
    data = np.array([b"\xff\x00\xfe", b"\x00"], dtype=np.object_)
    assert roundtrip(dclient, "id_bytes", data, "BYTES", True, True).tolist() == data.tolist()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_bool(dclient, binary):
    data = np.array([True, False, False, True, True], dtype=np.bool_)
    got = roundtrip(dclient, "id_bool", data, "BOOL", binary, binary)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, data)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_int64(dclient, binary):
    data = np.array([0, -1, 2**62 + 3, -(2**63), 2**63 - 1], dtype=np.int64)
    got = roundtrip(dclient, "id_int64", data, "INT64", binary, binary)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, data)


def test_fp16_binary(dclient):
    data = np.array([0.5, -2.0, 65504.0, 1e-3, np.inf], dtype=np.float16)
    got = roundtrip(dclient, "id_fp16", data, "FP16", True, True)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, data)


def test_fp16_json_is_refused(dclient):
    # FP16 has no JSON form in either direction: 400. Triton 2.51 says "receiving FP16 data via JSON is not supported.
    # Please use the binary data format for input INPUT0" and "sending FP16 data via JSON is not supported. Please use
    # the binary data format for output" (the latter after running the model).
    data = np.array([0.5, -2.0], dtype=np.float16)
    err = expect_http_error(dclient, 400, "FP16", dclient.infer, "id_fp16", [tensor("INPUT0", data, "FP16", binary=False)])
    assert "INPUT0" in err.message()
    json_out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    expect_http_error(dclient, 400, "FP16", dclient.infer, "id_fp16", [tensor("INPUT0", data, "FP16")], outputs=[json_out])


# --- async_infer and compression --------------------------------------------------------------------------


def test_async_infer_many_in_flight(tritium):
    c = httpclient.InferenceServerClient(url=http_address(tritium), concurrency=4)
    try:
        pending = {
            i: c.async_infer("identity", [tensor("INPUT0", np.full(4, i, dtype=np.float32), "FP32")], request_id=f"req-{i}")
            for i in range(16)
        }
        for i, request in pending.items():
            result = request.get_result(timeout=30)
            assert result.get_response()["id"] == f"req-{i}"
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full(4, i, dtype=np.float32))
    finally:
        c.close()


@pytest.mark.parametrize("request_algorithm", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_algorithm", [None, "gzip", "deflate"])
def test_compression(hclient, request_algorithm, response_algorithm):
    a, b, inputs = add_sub_inputs(binary0=True, binary1=False)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    result = hclient.infer(
        "add_sub", inputs, outputs=outputs,
        request_compression_algorithm=request_algorithm, response_compression_algorithm=response_algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_async_infer_compressed(hclient):
    a, b, inputs = add_sub_inputs()
    request = hclient.async_infer(
        "add_sub", inputs, request_compression_algorithm="gzip", response_compression_algorithm="deflate"
    )
    np.testing.assert_array_equal(request.get_result(timeout=30).as_numpy("OUTPUT1"), a - b)


# --- errors: HTTP status and the same message as gRPC --------------------------------------------------------


def fp32_ones(n: int):
    return [("INPUT0", np.ones(n, np.float32), "FP32")]


ERROR_CASES = {
    # name: (HTTP status, fragment of the message, model, [(input name, data, datatype)], version)
    "unknown_model": (404, "Request for unknown model", "no_such_model", fp32_ones(2), ""),
    "unknown_version": (404, "Request for unknown model: 'identity' version 99 is not found", "identity", fp32_ones(2), "99"),
    "wrong_datatype": (
        400, "inference input 'INPUT0' data-type is 'INT32', but model 'identity' expects 'FP32'",
        "identity", [("INPUT0", np.zeros(4, np.int32), "INT32")], "",
    ),
    "wrong_shape": (
        400, "unexpected shape for input 'INPUT0' for model 'add_sub'",
        "add_sub", [("INPUT0", np.zeros(8, np.int32), "INT32"), ("INPUT1", np.zeros(16, np.int32), "INT32")], "",
    ),
    "missing_input": (
        400, "expected 2 inputs but got 1 inputs for model 'add_sub'",
        "add_sub", [("INPUT0", np.zeros(16, np.int32), "INT32")], "",
    ),
    "batch_too_large": (
        400, "inference request batch-size must be <= 8 for 'identity_batch'",
        "identity_batch", [("INPUT0", np.zeros((9, 2), np.float32), "FP32")], "",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_errors_match_grpc(hclient, client, case, binary):
    status, fragment, model, spec, version = ERROR_CASES[case]

    def call(module, c):
        inputs = [tensor(name, data, datatype, binary, module) for name, data, datatype in spec]
        return lambda: c.infer(model, inputs, model_version=version)

    same_error_both_ways(hclient, call(httpclient, hclient), call(grpcclient, client), status, fragment)


def test_infer_unknown_requested_output(hclient, client):
    def call(module, c):
        a, b = add_sub_data()
        inputs = [tensor("INPUT0", a, "INT32", module=module), tensor("INPUT1", b, "INT32", module=module)]
        return lambda: c.infer("add_sub", inputs, outputs=[module.InferRequestedOutput("NOPE")])

    fragment = "unexpected inference output 'NOPE' for model 'add_sub'"
    same_error_both_ways(hclient, call(httpclient, hclient), call(grpcclient, client), 400, fragment)


def test_infer_on_decoupled_model_is_not_implemented(hclient):
    expect_http_error(
        hclient, 501, "HTTP end point doesn't support models with decoupled transaction policy",
        hclient.infer, "repeat", [tensor("IN", np.array([2], dtype=np.int32), "INT32")],
    )


def test_failed_validation_does_not_count_as_failure(hclient):
    before = http_stats(hclient, "identity")["inference_stats"]["fail"]["count"]
    expect_http_error(hclient, 400, "", hclient.infer, "identity", [tensor("INPUT0", np.zeros(4, np.int32), "INT32")])
    assert http_stats(hclient, "identity")["inference_stats"]["fail"]["count"] == before


# --- model repository API (explicit model control, own repository) --------------------------------------------


@pytest.fixture
def rclient(start_tritium, model_repo):
    write_model(model_repo, "m_identity", identity_config("m_identity", "TYPE_FP32"))
    write_model(model_repo, "m_add_sub", add_sub_config("m_add_sub"))
    write_model(model_repo, "m_other", identity_config("m_other", "TYPE_INT32"))
    server = start_tritium(
        "--model-repository", str(model_repo), "--model-control-mode", "explicit", "--load-model", "m_identity"
    )
    c = httpclient.InferenceServerClient(url=http_address(server))
    yield c
    c.close()


def index_by_name(client) -> dict[str, list[dict]]:
    by_name: dict[str, list[dict]] = {}
    for entry in client.get_model_repository_index():
        by_name.setdefault(entry["name"], []).append(entry)
    return by_name


def wait_for_state(client, name: str, state: str) -> list[dict]:
    """Block until every index entry of `name` has `state` (unload completes asynchronously)."""
    deadline = threading.Event()
    timer = threading.Timer(UNLOAD_DEADLINE_S, deadline.set)
    timer.start()
    try:
        while True:
            entries = index_by_name(client).get(name, [])
            if entries and all(e.get("state") == state for e in entries):
                return entries
            if deadline.wait(0.02):
                pytest.fail(f"{name} did not reach {state} within {UNLOAD_DEADLINE_S}s: {entries}")
    finally:
        timer.cancel()


def test_repository_index(rclient):
    index = index_by_name(rclient)
    assert set(index) == {"m_identity", "m_add_sub", "m_other"}
    assert [e["state"] for e in index["m_identity"]] == ["READY"]
    assert index["m_identity"][0]["version"].isdigit()
    assert all(e.get("state") != "READY" for e in index["m_add_sub"] + index["m_other"])
    assert rclient.is_model_ready("m_add_sub") is False


def test_load_infer_unload(rclient):
    a, b, inputs = add_sub_inputs()
    expect_http_error(rclient, 404, "Request for unknown model", rclient.infer, "m_add_sub", inputs)
    rclient.load_model("m_add_sub")
    assert rclient.is_model_ready("m_add_sub") is True
    assert [e["state"] for e in index_by_name(rclient)["m_add_sub"]] == ["READY"]
    np.testing.assert_array_equal(rclient.infer("m_add_sub", inputs).as_numpy("OUTPUT0"), a + b)

    rclient.unload_model("m_add_sub")
    entries = wait_for_state(rclient, "m_add_sub", "UNAVAILABLE")
    assert all(e.get("reason") == "unloaded" for e in entries), entries
    assert rclient.is_model_ready("m_add_sub") is False
    expect_http_error(rclient, 404, "has no available versions", rclient.infer, "m_add_sub", inputs)
    rclient.unload_model("no_such_model")  # OK in Triton 2.51


def test_load_unknown_model_is_internal(rclient):
    expect_http_error(rclient, 500, "", rclient.load_model, "no_such_model")


def test_load_with_config_override(rclient):
    override = {
        "name": "m_other",
        "backend": "identity",
        "max_batch_size": 4,
        "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    }
    rclient.load_model("m_other", config=json.dumps(override))
    assert rclient.is_model_ready("m_other") is True
    config = rclient.get_model_config("m_other")
    assert config["max_batch_size"] == 4
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("INPUT0", "TYPE_FP32")]  # not the file's INT32
    assert io_of(rclient.get_model_metadata("m_other"), "inputs") == [("INPUT0", "FP32", [-1, -1])]
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(rclient.infer("m_other", [tensor("INPUT0", data, "FP32")]).as_numpy("OUTPUT0"), data)
