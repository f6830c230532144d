"""Triton's own Python client examples, unmodified, against `tritium serve` on Triton's example model repository.

The examples (`src/python/examples/*.py` of Triton's client repository) and the repository
(`docs/examples/model_repository` of Triton's server repository: configs, label files, the small ONNX models and
the python `simple_identity`) are pinned copies under `tests/triton_examples/` (see its README for the commits and
how to refresh them). Each example runs as a subprocess of this venv's python, with the arguments Triton's own qa
scripts give it (`qa/L0_grpc/test.sh`, `qa/L0_http/test.sh`) and `-u` pointing at our port, and must exit 0
(the image clients must also name VULTURE once, the gRPC loop must print PASS once, as the qa scripts check).

What cannot be copied is made here:
- `densenet_onnx` and `inception_onnx` are real downloads in Triton (`fetch_models.sh`); their stand-ins are ONNX
  graphs with the real tensor names, types and shapes whose output favours the VULTURE class, so the image clients
  print that label.
- Triton's test model `repeat_int32` runs on our built-in `repeat` backend (Triton's repeat backend, same config
  and meaning); the `dyna_sequence` test backend gets a Python-backend stand-in with the same semantics
  (`simple_string_dyna_sequence`: a string correlation id, built from `simple_dyna_sequence` as
  `qa/L0_grpc/test.sh` builds it).
- The model-control examples count the models of the repository (gRPC 8, HTTP 7: the two disagree upstream), so
  each gets a server of its own in explicit mode over Triton's example models alone (without `inception_onnx`
  for HTTP), as Triton's qa starts a server of its own for them.

`memory_growth_test.py` is left out: it always connects to localhost:8000/8001, so it cannot run unmodified against
a server on ephemeral ports.

An example that fails today for a known defect (issue 40) is listed in EXPECTED_TO_FAIL with the reason and runs as
a strict xfail: fixing the defect turns the test into an XPASS failure until the entry is removed.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is missing: run scripts/setup-python.sh")
pytest.importorskip("PIL", reason="pillow is missing (image_client.py needs it): run scripts/setup-python.sh")

from onnx import TensorProto, helper  # noqa: E402

from helpers import REPO, TritiumServer, finish_server, start_server, tail  # noqa: E402

# Triton's example repository holds ONNX classifiers and python models.
pytestmark = [pytest.mark.onnx, pytest.mark.python_backend]

PINNED = REPO / "tests" / "triton_examples"
EXAMPLES = PINNED / "examples"
PYTHON = sys.executable
# Index of VULTURE in densenet_labels.txt (1000 classes) and inception_labels.txt (1001: index 0 is the background).
DENSENET_VULTURE = 23
INCEPTION_VULTURE = 24
EXAMPLE_TIMEOUT = 120

# Known defects of issue 40, by case id, with the line that says why.
EXPECTED_TO_FAIL: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class Case:
    """One run of one example: `protocol` picks the port for `-u`, `server` the server it runs against."""

    script: str
    args: tuple[str, ...] = ("-v",)
    protocol: str = "grpc"
    server: str = "default"
    # Lines that must appear exactly once in the output (as the qa scripts grep for them).
    once: tuple[str, ...] = ()
    # The qa script expects this run to fail (a URL with a base path the server does not serve).
    fails: bool = False

    @property
    def id(self) -> str:
        return " ".join([f"{self.protocol}:{self.script}", *[a for a in self.args if a not in ("-v", "IMAGE")]])


def image_cases() -> list[Case]:
    """qa/L0_grpc and qa/L0_http run both image clients against densenet_onnx, async, streaming and sync."""
    base = ("-m", "densenet_onnx", "-s", "INCEPTION")
    tail_args = ("-c", "1", "-b", "1")
    cases = []
    for mode in (("-a",), ("-a", "--streaming"), ()):
        cases.append(Case("image_client.py", (*base, *mode, *tail_args, "-i", "grpc", "IMAGE"), once=("VULTURE",)))
        cases.append(Case("grpc_image_client.py", (*base, *mode, *tail_args, "IMAGE"), once=("VULTURE",)))
    for mode in (("-a",), ()):
        cases.append(Case("image_client.py", (*base, *mode, *tail_args, "IMAGE"), protocol="http", once=("VULTURE",)))
    # Not in the qa scripts: the quickstart's other classifier, NHWC.
    cases.append(
        Case("image_client.py", ("-m", "inception_onnx", "-s", "INCEPTION", "-c", "1", "IMAGE"), protocol="http", once=("VULTURE",))
    )
    return cases


PASS_ONCE = ("PASS",)
CASES: list[Case] = [
    # qa/L0_grpc/test.sh: the health client, then the loop that also checks for one PASS line.
    Case("simple_grpc_health_metadata.py"),
    *[
        Case(script, once=PASS_ONCE)
        for script in (
            "simple_grpc_aio_infer_client.py",
            "simple_grpc_aio_sequence_stream_infer_client.py",
            "simple_grpc_infer_client.py",
            "simple_grpc_async_infer_client.py",
            "simple_grpc_string_infer_client.py",
            "simple_grpc_sequence_stream_infer_client.py",
            "simple_grpc_sequence_sync_infer_client.py",
            "simple_grpc_shm_string_client.py",
            "simple_grpc_shm_client.py",
            "simple_grpc_keepalive_client.py",
            "simple_grpc_custom_args_client.py",
            "grpc_explicit_byte_content_client.py",
            "grpc_explicit_int_content_client.py",
            "grpc_explicit_int8_content_client.py",
            "grpc_client.py",
        )
    ],
    Case("reuse_infer_objects_client.py", ("-v", "-i", "grpc")),
    # qa/L0_grpc/test.sh with dynamic sequence models.
    Case("simple_grpc_sequence_stream_infer_client.py", ("-v", "-d")),
    Case("simple_grpc_sequence_sync_infer_client.py", ("-v", "-d")),
    # Explicit model control, a server of its own each.
    Case("simple_grpc_model_control.py", server="explicit"),
    # Not in the qa scripts; needs Triton's repeat backend (a stand-in here).
    Case("simple_grpc_custom_repeat.py", ()),
    # qa/L0_http/test.sh.
    Case("simple_http_health_metadata.py", protocol="http"),
    *[
        Case(script, protocol="http")
        for script in (
            "simple_http_aio_infer_client.py",
            "simple_http_infer_client.py",
            "simple_http_async_infer_client.py",
            "simple_http_shm_string_client.py",
            "simple_http_shm_client.py",
            "simple_http_string_infer_client.py",
            "simple_http_sequence_sync_infer_client.py",
        )
    ],
    Case("reuse_infer_objects_client.py", ("-v", "-i", "http"), protocol="http"),
    Case("simple_http_sequence_sync_infer_client.py", ("-v", "-d"), protocol="http"),
    Case("simple_http_model_control.py", protocol="http", server="explicit"),
    Case("simple_http_infer_client.py", ("-v", "BASE_PATH"), protocol="http", fails=True),
    *image_cases(),
]


# --- the repository --------------------------------------------------------------------------------------------


def save(model: onnx.ModelProto, path: pathlib.Path) -> None:
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def classifier(input_name: str, input_shape: list[int], output_name: str, output_shape: list[int], favoured: int) -> onnx.ModelProto:
    """A stand-in classifier: the mean of the image, scaled down, plus a bias whose `favoured` class stands out, in
    the output shape of the real model (so the answer depends on the input but always names one class)."""
    classes = int(np.prod(output_shape))
    bias = np.full(classes, 0.001, dtype=np.float32)
    bias[favoured] = 0.9
    rank = len(input_shape)
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["mean"], axes=list(range(1, rank)), keepdims=1),
        helper.make_node("Reshape", ["mean", "one_shape"], ["mean_flat"]),
        helper.make_node("Mul", ["mean_flat", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "stand_in_classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, output_shape)],
        initializer=[
            helper.make_tensor("one_shape", TensorProto.INT64, [len(output_shape)], [1] * len(output_shape)),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [1e-6]),
            helper.make_tensor("bias", TensorProto.FLOAT, output_shape, bias.tolist()),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


REPEAT_CONFIG = """
name: "repeat_int32"
backend: "repeat"
max_batch_size: 0
model_transaction_policy { decoupled: True }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU } ]
"""

# Triton's dyna_sequence test backend (src/test/dyna_sequence): an accumulator per correlation id (a string that
# must read as an integer here), set on START, added to otherwise, plus the id (truncated to 32 bits) on END.
DYNA_SEQUENCE_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


def first(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        self.accumulators = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            values = first(request, "INPUT").astype(np.int64)
            start, end, ready = (int(first(request, name)[0]) for name in ("START", "END", "READY"))
            raw = first(request, "CORRID")[0]
            try:
                corrid = int(raw.decode() if isinstance(raw, bytes) else raw)
            except ValueError:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("dyna sequence backend expects correlation ID to be decodable into an integer")
                    )
                )
                continue
            if ready:
                if start:
                    self.accumulators[corrid] = int(values.sum())
                else:
                    self.accumulators[corrid] = self.accumulators.get(corrid, 0) + int(values.sum())
                if end:
                    self.accumulators[corrid] += np.array(corrid).astype(np.int32).item()
            value = self.accumulators.get(corrid, 0)
            if end:
                self.accumulators.pop(corrid, None)
            shape = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().shape
            out = np.full(shape, np.int64(value).astype(np.int32), dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
"""


