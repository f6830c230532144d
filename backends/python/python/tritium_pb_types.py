"""`triton_python_backend_utils`' data types, flags and errors: Triton's type numbers and names, numpy's types,
the BYTES tensor layout, `TritonError` and `TritonModelException`."""

from __future__ import annotations

import enum
import struct

import numpy as np

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

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
