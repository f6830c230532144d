"""Loading ONNX models under server-wide settings and when something is wrong: `--backend-config` and
`--disable-auto-complete-config`, a KIND_GPU instance group without GPU support, the ONNX Runtime library missing,
and a model_warmup sample that fails inside ONNX Runtime. A model that cannot load is UNAVAILABLE with a reason that
says what to do, and the rest of the repository is served.

Triton's wording for a failed warmup (core backend_model_instance.cc): "failed to run warmup sample '<name>': <error>; ".
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the onnx package is missing: run scripts/setup-python.sh")

import tritonclient.grpc as grpcclient  # noqa: E402

import onnx_models  # noqa: E402
from helpers import expect_error, start_failure  # noqa: E402
from test_onnxruntime import (  # noqa: E402
    PARTIAL,
    check_against_reference,
    features,
    fp32,
    images,
    index_entry,
    infer_inputs,
    ort_args,
    serve,
)

pytestmark = pytest.mark.onnx

GPU = """
instance_group [ { count: 1 kind: KIND_GPU } ]
"""
FAILING_WARMUP = """
model_warmup [
  {
    name: "reshape_to_4x4"
    batch_size: 1
    inputs { key: "DATA" value: { data_type: TYPE_FP32 dims: [ 6 ] zero_data: true } }
    inputs { key: "SHAPE" value: { data_type: TYPE_INT64 dims: [ 2 ] input_data_file: "shape_4x4" } }
  }
]
"""


def test_a_missing_library_names_the_install_script_and_other_models_still_load(start_tritium, tmp_path):
    onnx_models.sklearn_pipeline(tmp_path, "classifier")
    (tmp_path / "simple").mkdir()
    (tmp_path / "simple" / "1").mkdir()
    (tmp_path / "simple" / "config.pbtxt").write_text(
        'backend: "identity"\nmax_batch_size: 0\n'
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
    )
    missing = tmp_path / "nowhere" / "libonnxruntime.so"
    server = start_tritium("--model-repository", str(tmp_path), "--onnxruntime-library", str(missing))
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        entry = index_entry(client, "classifier")
        assert entry.state == "UNAVAILABLE", entry
        assert "scripts/install-onnxruntime.sh" in entry.reason, entry.reason
        assert str(missing) in entry.reason, entry.reason
        assert client.is_model_ready("simple") is True
        data = grpcclient.InferInput("INPUT0", [2], "FP32")
        data.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
        np.testing.assert_array_equal(client.infer("simple", [data]).as_numpy("OUTPUT0"), [1.0, 2.0])
    finally:
        client.close()


def test_a_failing_warmup_sample_fails_the_load_in_tritons_words(start_tritium, tmp_path):
    bad = onnx_models.failing(tmp_path, "reshaper")
    bad.write_config(bad.config(extra=FAILING_WARMUP))
    (tmp_path / "reshaper" / "warmup").mkdir()
    (tmp_path / "reshaper" / "warmup" / "shape_4x4").write_bytes(np.array([4, 4], dtype=np.int64).tobytes())
    good = onnx_models.sklearn_pipeline(tmp_path, "classifier")
    good.write_config(good.config())
    server = start_tritium("--model-repository", str(tmp_path), *ort_args())
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        entry = index_entry(client, "reshaper")
        assert entry.state == "UNAVAILABLE", entry
        assert "failed to run warmup sample 'reshape_to_4x4': onnx runtime error" in entry.reason, entry.reason
        assert "cannot be reshaped" in entry.reason, entry.reason
        assert client.is_model_ready("classifier") is True
        x = grpcclient.InferInput("X", [2, onnx_models.SKLEARN_FEATURES], "FP32")
        x.set_data_from_numpy(features(2, seed=7))
        assert client.infer("classifier", [x]).as_numpy("label").shape[0] == 2
    finally:
        client.close()


# --- (d) backend settings --------------------------------------------------------------------------------


def test_backend_config_default_max_batch_size(start_tritium, tmp_path):
    model = onnx_models.sklearn_pipeline(tmp_path, "sklearn")
    client = serve(start_tritium, tmp_path, "--backend-config=onnxruntime,default-max-batch-size=2")
    try:
        config = client.get_model_config("sklearn").config
        assert config.max_batch_size == 2
        assert config.HasField("dynamic_batching")
        assert [list(t.shape) for t in client.get_model_metadata("sklearn").inputs] == [[-1, onnx_models.SKLEARN_FEATURES]]
        check_against_reference(client, model, {"X": features(2, seed=41)})
        expect_error(
            "INVALID_ARGUMENT",
            "inference request batch-size must be <= 2 for 'sklearn'",
            client.infer,
            "sklearn",
            infer_inputs(model, {"X": features(3, seed=41)}),
        )
    finally:
        client.close()


def test_backend_config_thread_settings(start_tritium, tmp_path):
    model = onnx_models.sklearn_pipeline(tmp_path, "sklearn")
    args = ("--backend-config=onnxruntime,thread-spinning=true", "--backend-config=onnxruntime,solo-session-max-byte-size=0")
    client = serve(start_tritium, tmp_path, *args)
    try:
        check_against_reference(client, model, {"X": features(3, seed=47)})
    finally:
        client.close()
    failure = start_failure("--model-repository", str(tmp_path), "--backend-config=onnxruntime,thread-spinning=sometimes")
    assert "parameter 'thread-spinning': failed to convert 'sometimes' to boolean" in failure, failure
    failure = start_failure("--model-repository", str(tmp_path), "--backend-config=onnxruntime,solo-session-max-byte-size=lots")
    assert "failed to convert 'lots' to integral number" in failure, failure


def test_solo_session_only_for_models_within_the_bound(start_tritium, tmp_path):
    model = onnx_models.sklearn_pipeline(tmp_path, "sklearn")
    size = sum(f.stat().st_size for f in (tmp_path / "sklearn" / "1").iterdir() if f.is_file())
    skipped = f"no solo session: the model's files hold {size} bytes, over solo-session-max-byte-size {size - 1}"
    for bound, logged in ((size - 1, True), (size, False)):
        setting = f"--backend-config=onnxruntime,solo-session-max-byte-size={bound}"
        server = start_tritium("--model-repository", str(tmp_path), *ort_args(), setting)
        client = grpcclient.InferenceServerClient(url=server.url)
        try:
            # One client at a time: with the solo session these run there, without it on an instance.
            for seed in (53, 59):
                check_against_reference(client, model, {"X": features(2, seed=seed)})
        finally:
            client.close()
        assert (skipped in server.stderr()) is logged, server.stderr()[-2000:]


def test_disable_auto_complete_config(start_tritium, tmp_path):
    # Model names that say nothing of configs or GPUs, so the reasons checked below cannot pass by naming the model.
    complete = onnx_models.sklearn_pipeline(tmp_path, "complete")
    complete.write_config(complete.config())
    onnx_models.sklearn_pipeline(tmp_path, "bare")
    onnx_models.sklearn_pipeline(tmp_path, "partial", config=PARTIAL)
    client = serve(start_tritium, tmp_path, "--disable-auto-complete-config")
    try:
        # A complete config needs no auto-complete and still loads.
        assert index_entry(client, "complete").state == "READY"
        check_against_reference(client, complete, {"X": features(3, seed=43)})
        # No config, or one without inputs and outputs, cannot load when nothing may fill it in.
        for name in ("bare", "partial"):
            entry = index_entry(client, name)
            assert entry.state == "UNAVAILABLE", entry
            assert entry.reason, f"{name}: UNAVAILABLE without a reason"
            assert client.is_model_ready(name) is False
        assert "config" in index_entry(client, "bare").reason.lower()
    finally:
        client.close()


# --- instance groups --------------------------------------------------------------------------------------


def test_kind_gpu_is_refused_at_load(start_tritium, tmp_path):
    gpu = onnx_models.cnn(tmp_path, "squeezenet")  # a name without "gpu": the reason must say it
    gpu.write_config(gpu.config(extra=GPU))
    cpu = onnx_models.sklearn_pipeline(tmp_path, "sklearn")
    cpu.write_config(cpu.config())
    client = serve(start_tritium, tmp_path)
    try:
        entry = index_entry(client, "squeezenet")
        assert entry.state == "UNAVAILABLE", entry
        assert "gpu" in entry.reason.lower(), entry.reason
        assert client.is_model_ready("squeezenet") is False
        expect_error("NOT_FOUND", "Request for unknown model", client.infer, "squeezenet", fp32("data_0", images(1, seed=95)))
        check_against_reference(client, cpu, {"X": features(2, seed=95)})
    finally:
        client.close()


def test_config_parameters_the_backend_does_not_read_are_named_at_load(start_tritium, tmp_path):
    """Triton's GPU settings (here `gpu_mem_limit`) do nothing on this backend: the load says so, by name, and the
    model serves; a parameter it reads (`intra_op_thread_count`) is not named."""
    model = onnx_models.sklearn_pipeline(tmp_path, "sklearn")
    unread = 'parameters { key: "gpu_mem_limit" value: { string_value: "1" } }\n'
    read = 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    model.write_config(model.config(extra=unread + read))
    server = start_tritium("--model-repository", str(tmp_path), *ort_args())
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        check_against_reference(client, model, {"X": features(2, seed=3)})
        warned = [line for line in server.stderr().splitlines() if "are read by no part" in line]
        assert len(warned) == 1 and "parameters gpu_mem_limit of the config" in warned[0], warned
    finally:
        client.close()
