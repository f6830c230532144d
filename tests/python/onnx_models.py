"""Real ONNX models for the onnxruntime backend tests, written into a Triton model repository with no network.

Each builder writes `<repo>/<name>/1/model.onnx` (plus `<repo>/<name>/config.pbtxt` when given `config=`) and
returns a `Model`: its tensors as Triton sees them (KServe datatype, dims without the batch dim when it batches),
so a test can write a full config (`Model.config`) or none and compare what the server auto-completes.

- `cnn`: SqueezeNet 1.1 from the `onnx` wheel (`onnx/backend/test/data/light/light_squeezenet.onnx`, the smallest
  of those CNNs in parameters and compute, and the only one without batch-1 Reshapes), with dim 0 made symbolic.
  The light models replace every weight with `ConstantOfShape(0.02)`, which makes the softmax exactly uniform
  (0.001) for any input; the weights are replaced by seeded He-normal initializers so outputs depend on the input.
- `sklearn_pipeline`: StandardScaler + LogisticRegression trained on a seeded synthetic dataset, converted by
  skl2onnx without ZipMap: `label` INT64 [batch] (dims [1] with `reshape: { shape: [] }` in Triton terms) and
  `probabilities` FP32 [batch, 3].
- `multi_dtype`: one input and output per Triton datatype ONNX has (FP16 .. BOOL and STRING), plus a Cast/Sum
  output over every numeric input.
- `failing`: a Reshape whose target shape is an input, so ONNX Runtime fails at run time on a bad shape.
- `segments`: a model for ragged batching: a ragged input concatenated into one 1-D tensor and the batch inputs
  Triton makes (accumulated and per-request element counts, the longest request as a shape) give a per-request sum.
- `row_sums`: the same sum over an ordinary [batch, n] input, for models that do not allow ragged batches.
- `ragged_double`: a ragged input doubled into a ragged output that Triton scatters back by each request's shape
  (`batch_output` BATCH_SCATTER_WITH_INPUT_SHAPE).

IR version 8 and opset 17 (ai.onnx.ml 3) are supported by onnxruntime 1.31.1; the CNN keeps its opset 9.
"""

from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17
ML_OPSET = 3
LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CNN_SOURCE = LIGHT_DIR / "light_squeezenet.onnx"
BATCH_DIM = "batch"
SKLEARN_FEATURES = 6
SKLEARN_CLASSES = 3

# ONNX element type -> (KServe datatype, numpy dtype). STRING is Triton's TYPE_STRING, KServe "BYTES".
ONNX_TYPES: dict[int, tuple[str, np.dtype]] = {
    TensorProto.FLOAT: ("FP32", np.dtype(np.float32)),
    TensorProto.FLOAT16: ("FP16", np.dtype(np.float16)),
    TensorProto.DOUBLE: ("FP64", np.dtype(np.float64)),
    TensorProto.INT8: ("INT8", np.dtype(np.int8)),
    TensorProto.INT16: ("INT16", np.dtype(np.int16)),
    TensorProto.INT32: ("INT32", np.dtype(np.int32)),
    TensorProto.INT64: ("INT64", np.dtype(np.int64)),
    TensorProto.UINT8: ("UINT8", np.dtype(np.uint8)),
    TensorProto.UINT16: ("UINT16", np.dtype(np.uint16)),
    TensorProto.UINT32: ("UINT32", np.dtype(np.uint32)),
    TensorProto.UINT64: ("UINT64", np.dtype(np.uint64)),
    TensorProto.BOOL: ("BOOL", np.dtype(np.bool_)),
    TensorProto.STRING: ("BYTES", np.dtype(np.object_)),
}
KSERVE_TYPES = {kserve: onnx_type for onnx_type, (kserve, _) in ONNX_TYPES.items()}


def config_type(datatype: str) -> str:
    """KServe datatype -> model config enum name ("BYTES" is TYPE_STRING)."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def pbtxt_list(values: tuple[int, ...]) -> str:
    return f"[ {', '.join(str(v) for v in values)} ]" if values else "[ ]"


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it."""

    name: str
    datatype: str  # KServe: "FP32", "BYTES", ...
    dims: tuple[int, ...]  # without the batch dim when the model batches; -1 for a dynamic dim
    reshape: tuple[int, ...] | None = None  # the model's own shape when it differs from dims (a [batch] output)

    @property
    def dtype(self) -> np.dtype:
        return ONNX_TYPES[KSERVE_TYPES[self.datatype]][1]

    def pbtxt(self) -> str:
        text = f'{{ name: "{self.name}" data_type: {config_type(self.datatype)} dims: {pbtxt_list(self.dims)}'
        if self.reshape is not None:
            text += f" reshape: {{ shape: {pbtxt_list(self.reshape)} }}"
        return text + " }"


