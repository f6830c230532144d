"""PyTriton's ``pytriton.decorators``, written for Tritium: ``batch``, ``sample``,
``group_by_keys``, ``group_by_values``, ``first_value``, ``fill_optionals``, ``pad_batch`` and
``ConstantPadder``, with PyTriton's documented behaviour. A bound function is called with a list
of requests (dicts of numpy arrays with ``.parameters``) and answers with a list of output dicts,
one per request; the decorators adapt between that and friendlier signatures."""

from __future__ import annotations

import bisect
import functools
import inspect
from typing import Callable, Dict, List

import numpy as np

from . import _context
from .exceptions import PyTritonBadParameterError, PyTritonRuntimeError, PyTritonValidationError

_SPECIAL_KEYS = ("__triton_context__",)


def _batch_size(request) -> int:
    first = next(iter(request.values()), None)
    return 0 if first is None else int(np.shape(first)[0]) if np.ndim(first) else 1


def _outputs_spec():
    try:
        return _context.current().outputs
    except PyTritonRuntimeError:
        return None


def _to_dict(answer, outputs):
    if isinstance(answer, dict) or outputs is not None:
        return _context.as_dict(answer, outputs or [])
    raise PyTritonValidationError("a list of outputs needs the model's outputs: bind the function with Triton.bind")


def _then(result, finish):
    """``finish`` applied to a result, a coroutine's result or each item of a generator."""
    if inspect.isawaitable(result):

        async def awaited():
            return finish(await result)

        return awaited()
    return _context.map_iter(result, finish) if inspect.isgenerator(result) or inspect.isasyncgen(result) else finish(result)


def batch(wrapped: Callable) -> Callable:
    """Stacks the requests' inputs along the batch axis and calls ``wrapped(**inputs)``; splits
    the outputs it returns (a dict, or a list in the declared outputs' order) back per request."""

    @functools.wraps(wrapped)
    def wrapper(requests, *args, **kwargs):
        names = requests[0].keys()
        if any(r.keys() != names for r in requests[1:]):
            raise PyTritonValidationError("Cannot batch requests with different set of inputs keys")
        inputs = {name: np.concatenate([r[name] for r in requests]) for name in names}
        sizes = [_batch_size(r) for r in requests]
        outputs_spec = _outputs_spec()

        def split(result):
            outputs = _to_dict(result, outputs_spec)
            total = sum(sizes)
            wrong = {n: np.shape(v) for n, v in outputs.items() if np.shape(v)[:1] != (total,)}
            if wrong:
                listed = ", ".join(f"{n}: {s}" for n, s in wrong.items())
                raise ValueError(f"Received output tensors with different batch sizes: {listed}. Expected batch size: {total}. ")
            answers, start = [], 0
            for size in sizes:
                answers.append({n: v[start : start + size, ...] for n, v in outputs.items()})
                start += size
            return answers

        return _then(wrapped(*args, **kwargs, **inputs), split)

    return wrapper


def sample(wrapped: Callable) -> Callable:
    """Calls ``wrapped(**inputs)`` with the first request's inputs (for models without batching)."""

    @functools.wraps(wrapped)
    def wrapper(requests, *args, **kwargs):
        outputs_spec = _outputs_spec()
        return _then(wrapped(*args, **{**kwargs, **requests[0]}), lambda result: [_to_dict(result, outputs_spec)])

    return wrapper


