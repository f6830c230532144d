"""Called by the native backend for each execution of a bound function: inputs to numpy, the
function's answer checked and turned back into (name, datatype, shape, bytes) for the server."""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
from collections.abc import Mapping

import numpy as np

from ._model import Request, kserve_datatype


def wait_for_stop(stopped: threading.Event, *signals: int, period_s: float = 1.0) -> None:
    """Waits until ``stopped`` is set or one of ``signals`` (SIGINT when none is named) arrives. In the main
    thread the signals are handled here for the wait, as the ``tritium`` binary handles them, so a process that
    inherited SIGINT ignored (a background job of a non-interactive shell) still stops on it; the handlers it had
    come back afterwards."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in signals or (signal.SIGINT,):
            previous[number] = signal.signal(number, lambda *_: stopped.set())
    try:
        while not stopped.wait(period_s):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


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


_local = threading.local()


def _loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop for async functions (the server's blocking threads are reused)."""
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop


def _iterate(answers):
    if inspect.isasyncgen(answers):
        loop = _loop()
        while True:
            try:
                yield loop.run_until_complete(answers.__anext__())
            except StopAsyncIteration:
                return
    elif inspect.isgenerator(answers):
        yield from answers
    else:
        yield answers


def _answer(binding: Binding, answers):
    if isinstance(answers, Mapping):
        answers = [answers]
    answers = list(answers)
    if len(answers) != 1:
        raise ValueError(f"the function returned {len(answers)} answers for 1 request")
    answer = answers[0]
    if not isinstance(answer, Mapping):
        raise TypeError(f"the function returned {type(answer).__name__}, not a dict of output arrays")
    return [_tensor(str(name), value, binding) for name, value in answer.items()]


def invoke(binding: Binding, inputs, decoupled: bool, parameters=None):
    """One execution: the answer's tensors, or for a decoupled model an iterator of them. The
    request's parameters are ``request.parameters`` (the dynamic batcher merges only requests
    whose parameters are the same)."""
    if not isinstance(binding, Binding):  # process instances (tritium._process)
        return binding.invoke(inputs, decoupled, parameters)
    request = Request({name: _array(datatype, shape, payload) for name, datatype, shape, payload in inputs}, parameters)
    answers = binding.func([request])
    if inspect.isawaitable(answers):
        answers = _loop().run_until_complete(answers)
    if decoupled:
        return (_answer(binding, item) for item in _iterate(answers))
    if inspect.isgenerator(answers) or inspect.isasyncgen(answers):
        raise TypeError("a generator function answers several times: bind it with ModelConfig(decoupled=True)")
    return _answer(binding, answers)