@dataclass(frozen=True)
class Model:
    """A model written into a repository: where, and its tensors (`batching`: dim 0 of every tensor is dynamic)."""

    name: str
    path: pathlib.Path
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    batching: bool

    def input(self, name: str) -> Tensor:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> Tensor:
        return next(t for t in self.outputs if t.name == name)

    def write_config(self, text: str) -> None:
        """Write (or replace) `<repo>/<name>/config.pbtxt`."""
        (self.path.parent.parent / "config.pbtxt").write_text(text)

    def config(self, max_batch_size: int | None = None, extra: str = "") -> str:
        """A full config.pbtxt (platform onnxruntime_onnx, every input and output); `extra` is appended as is."""
        if max_batch_size is None:
            max_batch_size = 8 if self.batching else 0
        inputs = ",\n  ".join(t.pbtxt() for t in self.inputs)
        outputs = ",\n  ".join(t.pbtxt() for t in self.outputs)
        return (
            f'name: "{self.name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n  {inputs}\n]\noutput [\n  {outputs}\n]\n{extra}"
        )


def write(repo: pathlib.Path, name: str, model_bytes: bytes, config: str | None) -> pathlib.Path:
    """`<repo>/<name>/1/model.onnx` (+ config.pbtxt when given); returns the model file."""
    version_dir = repo / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    path.write_bytes(model_bytes)
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return path


def tensors(values: list[onnx.ValueInfoProto], batching: bool) -> tuple[Tensor, ...]:
    """Triton's view of graph inputs or outputs: a scalar after the batch dim becomes dims [1] + reshape []."""
    out = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dims = tuple(shape[1:] if batching else shape)
        reshape = None
        if batching and not dims:
            dims, reshape = (1,), ()
        out.append(Tensor(value.name, ONNX_TYPES[tensor_type.elem_type][0], dims, reshape))
    return tuple(out)


def finish(repo: pathlib.Path, name: str, model: onnx.ModelProto, batching: bool, config: str | None) -> Model:
    onnx.checker.check_model(model, full_check=True)
    path = write(repo, name, model.SerializeToString(), config)
    return Model(name, path, tensors(list(model.graph.input), batching), tensors(list(model.graph.output), batching), batching)


# --- the CNN -------------------------------------------------------------------------------------------


