"""What a bound function's model is: its tensors, its config, and the ``batch`` decorator (PyTriton's API)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

# Triton's datatypes by numpy dtype; BYTES tensors are numpy object (or bytes) arrays.
_KSERVE_BY_DTYPE = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}
_CONFIG_TYPE = {name: "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}" for name in [*_KSERVE_BY_DTYPE.values(), "BYTES"]}


def kserve_datatype(dtype: Any) -> str:
    """Triton's name (``FP32``, ``BYTES``...) of a numpy dtype, a Python type or a Triton name."""
    if isinstance(dtype, str) and dtype.upper() in _CONFIG_TYPE:
        return dtype.upper()
    if dtype in (bytes, str, object):
        return "BYTES"
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{dtype!r} is not a numpy dtype or a Triton datatype") from error
    if resolved.kind in "OSU":
        return "BYTES"
    name = _KSERVE_BY_DTYPE.get(resolved if resolved.isnative else resolved.newbyteorder("="))
    if name is None:
        raise TypeError(f"numpy dtype {resolved} has no Triton datatype")
    return name


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One input or output: its name, dtype and shape without the batch dimension (-1: any size)."""

    shape: Sequence[int]
    dtype: Any = np.float32
    name: Optional[str] = None
    optional: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tensor needs a name")
        kserve_datatype(self.dtype)
        if any(not isinstance(d, (int, np.integer)) or d < -1 for d in self.shape):
            raise ValueError(f"tensor '{self.name}': shape {tuple(self.shape)} must hold sizes >= 0 or -1")


@dataclasses.dataclass(frozen=True)
class DynamicBatcher:
    """Triton's dynamic batcher: requests queued together, stacked along the batch dimension."""

    max_queue_delay_microseconds: int = 0
    preferred_batch_size: Optional[Sequence[int]] = None
    preserve_ordering: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A bound model's config: batching (up to ``max_batch_size`` by ``batcher``) and its instances.

    ``instance_count`` instances run the function at the same time: on threads of the server
    (``instance_kind="thread"``, the default: right for functions that release the GIL, as numpy's
    large operations, ONNX Runtime or PyTorch do) or each in a Python process of its own
    (``instance_kind="process"``: for pure-Python or other GIL-holding functions, which threads would
    run one at a time). A process instance imports the function by reference, as ``multiprocessing``'s
    spawn does: bind a module-level function or a picklable callable (a lambda or a closure is refused
    at bind time), and keep a script's serving code under ``if __name__ == "__main__":``. A process
    instance that dies, or is killed past ``timeout_s``, fails its call with UNAVAILABLE and starts again.
    """

    batching: bool = True
    max_batch_size: int = 4
    batcher: DynamicBatcher = dataclasses.field(default_factory=DynamicBatcher)
    instance_count: int = 1
    # Several responses per request; a generator (or async generator) function is bound decoupled
    # without saying so.
    decoupled: bool = False
    # Seconds one call may take: past it the client gets UNAVAILABLE and the call is sent TimeoutError
    # (it lands at the function's next Python line; a call blocked in C code keeps its thread until it returns).
    # A process instance past it is killed and started again; there it also bounds the wait for each
    # response of a decoupled model.
    timeout_s: Optional[float] = None
    # "thread" or "process": where the instances run (see above).
    instance_kind: str = "thread"


def _tensor_text(kind: str, tensor: Tensor) -> str:
    dims = ", ".join(str(int(d)) for d in tensor.shape)
    optional = " optional: true" if tensor.optional else ""
    datatype = _CONFIG_TYPE[kserve_datatype(tensor.dtype)]
    return f"{kind} {{ name: {json.dumps(tensor.name)} data_type: {datatype} dims: [ {dims} ]{optional} }}"


def config_text(name: str, backend: str, inputs: List[Tensor], outputs: List[Tensor], config: ModelConfig) -> str:
    """The ``config.pbtxt`` text of a bound model."""
    if config.instance_count < 1:
        raise ValueError("instance_count must be at least 1")
    if config.instance_kind not in ("thread", "process"):
        raise ValueError(f"instance_kind must be 'thread' or 'process', not {config.instance_kind!r}")
    batching = config.batching and config.max_batch_size > 0
    lines = [f"name: {json.dumps(name)}", f"backend: {json.dumps(backend)}", f"max_batch_size: {config.max_batch_size if batching else 0}"]
    lines += [_tensor_text("input", t) for t in inputs]
    lines += [_tensor_text("output", t) for t in outputs]
    if batching and config.batcher is not None:
        batcher = config.batcher
        preferred = "".join(f" preferred_batch_size: {int(size)}" for size in batcher.preferred_batch_size or [])
        ordering = " preserve_ordering: true" if batcher.preserve_ordering else ""
        lines.append(
            f"dynamic_batching {{ max_queue_delay_microseconds: {int(batcher.max_queue_delay_microseconds)}{preferred}{ordering} }}"
        )
    lines.append(f"instance_group {{ count: {int(config.instance_count)} kind: KIND_CPU }}")
    if config.decoupled:
        lines.append("model_transaction_policy { decoupled: true }")
    if config.timeout_s is not None and not config.timeout_s > 0:
        raise ValueError("timeout_s must be a positive number of seconds")
    # Process instances enforce timeout_s themselves (the child is killed at the deadline); the
    # server's own timeout would send TimeoutError into the thread that hands out instances.
    if config.timeout_s is not None and config.instance_kind != "process":
        seconds = json.dumps(repr(float(config.timeout_s)))
        lines.append(f'parameters {{ key: "execute_timeout_seconds" value {{ string_value: {seconds} }} }}')
    return "\n".join(lines) + "\n"


class Request(dict):
    """One request's inputs by name (numpy arrays, read-only views of the request's bytes)."""

    def __init__(self, data: Dict[str, np.ndarray], parameters: Optional[Dict[str, Any]] = None):
        super().__init__(data)
        self.parameters = parameters or {}

    @property
    def data(self) -> Dict[str, np.ndarray]:
        return self


def _stack(requests):
    if len(requests) == 1:
        return dict(requests[0]), None
    names = list(requests[0].keys())
    sizes = np.cumsum([len(next(iter(r.values()))) for r in requests])[:-1]
    return {name: np.concatenate([r[name] for r in requests]) for name in names}, sizes


def _unstack(outputs, sizes, count):
    if sizes is None:
        return [outputs]
    split = {name: np.split(value, sizes) for name, value in outputs.items()}
    return [{name: parts[i] for name, parts in split.items()} for i in range(count)]


def batch(func):
    """Hands ``func`` the batch as keyword arguments (one stacked array per input) and expects one
    dict of stacked outputs back, as PyTriton's ``@batch``; the dynamic batcher forms the batches.
    Async functions, generators and async generators (decoupled models) are wrapped alike."""

    if inspect.isasyncgenfunction(func):

        @functools.wraps(func)
        async def agen_wrapper(*args, **kwargs):
            *leading, requests = args
            inputs, sizes = _stack(requests)
            async for outputs in func(*leading, **inputs, **kwargs):
                yield _unstack(outputs, sizes, len(requests))

        return agen_wrapper
    if inspect.isgeneratorfunction(func):

        @functools.wraps(func)
        def gen_wrapper(*args, **kwargs):
            *leading, requests = args
            inputs, sizes = _stack(requests)
            for outputs in func(*leading, **inputs, **kwargs):
                yield _unstack(outputs, sizes, len(requests))

        return gen_wrapper
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args, **kwargs):
            *leading, requests = args
            inputs, sizes = _stack(requests)
            return _unstack(await func(*leading, **inputs, **kwargs), sizes, len(requests))

        return async_wrapper

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        *leading, requests = args
        inputs, sizes = _stack(requests)
        return _unstack(func(*leading, **inputs, **kwargs), sizes, len(requests))

    return wrapper