def group_by_keys(wrapped: Callable) -> Callable:
    """Calls ``wrapped`` once per group of requests with the same set of inputs; answers in the
    requests' order."""

    @functools.wraps(wrapped)
    def wrapper(requests, *args, **kwargs):
        groups: Dict[tuple, List[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(tuple(sorted(request.keys())), []).append(index)
        answers: list = [None] * len(requests)
        for indexes in groups.values():
            for index, answer in zip(indexes, wrapped([requests[i] for i in indexes], *args, **kwargs)):
                answers[index] = answer
        return answers

    return wrapper


def _value_key(value):
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return tuple(bytes(x) if isinstance(x, (bytes, np.bytes_)) else str(x).encode() for x in value.reshape(-1)) + (value.shape,)
        return (value.dtype.str, value.shape, value.tobytes())
    return value


def group_by_values(*keys: str, pad_fn=None):
    """Under ``@batch``: splits the batch into sub-batches whose rows have equal values of
    ``keys``, calls ``wrapped(**sub_batch)`` for each and puts the outputs back in row order.
    ``pad_fn`` (e.g. ``ConstantPadder()``) evens out the sub-batches' outputs before merging."""

    def decorator(wrapped: Callable) -> Callable:
        @functools.wraps(wrapped)
        def wrapper(*args, **kwargs):
            inputs = {k: v for k, v in kwargs.items() if k not in _SPECIAL_KEYS}
            others = {k: v for k, v in kwargs.items() if k in _SPECIAL_KEYS}
            size = _batch_size(inputs)
            groups: Dict[tuple, List[int]] = {}
            for row in range(size):
                groups.setdefault(tuple(_value_key(inputs[k][row]) for k in keys), []).append(row)
            rows_and_results = []
            for rows in groups.values():
                sub = {name: value[rows, ...] for name, value in inputs.items()}
                rows_and_results.append((rows, wrapped(*args, **sub, **others)))
            if pad_fn is not None:
                padded = pad_fn([result for _, result in rows_and_results])
                rows_and_results = [(rows, result) for (rows, _), result in zip(rows_and_results, padded)]
            first = rows_and_results[0][1]
            merged = {name: np.zeros((size,) + np.shape(data)[1:], dtype=np.asarray(data).dtype) for name, data in first.items()}
            for rows, result in rows_and_results:
                for name, data in result.items():
                    merged[name][rows, ...] = data
            return merged

        return wrapper

    return decorator


class ConstantPadder:
    """Pads a list of batches to the same per-row shape with ``pad_value`` (``b""`` for bytes)."""

    def __init__(self, pad_value=0):
        self.pad_value = pad_value

    def __call__(self, batches_list):
        names = list(dict.fromkeys(name for batch_ in batches_list for name in batch_))
        padded = [dict() for _ in batches_list]
        for name in names:
            arrays = [np.asarray(b[name]) if name in b else None for b in batches_list]
            present = [a for a in arrays if a is not None]
            kinds = {a.dtype.kind for a in present}
            if len(kinds) > 1 or (kinds.isdisjoint(set("SU")) and len({a.dtype for a in present}) > 1):
                raise PyTritonRuntimeError("All input arrays for given input name must have the same dtype.")
            dtype = max((a.dtype for a in present), key=lambda d: d.itemsize) if kinds & set("SU") else present[0].dtype
            shape = tuple(np.max([a.shape[1:] for a in present], axis=0)) if present[0].ndim > 1 else ()
            fill = b"" if dtype.kind in "SUO" else self.pad_value
            for index, array in enumerate(arrays):
                if array is None:
                    continue
                widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], shape)]
                padded[index][name] = np.pad(array, widths, mode="constant", constant_values=fill).astype(dtype)
        return padded


