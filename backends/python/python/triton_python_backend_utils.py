"""Tritium's `triton_python_backend_utils`: the API a Triton python-backend `model.py` imports.

Written for Tritium from the documented python-backend API. The classes here are plain Python; the stub
process (`tritium_python_stub.py`) sets `_runtime` to its connection to the server, through which
responses, BLS requests, model control and log lines travel. Tensor bytes of requests and responses
live in a shared-memory region the server maps too; `Tensor.as_numpy()` of an input is a view over it.
"""

from __future__ import annotations

import ctypes
import enum
import json
import struct
import sys
import weakref

import numpy as np

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

# The stub's connection to the server; None outside a stub (the module still imports, for tests).
_runtime = None
# The version folder of the model this stub runs (set before auto_complete_config and initialize run).
_model_dir = None


def get_model_dir():
    """The folder of the model's version (the one holding its model.py)."""
    if _model_dir is None:
        raise TritonModelException("get_model_dir() is only available inside a model's stub")
    return _model_dir

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


# The config's data type names and their numpy types (TYPE_BOOL is Python's bool; BF16 has none).
TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64, "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}  # fmt: skip
# The numpy types numpy_to_triton_type knows, in the order it compares them (`==`, so numpy dtypes match too).
_NUMBER_OF_NUMPY = [(t, n) for n, t in _NUMPY_OF_NUMBER.items()] + [(np.bytes_, 13)]


def triton_to_numpy_type(data_type):
    """The numpy type of a Triton data type number (13, BYTES, is `np.object_`); None for others (BF16 too)."""
    return _NUMPY_OF_NUMBER.get(data_type)


def numpy_to_triton_type(data_type):
    """The Triton data type number of a numpy type or dtype; object and `np.bytes_` are BYTES (13); None for any
    other (`np.str_`, Python's own types)."""
    for numpy_type, number in _NUMBER_OF_NUMPY:
        if data_type == numpy_type:
            return number
    return None


def triton_string_to_numpy(triton_type_string):
    """The numpy type of a config data type name such as `TYPE_FP32` (KeyError for one without, e.g. TYPE_BF16)."""
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def _kserve_datatype(array):
    name = _KSERVE_OF_DTYPE.get(array.dtype)
    if name is not None:
        return name
    if array.dtype.kind in ("O", "S"):
        return "BYTES"
    raise TritonModelException(f"unsupported numpy data type {array.dtype} for a tensor")


def _element_bytes(value, object_array):
    """One BYTES element: `bytes` as they are, anything else in an object array as its `str` in UTF-8."""
    if not object_array or value.__class__ is bytes:
        return value
    return str(value).encode("utf-8")


def _byte_tensor_bytes(array):
    """Triton's BYTES layout of an object or `np.bytes_` array: each element (C order) as a 4-byte little-endian
    length, then its bytes."""
    if array.size == 0:
        return b""
    object_array = array.dtype == np.object_
    parts = []
    for item in np.nditer(array, flags=["refs_ok"], order="C"):
        value = _element_bytes(item.item(), object_array)
        parts.append(struct.pack("<I", len(value)))
        parts.append(value)
    return b"".join(parts)


