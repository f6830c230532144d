"""Called by the native backend for each execution of a bound function: inputs to numpy, the
function's answer checked and turned back into (name, datatype, shape, bytes) for the server."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._model import Request, kserve_datatype


class Binding:
    """A bound function with what its answers are checked against."""

    def __init__(self, func, outputs, strict: bool):
        self.func = func
        self.outputs = {t.name: t for t in outputs}
        self.strict = strict


def _array(datatype, shape, payload):
    if datatype == "BYTES":
        array = np.empty(len(payload), dtype=object)
        array[:] = payload
        return array.reshape(shape)
    # A view of the request's bytes (payload owns them): no copy.
    return np.asarray(payload)


def _tensor(name, value, binding):
    array = np.asarray(value)
    try:
        datatype = kserve_datatype(array.dtype)
    except TypeError as error:
        raise TypeError(f"output '{name}': {error}") from None
    spec = binding.outputs.get(name)
    if binding.strict and spec is not None:
        dims = list(spec.shape)
        got = list(array.shape[1:]) if len(array.shape) == len(dims) + 1 else list(array.shape)
        if len(got) != len(dims) or any(d != -1 and d != g for d, g in zip(dims, got)):
            raise ValueError(f"output '{name}' has shape {array.shape}; the model declares {tuple(dims)}")
    if datatype == "BYTES":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.reshape(-1)]
        return (name, datatype, list(array.shape), items)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return (name, datatype, list(array.shape), np.ascontiguousarray(array).tobytes())


def invoke(binding: Binding, model: str, inputs):
    request = Request({name: _array(datatype, shape, payload) for name, datatype, shape, payload in inputs})
    answers = binding.func([request])
    if isinstance(answers, Mapping):
        answers = [answers]
    answers = list(answers)
    if len(answers) != 1:
        raise ValueError(f"the function returned {len(answers)} answers for 1 request")
    answer = answers[0]
    if not isinstance(answer, Mapping):
        raise TypeError(f"the function returned {type(answer).__name__}, not a dict of output arrays")
    return [_tensor(str(name), value, binding) for name, value in answer.items()]
