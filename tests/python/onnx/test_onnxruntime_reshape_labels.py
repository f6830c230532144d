"""ONNX models behind configs with `reshape`, and classification with `label_filename`, over gRPC and HTTP.

- Triton's quickstart `densenet_onnx` config, unchanged (dims [3,224,224] with reshape [1,3,224,224], output dims
  [1000] with reshape [1,1000,1,1] and its label file), over a generated model with the real model's tensor names and
  shapes (a 1x1 convolution head over the image's channel means): it loads, answers the client's [3,224,224] with
  [1000], values as onnxruntime computes them, and `class_count=3` answers `score:index:LABEL` as Triton does.
- A batching model with reshapes (variable-size dimensions carried across, and `reshape { shape: [] }` for a per-row
  scalar).
- Load failures: a reshape that does not hold what dims hold (Triton's words), and label files that are missing or
  outside the model folder (errors name the path, never the contents).
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="the onnxruntime Python package is missing: run scripts/setup-python.sh")
onnx = pytest.importorskip("onnx", reason="the onnx package is missing: run scripts/setup-python.sh")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from helpers import REPO  # noqa: E402

pytestmark = pytest.mark.onnx

TRITON_REPOSITORY = REPO / "tests" / "triton_examples" / "model_repository"
LABELS = (TRITON_REPOSITORY / "densenet_onnx" / "densenet_labels.txt").read_text().split("\n")


def ort_args() -> list[str]:
    library = os.environ.get("ORT_DYLIB_PATH")
    return ["--onnxruntime-library", library] if library else []


def save(model: onnx.ModelProto, path: pathlib.Path) -> bytes:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    path.write_bytes(data)
    return data


def densenet_head() -> onnx.ModelProto:
    """data_0 [1,3,224,224] -> fc6_1 [1,1000,1,1]: the channel means through a 1x1 convolution."""
    rng = np.random.default_rng(40)
    weights = rng.normal(size=(1000, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["data_0"], ["means"], axes=[2, 3], keepdims=1),
            helper.make_node("Conv", ["means", "weights"], ["fc6_1"]),
        ],
        "densenet_head",
        [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("fc6_1", TensorProto.FLOAT, [1, 1000, 1, 1])],
        initializer=[helper.make_tensor("weights", TensorProto.FLOAT, weights.shape, weights.flatten().tolist())],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def batched_reshapes() -> onnx.ModelProto:
    """X [-1,-1,1,2] -> Y = X transposed to [-1,2,1,-1]; S [-1] -> T = 2*S (per-row scalars)."""
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["X"], ["Y"], perm=[0, 3, 2, 1]),
            helper.make_node("Add", ["S", "S"], ["T"]),
        ],
        "batched_reshapes",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "n", 1, 2]),
            helper.make_tensor_value_info("S", TensorProto.FLOAT, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 2, 1, "n"]),
            helper.make_tensor_value_info("T", TensorProto.FLOAT, ["batch"]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


BATCHED_CONFIG = """
name: "reshaped"
platform: "onnxruntime_onnx"
max_batch_size: 4
input [
  { name: "X" data_type: TYPE_FP32 dims: [ -1, 2 ] reshape { shape: [ -1, 1, 2 ] } },
  { name: "S" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }
]
output [
  { name: "Y" data_type: TYPE_FP32 dims: [ 2, -1 ] reshape { shape: [ 2, 1, -1 ] } },
  { name: "T" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } }
]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Triton's densenet_onnx folder (config and labels as Triton ships them) over the generated head, and the
    batching model with reshapes."""
    from helpers import finish_server, start_server

    repo = tmp_path_factory.mktemp("reshape") / "models"
    shutil.copytree(TRITON_REPOSITORY / "densenet_onnx", repo / "densenet_onnx")
    densenet = save(densenet_head(), repo / "densenet_onnx" / "1" / "model.onnx")
    (repo / "reshaped").mkdir()
    (repo / "reshaped" / "config.pbtxt").write_text(BATCHED_CONFIG)
    reshaped = save(batched_reshapes(), repo / "reshaped" / "1" / "model.onnx")
    server = start_server("--model-repository", str(repo), *ort_args(), timeout=120)
    yield server, ort.InferenceSession(densenet), ort.InferenceSession(reshaped)
    finish_server(server)


def image() -> np.ndarray:
    return np.random.default_rng(7).random((3, 224, 224), dtype=np.float32)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritons_quickstart_densenet_config_loads_and_answers_in_its_dims(served, protocol):
    server, densenet, _ = served
    client_module = grpcclient if protocol == "grpc" else httpclient
    url = server.url if protocol == "grpc" else server.http_url.removeprefix("http://")
    data = image()
    expected = densenet.run(None, {"data_0": data[np.newaxis]})[0].reshape(1000)
    with client_module.InferenceServerClient(url=url) as client:
        metadata = client.get_model_metadata("densenet_onnx")
        shapes = (
            [list(t.shape) for t in (*metadata.inputs, *metadata.outputs)]
            if protocol == "grpc"
            else [t["shape"] for t in (*metadata["inputs"], *metadata["outputs"])]
        )
        assert shapes == [[3, 224, 224], [1000]], "clients see dims, not the reshape"
        inputs = [client_module.InferInput("data_0", [3, 224, 224], "FP32")]
        inputs[0].set_data_from_numpy(data)
        result = client.infer("densenet_onnx", inputs)
        output = result.as_numpy("fc6_1")
        assert output.shape == (1000,)
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-5)

        # Triton's classification: the top 3 as score:index:LABEL from densenet_labels.txt.
        outputs = [client_module.InferRequestedOutput("fc6_1", class_count=3)]
        classified = client.infer("densenet_onnx", inputs, outputs=outputs).as_numpy("fc6_1")
    top = np.argsort(-expected, kind="stable")[:3]
    assert classified.shape == (3,)
    got = [value.split(b":") for value in classified.tolist()]
    assert [(int(i), label.decode()) for _, i, label in got] == [(int(i), LABELS[i]) for i in top]
    np.testing.assert_allclose([float(score) for score, _, _ in got], expected[top], rtol=1e-5)
    assert classified[0] == f"{expected[top[0]]:.6f}:{top[0]}:{LABELS[top[0]]}".encode()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_batching_model_with_reshapes_gets_its_shapes_and_answers_in_the_configs_dims(served, protocol):
    server, _, reshaped = served
    client_module = grpcclient if protocol == "grpc" else httpclient
    url = server.url if protocol == "grpc" else server.http_url.removeprefix("http://")
    x = np.arange(3 * 6, dtype=np.float32).reshape(3, 3, 2)
    s = np.array([[1.5], [2.5], [-4.0]], dtype=np.float32)
    y, t = reshaped.run(None, {"X": x.reshape(3, 3, 1, 2), "S": s.reshape(3)})
    with client_module.InferenceServerClient(url=url) as client:
        inputs = [client_module.InferInput("X", [3, 3, 2], "FP32"), client_module.InferInput("S", [3, 1], "FP32")]
        inputs[0].set_data_from_numpy(x)
        inputs[1].set_data_from_numpy(s)
        result = client.infer("reshaped", inputs)
    assert result.as_numpy("Y").shape == (3, 2, 3), "back in dims [2,-1], the batch kept, -1 from the model's"
    np.testing.assert_array_equal(result.as_numpy("Y"), y.reshape(3, 2, 3))
    assert result.as_numpy("T").shape == (3, 1)
    np.testing.assert_array_equal(result.as_numpy("T"), t.reshape(3, 1))


def test_a_reshape_that_does_not_hold_the_dims_or_a_bad_label_file_fails_the_load(start_tritium, tmp_path):
    repo = tmp_path / "models"
    model = densenet_head().SerializeToString()
    config = (TRITON_REPOSITORY / "densenet_onnx" / "config.pbtxt").read_text()
    (tmp_path / "outside.txt").write_text("SECRET-LABEL\n")
    variants = {
        "short_reshape": config.replace("shape: [ 1, 3, 224, 224 ]", "shape: [ 1, 3, 224 ]"),
        "missing_labels": config.replace("densenet_labels.txt", "absent.txt"),
        "outside_labels": config.replace("densenet_labels.txt", "../../outside.txt"),
    }
    for name, text in variants.items():
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(text.replace('name: "densenet_onnx"', f'name: "{name}"'))
        (repo / name / "1" / "model.onnx").write_bytes(model)
    server = start_tritium("--model-repository", str(repo), "--model-control-mode", "explicit", *ort_args())
    expected = {
        "short_reshape": "model input 'data_0' has different size for dims and reshape",
        "missing_labels": "output 'fc6_1': 'absent.txt' does not exist",
        "outside_labels": "output 'fc6_1': label_filename '../../outside.txt' must be a relative path inside the model folder",
    }
    with grpcclient.InferenceServerClient(url=server.url) as client:
        for name, fragment in expected.items():
            with pytest.raises(InferenceServerException) as failure:
                client.load_model(name)
            message = failure.value.message()
            assert fragment in message, message
            assert "SECRET" not in message
            assert not client.is_model_ready(name)
