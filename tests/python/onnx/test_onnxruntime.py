"""The onnxruntime backend end to end: real ONNX models (onnx_models.py: SqueezeNet 1.1 from the onnx wheel, a
scikit-learn pipeline, every datatype, a model ONNX Runtime fails on) served by `tritium` and compared with
onnxruntime.InferenceSession on the same inputs (integers, booleans and strings exactly, floats to 1e-5).

Covers full config.pbtxt files; Triton's auto-complete (no config at all, or only `backend` and `max_batch_size`);
a batch against the same samples sent one by one; system shared memory; Triton's INVALID_ARGUMENT wording for bad
inputs; an error raised inside ONNX Runtime as INTERNAL; two CPU instances under 8 concurrent clients; model_warmup
with zero and random data. Server-wide settings and failed loads are in test_onnxruntime_loading.py.

Expected behaviour is Triton 2.51's with its onnxruntime backend (AutoCompleteConfig in src/onnxruntime.cc): a model
whose every input and output has a dynamic dim 0 gets max_batch_size = default-max-batch-size (4 unless set) and an
empty dynamic_batching; a per-sample scalar (shape [batch] in the model) becomes dims [1] with reshape { shape: [] },
so clients see it as [batch, 1]; a config that already lists inputs and outputs is not auto-completed at all.
Triton keeps auto-completed tensors in no particular order, so they are compared by name.

The models are built once per module; the servers over them are module-scoped unless a test needs its own flags.
`--onnxruntime-library $ORT_DYLIB_PATH` is passed when that is set (scripts/test.sh sets it).
"""

from __future__ import annotations

import functools
import os
import pathlib
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

ort = pytest.importorskip(
    "onnxruntime", reason="the onnxruntime Python package is missing: run scripts/setup-python.sh (tests/python/requirements.txt)"
)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import onnx_models  # noqa: E402
from helpers import TritiumServer, expect_error, finish_server, start_server  # noqa: E402
from onnx_models import Model, Tensor, config_type  # noqa: E402

pytestmark = pytest.mark.onnx

RTOL = 1e-5
ATOL = 1e-6
# Triton's onnxruntime backend fills max_batch_size from this backend setting (default 4) when it infers batching.
DEFAULT_MAX_BATCH_SIZE = 4
CLIENTS = 8
# What ONNX Runtime's Reshape kernel says when 6 elements are asked to become [4, 4].
ORT_RESHAPE_ERROR = "The input tensor cannot be reshaped to the requested shape. Input shape:{6}, requested shape:{4,4}"

PAIR = """
instance_group [ { count: 2 kind: KIND_CPU } ]
"""
WARMUP = """
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs { key: "data_0" value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } }
  },
  {
    name: "random"
    batch_size: 1
    inputs { key: "data_0" value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] random_data: true } }
  }
]
"""
PARTIAL = """
backend: "onnxruntime"
max_batch_size: 8
"""


def ort_args() -> list[str]:
    library = os.environ.get("ORT_DYLIB_PATH")
    return ["--onnxruntime-library", library] if library else []


@dataclass
class Served:
    server: TritiumServer
    models: dict[str, Model]

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(url=self.server.url)


# --- inputs, reference outputs and comparisons ----------------------------------------------------------


def images(count: int, seed: int) -> np.ndarray:
    """CNN inputs; a per-image offset per channel makes the images differ in more than their noise."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, 3, 224, 224)) + rng.uniform(-1, 1, (count, 3, 1, 1))).astype(np.float32)


def features(count: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((count, onnx_models.SKLEARN_FEATURES)) * 2).astype(np.float32)


WORDS = ("", "a", "onnx", "é", "日本語", "two words", "x" * 40)


def multi_feeds(model: Model, count: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs over each type's whole range (an overflowing add wraps alike in the server and the reference)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in model.inputs:
        shape = (count, *tensor.dims)
        if tensor.datatype == "BYTES":
            picks = rng.integers(0, len(WORDS), shape)
            feeds[tensor.name] = np.vectorize(lambda i: WORDS[i].encode(), otypes=[object])(picks)
        elif tensor.datatype == "BOOL":
            feeds[tensor.name] = rng.random(shape) < 0.5
        elif tensor.datatype.startswith("FP"):
            feeds[tensor.name] = (rng.standard_normal(shape) * 100).astype(tensor.dtype)
        else:
            info = np.iinfo(tensor.dtype)
            feeds[tensor.name] = rng.integers(info.min, info.max, shape, dtype=tensor.dtype, endpoint=True)
    return feeds


def failing_feeds(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    return {"DATA": np.arange(6, dtype=np.float32), "SHAPE": np.array(shape, dtype=np.int64)}


@functools.cache
def reference_session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4  # the failing model's error is expected: keep ONNX Runtime's own log quiet
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def reference(model: Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs for `feeds`, shaped and typed as Triton returns them (a [batch] output as
    [batch, 1]; strings as bytes)."""
    session = reference_session(str(model.path))
    as_text = np.vectorize(lambda b: b.decode(), otypes=[object])
    ort_feeds = {name: as_text(value) if value.dtype == object else value for name, value in feeds.items()}
    result = {}
    for meta, value in zip(session.get_outputs(), session.run(None, ort_feeds)):
        tensor = model.output(meta.name)
        if tensor.reshape is not None:
            value = value.reshape(value.shape[0], *tensor.dims)
        if value.dtype == object:
            value = np.vectorize(lambda s: s.encode(), otypes=[object])(value)
        result[meta.name] = value
    return result