def fill_optionals(**defaults):
    """Fills inputs a request lacks with ``defaults`` (numpy arrays without the batch axis, with
    the input's dtype and shape), repeated along the batch axis when the model batches."""
    not_numpy = [k for k, v in defaults.items() if not isinstance(v, np.ndarray)]
    if not_numpy:
        raise PyTritonBadParameterError(f"Could not use {', '.join(not_numpy)} defaults as they are not NumPy arrays")

    def verify(binding):
        specs = {spec.name: spec for spec in binding.inputs}
        unknown = sorted(set(defaults) - set(specs))
        if unknown:
            raise PyTritonBadParameterError(f"Could not found {', '.join(unknown)} inputs")
        for name, value in defaults.items():
            want = specs[name]
            if value.dtype != np.dtype(want.dtype if want.dtype not in (bytes, str) else object):
                raise PyTritonBadParameterError(f"default {name}: dtype={value.dtype} expected_dtype={want.dtype}")
            if len(value.shape) != len(want.shape) or any(w != -1 and h != w for h, w in zip(value.shape, want.shape)):
                raise PyTritonBadParameterError(f"default {name}: shape={value.shape} expected_shape={want.shape}")

    def decorator(wrapped: Callable) -> Callable:
        @functools.wraps(wrapped)
        def wrapper(requests, *args, **kwargs):
            binding = _context.current()
            verify(binding)
            batching = binding.config.batching and binding.config.max_batch_size > 0
            for request in requests:
                size = _batch_size(request) if batching else None
                for name, value in defaults.items():
                    if name not in request:
                        request[name] = np.tile(value, (size,) + (1,) * value.ndim) if batching else value
            return wrapped(requests, *args, **kwargs)

        return wrapper

    return decorator


def pad_batch(wrapped: Callable) -> Callable:
    """Under ``@batch``: repeats the last row of each input until the batch has the nearest
    preferred batch size (or the max batch size) at or above its own."""

    @functools.wraps(wrapped)
    def wrapper(*args, **kwargs):
        config = _context.current().config
        inputs = {k: v for k, v in kwargs.items() if k not in _SPECIAL_KEYS}
        size = _batch_size(inputs)
        sizes = sorted((config.batcher.preferred_batch_size or []) if config.batcher is not None else [])
        sizes.append(config.max_batch_size)
        target = sizes[min(bisect.bisect_left(sizes, size), len(sizes) - 1)]
        for name, value in inputs.items():
            repeats = np.ones(size, dtype=np.int64)
            repeats[-1] = max(target - size + 1, 1)
            kwargs[name] = np.repeat(value, repeats, axis=0)
        return wrapped(*args, **kwargs)

    return wrapper


def first_value(*keys: str, squeeze_single_values: bool = True, strict: bool = True):
    """Replaces each of ``keys`` by its first row (a scalar when it holds one value and
    ``squeeze_single_values``); with ``strict`` every row must be equal. Works under ``@batch``
    (on keyword inputs) or on a list of requests; the model must batch."""
    special = [k for k in keys if k in _SPECIAL_KEYS]
    if special:
        raise PyTritonBadParameterError(f"The keys {', '.join(special)} are not allowed as keys for @first_value wrapper.")

    def replace(request):
        for name in keys:
            if name not in request:
                continue
            values = request[name]
            if strict and len(np.unique(values, axis=None if values.dtype == object else 0)) > 1:
                raise PyTritonRuntimeError(
                    f"The values on the {name!r} input are not equal. To proceed, either disable strict mode in "
                    f"@first_value wrapper or ensure that the values always are consistent. The current values of {name!r} are {values!r}."
                )
            first = values[0]
            if squeeze_single_values and not np.isscalar(first) and all(d == 1 for d in first.shape):
                first = np.squeeze(first)[()]
            request[name] = first
        return request

    def decorator(wrapped: Callable) -> Callable:
        @functools.wraps(wrapped)
        def wrapper(*args, **kwargs):
            config = _context.current().config
            if not (config.batching and config.max_batch_size > 0):
                raise PyTritonRuntimeError("The @first_value decorator can only be used with models that support batching.")
            if set(kwargs) - set(_SPECIAL_KEYS):
                return wrapped(*args, **replace(dict(kwargs)))
            requests, *rest = args
            return wrapped([replace(r) for r in requests], *rest, **kwargs)

        return wrapper

    return decorator


__all__ = ["batch", "sample", "group_by_keys", "group_by_values", "first_value", "fill_optionals", "pad_batch", "ConstantPadder"]
