"""Tritium's `triton_python_backend_utils`: the API a Triton python-backend `model.py` imports.

Written for Tritium from the documented python-backend API. The classes are plain Python, kept in the
`tritium_pb_*` modules and re-exported here; the stub process (`tritium_python_stub.py`) sets
`tritium_pb_state.runtime` to its connection to the server, through which
responses, BLS requests, model control and log lines travel. Tensor bytes of requests and responses
live in a shared-memory region the server maps too; `Tensor.as_numpy()` of an input is a view over it.
"""

from __future__ import annotations

# Everything below is re-exported: it is the API model.py files call (the modules keep each part small).
import tritium_pb_state as _state
from tritium_pb_config import ModelConfig
from tritium_pb_observe import Logger, LogLevel, Metric, MetricFamily, MetricKind
from tritium_pb_requests import (
    TRITONSERVER_MEMORY_CPU,
    TRITONSERVER_MEMORY_GPU,
    InferenceRequest,
    InferenceResponse,
    InferenceResponseSender,
    InferenceTrace,
    MemoryType,
    PreferredMemory,
)
from tritium_pb_tensor import Tensor
from tritium_pb_types import (
    _KSERVE_OF_NUMBER,
    _NUMBER_OF_KSERVE,
    TRITON_STRING_TO_NUMPY,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_END,
    TRITONSERVER_REQUEST_FLAG_SEQUENCE_START,
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    TritonError,
    TritonModelException,
    deserialize_bytes_tensor,
    numpy_to_triton_type,
    serialize_byte_tensor,
    triton_string_to_numpy,
    triton_to_numpy_type,
)


def get_model_dir():
    """The folder of the model's version (the one holding its model.py)."""
    if _state.model_dir is None:
        raise TritonModelException("get_model_dir() is only available inside a model's stub")
    return _state.model_dir


def get_input_tensor_by_name(inference_request, name):
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response, name):
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config, name):
    for entry in model_config.get("input", []):
        if entry.get("name") == name:
            return entry
    return None


def get_output_config_by_name(model_config, name):
    for entry in model_config.get("output", []):
        if entry.get("name") == name:
            return entry
    return None


def using_decoupled_model_transaction_policy(model_config):
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def is_model_ready(model_name, model_version=""):
    return _state.runtime.control("ready", model_name, version=str(model_version))


def load_model(model_name, config="", files=None):
    """Loads (or reloads) a model: with `config` (JSON) in place of its config, and made of `files` when given
    ({"file:<path in the model's folder>": bytes}; other keys are ignored, as Triton does)."""
    blobs = []
    if files is not None:
        if not isinstance(files, dict):
            raise TritonModelException(f"failed to load model '{model_name}', files should be a dictionary of file "
                                       "paths and file contents")  # fmt: skip
        for key, content in files.items():
            if not isinstance(key, str) or not isinstance(content, bytes):
                raise TypeError("load_model(): files maps str paths to bytes contents")
            if key.startswith("file:"):
                blobs.append((key[len("file:"):], content))
    _state.runtime.control("load", model_name, config=config, files=blobs)


def unload_model(model_name, unload_dependents=False):
    _state.runtime.control("unload", model_name)
