"""tritonclient.grpc against the built-in repository: health, metadata, config, unary infer, errors,
statistics, log/trace settings and the CUDA shared memory RPCs (which must be UNIMPLEMENTED here).

Streaming, datatypes, the model repository API and system shared memory have their own
test_tritonclient_*.py files.
"""

from __future__ import annotations

import base64
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import expect_error, tail


def fp32_input(name: str, data: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return tensor


def int32_input(name: str, data: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return tensor


def add_sub_inputs() -> tuple[np.ndarray, np.ndarray, list[grpcclient.InferInput]]:
    a = np.arange(16, dtype=np.int32) * 7 - 40
    b = np.full(16, 3, dtype=np.int32) - np.arange(16, dtype=np.int32)
    return a, b, [int32_input("INPUT0", a), int32_input("INPUT1", b)]


# --- health and metadata ---------------------------------------------------------------------------


def test_server_live_and_ready(client):
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_model_ready(client):
    for model in ("identity", "identity_batch", "add_sub", "repeat"):
        assert client.is_model_ready(model) is True, model


def test_model_ready_unknown_model_or_version_is_false(client):
    # Triton 2.51 answers OK with ready=false for both (kserve-triton.md §0.1).
    assert client.is_model_ready("no_such_model") is False
    assert client.is_model_ready("identity", "7") is False


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata.name != ""
    assert metadata.version != ""
    extensions = list(metadata.extensions)
    assert all(isinstance(e, str) and e for e in extensions), extensions
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == metadata.name
    assert as_json.get("extensions", []) == extensions


def test_model_metadata_identity(client):
    metadata = client.get_model_metadata("identity")
    assert metadata.name == "identity"
    assert len(metadata.versions) >= 1 and all(v.isdigit() for v in metadata.versions), list(metadata.versions)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("INPUT0", "FP32", [-1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("OUTPUT0", "FP32", [-1])]


def test_model_metadata_batching_model_has_leading_batch_dim(client):
    metadata = client.get_model_metadata("identity_batch")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("INPUT0", "FP32", [-1, -1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [("OUTPUT0", "FP32", [-1, -1])]


def test_model_metadata_add_sub_and_repeat(client):
    metadata = client.get_model_metadata("add_sub", as_json=True)
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "INT32", ["16"]),
        ("INPUT1", "INT32", ["16"]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("OUTPUT0", "INT32", ["16"]),
        ("OUTPUT1", "INT32", ["16"]),
    ]
    repeat = client.get_model_metadata("repeat")
    assert {(t.name, t.datatype, tuple(t.shape)) for t in repeat.inputs} == {
        ("IN", "INT32", (1,)),
        ("DELAY_MS", "UINT32", (1,)),
    }
    assert [(t.name, t.datatype, list(t.shape)) for t in repeat.outputs] == [("OUT", "INT32", [1])]


def test_model_metadata_unknown_model_is_not_found(client):
    expect_error("NOT_FOUND", "Request for unknown model", client.get_model_metadata, "no_such_model")


def test_model_config(client):
    identity = client.get_model_config("identity").config
    assert identity.name == "identity"
    assert identity.backend == "identity"
    assert identity.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in identity.input] == [("INPUT0", 11, [-1])]  # TYPE_FP32
    assert [(o.name, o.data_type, list(o.dims)) for o in identity.output] == [("OUTPUT0", 11, [-1])]
    assert client.get_model_config("identity_batch").config.max_batch_size == 8
    repeat = client.get_model_config("repeat").config
    assert repeat.model_transaction_policy.decoupled is True
    assert {i.name: i.optional for i in repeat.input} == {"IN": False, "DELAY_MS": True}
    assert client.get_model_config("add_sub").config.model_transaction_policy.decoupled is False


def test_model_config_as_json(client):
    batch = client.get_model_config("identity_batch", as_json=True)["config"]
    assert batch["name"] == "identity_batch"
    assert batch["max_batch_size"] == 8
    assert batch["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in batch["input"][0]["dims"]] == [-1]
    repeat = client.get_model_config("repeat", as_json=True)["config"]
    assert repeat["model_transaction_policy"]["decoupled"] is True
    add_sub = client.get_model_config("add_sub", as_json=True)["config"]
    assert add_sub.get("max_batch_size", 0) == 0
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in add_sub["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]),
        ("INPUT1", "TYPE_INT32", [16]),
    ]


def test_model_config_unknown_model_is_not_found(client):
    expect_error("NOT_FOUND", "Request for unknown model", client.get_model_config, "no_such_model")


# --- unary inference ----------------------------------------------------------------------------------


def test_infer_identity(client):
    data = np.linspace(-4.0, 4.0, 16, dtype=np.float32)
    result = client.infer("identity", [fp32_input("INPUT0", data)])
    out = result.as_numpy("OUTPUT0")
    assert out.dtype == np.float32 and out.shape == (16,)
    np.testing.assert_array_equal(out, data)
    response = result.get_response()
    assert response.model_name == "identity"
    assert response.model_version.isdigit()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("OUTPUT0", "FP32", [16])]
    assert len(response.raw_output_contents) == 1


def test_infer_identity_explicit_version(client):
    version = client.get_model_metadata("identity").versions[-1]
    data = np.arange(3, dtype=np.float32)
    result = client.infer("identity", [fp32_input("INPUT0", data)], model_version=version)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
    assert result.get_response().model_version == version


def test_async_infer_identity(client):
    data = np.arange(16, dtype=np.float32) / 8
    done: queue.Queue = queue.Queue()
    client.async_infer("identity", [fp32_input("INPUT0", data)], callback=lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=30)
    assert error is None, error
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_async_infer_many_in_flight(client):
    done: queue.Queue = queue.Queue()
    for i in range(8):
        data = np.full(4, i, dtype=np.float32)
        client.async_infer(
            "identity",
            [fp32_input("INPUT0", data)],
            request_id=f"req-{i}",
            callback=lambda result, error: done.put((result, error)),
        )
    seen = {}
    for _ in range(8):
        result, error = done.get(timeout=30)
        assert error is None, error
        seen[result.get_response().id] = result.as_numpy("OUTPUT0")
    assert sorted(seen) == sorted(f"req-{i}" for i in range(8))
    for i in range(8):
        np.testing.assert_array_equal(seen[f"req-{i}"], np.full(4, i, dtype=np.float32))


def test_infer_add_sub(client):
    a, b, inputs = add_sub_inputs()
    result = client.infer("add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.int32
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT0", "OUTPUT1"]


def test_async_infer_add_sub(client):
    a, b, inputs = add_sub_inputs()
    done: queue.Queue = queue.Queue()
    client.async_infer("add_sub", inputs, callback=lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=30)
    assert error is None, error
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_requested_output_selection(client):
    a, b, inputs = add_sub_inputs()
    result = client.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    assert len(response.raw_output_contents) == 1
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0") is None


def test_request_id_echo(client):
    _, _, inputs = add_sub_inputs()
    assert client.infer("add_sub", inputs, request_id="req-42").get_response().id == "req-42"
    assert client.infer("add_sub", inputs).get_response().id == ""


def test_infer_identity_batch_of_three(client):
    data = np.arange(15, dtype=np.float32).reshape(3, 5)
    result = client.infer("identity_batch", [fp32_input("INPUT0", data)])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (3, 5)
    np.testing.assert_array_equal(out, data)


def test_infer_with_client_parameters(client):
    # priority travels as uint64 and custom parameters as typed values; both must be accepted (§2.5).
    data = np.ones(2, dtype=np.float32)
    result = client.infer(
        "identity",
        [fp32_input("INPUT0", data)],
        priority=1,
        timeout=1_000_000,
        parameters={"custom_str": "x", "custom_int": 5, "custom_bool": True},
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


# --- errors and their status codes (kserve-triton.md §0, §2.3, §2.8) -----------------------------------


def test_infer_unknown_model(client):
    data = np.ones(2, dtype=np.float32)
    expect_error("NOT_FOUND", "Request for unknown model", client.infer, "no_such_model", [fp32_input("INPUT0", data)])


def test_infer_unknown_version(client):
    data = np.ones(2, dtype=np.float32)
    expect_error(
        "NOT_FOUND",
        "Request for unknown model: 'identity' version 99 is not found",
        client.infer,
        "identity",
        [fp32_input("INPUT0", data)],
        model_version="99",
    )


@pytest.mark.parametrize("version", ["abc", "-1"])
def test_infer_bad_version_string(client, version):
    data = np.ones(2, dtype=np.float32)
    expect_error("INVALID_ARGUMENT", "", client.infer, "identity", [fp32_input("INPUT0", data)], model_version=version)


def test_infer_wrong_shape(client):
    a = np.zeros(8, dtype=np.int32)
    expect_error(
        "INVALID_ARGUMENT",
        "unexpected shape for input 'INPUT0' for model 'add_sub'",
        client.infer,
        "add_sub",
        [int32_input("INPUT0", a), int32_input("INPUT1", np.zeros(16, dtype=np.int32))],
    )


def test_infer_wrong_datatype(client):
    expect_error(
        "INVALID_ARGUMENT",
        "inference input 'INPUT0' data-type is 'INT32', but model 'identity' expects 'FP32'",
        client.infer,
        "identity",
        [int32_input("INPUT0", np.zeros(4, dtype=np.int32))],
    )


def test_infer_missing_input(client):
    expect_error(
        "INVALID_ARGUMENT",
        "expected 2 inputs but got 1 inputs for model 'add_sub'",
        client.infer,
        "add_sub",
        [int32_input("INPUT0", np.zeros(16, dtype=np.int32))],
    )


def test_infer_batch_too_large(client):
    data = np.zeros((9, 2), dtype=np.float32)
    expect_error(
        "INVALID_ARGUMENT",
        "inference request batch-size must be <= 8 for 'identity_batch'",
        client.infer,
        "identity_batch",
        [fp32_input("INPUT0", data)],
    )


def test_infer_unknown_requested_output(client):
    _, _, inputs = add_sub_inputs()
    expect_error(
        "INVALID_ARGUMENT",
        "unexpected inference output 'NOPE' for model 'add_sub'",
        client.infer,
        "add_sub",
        inputs,
        outputs=[grpcclient.InferRequestedOutput("NOPE")],
    )


def test_unary_infer_on_decoupled_model_is_unimplemented(client):
    tensor = grpcclient.InferInput("IN", [1], "INT32")
    tensor.set_data_from_numpy(np.array([2], dtype=np.int32))
    expect_error(
        "UNIMPLEMENTED",
        "ModelInfer RPC doesn't support models with decoupled transaction policy",
        client.infer,
        "repeat",
        [tensor],
    )


# --- statistics ------------------------------------------------------------------------------------------


def _identity_stats(client, model: str = "identity"):
    stats = client.get_inference_statistics(model).model_stats
    assert [s.name for s in stats] == [model] * len(stats) and stats, stats
    return {s.version: s for s in stats}


def test_inference_statistics_count_requests(client):
    data = np.ones(4, dtype=np.float32)
    version = client.infer("identity", [fp32_input("INPUT0", data)]).get_response().model_version
    before = _identity_stats(client)
    assert all(v.isdigit() for v in before), f"perf_analyzer parses versions with stoll; got {sorted(before)}"
    assert version in before, (version, sorted(before))
    n = 5
    for _ in range(n):
        client.infer("identity", [fp32_input("INPUT0", data)])
    after = _identity_stats(client)[version]
    start = before[version]

    def delta(field: str) -> int:
        return getattr(after.inference_stats, field).count - getattr(start.inference_stats, field).count

    assert delta("success") == n
    for field in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta(field) == n, field
    assert delta("fail") == 0
    assert after.inference_count - start.inference_count == n
    assert after.execution_count - start.execution_count == n
    assert after.last_inference >= start.last_inference > 0
    assert after.inference_stats.success.ns > start.inference_stats.success.ns


def test_inference_statistics_all_models(client):
    names = {s.name for s in client.get_inference_statistics().model_stats}
    assert {"identity", "identity_batch", "add_sub", "repeat"} <= names


def test_inference_statistics_unknown_model(client):
    # Triton 2.51: INVALID_ARGUMENT for an unknown model (kserve-triton.md §0.3).
    expect_error("INVALID_ARGUMENT", "", client.get_inference_statistics, "no_such_model")


def test_failed_validation_does_not_count_as_failure(client):
    before = _identity_stats(client)
    with pytest.raises(InferenceServerException):
        client.infer("identity", [int32_input("INPUT0", np.zeros(4, dtype=np.int32))])
    after = _identity_stats(client)
    for version, stats in after.items():
        if version in before:
            assert stats.inference_stats.fail.count == before[version].inference_stats.fail.count


# --- log and trace settings -------------------------------------------------------------------------------


def test_log_settings(client):
    settings = client.get_log_settings().settings
    assert len(settings) > 0
    assert "log_verbose_level" in settings, sorted(settings)
    original = settings["log_verbose_level"].uint32_param
    updated = client.update_log_settings({"log_verbose_level": 1}).settings
    assert updated["log_verbose_level"].uint32_param == 1
    assert client.get_log_settings().settings["log_verbose_level"].uint32_param == 1
    restored = client.update_log_settings({"log_verbose_level": original}).settings
    assert restored["log_verbose_level"].uint32_param == original
    as_json = client.get_log_settings(as_json=True)
    assert "settings" in as_json


def test_trace_settings(client):
    response = client.get_trace_settings()
    assert len(response.settings) > 0
    updated = client.update_trace_settings(settings={"trace_rate": "500"}).settings
    assert list(updated["trace_rate"].value) == ["500"]
    assert list(client.get_trace_settings().settings["trace_rate"].value) == ["500"]
    per_model = client.get_trace_settings(model_name="identity")
    assert len(per_model.settings) > 0


# --- CUDA shared memory on a machine without a GPU: Triton 2.51's answers there --------------------------


def test_cuda_shared_memory_status_is_empty_as_on_triton_without_a_gpu(client):
    assert list(client.get_cuda_shared_memory_status().regions) == []
    expect_error("NOT_FOUND", "Unable to find cuda shared memory region: 'cuda0'", client.get_cuda_shared_memory_status, "cuda0")


def test_cuda_shared_memory_register_fails_with_tritons_words(client):
    handle = base64.b64encode(b"\0" * 64)
    expect_error("INVALID_ARGUMENT", "failed to register shared memory region: invalid args",
                 client.register_cuda_shared_memory, "cuda0", handle, 0, 64)  # fmt: skip
    assert list(client.get_cuda_shared_memory_status().regions) == []


def test_cuda_shared_memory_unregister_is_a_no_op(client):
    # Triton's own gRPC shm examples call this cleanup first (simple_grpc_shm_client.py).
    client.unregister_cuda_shared_memory()
    client.unregister_cuda_shared_memory("cuda0")


def test_cuda_shared_memory_answers_agree_over_http(tritium):
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(f"127.0.0.1:{tritium.http_port}")
    assert http.get_cuda_shared_memory_status() == []
    http.unregister_cuda_shared_memory()
    with pytest.raises(InferenceServerException) as info:
        http.register_cuda_shared_memory("cuda0", base64.b64encode(b"\0" * 64), 0, 64)
    assert info.value.status() == "400"
    assert info.value.message() == "failed to register shared memory region: invalid args"


def test_log_settings_really_change_the_level(start_tritium):
    """log_verbose_level=1 turns on the server's per-request debug line; 0 turns it off again."""
    server = start_tritium()
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        def infer_once():
            i = grpcclient.InferInput("INPUT0", [2], "FP32")
            i.set_data_from_numpy(np.array([1, 2], dtype=np.float32))
            c.infer("identity", [i], request_id="log-probe")

        def debug_lines():
            return [line for line in server.stderr().splitlines() if "ModelInfer" in line and "log-probe" in line]

        infer_once()
        assert debug_lines() == [], "no per-request line at the default level"

        c.update_log_settings({"log_verbose_level": 1})
        infer_once()
        # stderr is written before the response is sent, so the line is already in the file.
        assert len(debug_lines()) == 1, tail(server.stderr())

        c.update_log_settings({"log_verbose_level": 0})
        infer_once()
        assert len(debug_lines()) == 1, "back at level 0 the line stops"
    finally:
        c.close()


# --- ServerMetadata's name ------------------------------------------------------------------------------------


def test_server_metadata_is_named_triton_as_triton_clients_expect(client, tritium):
    import tritonclient.http as httpclient

    # Triton's simple_grpc_health_metadata.py / simple_http_health_metadata.py check this name.
    assert client.get_server_metadata().name == "triton"
    assert httpclient.InferenceServerClient(f"127.0.0.1:{tritium.http_port}").get_server_metadata()["name"] == "triton"


def test_server_name_and_tritons_id_flag_rename_it(start_tritium):
    for flag in ("--server-name", "--id"):
        server = start_tritium(flag, "edge-7")
        assert grpcclient.InferenceServerClient(server.url).get_server_metadata().name == "edge-7"