def infer_inputs(model: Model, feeds: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, value in feeds.items():
        tensor = grpcclient.InferInput(name, list(value.shape), model.input(name).datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def infer(client, model: Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    result = client.infer(model.name, infer_inputs(model, feeds))
    return {tensor.name: result.as_numpy(tensor.name) for tensor in model.outputs}


def assert_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray], exact: bool = False) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        actual = got[name]
        assert actual is not None, f"no output {name}"
        assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype), f"{name}: {actual.shape} {actual.dtype}"
        if expected.dtype.kind == "f" and not exact:
            np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=name)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=name)


def check_against_reference(client, model: Model, feeds: dict[str, np.ndarray], exact: bool = False) -> None:
    assert_outputs(infer(client, model, feeds), reference(model, feeds), exact)


def sample_feeds(model: Model, kind: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` samples for a batching model; the failing model (no batching) always gets its good input."""
    if kind == "cnn":
        return {"data_0": images(count, seed)}
    if kind == "sklearn":
        return {"X": features(count, seed)}
    if kind == "multi_dtype":
        return multi_feeds(model, count, seed)
    return failing_feeds((3, 2))


# --- config and metadata ---------------------------------------------------------------------------------


def config_io(entries) -> dict[str, tuple[str, list[int], list[int] | None]]:
    """Config inputs or outputs by name: (TYPE_*, dims, reshape shape or None)."""
    return {
        e.name: (mc.DataType.Name(e.data_type), list(e.dims), list(e.reshape.shape) if e.HasField("reshape") else None)
        for e in entries
    }


def expected_io(tensors: tuple[Tensor, ...]) -> dict[str, tuple[str, list[int], list[int] | None]]:
    return {t.name: (config_type(t.datatype), list(t.dims), None if t.reshape is None else list(t.reshape)) for t in tensors}


def metadata_io(tensors) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.datatype, list(t.shape)) for t in tensors}


def expected_metadata(tensors: tuple[Tensor, ...], batching: bool) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (t.datatype, [-1, *t.dims] if batching else list(t.dims)) for t in tensors}


def index_entry(client, name: str):
    entries = [m for m in client.get_model_repository_index().models if m.name == name]
    assert len(entries) == 1, f"{name} in the repository index: {entries}"
    return entries[0]


# --- servers ---------------------------------------------------------------------------------------------

KINDS = ("cnn", "sklearn", "multi_dtype", "failing")


def build(repo: pathlib.Path, kind: str, name: str, config: str | None = None) -> Model:
    builders = {
        "cnn": onnx_models.cnn,
        "sklearn": onnx_models.sklearn_pipeline,
        "multi_dtype": onnx_models.multi_dtype,
        "failing": onnx_models.failing,
    }
    return builders[kind](repo, name, config=config)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every model with a full config.pbtxt, plus the CNN with two CPU instances and with model_warmup."""
    repo = tmp_path_factory.mktemp("onnx_full")
    models = {kind: build(repo, kind, kind) for kind in KINDS}
    models["cnn_pair"] = build(repo, "cnn", "cnn_pair")
    models["cnn_warmup"] = build(repo, "cnn", "cnn_warmup")
    extras = {"cnn_pair": PAIR, "cnn_warmup": WARMUP}
    for name, model in models.items():
        model.write_config(model.config(extra=extras.get(name, "")))
    server = start_server("--model-repository", str(repo), "--allow-shared-memory", *ort_args())
    yield Served(server, models)
    finish_server(server)


@pytest.fixture(scope="module")
def auto(tmp_path_factory):
    """Every model with no config.pbtxt, plus the CNN with a partial one (backend and max_batch_size only)."""
    repo = tmp_path_factory.mktemp("onnx_auto")
    models = {kind: build(repo, kind, kind) for kind in KINDS}
    models["cnn_partial"] = build(repo, "cnn", "cnn_partial", config=PARTIAL)
    server = start_server("--model-repository", str(repo), *ort_args())
    yield Served(server, models)
    finish_server(server)


@pytest.fixture
def fclient(full):
    c = full.client()
    yield c
    c.close()


@pytest.fixture
def aclient(auto):
    c = auto.client()
    yield c
    c.close()


def serve(start_tritium, repo: pathlib.Path, *args: str) -> grpcclient.InferenceServerClient:
    server = start_tritium("--model-repository", str(repo), *ort_args(), *args)
    return grpcclient.InferenceServerClient(url=server.url)


# --- (a) full config -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_full_config_is_served_as_written(full, fclient, kind):
    model = full.models[kind]
    assert fclient.is_model_ready(kind) is True
    config = fclient.get_model_config(kind).config
    # Triton fills `backend` from the platform; a config listing inputs and outputs is not auto-completed.
    assert (config.name, config.platform, config.backend) == (kind, "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == (8 if model.batching else 0)
    assert not config.HasField("dynamic_batching")
    assert config_io(config.input) == expected_io(model.inputs)
    assert config_io(config.output) == expected_io(model.outputs)
    metadata = fclient.get_model_metadata(kind)
    assert metadata.platform == "onnxruntime_onnx"
    assert metadata_io(metadata.inputs) == expected_metadata(model.inputs, model.batching)
    assert metadata_io(metadata.outputs) == expected_metadata(model.outputs, model.batching)


@pytest.mark.parametrize("kind, count", [("cnn", 2), ("sklearn", 5), ("multi_dtype", 3), ("failing", 1)])
def test_full_config_matches_onnxruntime(full, fclient, kind, count):
    model = full.models[kind]
    check_against_reference(fclient, model, sample_feeds(model, kind, count, seed=11), exact=kind == "multi_dtype")


def test_sklearn_label_is_batch_by_one(full, fclient):
    # `label` is [batch] in the model; its config dims [1] + reshape [] give clients [batch, 1].
    model = full.models["sklearn"]
    x, _ = onnx_models.sklearn_dataset()
    out = infer(fclient, model, {"X": x[:7]})
    assert out["label"].shape == (7, 1) and out["probabilities"].shape == (7, onnx_models.SKLEARN_CLASSES)
    np.testing.assert_array_equal(out["label"][:, 0], np.argmax(out["probabilities"], axis=1))


def test_multi_dtype_covers_every_datatype_but_bf16(tmp_path):
    # BF16 is left out: ONNX has it, but ONNX Runtime's CPU kernels hardly take it.
    model = onnx_models.multi_dtype(tmp_path, "multi_dtype")
    every = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"}
    assert {t.datatype for t in model.inputs} == every
    assert {t.datatype for t in model.outputs} == every


# --- (b) no config.pbtxt: auto-complete -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cnn", "sklearn", "multi_dtype"])
def test_auto_complete_of_a_batching_model(auto, aclient, kind):
    model = auto.models[kind]
    assert aclient.is_model_ready(kind) is True
    config = aclient.get_model_config(kind).config
    assert (config.name, config.platform, config.backend) == (kind, "onnxruntime_onnx", "onnxruntime")
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size == DEFAULT_MAX_BATCH_SIZE
    assert config.HasField("dynamic_batching")
    assert config_io(config.input) == expected_io(model.inputs)
    assert config_io(config.output) == expected_io(model.outputs)

    metadata = aclient.get_model_metadata(kind)
    assert (metadata.name, metadata.platform, list(metadata.versions)) == (kind, "onnxruntime_onnx", ["1"])
    assert metadata_io(metadata.inputs) == expected_metadata(model.inputs, True)
    assert metadata_io(metadata.outputs) == expected_metadata(model.outputs, True)


def test_auto_complete_of_a_model_that_cannot_batch(aclient):
    # SHAPE has a fixed dim 0, so the model cannot batch: max_batch_size stays 0, no dynamic batching.
    config = aclient.get_model_config("failing").config
    assert (config.platform, config.backend, config.max_batch_size) == ("onnxruntime_onnx", "onnxruntime", 0)
    assert not config.HasField("dynamic_batching")
    assert config_io(config.input) == {"DATA": ("TYPE_FP32", [-1], None), "SHAPE": ("TYPE_INT64", [2], None)}
    assert config_io(config.output) == {"OUT": ("TYPE_FP32", [-1, -1], None)}
    metadata = aclient.get_model_metadata("failing")
    assert metadata_io(metadata.inputs) == {"DATA": ("FP32", [-1]), "SHAPE": ("INT64", [2])}
    assert metadata_io(metadata.outputs) == {"OUT": ("FP32", [-1, -1])}


@pytest.mark.parametrize("kind, count", [("cnn", 3), ("sklearn", 4), ("multi_dtype", 2), ("failing", 1)])
def test_auto_completed_model_matches_onnxruntime(auto, aclient, kind, count):
    model = auto.models[kind]
    check_against_reference(aclient, model, sample_feeds(model, kind, count, seed=23), exact=kind == "multi_dtype")


def test_auto_completed_batch_limit_is_the_default_max_batch_size(auto, aclient):
    expect_error(
        "INVALID_ARGUMENT",
        f"inference request batch-size must be <= {DEFAULT_MAX_BATCH_SIZE} for 'sklearn'",
        aclient.infer,
        "sklearn",
        infer_inputs(auto.models["sklearn"], {"X": features(DEFAULT_MAX_BATCH_SIZE + 1, seed=1)}),
    )


# --- (c) a partial config completed from the model ----------------------------------------------------------


def test_partial_config_is_completed_from_the_model(auto, aclient):
    model = auto.models["cnn_partial"]
    config = aclient.get_model_config("cnn_partial").config
    assert (config.name, config.platform, config.backend) == ("cnn_partial", "onnxruntime_onnx", "onnxruntime")
    assert config.max_batch_size == 8  # kept: the config's own value wins over the default
    assert config.HasField("dynamic_batching")
    assert config_io(config.input) == expected_io(model.inputs)
    assert config_io(config.output) == expected_io(model.outputs)
    check_against_reference(aclient, model, {"data_0": images(5, seed=31)})


# --- (e) a batch equals its samples one by one --------------------------------------------------------------


@pytest.mark.parametrize("kind, count", [("cnn", 4), ("sklearn", 8)])
def test_batch_equals_single_requests(full, fclient, kind, count):
    model = full.models[kind]
    feeds = sample_feeds(model, kind, count, seed=53)
    batched = infer(fclient, model, feeds)
    assert_outputs(batched, reference(model, feeds))
    for i in range(count):
        single = infer(fclient, model, {name: value[i : i + 1] for name, value in feeds.items()})
        assert_outputs(single, {name: value[i : i + 1] for name, value in batched.items()})


# --- (f) system shared memory ---------------------------------------------------------------------------------


def test_cnn_through_system_shared_memory(full, fclient):
    model = full.models["cnn"]
    data = images(2, seed=61)
    want = reference(model, {"data_0": data})["softmaxout_1"]
    tag = uuid.uuid4().hex[:12]
    regions = []
    try:
        for role, size in (("in", data.nbytes), ("out", want.nbytes)):
            name, key = f"onnx_{role}_{tag}", f"/tritium_onnx_{os.getpid()}_{role}_{tag}"
            regions.append((name, shm.create_shared_memory_region(name, key, size)))
            fclient.register_system_shared_memory(name, key, size)
        (in_name, in_handle), (out_name, out_handle) = regions
        shm.set_shared_memory_region(in_handle, [data])
        tensor = grpcclient.InferInput("data_0", list(data.shape), "FP32")
        tensor.set_shared_memory(in_name, data.nbytes)
        output = grpcclient.InferRequestedOutput("softmaxout_1")
        output.set_shared_memory(out_name, want.nbytes)
        response = fclient.infer("cnn", [tensor], outputs=[output]).get_response()
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("softmaxout_1", "FP32", list(want.shape))]
        got = shm.get_contents_as_numpy(out_handle, np.float32, list(want.shape))
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    finally:
        for name, handle in regions:
            fclient.unregister_system_shared_memory(name)
            shm.destroy_shared_memory_region(handle)


# --- (g) bad inputs: Triton's INVALID_ARGUMENT and wording -------------------------------------------------------


def fp32(name: str, data: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput(name, list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def test_wrong_input_name(fclient):
    expect_error(
        "INVALID_ARGUMENT",
        "unexpected inference input 'image' for model 'cnn'",
        fclient.infer,
        "cnn",
        fp32("image", images(1, seed=71)),
    )


def test_wrong_datatype(fclient):
    tensor = grpcclient.InferInput("data_0", [1, 3, 224, 224], "FP64")
    tensor.set_data_from_numpy(images(1, seed=72).astype(np.float64))
    expect_error(
        "INVALID_ARGUMENT",
        "inference input 'data_0' data-type is 'FP64', but model 'cnn' expects 'FP32'",
        fclient.infer,
        "cnn",
        [tensor],
    )


def test_wrong_shape(fclient):
    data = images(1, seed=73)[:, :, :, :223].copy()
    expect_error(
        "INVALID_ARGUMENT",
        "unexpected shape for input 'data_0' for model 'cnn'. Expected [-1,3,224,224], got [1,3,224,223]",
        fclient.infer,
        "cnn",
        fp32("data_0", data),
    )


def test_batch_larger_than_max_batch_size(fclient):
    expect_error(
        "INVALID_ARGUMENT",
        "inference request batch-size must be <= 8 for 'sklearn'",
        fclient.infer,
        "sklearn",
        fp32("X", features(9, seed=74)),
    )


def test_server_answers_after_bad_inputs(full, fclient):
    for bad in (fp32("image", images(1, seed=75)), fp32("data_0", images(1, seed=75)[:, :2].copy())):
        with pytest.raises(InferenceServerException):
            fclient.infer("cnn", bad)
    check_against_reference(fclient, full.models["cnn"], {"data_0": images(1, seed=76)})
    assert fclient.is_server_live() is True


# --- (h) an error inside ONNX Runtime -----------------------------------------------------------------------------


def test_onnxruntime_error_is_internal_and_the_server_stays_up(full, fclient):
    model = full.models["failing"]
    with pytest.raises(Exception) as reference_error:
        reference(model, failing_feeds((4, 4)))
    assert ORT_RESHAPE_ERROR in str(reference_error.value), "onnxruntime's own wording changed"

    expect_error("INTERNAL", ORT_RESHAPE_ERROR, fclient.infer, "failing", infer_inputs(model, failing_feeds((4, 4))))
    assert full.server.proc.poll() is None, "tritium exited"
    check_against_reference(fclient, model, failing_feeds((2, 3)))
    check_against_reference(fclient, full.models["sklearn"], {"X": features(2, seed=81)})


# --- (i) instance groups ----------------------------------------------------------------------------------------------


def test_two_cpu_instances_serve_concurrent_clients(full, fclient):
    model = full.models["cnn_pair"]
    groups = fclient.get_model_config("cnn_pair").config.instance_group
    assert [(g.count, g.kind) for g in groups] == [(2, mc.ModelInstanceGroup.KIND_CPU)]
    data = images(2 * CLIENTS, seed=91)
    want = reference(model, {"data_0": data})["softmaxout_1"]
    start = threading.Barrier(CLIENTS)

    def run(k: int) -> list[tuple[int, np.ndarray]]:
        client = full.client()
        try:
            start.wait(timeout=60)
            return [(i, infer(client, model, {"data_0": data[i : i + 1]})["softmaxout_1"]) for i in (2 * k, 2 * k + 1)]
        finally:
            client.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [pair for answers in pool.map(run, range(CLIENTS)) for pair in answers]
    assert sorted(i for i, _ in results) == list(range(2 * CLIENTS))
    for i, got in results:
        np.testing.assert_allclose(got, want[i : i + 1], rtol=RTOL, atol=ATOL, err_msg=f"request {i}")
    stats = fclient.get_inference_statistics("cnn_pair").model_stats
    assert [s.inference_stats.success.count for s in stats] == [2 * CLIENTS]


# --- (j) model_warmup -------------------------------------------------------------------------------------------------


def test_model_warmup_with_zero_and_random_data(full, fclient):
    assert fclient.is_model_ready("cnn_warmup") is True
    warmup = fclient.get_model_config("cnn_warmup").config.model_warmup
    assert [(w.name, w.batch_size) for w in warmup] == [("zeros", 2), ("random", 1)]
    assert warmup[0].inputs["data_0"].zero_data is True and warmup[1].inputs["data_0"].random_data is True
    check_against_reference(fclient, full.models["cnn_warmup"], {"data_0": images(2, seed=101)})
