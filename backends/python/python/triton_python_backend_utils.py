"""Tritium's `triton_python_backend_utils`: the API a Triton python-backend `model.py` imports.

Written for Tritium from the documented python-backend API. The classes here are plain Python; the stub
process (`tritium_python_stub.py`) sets `_runtime` to its connection to the server, through which
responses, BLS requests, model control and log lines travel. Tensor bytes of requests and responses
live in a shared-memory region the server maps too; `Tensor.as_numpy()` of an input is a view over it.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# The stub's connection to the server; None outside a stub (the module still imports, for tests).
_runtime = None

# Triton's data type numbers (model config TYPE_* and TRITONSERVER_DataType share them).
_NUMPY_OF_NUMBER = {
    1: np.bool_,
    2: np.uint8,
    3: np.uint16,
    4: np.uint32,
    5: np.uint64,
    6: np.int8,
    7: np.int16,
    8: np.int32,
    9: np.int64,
    10: np.float16,
    11: np.float32,
    12: np.float64,
    13: np.object_,
}
_KSERVE_OF_NUMBER = {
    1: "BOOL", 2: "UINT8", 3: "UINT16", 4: "UINT32", 5: "UINT64", 6: "INT8", 7: "INT16", 8: "INT32",
    9: "INT64", 10: "FP16", 11: "FP32", 12: "FP64", 13: "BYTES", 14: "BF16",
}  # fmt: skip
_NUMBER_OF_KSERVE = {name: number for number, name in _KSERVE_OF_NUMBER.items()}
# Looked up on every tensor: by dtype object, not by comparing against each type in turn.
_KSERVE_OF_DTYPE = {np.dtype(t): _KSERVE_OF_NUMBER[n] for n, t in _NUMPY_OF_NUMBER.items() if t is not np.object_}
_NUMPY_OF_KSERVE = {_KSERVE_OF_NUMBER[n]: t for n, t in _NUMPY_OF_NUMBER.items()}
_FIXED_NUMPY_OF_KSERVE = {name: np.dtype(t) for name, t in _NUMPY_OF_KSERVE.items() if t is not np.object_}
_CONFIG_NAMES = {
    "TYPE_BOOL": 1, "TYPE_UINT8": 2, "TYPE_UINT16": 3, "TYPE_UINT32": 4, "TYPE_UINT64": 5, "TYPE_INT8": 6,
    "TYPE_INT16": 7, "TYPE_INT32": 8, "TYPE_INT64": 9, "TYPE_FP16": 10, "TYPE_FP32": 11, "TYPE_FP64": 12,
    "TYPE_STRING": 13, "TYPE_BF16": 14,
}  # fmt: skip


def triton_to_numpy_type(data_type):
    """The numpy type of a Triton data type number (13, BYTES, is `np.object_`)."""
    return _NUMPY_OF_NUMBER.get(data_type)


def numpy_to_triton_type(data_type):
    """The Triton data type number of a numpy type; object and bytes arrays are BYTES (13)."""
    kind = np.dtype(data_type)
    if kind.kind in ("O", "S", "U"):
        return 13
    for number, numpy_type in _NUMPY_OF_NUMBER.items():
        if numpy_type is not np.object_ and kind == np.dtype(numpy_type):
            return number
    return None


def triton_string_to_numpy(triton_type_string):
    """The numpy type of a config data type name such as `TYPE_FP32`."""
    return _NUMPY_OF_NUMBER.get(_CONFIG_NAMES.get(triton_type_string))


def _kserve_datatype(array):
    name = _KSERVE_OF_DTYPE.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in ("O", "S"):
        return "BYTES"
    raise TritonModelException(f"unsupported numpy data type {array.dtype} for a tensor")


def serialize_byte_tensor(input_tensor):
    """Triton's BYTES layout of an object/bytes/str array: each element as a 4-byte little-endian length
    then its bytes, in C order. Returns a 1-D uint8 array (empty input: an empty array)."""
    if input_tensor.size == 0:
        return np.empty([0], dtype=np.uint8)
    parts = []
    for item in np.nditer(input_tensor, flags=["refs_ok"], order="C"):
        value = item.item()
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray)):
            value = str(value).encode("utf-8")
        parts.append(struct.pack("<I", len(value)))
        parts.append(bytes(value))
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor):
    """The elements of a BYTES buffer as a 1-D object array of `bytes`."""
    data = memoryview(encoded_tensor).cast("B") if not isinstance(encoded_tensor, bytes) else encoded_tensor
    items = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 4:
            raise TritonModelException("malformed BYTES tensor: a length prefix is cut short")
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if length > end - offset:
            raise TritonModelException("malformed BYTES tensor: an element runs past the end")
        items.append(bytes(data[offset : offset + length]))
        offset += length
    array = np.empty([len(items)], dtype=np.object_)
    array[:] = items
    return array


class TritonError:
    """An error a response carries (not raised): a message and one of Triton's codes."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message, code=INTERNAL):
        self._message = str(message)
        self._code = int(code)

    def message(self):
        return self._message

    def code(self):
        return self._code

    def __repr__(self):
        return f"TritonError({self._message!r}, code={self._code})"