def serialize_byte_tensor(input_tensor):
    """The BYTES layout of an object or `np.bytes_` array, as `bytes` (an empty array: an empty tuple; an array of
    another dtype: None), as Triton's utils return it."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype == np.object_ or input_tensor.dtype.type == np.bytes_:
        return _byte_tensor_bytes(input_tensor)
    return None


def deserialize_bytes_tensor(encoded_tensor):
    """The elements of a BYTES buffer as a 1-D object array of `bytes` (`struct.error` when it is cut short)."""
    items = []
    offset, end = 0, len(encoded_tensor)
    while offset < end:
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        if length > end - offset:
            raise struct.error(f"unpack_from requires a buffer of at least {offset + length} bytes for unpacking "
                               f"{length} bytes at offset {offset} (actual buffer size is {end})")  # fmt: skip
        items.append(bytes(encoded_tensor[offset : offset + length]))
        offset += length
    array = np.empty([len(items)], dtype=np.object_)
    array[:] = items
    return array


class _ErrorCode(enum.IntEnum):
    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7


class TritonError:
    """An error a response carries (not raised): a message and one of Triton's codes."""

    UNKNOWN = _ErrorCode.UNKNOWN
    INTERNAL = _ErrorCode.INTERNAL
    NOT_FOUND = _ErrorCode.NOT_FOUND
    INVALID_ARG = _ErrorCode.INVALID_ARG
    UNAVAILABLE = _ErrorCode.UNAVAILABLE
    UNSUPPORTED = _ErrorCode.UNSUPPORTED
    ALREADY_EXISTS = _ErrorCode.ALREADY_EXISTS
    CANCELLED = _ErrorCode.CANCELLED

    def __init__(self, message, code=_ErrorCode.INTERNAL):
        if not isinstance(message, str):
            raise TypeError(f"TritonError(): the message must be a str, not {type(message).__name__}")
        if code is None:
            raise TypeError("TritonError(): the code must be one of TritonError's codes, not None")
        self._message = message
        try:
            self._code = _ErrorCode(int(code))
        except ValueError:
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


# DLPack (https://dmlc.github.io/dlpack/latest/c_api.html), spoken through ctypes: numpy exports neither BF16 nor
# read-only arrays and cannot refuse a non-C-contiguous tensor, all of which a python-backend model meets.
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]  # fmt: skip


class _DLManagedTensor(ctypes.Structure):
    pass