@functools.cache
def cnn_proto(batch: bool) -> bytes:
    """light_squeezenet with real (seeded) weights, initializers no longer listed as inputs, IR 8, and dim 0 of
    its input and output symbolic when `batch`. Cached: the ~5 MB model is built once per process."""
    model = onnx.load(str(CNN_SOURCE))
    graph = model.graph
    rng = np.random.default_rng(1234)
    shapes = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weights: list[onnx.TensorProto] = []
    kept_nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes.pop(node.input[0]))
            if len(shape) == 4:  # conv weight: He-normal over fan-in, so activations neither vanish nor explode
                value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
            else:  # the few biases the light model also made constant
                value = rng.normal(0.0, 0.05, shape)
            weights.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        else:
            kept_nodes.append(node)
    kept_inits = [init for init in graph.initializer if init.name in shapes] + weights
    # IR 3 listed every initializer as a graph input too; from IR 4 on that would make them overridable inputs.
    inputs = [value for value in graph.input if value.name not in {init.name for init in graph.initializer}]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.input[:]
    graph.input.extend(inputs)
    if batch:
        for value in list(graph.input) + list(graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def cnn(repo: pathlib.Path, name: str, batch: bool = True, config: str | None = None) -> Model:
    """SqueezeNet 1.1: `data_0` FP32 [3, 224, 224] -> `softmaxout_1` FP32 [1000, 1, 1] per sample."""
    model = onnx.load_from_string(cnn_proto(batch))
    return finish(repo, name, model, batch, config)


# --- scikit-learn --------------------------------------------------------------------------------------


def sklearn_dataset() -> tuple[np.ndarray, np.ndarray]:
    """A seeded 3-class problem with 6 features (float32 features, as the converted model takes)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=300, n_features=SKLEARN_FEATURES, n_informative=4, n_redundant=1,
        n_classes=SKLEARN_CLASSES, class_sep=1.5, random_state=7,
    )
    return x.astype(np.float32), y.astype(np.int64)


@functools.cache
def sklearn_proto() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = sklearn_dataset()
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipeline.fit(x, y)
    model = to_onnx(
        pipeline,
        x[:1],  # names the input "X" and makes its dim 0 dynamic
        options={"zipmap": False},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    model.ir_version = IR_VERSION
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    return model.SerializeToString()


def sklearn_pipeline(repo: pathlib.Path, name: str, config: str | None = None) -> Model:
    """`X` FP32 [6] -> `label` INT64 (model shape [batch]; Triton dims [1], reshape []), `probabilities` FP32 [3]."""
    return finish(repo, name, onnx.load_from_string(sklearn_proto()), True, config)


# --- every datatype ------------------------------------------------------------------------------------

NUMERIC = ("FP32", "FP16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
MULTI_WIDTH = 4
STRING_WIDTH = 2


def multi_dtype_proto() -> bytes:
    nodes, inputs, outputs, casts = [], [], [], []
    for datatype in NUMERIC:
        onnx_type = KSERVE_TYPES[datatype]
        inputs.append(helper.make_tensor_value_info(f"IN_{datatype}", onnx_type, [BATCH_DIM, MULTI_WIDTH]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{datatype}", onnx_type, [BATCH_DIM, MULTI_WIDTH]))
        given, doubled, cast = f"IN_{datatype}", f"OUT_{datatype}", f"cast_{datatype}"
        nodes.append(helper.make_node("Add", [given, given], [doubled], name=f"add_{datatype}"))
        nodes.append(helper.make_node("Cast", [given], [cast], to=TensorProto.DOUBLE, name=cast))
        casts.append(cast)
    nodes.append(helper.make_node("Sum", casts, ["SUM_FP64"], name="sum"))
    outputs.append(helper.make_tensor_value_info("SUM_FP64", TensorProto.DOUBLE, [BATCH_DIM, MULTI_WIDTH]))
    inputs.append(helper.make_tensor_value_info("IN_BOOL", TensorProto.BOOL, [BATCH_DIM, MULTI_WIDTH]))
    outputs.append(helper.make_tensor_value_info("OUT_BOOL", TensorProto.BOOL, [BATCH_DIM, MULTI_WIDTH]))
    nodes.append(helper.make_node("Not", ["IN_BOOL"], ["OUT_BOOL"], name="not"))
    inputs.append(helper.make_tensor_value_info("IN_STRING", TensorProto.STRING, [BATCH_DIM, STRING_WIDTH]))
    outputs.append(helper.make_tensor_value_info("OUT_STRING", TensorProto.STRING, [BATCH_DIM, STRING_WIDTH]))
    nodes.append(helper.make_node("Identity", ["IN_STRING"], ["OUT_STRING"], name="strings"))
    graph = helper.make_graph(nodes, "multi_dtype", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model.SerializeToString()


def multi_dtype(repo: pathlib.Path, name: str, config: str | None = None) -> Model:
    """IN_<T> [4] -> OUT_<T> = IN_<T> + IN_<T> for the 11 numeric types; SUM_FP64 [4] = the sum of all 11 cast to
    FP64; OUT_BOOL = not IN_BOOL; OUT_STRING [2] = IN_STRING (BYTES). Every dim 0 is the batch."""
    return finish(repo, name, onnx.load_from_string(multi_dtype_proto()), True, config)


# --- a model ONNX Runtime rejects at run time ----------------------------------------------------------


def failing_proto() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["DATA", "SHAPE"], ["OUT"], name="reshape")],
        "failing",
        [
            helper.make_tensor_value_info("DATA", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("SHAPE", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["rows", "cols"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model.SerializeToString()


def failing(repo: pathlib.Path, name: str, config: str | None = None) -> Model:
    """`OUT` FP32 [-1, -1] = Reshape(`DATA` FP32 [-1], `SHAPE` INT64 [2]); no batching. DATA of 6 elements with
    SHAPE [4, 4] passes Triton's checks and fails in ONNX Runtime's Reshape kernel."""
    return finish(repo, name, onnx.load_from_string(failing_proto()), False, config)


# --- ragged batching -----------------------------------------------------------------------------------

# The config of `segments`: INPUT is ragged (Triton concatenates the batch's requests into one [elements] tensor) and
# the three batch inputs say where each request's part ends, how long it is, and the longest of the batch.
SEGMENTS_BATCH_INPUTS = """
batch_input [
  { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "INDEX" data_type: TYPE_INT32 source_input: "INPUT" },
  { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_FP32 source_input: "INPUT" },
  { kind: BATCH_MAX_ELEMENT_COUNT_AS_SHAPE target_name: "LONGEST_SHAPE" data_type: TYPE_INT32 source_input: "INPUT" }
]
"""


def segments_proto() -> bytes:
    """SUM[i] = INPUT[INDEX[i-1]:INDEX[i]].sum() (INDEX[-1] = 0) by differences of a cumulative sum; LENGTH[i] =
    COUNT[i]; LONGEST[i] = len(LONGEST_SHAPE), the same for every request of a batch. Outputs are [requests, 1]."""
    consts = [
        numpy_helper.from_array(np.zeros(1, np.float32), "zero_f"),
        numpy_helper.from_array(np.zeros(1, np.int32), "zero_i"),
        numpy_helper.from_array(np.array(0, np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(np.array([0], np.int64), "first"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([1, 1], np.int64), "one_by_one"),
    ]
    node = helper.make_node
    nodes = [
        node("Concat", ["zero_f", "INPUT"], ["padded"], axis=0),
        node("CumSum", ["padded", "axis0"], ["totals"]),  # totals[k] = sum of the first k elements
        node("Gather", ["totals", "INDEX"], ["to_end"], axis=0),
        node("Concat", ["zero_i", "INDEX"], ["bounds"], axis=0),
        node("Slice", ["bounds", "first", "last"], ["starts"]),
        node("Gather", ["totals", "starts"], ["to_start"], axis=0),
        node("Sub", ["to_end", "to_start"], ["sums"]),
        node("Unsqueeze", ["sums", "axes1"], ["SUM"]),
        node("Unsqueeze", ["COUNT", "axes1"], ["LENGTH"]),
        node("Shape", ["LONGEST_SHAPE"], ["longest"]),
        node("Reshape", ["longest", "one_by_one"], ["longest_1x1"]),
        node("Shape", ["INDEX"], ["requests"]),
        node("Concat", ["requests", "one"], ["per_request"], axis=0),
        node("Expand", ["longest_1x1", "per_request"], ["LONGEST"]),
    ]
    graph = helper.make_graph(
        nodes,
        "segments",
        [
            helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"]),
            helper.make_tensor_value_info("INDEX", TensorProto.INT32, ["requests"]),
            helper.make_tensor_value_info("COUNT", TensorProto.FLOAT, ["requests"]),
            helper.make_tensor_value_info("LONGEST_SHAPE", TensorProto.INT32, ["longest"]),
        ],
        [
            helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["requests", 1]),
            helper.make_tensor_value_info("LENGTH", TensorProto.FLOAT, ["requests", 1]),
            helper.make_tensor_value_info("LONGEST", TensorProto.INT64, ["requests", 1]),
        ],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return model.SerializeToString()


def segments(repo: pathlib.Path, name: str, max_batch_size: int = 8, extra: str = "") -> pathlib.Path:
    """The ragged `segments` model with its config: INPUT FP32 dims [-1] allow_ragged_batch (the model takes
    [elements]), SEGMENTS_BATCH_INPUTS, outputs SUM, LENGTH (FP32) and LONGEST (INT64), dims [1]. `extra` is
    appended to the config (a dynamic_batching block, say)."""
    model = onnx.load_from_string(segments_proto())
    onnx.checker.check_model(model, full_check=True)
    config = f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
{SEGMENTS_BATCH_INPUTS}
output [
  {{ name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "LENGTH" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "LONGEST" data_type: TYPE_INT64 dims: [ 1 ] }}
]
{extra}
"""
    return write(repo, name, model.SerializeToString(), config)


def row_sums(repo: pathlib.Path, name: str, config: str | None = None) -> Model:
    """`SUM` FP32 [1] = the sum of `INPUT` FP32 [-1] per batch row: an ordinary batching model (no ragged input)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["INPUT", "axes1"], ["SUM"], keepdims=1)],
        "row_sums",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, [BATCH_DIM, "n"])],
        [helper.make_tensor_value_info("SUM", TensorProto.FLOAT, [BATCH_DIM, 1])],
        initializer=[numpy_helper.from_array(np.array([1], np.int64), "axes1")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return finish(repo, name, model, True, config)


def ragged_double(repo: pathlib.Path, name: str, extra: str = "") -> pathlib.Path:
    """OUT = 2 * INPUT over the concatenated [elements] tensor: INPUT FP32 dims [-1] allow_ragged_batch, OUT FP32
    dims [-1] scattered back to each request in the shape of its INPUT. `extra` is appended to the config."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT", "INPUT"], ["OUT"])],
        "ragged_double",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["elements"])],
        [helper.make_tensor_value_info("OUT", TensorProto.FLOAT, ["elements"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    config = f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }} ]
output [ {{ name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
batch_output [ {{ kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "OUT" source_input: "INPUT" }} ]
{extra}
"""
    return write(repo, name, model.SerializeToString(), config)