def python_model(repo: pathlib.Path, name: str, config: str, source: str) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(source)


def prepare_repository(repo: pathlib.Path, test_backends: bool = True, leave_out: tuple[str, ...] = ()) -> None:
    """Triton's example repository as pinned with its downloads made (see the module's docstring), without the
    models in `leave_out`, and with the stand-ins for Triton's test backends when `test_backends`."""
    shutil.copytree(PINNED / "model_repository", repo)
    save(classifier("data_0", [1, 3, 224, 224], "fc6_1", [1, 1000, 1, 1], DENSENET_VULTURE), repo / "densenet_onnx" / "1" / "model.onnx")
    save(
        classifier("input:0", [1, 299, 299, 3], "InceptionV3/Predictions/Softmax:0", [1, 1001], INCEPTION_VULTURE),
        repo / "inception_onnx" / "1" / "model.onnx",
    )
    for name in leave_out:
        shutil.rmtree(repo / name)
    if not test_backends:
        return
    (repo / "repeat_int32" / "1").mkdir(parents=True)
    (repo / "repeat_int32" / "config.pbtxt").write_text(REPEAT_CONFIG)
    # As qa/L0_grpc/test.sh makes it: simple_dyna_sequence renamed, another backend, a string CORRID.
    config = (repo / "simple_dyna_sequence" / "config.pbtxt").read_text()
    config = config.replace("simple_dyna_sequence", "simple_string_dyna_sequence")
    config = re.sub(r"(?m)^platform: .*$", 'backend: "python"', config)
    config = re.sub(r"(CONTROL_SEQUENCE_CORRID\s*\n\s*)data_type:.*", r"\1data_type: TYPE_STRING", config)
    assert "TYPE_STRING" in config and 'backend: "python"' in config, config
    python_model(repo, "simple_string_dyna_sequence", config, DYNA_SEQUENCE_MODEL)