_DL_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]
_DL_CPU, _DL_CUDA_HOST = 1, 3
_DLPACK_NAME, _DLPACK_USED = b"dltensor", b"used_dltensor"
# (DLPack type code, bits) of each fixed-size datatype: 0 int, 1 uint, 2 float, 4 bfloat, 6 bool.
_DL_TYPE_OF_KSERVE = {
    "BOOL": (6, 8), "UINT8": (1, 8), "UINT16": (1, 16), "UINT32": (1, 32), "UINT64": (1, 64), "INT8": (0, 8),
    "INT16": (0, 16), "INT32": (0, 32), "INT64": (0, 64), "FP16": (2, 16), "FP32": (2, 32), "FP64": (2, 64),
    "BF16": (4, 16),
}  # fmt: skip
_KSERVE_OF_DL_TYPE = {code: name for name, code in _DL_TYPE_OF_KSERVE.items()}
_ITEM_BYTES = {name: bits // 8 for name, (_, bits) in _DL_TYPE_OF_KSERVE.items()}

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.restype = ctypes.c_int
_capsule_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.restype = ctypes.c_int
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
# The capsule destructor gets the dying capsule as a bare pointer: these take it as one (no reference taken).
_raw_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_IsValid", ctypes.pythonapi))
_raw_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_GetPointer", ctypes.pythonapi))

# What each exported DLManagedTensor keeps alive (the struct, its shape, the array), by the struct's address.
_exported = {}


@_DL_DELETER
def _dl_delete(address):
    _exported.pop(address, None)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _dl_capsule_gone(capsule):
    # A capsule nobody consumed still owns its tensor (a consumer renames it and calls the deleter itself).
    if _raw_is_valid(capsule, _DLPACK_NAME):
        _exported.pop(_raw_pointer(capsule, _DLPACK_NAME), None)


_DL_DELETE_ADDRESS = ctypes.cast(_dl_delete, ctypes.c_void_p).value
_DL_CAPSULE_GONE_ADDRESS = ctypes.cast(_dl_capsule_gone, ctypes.c_void_p).value


def _to_dlpack(array, datatype):
    """A DLPack capsule over `array`'s memory (C-contiguous), typed `datatype`; the array lives as long as the
    capsule or, once consumed, until its consumer calls the deleter."""
    code, bits = _DL_TYPE_OF_KSERVE[datatype]
    managed = _DLManagedTensor()
    shape = (ctypes.c_int64 * max(array.ndim, 1))(*array.shape)
    tensor = managed.dl_tensor
    tensor.data = array.ctypes.data
    tensor.device = _DLDevice(_DL_CPU, 0)
    tensor.ndim = array.ndim
    tensor.dtype = _DLDataType(code, bits, 1)
    tensor.shape = shape
    tensor.strides = None
    tensor.byte_offset = 0
    managed.deleter = _DL_DELETE_ADDRESS
    address = ctypes.addressof(managed)
    _exported[address] = (managed, shape, array)
    return _capsule_new(address, _DLPACK_NAME, _DL_CAPSULE_GONE_ADDRESS)


def _from_dlpack_capsule(capsule):
    """(datatype, shape, array) of a DLPack capsule's tensor, consuming the capsule: our own tensors' arrays as they
    are, anything else copied (and its producer told it is free)."""
    if capsule.__class__.__name__ != "PyCapsule" or not _capsule_is_valid(capsule, _DLPACK_NAME):
        raise TritonModelException("from_dlpack takes a DLPack capsule or an object with __dlpack__ and "
                                   "__dlpack_device__ (an unused 'dltensor' capsule)")  # fmt: skip
    address = _capsule_pointer(capsule, _DLPACK_NAME)
    managed = _DLManagedTensor.from_address(address)
    tensor = managed.dl_tensor
    device = tensor.device.device_type
    if device not in (_DL_CPU, _DL_CUDA_HOST):
        raise TritonModelException(f"DLDevice type {device} is not support by Python backend.")
    datatype = _KSERVE_OF_DL_TYPE.get((tensor.dtype.code, tensor.dtype.bits))
    if datatype is None or tensor.dtype.lanes != 1:
        raise TritonModelException(f"DLDataType code {tensor.dtype.code}, bits {tensor.dtype.bits}, lanes "
                                   f"{tensor.dtype.lanes} is not supported by the python backend.")  # fmt: skip
    shape = [tensor.shape[i] for i in range(tensor.ndim)]
    if tensor.strides and 0 not in shape:
        expected = 1
        for i in reversed(range(tensor.ndim)):
            if shape[i] != 1 and tensor.strides[i] != expected:
                raise TritonModelException("DLPack tensor is not contiguous. Only contiguous DLPack tensors that are "
                                           "stored in C-Order are supported.")  # fmt: skip
            expected *= shape[i]
    _capsule_set_name(capsule, _DLPACK_USED)
    own = _exported.pop(address, None)
    if own is not None:
        return datatype, shape, own[2]
    size = _ITEM_BYTES[datatype]
    for dim in shape:
        size *= dim
    data = ctypes.string_at(tensor.data + tensor.byte_offset, size) if size else b""
    if managed.deleter:
        _DL_DELETER(managed.deleter)(address)
    return datatype, shape, data


class Tensor:
    """A named tensor: `Tensor(name, numpy_array)`, or an input the server sent (a view over shared memory)."""

    def __init__(self, name, data, *args, **kwargs):
        if name.__class__ is not str:
            if not isinstance(name, str):
                raise TypeError(f"Tensor(): the name must be a str, not {type(name).__name__}")
            name = str(name)
        if not isinstance(data, np.ndarray):
            raise TypeError(f"Tensor(): the data must be a numpy array, not {type(data).__name__}")
        datatype = _KSERVE_OF_DTYPE.get(data.dtype)
        if datatype is None:
            if data.dtype.kind not in ("O", "S"):
                raise TritonModelException("NumPy dtype is not supported.")
            datatype = "BYTES"
        self._name = name
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
        raise TritonModelException("Tensor dtype is BF16 and cannot be converted to NumPy. Use to_dlpack() and "
                                   "from_dlpack() instead.")  # fmt: skip

    def _dlpack_array(self):
        """The tensor's elements as a C-contiguous array DLPack can point at (BF16 as its 16-bit words)."""
        if self._datatype == "BYTES":
            raise TritonModelException("DLPack does not support BYTES (string) tensors; use as_numpy()")
        if self._datatype == "BF16":
            array = self._array if self._array is not None else np.ndarray(self._shape, np.uint16, self._buffer)
        else:
            array = self.as_numpy()
        # Not np.ascontiguousarray: it makes a 0-d array 1-d.
        return array if array.flags.c_contiguous else array.copy(order="C")

    def to_dlpack(self):
        return _to_dlpack(self._dlpack_array(), self._datatype)

    def __dlpack__(self, *args, **kwargs):
        return self.to_dlpack()

    def __dlpack_device__(self):
        return (_DL_CPU, 0)

    @staticmethod
    def from_dlpack(name, capsule):
        if isinstance(capsule, Tensor):
            if capsule._datatype == "BYTES":
                raise TritonModelException("DLPack does not support BYTES (string) tensors")
            return Tensor._from_array(name, capsule._datatype, capsule._dlpack_array())
        if isinstance(capsule, np.ndarray):
            if capsule.size and not capsule.flags.c_contiguous:
                raise TritonModelException("DLPack tensor is not contiguous. Only contiguous DLPack tensors that are "
                                           "stored in C-Order are supported.")  # fmt: skip
            if capsule.dtype not in _KSERVE_OF_DTYPE:
                raise TritonModelException("NumPy dtype is not supported.")
            return Tensor(name, capsule)
        if hasattr(capsule, "__dlpack__"):
            if hasattr(capsule, "__dlpack_device__"):
                device = capsule.__dlpack_device__()[0]
                if device not in (_DL_CPU, _DL_CUDA_HOST):
                    raise TritonModelException(f"DLDevice type {int(device)} is not support by Python backend.")
            capsule = capsule.__dlpack__()
        datatype, shape, data = _from_dlpack_capsule(capsule)
        if isinstance(data, np.ndarray):
            return Tensor._from_array(name, datatype, data.reshape(shape))
        return Tensor._from_buffer(name, datatype, shape, data)

    @classmethod
    def _from_array(cls, name, datatype, array):
        if datatype == "BF16":
            return cls._from_buffer(name, datatype, array.shape, array)
        tensor = cls(name, array)
        return tensor

    def _wire_bytes(self):
        """The tensor's bytes as the server takes them: C-order element bytes, or BYTES' layout."""
        if self._array is None:
            buffer = memoryview(self._buffer)
        else:
            array = self._array
            if self._datatype == "BYTES":
                return memoryview(_byte_tensor_bytes(array))
            buffer = memoryview(np.ascontiguousarray(array))
        # memoryview cannot cast a view with a zero in its shape.
        return buffer.cast("B") if buffer.nbytes else memoryview(b"")

    def __repr__(self):
        return f"Tensor(name={self._name!r}, datatype={self._datatype}, shape={self._shape})"


_REQUIRED = object()


def _request_parameters(parameters):
    """A BLS request's parameters as the JSON text `parameters()` returns: a dict of str keys and bool, int or str
    values (None: none)."""
    if parameters is None:
        return "{}"
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect parameters to be a dict, found type {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, (bool, int, str)):
            raise TritonModelException(f"Expect parameters values to have type bool/int/str, found type {type(value)}")
    return json.dumps(parameters)


class InferenceTrace:
    """The trace of a request; Tritium's python backend has no tracing context to give."""

    def get_context(self):
        return None


_NO_TRACE = InferenceTrace()


class MemoryType(enum.IntEnum):
    TRITONSERVER_MEMORY_GPU = 0
    TRITONSERVER_MEMORY_CPU = 1


TRITONSERVER_MEMORY_GPU = MemoryType.TRITONSERVER_MEMORY_GPU
TRITONSERVER_MEMORY_CPU = MemoryType.TRITONSERVER_MEMORY_CPU


class PreferredMemory:
    """Where a BLS request would like its outputs; every tensor is in CPU memory here."""

    def __init__(self, preferred_memory_type, preferred_device_id=0):
        if preferred_memory_type is None or preferred_device_id is None:
            raise TypeError("PreferredMemory(): arguments must not be None")
        self.preferred_memory_type = MemoryType(int(preferred_memory_type))
        self.preferred_device_id = int(preferred_device_id)


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
                raise TypeError(f"InferenceResponse(): output_tensors must be pb_utils.Tensor objects, not "
                                f"{type(tensor).__name__}")  # fmt: skip
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"InferenceResponse(): error must be a pb_utils.TritonError, not {type(error).__name__}")
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
    """Sends the responses of one request, from any thread: any number of a decoupled model's, or the one response
    of a model that is not decoupled (then `collect` takes it to the stub's answer of its execute)."""

    def __init__(self, key, decoupled, collect=None):
        self._key = key
        self._decoupled = decoupled
        self._collect = collect
        self._closed = False
        self._sent = False

    def send(self, response=None, flags=0):
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is None and flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("Inference Response object must be provided when the response flags is "
                                       "not TRITONSERVER_RESPONSE_COMPLETE_FINAL")  # fmt: skip
        if response is not None and not isinstance(response, InferenceResponse):
            raise TritonModelException("send() takes a pb_utils.InferenceResponse")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if self._collect is not None:
            if response is None and not self._sent:
                raise TritonModelException("Unable to send response. Non-decoupled model cannot send complete final "
                                           "before sending a response.")  # fmt: skip
            self._sent = self._sent or response is not None
            if final:
                self._closed = True
            self._collect(response, final)
            return
        if final:
            self._closed = True
        _runtime.send_response(self._key, response, final)

    def is_cancelled(self):
        return _runtime.is_cancelled(self._key)


