"""The model repositories bench/schedulers.py serves: the configs Tritium's built-in backends run, and the same models
for Triton 2.51 through its python backend (config.pbtxt + numpy model.py; nvidia-pytriton ships no other backend).

- `dense`: OUTPUT0 = INPUT0 · W, FP32 [DENSE_N] -> [DENSE_N] (4096, the built-in's size),
  W[i][j] = ((7i + 13j) mod 17) / 64 - 8 / 64 (Tritium's `dense` backend, worker/src/backends/dense.rs),
  max_batch_size 16, one CPU instance, with or without `dynamic_batching { max_queue_delay_microseconds: 1000 }`.
  Triton's model.py builds W once in initialize(); its execute() stacks every request's rows, runs one matmul and
  splits the result back by request (with no dynamic batching it is handed one request at a time).
- `accumulate`: the running sum of a sequence's INPUTs. Tritium: worker/models/accumulate.pbtxt as it is (the sum is
  implicit state the server keeps). Triton 2.51's python backend never stores implicit state
  (/tmp/triton_sched_findings.md), so its config is the same without the `state` block, with END and a TYPE_UINT64
  CORRID control input added (TYPE_STRING CORRID is broken in 2.51), and model.py keeps the sum per CORRID itself.
- `add_sub` and the `add_sub_twice` ensemble (two add_sub steps): Tritium's worker/models/add_sub.pbtxt and
  add_sub_twice.pbtxt; Triton: bench/triton-models/add_sub (python backend) and the same ensemble config.
"""

from __future__ import annotations

import pathlib
import shutil

REPO = pathlib.Path(__file__).resolve().parents[2]
BUILTIN = REPO / "worker" / "models"
# The built-in dense layer's size (worker/models/dense.pbtxt).
DENSE_N = 4096


def dense_config(backend: str, batching: bool) -> str:
    return (
        'name: "dense"\n'
        f'backend: "{backend}"\n'
        "max_batch_size: 16\n"
        f'input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ {DENSE_N} ] }} ]\n'
        f'output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {DENSE_N} ] }} ]\n'
        "instance_group [ { count: 1, kind: KIND_CPU } ]\n"
        + ("dynamic_batching { max_queue_delay_microseconds: 1000 }\n" if batching else "")
    )


DENSE_MODEL_PY = '''"""Triton python backend: OUTPUT0 = INPUT0 . W with W[i][j] = ((7i + 13j) % 17) / 64 - 8 / 64, as Tritium's
built-in `dense` backend (bench/schedulers.py writes this file). execute() stacks every request's rows, runs one
matmul and splits the result back by request."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        k, n = config["input"][0]["dims"][0], config["output"][0]["dims"][0]
        i, j = np.arange(k).reshape(-1, 1), np.arange(n).reshape(1, -1)
        self.weights = (((7 * i + 13 * j) % 17) / 64 - 8 / 64).astype(np.float32)

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        y = x @ self.weights
        parts = np.split(y, np.cumsum([a.shape[0] for a in inputs])[:-1])
        tensors = [pb_utils.Tensor("OUTPUT0", np.ascontiguousarray(p)) for p in parts]
        return [pb_utils.InferenceResponse(output_tensors=[t]) for t in tensors]
'''

# worker/models/accumulate.pbtxt without its `state` block (the 2.51 python backend never stores it), plus END (to
# drop a finished sequence's sum) and CORRID (the key of the sum in model.py).
ACCUMULATE_CONFIG = """name: "accumulate"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUTPUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 10000000
  oldest { max_candidate_sequences: 64 }
  control_input [
    { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] },
    { name: "END", control [ { kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
  ]
}
"""

ACCUMULATE_MODEL_PY = '''"""Triton python backend: each request of a sequence answers the running sum of its INPUTs, as
Tritium's built-in `accumulate` (bench/schedulers.py writes this file). Triton 2.51's python backend does not keep
implicit state, so the sums live here, keyed by the CORRID control input: reset on START, dropped on END."""

import numpy as np
import triton_python_backend_utils as pb_utils


def control(request, name):
    return int(pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            if control(request, "READY"):
                corrid = control(request, "CORRID")
                total = value if control(request, "START") else self.sums.get(corrid, 0) + value  # int32, wraps
                if control(request, "END"):
                    self.sums.pop(corrid, None)
                else:
                    self.sums[corrid] = total
            else:
                total = value  # an empty slot (not sent by the oldest strategy)
            tensor = pb_utils.Tensor("OUTPUT", np.ascontiguousarray(total, dtype=np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
'''


def write_model(repo: pathlib.Path, name: str, config: str, model_py: str | None = None) -> None:
    """`<repo>/<name>/config.pbtxt` and its version folder `1/` (empty for Tritium's built-in backends and the
    ensembles, holding model.py for Triton's python backend)."""
    version = repo / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (repo / name / "config.pbtxt").write_text(config)
    if model_py is not None:
        (version / "model.py").write_text(model_py)


def write_repositories(work: pathlib.Path, sections: list[str]) -> dict[str, pathlib.Path]:
    """One repository per server: `tritium` and `triton` hold every wanted section's models (dense without dynamic
    batching), `tritium-db` and `triton-db` only `dense` with dynamic batching."""
    repos = {key: work / f"{key}-models" for key in ("tritium", "triton")}
    if "dense" in sections:
        repos.update({key: work / f"{key}-models" for key in ("tritium-db", "triton-db")})
        write_model(repos["tritium"], "dense", dense_config("dense", False))
        write_model(repos["tritium-db"], "dense", dense_config("dense", True))
        write_model(repos["triton"], "dense", dense_config("python", False), DENSE_MODEL_PY)
        write_model(repos["triton-db"], "dense", dense_config("python", True), DENSE_MODEL_PY)
    if "sequence" in sections:
        write_model(repos["tritium"], "accumulate", (BUILTIN / "accumulate.pbtxt").read_text())
        write_model(repos["triton"], "accumulate", ACCUMULATE_CONFIG, ACCUMULATE_MODEL_PY)
    if "ensemble" in sections:
        ensemble = (BUILTIN / "add_sub_twice.pbtxt").read_text()
        write_model(repos["tritium"], "add_sub", (BUILTIN / "add_sub.pbtxt").read_text())
        write_model(repos["tritium"], "add_sub_twice", ensemble)
        shutil.copytree(REPO / "bench" / "triton-models" / "add_sub", repos["triton"] / "add_sub",
                        ignore=shutil.ignore_patterns("__pycache__"))
        write_model(repos["triton"], "add_sub_twice", ensemble)
    return repos
