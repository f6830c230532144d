"""`triton_python_backend_utils.Tensor`, and DLPack spoken through ctypes."""

from __future__ import annotations

import ctypes

import numpy as np

from tritium_pb_types import (
    _FIXED_NUMPY_OF_KSERVE,
    _KSERVE_OF_DTYPE,
    _NUMBER_OF_KSERVE,
    TritonModelException,
    _byte_tensor_bytes,
    deserialize_bytes_tensor,
)

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