class InferenceRequest:
    """A request: one the server passed to `execute`, or a BLS request a model builds and runs with
    `exec()` / `async_exec()`."""

    def __init__(self, request_id="", correlation_id=0, inputs=_REQUIRED, requested_output_names=_REQUIRED,
                 model_name=_REQUIRED, model_version=-1, flags=0, timeout=0, preferred_memory=None, trace=None,
                 parameters=None):  # fmt: skip
        # Triton's order of arguments: its positional callers work too.
        missing = [n for n, v in (("inputs", inputs), ("requested_output_names", requested_output_names),
                                  ("model_name", model_name)) if v is _REQUIRED]  # fmt: skip
        if missing:
            raise TypeError(f"InferenceRequest(): missing required argument(s) {', '.join(missing)}")
        if not isinstance(correlation_id, (int, str)) or isinstance(correlation_id, bool):
            raise TritonModelException("Correlation ID must be integer or string")
        self._model_name = str(model_name)
        self._model_version = int(model_version)
        self._inputs = list(inputs)
        self._outputs = {str(n) for n in requested_output_names}
        self._request_id = str(request_id)
        self._correlation_id = correlation_id
        self._flags = int(flags)
        self._timeout = int(timeout)
        self._parameters = _request_parameters(parameters)
        self._preferred_memory = preferred_memory
        self._trace = trace if trace is not None else InferenceTrace()
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
    _trace = _NO_TRACE

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
        return set(self._outputs)

    def request_id(self):
        return self._request_id

    def correlation_id(self):
        return self._correlation_id

    def flags(self):
        return self._flags

    def set_flags(self, flags):
        self._flags = int(flags)

    def timeout(self):
        return self._timeout

    def parameters(self):
        return self._parameters

    def model_name(self):
        return self._model_name

    def model_version(self):
        return self._model_version

    def trace(self):
        return self._trace

    def set_release_flags(self, flags):
        if flags & TRITONSERVER_REQUEST_RELEASE_RESCHEDULE:
            raise TritonModelException("request rescheduling is not supported by Tritium's python backend")
        self._release_flags = flags

    def get_response_sender(self):
        if self._key is None:
            raise TritonModelException("a BLS request has no response sender")
        if self._sender is None:
            collect = None if self._decoupled else _runtime.default_sender(self)
            self._sender = InferenceResponseSender(self._key, self._decoupled, collect)
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
    _runtime.control("load", model_name, config=config, files=blobs)


