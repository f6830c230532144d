"""Model repository API (RepositoryIndex / RepositoryModelLoad / RepositoryModelUnload) in explicit
model-control mode, on a server started per test over a temporary repository.

Unload is asynchronous in Triton (kserve-triton.md §0.4: the index shows UNLOADING, then UNAVAILABLE with
reason "unloaded"), so after an unload the tests wait, with a deadline, for the index to say UNAVAILABLE.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import add_sub_config, needs, expect_error, identity_config, write_model

UNLOAD_DEADLINE_S = 30.0


@pytest.fixture
def explicit_server(start_tritium, model_repo):
    write_model(model_repo, "m_identity", identity_config("m_identity", "TYPE_FP32"))
    write_model(model_repo, "m_add_sub", add_sub_config("m_add_sub"))
    write_model(model_repo, "m_other", identity_config("m_other", "TYPE_INT32"))
    return start_tritium(
        "--model-repository", str(model_repo),
        "--model-control-mode", "explicit",
        "--load-model", "m_identity",
    )


@pytest.fixture
def rclient(explicit_server):
    c = grpcclient.InferenceServerClient(url=explicit_server.url)
    yield c
    c.close()


def index_by_name(client) -> dict[str, list]:
    by_name: dict[str, list] = {}
    for model in client.get_model_repository_index().models:
        by_name.setdefault(model.name, []).append(model)
    return by_name


def wait_for_state(client, name: str, state: str) -> list:
    """Block until every index entry of `name` has `state` (unload completes asynchronously)."""
    deadline = threading.Event()
    timer = threading.Timer(UNLOAD_DEADLINE_S, deadline.set)
    timer.start()
    try:
        while True:
            entries = index_by_name(client).get(name, [])
            if entries and all(e.state == state for e in entries):
                return entries
            if deadline.wait(0.02):
                pytest.fail(f"{name} did not reach {state} within {UNLOAD_DEADLINE_S}s: {entries}")
    finally:
        timer.cancel()


def fp32(data: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def add_sub_inputs():
    a = np.arange(16, dtype=np.int32)
    b = np.arange(16, dtype=np.int32)[::-1].copy()
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, [16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return a, b, inputs


def test_index_lists_every_model_and_only_loaded_ones_are_ready(rclient):
    index = index_by_name(rclient)
    assert set(index) == {"m_identity", "m_add_sub", "m_other"}
    assert [e.state for e in index["m_identity"]] == ["READY"]
    assert index["m_identity"][0].version.isdigit()
    assert all(e.state != "READY" for e in index["m_add_sub"] + index["m_other"])
    assert rclient.is_model_ready("m_identity") is True
    assert rclient.is_model_ready("m_add_sub") is False


def test_infer_on_not_loaded_model_fails(rclient):
    _, _, inputs = add_sub_inputs()
    err = expect_error("NOT_FOUND", "Request for unknown model", rclient.infer, "m_add_sub", inputs)
    assert "m_add_sub" in err.message()


def test_load_then_infer(rclient):
    rclient.load_model("m_add_sub")
    assert rclient.is_model_ready("m_add_sub") is True
    assert [e.state for e in index_by_name(rclient)["m_add_sub"]] == ["READY"]
    a, b, inputs = add_sub_inputs()
    result = rclient.infer("m_add_sub", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_unload_then_infer_fails(rclient):
    data = np.ones(3, dtype=np.float32)
    np.testing.assert_array_equal(rclient.infer("m_identity", fp32(data)).as_numpy("OUTPUT0"), data)
    rclient.unload_model("m_identity")
    entries = wait_for_state(rclient, "m_identity", "UNAVAILABLE")
    assert all(e.reason == "unloaded" for e in entries), entries
    assert rclient.is_model_ready("m_identity") is False
    # Triton 2.51 after unload: NOT_FOUND "Request for unknown model: 'm_identity' has no available versions".
    expect_error("NOT_FOUND", "has no available versions", rclient.infer, "m_identity", fp32(data))
    expect_error("NOT_FOUND", "has no available versions", rclient.get_model_metadata, "m_identity")


def test_reload_after_unload(rclient):
    rclient.unload_model("m_identity")
    wait_for_state(rclient, "m_identity", "UNAVAILABLE")
    rclient.load_model("m_identity")
    assert rclient.is_model_ready("m_identity") is True
    data = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(rclient.infer("m_identity", fp32(data)).as_numpy("OUTPUT0"), data)


def test_unload_unknown_model_is_ok(rclient):
    rclient.unload_model("no_such_model")  # Triton 2.51: OK (§0.4)


def test_load_unknown_model_is_internal(rclient):
    expect_error("INTERNAL", "", rclient.load_model, "no_such_model")


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
    config = rclient.get_model_config("m_other").config
    assert config.max_batch_size == 4
    assert [(i.name, i.data_type) for i in config.input] == [("INPUT0", 11)]  # TYPE_FP32, not the file's INT32
    metadata = rclient.get_model_metadata("m_other")
    assert [(t.datatype, list(t.shape)) for t in metadata.inputs] == [("FP32", [-1, -1])]
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(rclient.infer("m_other", fp32(data)).as_numpy("OUTPUT0"), data)


def test_a_malformed_override_answers_as_triton_does(rclient):
    # Triton 2.51: INTERNAL "failed to load 'M', failed to poll from model repository" (the model-control examples check it).
    expect_error("INTERNAL", "failed to load 'm_other', failed to poll from model repository",
                 rclient.load_model, "m_other", config="not json")  # fmt: skip
    assert rclient.is_model_ready("m_identity")


def test_an_override_without_a_backend_keeps_the_models_own(rclient):
    override = {"max_batch_size": 0, "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
                "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}]}  # fmt: skip
    rclient.load_model("m_other", config=json.dumps(override))
    assert rclient.get_model_config("m_other").config.backend == "identity"
    data = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(rclient.infer("m_other", fp32(data)).as_numpy("OUTPUT0"), data)


DOUBLER = b"""
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2)]) for r in requests]
"""

PYTHON_FP32 = json.dumps({"backend": "python", "max_batch_size": 0,
                          "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
                          "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}]})  # fmt: skip


@pytest.fixture
@needs("python_backend")
def python_explicit_server(start_tritium, model_repo):
    import sys

    write_model(model_repo, "m_identity", identity_config("m_identity", "TYPE_FP32"))
    return start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit",
                         "--python-interpreter", sys.executable)  # fmt: skip


def override_folders() -> set[str]:
    import tempfile
    import pathlib

    return {p.name for p in pathlib.Path(tempfile.gettempdir()).glob("tritium-override-*")}


def test_file_overrides_load_a_model_from_the_files_sent(python_explicit_server):
    client = grpcclient.InferenceServerClient(url=python_explicit_server.url)
    before = override_folders()
    # Like Triton, a model that is not in the repository can be loaded from files alone.
    client.load_model("doubler", config=PYTHON_FP32, files={"file:1/model.py": DOUBLER})
    data = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(client.infer("doubler", fp32(data)).as_numpy("OUTPUT0"), data * 2)
    assert len(override_folders() - before) == 1, "a private copy holds the files"
    # As in Triton 2.51, the index lists the repository: a model of files alone is served but not listed.
    assert "doubler" not in index_by_name(client)
    client.unload_model("doubler")
    assert override_folders() == before, "the copy goes with the model"
    assert "doubler" not in index_by_name(client), "and leaves nothing behind in the index"
    # Without files it is looked for in the repository again, where it is not.
    expect_error("INTERNAL", "failed to poll from model repository", client.load_model, "doubler")


def test_file_overrides_need_a_config_and_stay_in_the_model(python_explicit_server):
    client = grpcclient.InferenceServerClient(url=python_explicit_server.url)
    expect_error("INTERNAL", "failed to load 'doubler', failed to poll from model repository",
                 client.load_model, "doubler", files={"file:1/model.py": DOUBLER})  # fmt: skip
    for path in ("file:../evil.py", "file:/tmp/evil.py", "file:1/../../evil.py"):
        expect_error("INTERNAL", "failed to poll from model repository",
                     client.load_model, "doubler", config=PYTHON_FP32, files={path: b"x = 1"})  # fmt: skip
    assert client.is_server_live()


def test_file_overrides_over_http(python_explicit_server):
    import tritonclient.http as httpclient

    http = httpclient.InferenceServerClient(f"127.0.0.1:{python_explicit_server.http_port}")
    http.load_model("doubler", config=PYTHON_FP32, files={"file:1/model.py": DOUBLER})
    tensor = httpclient.InferInput("INPUT0", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1.5, 2.0], dtype=np.float32))
    np.testing.assert_array_equal(http.infer("doubler", [tensor]).as_numpy("OUTPUT0"), [3.0, 4.0])
    http.unload_model("doubler")


def test_statistics_of_loaded_models(rclient):
    rclient.infer("m_identity", fp32(np.ones(2, dtype=np.float32)))
    stats = {s.name: s for s in rclient.get_inference_statistics().model_stats}
    assert "m_identity" in stats
    assert stats["m_identity"].inference_stats.success.count == 1
    assert stats["m_identity"].version.isdigit()


def test_load_model_flag_star_loads_everything(start_tritium, model_repo):
    write_model(model_repo, "a", identity_config("a", "TYPE_FP32"))
    write_model(model_repo, "b", identity_config("b", "TYPE_INT64"))
    server = start_tritium(
        "--model-repository", str(model_repo), "--model-control-mode", "explicit", "--load-model", "*"
    )
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        assert c.is_model_ready("a") and c.is_model_ready("b")
    finally:
        c.close()


def test_default_mode_loads_every_model_of_the_repository(start_tritium, model_repo):
    write_model(model_repo, "only", identity_config("only", "TYPE_FP32"))
    server = start_tritium("--model-repository", str(model_repo))
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        assert c.is_model_ready("only") is True
        assert c.is_model_ready("identity") is False  # a user repository replaces the built-in one
        data = np.arange(3, dtype=np.float32)
        np.testing.assert_array_equal(c.infer("only", fp32(data)).as_numpy("OUTPUT0"), data)
    finally:
        c.close()


def test_multiple_versions_latest_is_default(start_tritium, model_repo):
    write_model(model_repo, "multi", identity_config("multi", "TYPE_FP32"), versions=(1, 3))
    server = start_tritium("--model-repository", str(model_repo))
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        data = np.ones(2, dtype=np.float32)
        assert c.infer("multi", fp32(data)).get_response().model_version == "3"
        assert c.is_model_ready("multi", "3") is True
        expect_error("NOT_FOUND", "is not found", c.infer, "multi", fp32(data), model_version="2")
    finally:
        c.close()