def ort_args() -> list[str]:
    library = os.environ.get("ORT_DYLIB_PATH")
    return ["--onnxruntime-library", library] if library else []


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> pathlib.Path:
    repo = tmp_path_factory.mktemp("triton_examples") / "model_repository"
    prepare_repository(repo)
    return repo


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> pathlib.Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("images") / "vulture.jpeg"
    pixels = np.random.default_rng(7).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def server_args(repo: pathlib.Path) -> list[str]:
    return ["--model-repository", str(repo), "--allow-shared-memory", "--python-interpreter", PYTHON, *ort_args()]


@pytest.fixture(scope="module")
def default_server(repository):
    server = start_server(*server_args(repository), timeout=180)
    yield server
    finish_server(server)


def run_example(case: Case, server: TritiumServer, image: pathlib.Path) -> subprocess.CompletedProcess:
    url = server.url if case.protocol == "grpc" else server.http_url.removeprefix("http://")
    args = []
    for arg in case.args:
        if arg == "IMAGE":
            args.append(str(image))
        elif arg == "BASE_PATH":
            url += "/base_path"
        else:
            args.append(arg)
    argv = [PYTHON, str(EXAMPLES / case.script), "-u", url, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT, cwd=EXAMPLES)


def first_failure_line(output: str) -> str:
    """The line that says why: the last exception or error line, else the last line."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|Error|failed|FAILED|mismatch|unexpected|Exception", line):
            return line.strip()
    return lines[-1].strip() if lines else "(no output)"


def params() -> list:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    unknown = set(EXPECTED_TO_FAIL) - set(ids)
    assert not unknown, f"EXPECTED_TO_FAIL names no case: {unknown}"
    return [
        pytest.param(case, id=case.id, marks=[pytest.mark.xfail(strict=True, reason=EXPECTED_TO_FAIL[case.id])])
        if case.id in EXPECTED_TO_FAIL
        else pytest.param(case, id=case.id)
        for case in CASES
    ]


@pytest.mark.parametrize("case", params())
def test_triton_example(case: Case, request, tmp_path, image):
    if case.server == "explicit":
        repo = tmp_path / "model_repository"
        prepare_repository(repo, test_backends=False, leave_out=("inception_onnx",) if case.protocol == "http" else ())
        server = start_server(*server_args(repo), "--model-control-mode", "explicit", timeout=180)
    else:
        server = request.getfixturevalue("default_server")
    try:
        done = run_example(case, server, image)
    finally:
        if case.server == "explicit":
            finish_server(server)
    output = done.stdout + done.stderr
    if case.fails:
        assert done.returncode != 0, f"{case.id} succeeded where Triton's qa expects a failure:\n{tail(output)}"
        return
    assert done.returncode == 0, f"{case.id} exited {done.returncode}: {first_failure_line(output)}\n{tail(output, 40)}"
    for line in case.once:
        count = sum(line in row for row in done.stdout.splitlines())
        assert count == 1, f"{case.id}: expected one line with {line!r}, got {count}:\n{tail(output, 40)}"