def unload_model(model_name, unload_dependents=False):
    _runtime.control("unload", model_name)


class LogLevel(enum.IntEnum):
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """Log lines from model code, written to the server's log with the model's name. The levels are
    `Logger.INFO` ... (also `Logger.LogLevel.INFO`); a plain int is not one."""

    LogLevel = LogLevel
    INFO = LogLevel.INFO
    WARNING = LogLevel.WARNING
    ERROR = LogLevel.ERROR
    VERBOSE = LogLevel.VERBOSE

    @staticmethod
    def log(message, level=LogLevel.INFO):
        if not isinstance(level, LogLevel):
            raise TypeError(f"log(): the level must be a Logger.LogLevel (Logger.INFO, ...), not {type(level).__name__}")
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename == __file__:
            frame = frame.f_back
        where = (frame.f_code.co_filename, frame.f_lineno) if frame is not None else ("", 0)
        if _runtime is not None:
            _runtime.log(int(level), str(message), where[0], where[1])
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


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_FAMILY_GONE = ("Invalid metric operation as the corresponding 'MetricFamily' has been deleted. The 'MetricFamily' "
                "object should be deleted AFTER its corresponding 'Metric' objects have been deleted.")  # fmt: skip


class MetricFamily:
    """A family of custom metrics, shown on the server's metrics page: `MetricFamily(name, description, kind)` with
    kind `MetricFamily.COUNTER`, `GAUGE` or `HISTOGRAM`; its metrics (one per label set) from `Metric(...)`."""

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name, description, kind):
        if not isinstance(name, str) or not isinstance(description, str) or not isinstance(kind, MetricKind):
            raise TypeError("MetricFamily(): takes name: str, description: str, kind: MetricFamily.COUNTER, GAUGE or "
                            "HISTOGRAM")  # fmt: skip
        self._name = name
        self._kind = kind
        _runtime.metric("Error when creating MetricFamily", "family", name, description=description, kind=int(kind))

    def Metric(self, labels=None, buckets=None):  # noqa: N802 - Triton's name
        """The metric of this family with `labels` (a dict of str; the same labels: the same metric, its value
        kept); a histogram's needs `buckets`, its upper bounds."""
        if self._kind == MetricKind.HISTOGRAM and buckets is None:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        if self._kind != MetricKind.HISTOGRAM and buckets is not None:
            raise TritonModelException("Failed to create metric. Unexpected buckets found.")
        labels = dict(labels or {})
        if buckets is not None:
            buckets = [float(b) for b in buckets]
        _runtime.metric("Error when creating Metric", "metric", self._name, labels=labels, buckets=buckets)
        return Metric(self, labels)


