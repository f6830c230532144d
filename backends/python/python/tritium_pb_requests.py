"""`triton_python_backend_utils`' requests and responses: `InferenceRequest` (from the server, or a BLS request
a model runs), `InferenceResponse`, `InferenceResponseSender`, and what they carry."""

from __future__ import annotations

import enum
import json

import tritium_pb_state as _state
from tritium_pb_tensor import Tensor
from tritium_pb_types import (
    TRITONSERVER_REQUEST_RELEASE_ALL,
    TRITONSERVER_REQUEST_RELEASE_RESCHEDULE,
    TRITONSERVER_RESPONSE_COMPLETE_FINAL,
    TritonError,
    TritonModelException,
)

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
    """The trace of a request the server traces: pass it as `InferenceRequest(..., trace=request.trace())` and
    the BLS call is a child trace of the request, as in Triton. `get_context()` gives its W3C context as JSON
    (`{"traceparent": ...}`), or None for a request not traced."""

    def __init__(self, key=None, traceparent=None):
        self._key = key
        self._traceparent = traceparent

    def get_context(self):
        return json.dumps({"traceparent": self._traceparent}) if self._traceparent else None


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
        _state.runtime.send_response(self._key, response, final)

    def is_cancelled(self):
        return _state.runtime.is_cancelled(self._key)


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
            trace = extras.get("trace")
            if trace:
                request._trace = InferenceTrace(trace.get("key"), trace.get("traceparent"))
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
            collect = None if self._decoupled else _state.runtime.default_sender(self)
            self._sender = InferenceResponseSender(self._key, self._decoupled, collect)
        return self._sender

    def is_cancelled(self):
        return self._key is not None and _state.runtime.is_cancelled(self._key)

    def exec(self, decoupled=False):
        """Runs this request on the model it names and returns its response (a `decoupled` iterator of them)."""
        self._check_bls()
        return _state.runtime.infer(self, decoupled)

    def async_exec(self, decoupled=False):
        """As `exec`, as an awaitable for `async def execute`."""
        self._check_bls()
        return _state.runtime.async_infer(self, decoupled)

    def _check_bls(self):
        if not self._model_name:
            raise TritonModelException("a BLS request needs a model_name")
        for tensor in self._inputs:
            if not isinstance(tensor, Tensor):
                raise TritonModelException("BLS request inputs must be pb_utils.Tensor objects")
