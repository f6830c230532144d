"""What the decorators need from the model being served: the bound model of this call (its
config and tensors), and the conversion of a function's answers to dicts of outputs."""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Mapping

from .exceptions import PyTritonRuntimeError, PyTritonValidationError

_local = threading.local()


@contextlib.contextmanager
def model(binding):
    previous = getattr(_local, "binding", None)
    _local.binding = binding
    try:
        yield
    finally:
        _local.binding = previous


def current():
    """The bound model whose function runs on this thread."""
    binding = getattr(_local, "binding", None)
    if binding is None:
        raise PyTritonRuntimeError("this decorator needs the model's config: call the function through Triton.bind")
    return binding


def as_dict(answer, outputs):
    """``answer`` as a dict of outputs: a list or tuple names them by the declared outputs' order."""
    if isinstance(answer, Mapping):
        return answer
    if isinstance(answer, (list, tuple)):
        if len(answer) != len(outputs):
            raise PyTritonValidationError("Outputs length different than config outputs length")
        return {spec.name: value for spec, value in zip(outputs, answer)}
    raise PyTritonValidationError(f"Unsupported output type {type(answer)}.")


def map_iter(answers, convert):
    """Each item of a (possibly async) generator of answers, converted."""
    if inspect.isasyncgen(answers):

        async def agen():
            async for item in answers:
                yield convert(item)

        return agen()
    return (convert(item) for item in answers)