class Metric:
    """One metric of a MetricFamily (made by `MetricFamily.Metric`). It does not keep its family alive: delete the
    family after its metrics."""

    def __init__(self, family, labels):
        self._family = weakref.ref(family)
        self._name = family._name
        self._labels = labels

    def _call(self, words, action, value=None):
        if self._family() is None:
            raise TritonModelException(f"{words}: {_FAMILY_GONE}")
        return _runtime.metric(words, action, self._name, labels=self._labels, value=value)

    def increment(self, value):
        self._call("Failed to increment metric value", "increment", float(value))

    def set(self, value):
        self._call("Failed to set metric value", "set", float(value))

    def observe(self, value):
        self._call("Failed to observe metric value", "observe", float(value))

    def value(self):
        return float(self._call("Failed to get metric value", "value"))


class ModelConfig:
    """The config `auto_complete_config` receives (built from the config's JSON text) and returns: the model's
    config as a dict, with helpers that fill what it leaves out and refuse what contradicts it, in Triton's words."""

    def __init__(self, model_config):
        self._model_config = json.loads(model_config)

    def as_dict(self):
        return self._model_config

    def _name(self):
        return self._model_config.get("name", "")

    def set_max_batch_size(self, max_batch_size):
        current = self._model_config.get("max_batch_size", 0)
        if current > max_batch_size:
            raise ValueError(f"configuration specified max_batch_size {current}, but in auto-complete-config function "
                             f"for model '{self._name()}' specified max_batch_size {max_batch_size}")  # fmt: skip
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self):
        for scheduler in ("sequence_batching", "ensemble_scheduling"):
            if scheduler in self._model_config:
                raise ValueError(f"Configuration specified scheduling_choice as '{scheduler}', but auto-complete-config "
                                 f"function for model '{self._name()}' tries to set scheduling_choice as "
                                 "'dynamic_batching'")  # fmt: skip
        self._model_config.setdefault("dynamic_batching", {})

    def add_input(self, input):
        self._add_tensor("input", input, ("name", "data_type", "dims", "optional"), "'name', 'data_type', 'dims' and 'optional'")

    def add_output(self, output):
        self._add_tensor("output", output, ("name", "data_type", "dims"), "'name', 'data_type' and 'dims'")

    def _add_tensor(self, kind, tensor, allowed, allowed_words):
        model = self._name()
        for key in tensor:
            if key not in allowed:
                raise ValueError(f"{kind} '{tensor['name']}' in auto-complete-config function for model '{model}' "
                                 f"contains property other than {allowed_words}.")  # fmt: skip
        if "name" not in tensor:
            raise ValueError(f"{kind} in auto-complete-config function for model '{model}' is missing 'name' property.")
        for key in ("data_type", "dims"):
            if key not in tensor:
                raise ValueError(f"{kind} '{tensor['name']}' in auto-complete-config function for model '{model}' is "
                                 f"missing '{key}' property.")  # fmt: skip
        entries = self._model_config.setdefault(kind, [])
        for entry in entries:
            if entry.get("name") != tensor["name"]:
                continue
            present = entry.get("data_type", "TYPE_INVALID")
            if present != "TYPE_INVALID" and present != tensor["data_type"]:
                raise ValueError(f"unable to load model '{model}', configuration expects datatype {present} for "
                                 f"{kind} '{tensor['name']}', model provides {tensor['data_type']}")  # fmt: skip
            if entry.get("dims") and entry["dims"] != tensor["dims"]:
                raise ValueError(f"model '{model}', tensor '{tensor['name']}': the model expects dims "
                                 f"{tensor['dims']} but the model configuration specifies dims {entry['dims']}")  # fmt: skip
            if "optional" in entry and "optional" in tensor and entry["optional"] != tensor["optional"]:
                raise ValueError(f"model '{model}', tensor '{tensor['name']}': the model expects optional "
                                 f"{tensor['optional']} but the model configuration specifies optional "
                                 f"{entry['optional']}")  # fmt: skip
            entry["data_type"] = tensor["data_type"]
            entry["dims"] = tensor["dims"]
            if "optional" in tensor:
                entry["optional"] = tensor["optional"]
            return
        entries.append(tensor)

    def set_model_transaction_policy(self, transaction_policy_dict):
        model = self._name()
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(f"model transaction property in auto-complete-config function for model '{model}' "
                                 "contains property other than 'decoupled'.")  # fmt: skip
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            if "decoupled" in policy and policy["decoupled"] != transaction_policy_dict["decoupled"]:
                raise ValueError(f"trying to change decoupled property in auto-complete-config for model '{model}', "
                                 f"which is already set to '{policy['decoupled']}'.")  # fmt: skip
            policy["decoupled"] = transaction_policy_dict["decoupled"]
