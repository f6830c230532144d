"""The model repositories the HTTP differential cases run on: one for the real Triton (python backend), one for
Tritium (built-in backends), with identical configs except the `backend` line.

    write_repos(triton_dir, tritium_dir)   # either may be None

Models (all version 1):
- add_sub         INT32 [16] x2 -> OUTPUT0 = a + b, OUTPUT1 = a - b, max_batch_size 0
- identity        FP32 [-1], max_batch_size 0
- identity_batch  FP32 [-1], max_batch_size 8
- identity_bytes  TYPE_STRING [-1]; identity_bool TYPE_BOOL; identity_fp16 TYPE_FP16; identity_int64 TYPE_INT64
  (all [-1], max_batch_size 0)
- identity_int8   TYPE_INT8; identity_uint8 TYPE_UINT8 (both [-1], max_batch_size 0; JSON integers out of range)
"""

from __future__ import annotations

import pathlib

# name -> (Tritium's built-in backend, config.pbtxt text with an @BACKEND@ placeholder)
_IDENTITY = """
name: "{name}"
backend: "@BACKEND@"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {data_type} dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: {data_type} dims: [ -1 ] }} ]
"""

_ADD_SUB = """
name: "add_sub"
backend: "@BACKEND@"
max_batch_size: 0
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""


def _identity(name: str, data_type: str, max_batch_size: int = 0) -> str:
    return _IDENTITY.format(name=name, data_type=data_type, max_batch_size=max_batch_size)


MODELS: dict[str, tuple[str, str]] = {
    "add_sub": ("add_sub", _ADD_SUB),
    "identity": ("identity", _identity("identity", "TYPE_FP32")),
    "identity_batch": ("identity", _identity("identity_batch", "TYPE_FP32", 8)),
    "identity_bytes": ("identity", _identity("identity_bytes", "TYPE_STRING")),
    "identity_bool": ("identity", _identity("identity_bool", "TYPE_BOOL")),
    "identity_fp16": ("identity", _identity("identity_fp16", "TYPE_FP16")),
    "identity_int64": ("identity", _identity("identity_int64", "TYPE_INT64")),
    "identity_int8": ("identity", _identity("identity_int8", "TYPE_INT8")),
    "identity_uint8": ("identity", _identity("identity_uint8", "TYPE_UINT8")),
}

# The python-backend model.py files (Triton only). Written by us; they only mirror the built-ins' arithmetic.
_ADD_SUB_PY = '''"""OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 [16])."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", np.add(a, b, dtype=np.int32))
            out1 = pb_utils.Tensor("OUTPUT1", np.subtract(a, b, dtype=np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses
'''

IDENTITY_PY = '''"""OUTPUT0 = INPUT0, any datatype and shape."""
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", data)]))
        return responses
'''


def config_text(name: str, backend: str) -> str:
    return MODELS[name][1].replace("@BACKEND@", backend)


def write_triton_repo(root: pathlib.Path) -> pathlib.Path:
    """Python-backend repository for the real Triton: config.pbtxt (backend "python") + 1/model.py per model."""
    root = pathlib.Path(root)
    for name, (builtin, _) in MODELS.items():
        version = root / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config_text(name, "python"))
        (version / "model.py").write_text(_ADD_SUB_PY if builtin == "add_sub" else IDENTITY_PY)
    return root


def write_tritium_repo(root: pathlib.Path) -> pathlib.Path:
    """Tritium repository: the same config.pbtxt with the built-in backend, and an empty version folder."""
    root = pathlib.Path(root)
    for name, (builtin, _) in MODELS.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(config_text(name, builtin))
    return root


def write_repos(triton_dir: pathlib.Path | None, tritium_dir: pathlib.Path | None) -> None:
    if triton_dir is not None:
        write_triton_repo(triton_dir)
    if tritium_dir is not None:
        write_tritium_repo(tritium_dir)
