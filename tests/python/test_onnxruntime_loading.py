"""Loading ONNX models when something is wrong: the ONNX Runtime library missing, and a model_warmup sample that
fails inside ONNX Runtime. Either way the model is UNAVAILABLE with a reason that says what to do, and the rest of
the repository is served.

Triton's wording for a failed warmup (core backend_model_instance.cc): "failed to run warmup sample '<name>': <error>; ".
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the onnx package is missing: run scripts/setup-python.sh")

import tritonclient.grpc as grpcclient  # noqa: E402

import onnx_models  # noqa: E402
from test_onnxruntime import features, index_entry, ort_args  # noqa: E402

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