class TritonModelException(Exception):
    """Raised by the API when a call cannot be served (a failed BLS request's `exec` raises no such error:
    its response carries it)."""


class _DLPackCapsule:
    """Lets `np.from_dlpack` take a bare DLPack capsule, as `Tensor.from_dlpack` accepts one."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, *args, **kwargs):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)


class Tensor:
    """A named tensor: `Tensor(name, numpy_array)`, or an input the server sent (a view over shared memory)."""

    def __init__(self, name, data, *args, **kwargs):
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
        datatype = _KSERVE_OF_DTYPE.get(data.dtype)
        if datatype is None:
            if data.dtype.kind == "U":
                raise TritonModelException("NumPy dtype is not supported.")
            datatype = _kserve_datatype(data)
        self._name = name if name.__class__ is str else str(name)
        self._array = data
        self._datatype = datatype
        self._shape = list(data.shape)
        self._buffer = None

    @classmethod
    def _from_buffer(cls, name, datatype, shape, buffer):
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._datatype = datatype
        tensor._shape = list(shape)
        tensor._buffer = buffer
        tensor._array = None
        return tensor

    def name(self):
        return self._name

    def shape(self):
        return list(self._shape)

    def triton_dtype(self):
        return _NUMBER_OF_KSERVE.get(self._datatype)

    def is_cpu(self):
        return True

    def as_numpy(self):
        if self._array is None:
            self._array = self._decode()
        return self._array

    def _decode(self):
        numpy_type = _FIXED_NUMPY_OF_KSERVE.get(self._datatype)
        if numpy_type is not None:
            # A view of the bytes (writable where they are: the region, a frame's payload).
            return np.ndarray(self._shape, numpy_type, self._buffer)
        if self._datatype == "BYTES":
            return deserialize_bytes_tensor(self._buffer).reshape(self._shape)
        raise TritonModelException("BF16 tensors have no numpy type; use to_dlpack")

    def to_dlpack(self):
        return self.as_numpy().__dlpack__()

    def __dlpack__(self, *args, **kwargs):
        return self.as_numpy().__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return (1, 0)

    @staticmethod
    def from_dlpack(name, capsule):
        source = capsule if hasattr(capsule, "__dlpack__") else _DLPackCapsule(capsule)
        return Tensor(name, np.from_dlpack(source))

    def _wire_bytes(self):
        """The tensor's bytes as the server takes them: C-order element bytes, or BYTES' layout."""
        if self._buffer is not None and self._array is None:
            return memoryview(self._buffer).cast("B")
        array = self._array
        if self._datatype == "BYTES":
            return memoryview(serialize_byte_tensor(array))
        return memoryview(np.ascontiguousarray(array)).cast("B")

    def __repr__(self):
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self._shape})"


def _parameters_json(parameters):
    if parameters is None:
        return "{}"
    if isinstance(parameters, str):
        json.loads(parameters)
        return parameters
    if not isinstance(parameters, dict):
        raise TritonModelException("parameters must be a dict or a JSON string")
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, (bool, int, str)):
            raise TritonModelException("parameters keys must be strings and values bool, int or str")
    return json.dumps(parameters)


class InferenceResponse:
    """A response: output tensors, or an error; optional parameters (a dict of bool, int or str)."""

    def __init__(self, output_tensors=None, error=None, parameters=None):
        self._outputs = list(output_tensors or [])
        for tensor in self._outputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException("InferenceResponse output_tensors must be pb_utils.Tensor objects")
        self._error = error
        self._parameters = "{}" if parameters is None else _parameters_json(parameters)

    def output_tensors(self):
        return list(self._outputs)

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error

    def parameters(self):
        return self._parameters


class InferenceResponseSender:
    """Sends the responses of one request of a decoupled model, from any thread."""

    def __init__(self, key, decoupled):
        self._key = key
        self._decoupled = decoupled
        self._closed = False

    def send(self, response=None, flags=0):
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is None and flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("Inference Response object must be provided when the response flags is "
                                       "not TRITONSERVER_RESPONSE_COMPLETE_FINAL")  # fmt: skip
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException("send() takes a pb_utils.InferenceResponse")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if final:
            self._closed = True
        _runtime.send_response(self._key, response, final)

    def is_cancelled(self):
        return _runtime.is_cancelled(self._key)


class InferenceRequest:
    """A request: one the server passed to `execute`, or a BLS request a model builds and runs with
    `exec()` / `async_exec()`."""

    def __init__(self, model_name="", inputs=None, requested_output_names=None, request_id="", correlation_id=0,
                 flags=0, timeout=0, preferred_memory=None, trace=None, parameters=None, model_version=-1):  # fmt: skip
        self._model_name = str(model_name)
        self._model_version = int(model_version)
        self._inputs = list(inputs or [])
        self._outputs = [str(n) for n in (requested_output_names or [])]
        self._request_id = str(request_id)
        self._correlation_id = correlation_id
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._parameters = _parameters_json(parameters)
        self._key = None
        self._decoupled = False
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    # What a request from the server has unless its `extras` say otherwise (read through the class: one object
    # per request has fewer attributes to set).
    _request_id = ""
    _correlation_id = 0
    _timeout = 0
    _parameters = "{}"
    _release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
    _sender = None

    @classmethod
    def _from_server(cls, key, inputs, outputs, flags, extras, decoupled, model_name, model_version):
        request = cls.__new__(cls)
        request._model_name = model_name
        request._model_version = model_version
        request._inputs = inputs
        request._outputs = outputs
        request._flags = flags
        request._key = key
        request._decoupled = decoupled
        if extras:
            request._request_id = extras.get("request_id", "")
            request._correlation_id = extras.get("correlation_id", 0)
            request._timeout = extras.get("timeout", 0)
            request._parameters = extras.get("parameters", "{}")
        return request

    def inputs(self):
        return list(self._inputs)

    def requested_output_names(self):
        return list(self._outputs)

    def request_id(self):
        return self._request_id

    def correlation_id(self):
        return self._correlation_id

    def flags(self):
        return self._flags

    def timeout(self):
        return self._timeout

    def parameters(self):
        return self._parameters

    def model_name(self):
        return self._model_name

    def model_version(self):
        return self._model_version

    def trace(self):
        return None

    def set_release_flags(self, flags):
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling is not supported by Tritium's python backend")
        self._release_flags = flags

    def get_response_sender(self):
        if self._key is None:
            raise TritonModelException("a BLS request has no response sender")
        if not self._decoupled:
            raise TritonModelException("Unable to get response sender for a model that is not decoupled; set "
                                       "model_transaction_policy { decoupled: true } in the model config")  # fmt: skip
        if self._sender is None:
            self._sender = InferenceResponseSender(self._key, self._decoupled)
        return self._sender

    def is_cancelled(self):
        return self._key is not None and _runtime.is_cancelled(self._key)

    def exec(self, decoupled=False):
        """Runs this request on the model it names and returns its response (a `decoupled` iterator of them)."""
        self._check_bls()
        return _runtime.infer(self, decoupled)

    def async_exec(self, decoupled=False):
        """As `exec`, as an awaitable for `async def execute`."""
        self._check_bls()
        return _runtime.async_infer(self, decoupled)

    def _check_bls(self):
        if not self._model_name:
            raise TritonModelException("a BLS request needs a model_name")
        for tensor in self._inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException("BLS request inputs must be pb_utils.Tensor objects")


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
    return _runtime.control("ready", model_name, version=str(model_version))


def load_model(model_name, config="", files=None):
    if files:
        raise TritonModelException("load_model with files is not supported by Tritium's python backend")
    _runtime.control("load", model_name, config=config)


def unload_model(model_name, unload_dependents=False):
    _runtime.control("unload", model_name)


class LogLevel:
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Log lines from model code, written to the server's log with the model's name."""

    @staticmethod
    def log(message, level=LogLevel.INFO):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        where = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("", 0)
        if _runtime is not None:
            _runtime.log(level, str(message), where[0], where[1])
        else:
            print(str(message), file=sys.stderr)

    @staticmethod
    def log_info(message):
        Logger.log(message, LogLevel.INFO)

    @staticmethod
    def log_warn(message):
        Logger.log(message, LogLevel.WARNING)

    @staticmethod
    def log_error(message):
        Logger.log(message, LogLevel.ERROR)

    @staticmethod
    def log_verbose(message):
        Logger.log(message, LogLevel.VERBOSE)


class ModelConfig:
    """The config `auto_complete_config` receives and returns: the model's config as a dict with helpers
    that fill what it leaves out and refuse what contradicts it."""

    def __init__(self, model_config):
        self._model_config = model_config if isinstance(model_config, dict) else json.loads(model_config)

    def as_dict(self):
        return self._model_config

    def max_batch_size(self):
        return int(self._model_config.get("max_batch_size", 0))

    def set_max_batch_size(self, max_batch_size):
        if not isinstance(max_batch_size, int) or max_batch_size < 0:
            raise ValueError("max_batch_size must be a non-negative integer")
        current = self.max_batch_size()
        if current != 0 and current != max_batch_size:
            raise ValueError(f"configuration specified max_batch_size {current}, but in auto-complete-config "
                             f"function for model '{self._model_config.get('name', '')}' specified "
                             f"max_batch_size {max_batch_size}")  # fmt: skip
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self):
        if "sequence_batching" in self._model_config:
            raise ValueError("the configuration has sequence_batching; dynamic_batching cannot be added")
        self._model_config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, transaction_policy_dict):
        if not isinstance(transaction_policy_dict, dict):
            raise ValueError("set_model_transaction_policy takes a dict")
        policy = self._model_config.setdefault("model_transaction_policy", {})
        for key, value in transaction_policy_dict.items():
            if key != "decoupled":
                raise ValueError(f"unknown model_transaction_policy field '{key}'")
            if key in policy and bool(policy[key]) != bool(value):
                raise ValueError(f"model_transaction_policy decoupled is {policy[key]} in the configuration, but "
                                 f"auto-complete-config set it to {value}")  # fmt: skip
            policy[key] = bool(value)

    def add_input(self, input):
        self._add_tensor("input", input)

    def add_output(self, output):
        self._add_tensor("output", output)

    def _add_tensor(self, kind, tensor):
        if not isinstance(tensor, dict) or "name" not in tensor:
            raise ValueError(f"model {kind} must be a dict with a 'name'")
        allowed = {"name", "data_type", "dims", "optional", "label_filename", "format", "reshape", "is_shape_tensor"}
        unknown = set(tensor) - allowed
        if unknown:
            raise ValueError(f"model {kind} '{tensor['name']}' has unknown fields {sorted(unknown)}")
        entries = self._model_config.setdefault(kind, [])
        for entry in entries:
            if entry.get("name") != tensor["name"]:
                continue
            for key, value in tensor.items():
                present = entry.get(key)
                if key == "dims" and present not in (None, []) and [int(d) for d in present] != [int(d) for d in value]:
                    raise ValueError(f"model {kind} '{tensor['name']}' has dims {present} in the configuration, "
                                     f"but auto-complete-config gave {value}")  # fmt: skip
                if key == "data_type" and present not in (None, "", "TYPE_INVALID") and present != value:
                    raise ValueError(f"model {kind} '{tensor['name']}' has data_type {present} in the "
                                     f"configuration, but auto-complete-config gave {value}")  # fmt: skip
                if present in (None, "", [], "TYPE_INVALID"):
                    entry[key] = value
            return
        entries.append(dict(tensor))
