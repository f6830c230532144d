"""PyTriton's ``pytriton.client``: ``ModelClient``, ``AsyncioModelClient`` and
``DecoupledModelClient`` over tritonclient (which the user installs: ``pip install
tritonclient[all]``), for any KServe v2 server, Tritium or Triton. A URL without a scheme is
HTTP; ``grpc://`` picks gRPC; without a port, 8000 (HTTP) or 8001 (gRPC)."""

from __future__ import annotations

import dataclasses
import itertools
import queue
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .exceptions import PyTritonError

# The ports a URL without one means (module attributes, so an embedding can point them elsewhere).
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
_DEFAULT_INIT_TIMEOUT_S = 300.0
_DEFAULT_INFERENCE_TIMEOUT_S = 60.0


class PyTritonClientError(PyTritonError):
    """The base of the client's errors."""


class PyTritonClientValueError(PyTritonClientError):
    """Arguments that cannot be used."""


class PyTritonClientInvalidUrlError(PyTritonClientError):
    """A URL that is not ``[scheme://]host[:port]``."""


class PyTritonClientTimeoutError(PyTritonClientError):
    """The server, the model or an inference did not answer in time."""


class PyTritonClientModelUnavailableError(PyTritonClientError):
    """The model is not served."""


class PyTritonClientClosedError(PyTritonClientError):
    """The client was closed."""


class PyTritonClientModelDoesntSupportBatchingError(PyTritonClientError):
    """``infer_batch`` on a model without batching."""


class PyTritonClientInferenceServerError(PyTritonClientError):
    """The server (or the model's function) answered with an error."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: Any
    optional: bool = False


@dataclasses.dataclass(frozen=True)
class ModelConfigView:
    """What the client reads of a model's config."""

    model_name: str
    max_batch_size: int
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    decoupled: bool

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0


_NP_BY_CONFIG_TYPE = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64, "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


def parse_url(url: str) -> Tuple[str, str]:
    """``(protocol, host:port)`` of a PyTriton client URL."""
    if "://" not in url:
        url = f"http://{url}"
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "grpc") or not parsed.hostname:
        raise PyTritonClientInvalidUrlError(f"Invalid url {url!r}: give [http|grpc]://host[:port]")
    try:
        port = parsed.port
    except ValueError:
        raise PyTritonClientInvalidUrlError(f"Invalid url {url!r}: bad port") from None
    if port is None:
        port = DEFAULT_HTTP_PORT if scheme == "http" else DEFAULT_GRPC_PORT
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return scheme, f"{host}:{port}"


def _config_view(model_name: str, config: Dict[str, Any]) -> ModelConfigView:
    def specs(items):
        return [
            TensorSpec(
                name=item["name"],
                shape=tuple(int(d) for d in item.get("dims", [])),
                dtype=_NP_BY_CONFIG_TYPE.get(item.get("data_type", "TYPE_FP32"), np.object_),
                optional=bool(item.get("optional", False)),
            )
            for item in items
        ]

    decoupled = bool((config.get("model_transaction_policy") or {}).get("decoupled", False))
    return ModelConfigView(model_name, int(config.get("max_batch_size", 0)), specs(config.get("input", [])), specs(config.get("output", [])), decoupled)


def _check_args(inputs, named_inputs):
    if inputs and named_inputs:
        raise PyTritonClientValueError("Use either positional either keyword method arguments convention")
    if not inputs and not named_inputs:
        raise PyTritonClientValueError("Provide input data")


def _check_parameters(parameters):
    if parameters is None:
        return
    if not isinstance(parameters, dict) or not all(isinstance(v, (str, int, bool, float)) for v in parameters.values()):
        raise PyTritonClientValueError("parameters and headers must be a dict of str, int, bool or float values")


class _Base:
    """What the three clients share: the URL, the model, its config and the requests."""

    def __init__(self, url, model_name, model_version=None, *, lazy_init=True, init_timeout_s=None, inference_timeout_s=None, model_config=None, ensure_model_is_ready=True, access_token=None):
        if access_token is not None:
            raise PyTritonClientValueError("access_token (PyTriton's restricted endpoints) is not supported")
        self._protocol, self._address = parse_url(url)
        self._model_name = model_name
        self._model_version = "" if model_version is None else str(model_version)
        self._init_timeout_s = _DEFAULT_INIT_TIMEOUT_S if init_timeout_s is None else init_timeout_s
        self._inference_timeout_s = _DEFAULT_INFERENCE_TIMEOUT_S if inference_timeout_s is None else inference_timeout_s
        self._model_config = model_config
        self._ensure_ready = ensure_model_is_ready
        self._ids = itertools.count(1)
        self._lib = self._load_lib()

    def _load_lib(self):
        try:
            if self._protocol == "grpc":
                import tritonclient.grpc as lib
            else:
                import tritonclient.http as lib
        except ImportError as error:
            raise PyTritonClientError(f"tritonclient is needed: pip install 'tritonclient[all]' ({error})") from None
        return lib

    def _config_from(self, raw) -> ModelConfigView:
        if self._protocol == "grpc":
            from google.protobuf import json_format

            raw = json_format.MessageToDict(raw.config, preserving_proto_field_name=True)
        return _config_view(self._model_name, raw)

    def _request(self, inputs, parameters, headers, batch: bool):
        config = self._model_config
        if isinstance(inputs, tuple):
            if len(inputs) > len(config.inputs):
                raise PyTritonClientValueError(f"{len(inputs)} inputs given; the model has {len(config.inputs)}")
            inputs = {spec.name: data for spec, data in zip(config.inputs, inputs)}
        if not batch and config.batching:
            inputs = {name: np.asarray(data)[np.newaxis, ...] for name, data in inputs.items()}
        wrapped = []
        for name, data in inputs.items():
            data = np.asarray(data)
            if data.dtype.type == np.str_:
                raise PyTritonClientValueError(f"Unicode inputs are not supported: encode input {name!r} (e.g. np.char.encode(array, 'utf-8'))")
            if data.dtype == object and data.size and not isinstance(data.reshape(-1)[0], bytes):
                raise PyTritonClientValueError(f"input {name!r}: an object array must hold encoded strings (bytes)")
            from tritonclient.utils import np_to_triton_dtype

            tensor = self._lib.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
            tensor.set_data_from_numpy(data)
            wrapped.append(tensor)
        outputs = [self._lib.InferRequestedOutput(spec.name) for spec in config.outputs]
        kwargs = dict(
            model_name=self._model_name,
            model_version=self._model_version,
            inputs=wrapped,
            outputs=outputs,
            request_id=str(next(self._ids)),
            parameters=parameters or None,
            headers={str(k): str(v) for k, v in headers.items()} if headers else None,
        )
        return kwargs

    def _result(self, response, batch: bool) -> Dict[str, np.ndarray]:
        result = {spec.name: response.as_numpy(spec.name) for spec in self._model_config.outputs}
        result = {name: value for name, value in result.items() if value is not None}
        if not batch and self._model_config.batching:
            result = {name: value[0] for name, value in result.items()}
        return result

    @property
    def is_batching_supported(self) -> bool:
        return self.model_config.batching

    def _server_error(self, error):
        text = error.message() if hasattr(error, "message") else str(error)
        if "Deadline Exceeded" in text or "timed out" in text.lower():
            return PyTritonClientTimeoutError(f"Timeout occurred during inference request. Timeout: {self._inference_timeout_s} s. Message: {text}")
        return PyTritonClientInferenceServerError(f"Error occurred during inference request. Message: {text}")


class ModelClient(_Base):
    """A synchronous client of one model (``infer_sample`` adds and removes the batch axis)."""

    def __init__(self, url, model_name, model_version=None, **kwargs):
        super().__init__(url, model_name, model_version, **kwargs)
        timeout = self._inference_timeout_s
        if self._protocol == "grpc":
            self._client = self._lib.InferenceServerClient(self._address)
        else:
            self._client = self._lib.InferenceServerClient(self._address, connection_timeout=timeout, network_timeout=timeout)
        if not kwargs.get("lazy_init", True):
            self._init()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _live(self):
        if self._client is None:
            raise PyTritonClientClosedError("ModelClient is closed")
        return self._client

    def wait_for_server(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._live().is_server_ready():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise PyTritonClientTimeoutError(f"Waiting for server to be ready timed out after {timeout_s} s")
            time.sleep(0.05)

    def wait_for_model(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.wait_for_server(timeout_s)
        while not self._live().is_model_ready(self._model_name, self._model_version):
            if time.monotonic() > deadline:
                raise PyTritonClientTimeoutError(f"Waiting for model {self._model_name} to be ready timed out after {timeout_s} s")
            time.sleep(0.05)

    def _init(self) -> None:
        if self._model_config is None or self._ensure_ready:
            self.wait_for_model(self._init_timeout_s)
        if self._model_config is None:
            raw = self._live().get_model_config(self._model_name, self._model_version)
            self._model_config = self._config_from(raw)

    @property
    def model_config(self) -> ModelConfigView:
        if self._model_config is None:
            self._init()
        return self._model_config

    def load_model(self, config: Optional[str] = None, files: Optional[dict] = None) -> None:
        self._live().load_model(self._model_name, config=config, files=files)

    def unload_model(self) -> None:
        self._live().unload_model(self._model_name)

    def infer_sample(self, *inputs, parameters=None, headers=None, **named_inputs) -> Dict[str, np.ndarray]:
        """One sample (no batch axis) in, its outputs out."""
        return self._infer(inputs, named_inputs, parameters, headers, batch=False)

    def infer_batch(self, *inputs, parameters=None, headers=None, **named_inputs) -> Dict[str, np.ndarray]:
        """A batch (first axis) in, the batch's outputs out; the model must batch."""
        if not self.model_config.batching:
            raise PyTritonClientModelDoesntSupportBatchingError(f"Model {self._model_name} doesn't support batching - use infer_sample method instead")
        return self._infer(inputs, named_inputs, parameters, headers, batch=True)

    def _infer(self, inputs, named_inputs, parameters, headers, batch):
        _check_args(inputs, named_inputs)
        _check_parameters(parameters)
        _check_parameters(headers)
        if self.model_config.decoupled:
            raise PyTritonClientInferenceServerError("Model config is decoupled. Use DecoupledModelClient instead.")
        request = self._request(inputs or named_inputs, parameters, headers, batch)
        if self._protocol == "grpc":
            request["client_timeout"] = self._inference_timeout_s
        try:
            response = self._live().infer(**request)
        except Exception as error:  # noqa: BLE001 - tritonclient's errors, and socket errors
            raise self._server_error(error) from error
        return self._result(response, batch)


class DecoupledModelClient(ModelClient):
    """A client of a decoupled model (gRPC streaming): ``infer_sample``/``infer_batch`` return an
    iterator of the model's responses, each a dict of outputs."""

    def __init__(self, url, model_name, model_version=None, **kwargs):
        super().__init__(url, model_name, model_version, **kwargs)
        if self._protocol != "grpc":
            raise PyTritonClientValueError("DecoupledModelClient is only supported for grpc protocol")

    def _infer(self, inputs, named_inputs, parameters, headers, batch):
        _check_args(inputs, named_inputs)
        _check_parameters(parameters)
        _check_parameters(headers)
        if not self.model_config.decoupled:
            raise PyTritonClientInferenceServerError("Model config is coupled. Use ModelClient instead.")
        request = self._request(inputs or named_inputs, parameters, headers, batch)
        return self._stream(request, batch)

    def _stream(self, request, batch):
        answers: "queue.Queue" = queue.Queue()
        client = self._live()
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=request.pop("headers"))
        try:
            client.async_stream_infer(**request, enable_empty_final_response=True)
            while True:
                try:
                    result, error = answers.get(timeout=self._inference_timeout_s)
                except queue.Empty:
                    raise PyTritonClientTimeoutError(f"Timeout occurred during inference request. Timeout: {self._inference_timeout_s} s") from None
                if error is not None:
                    raise self._server_error(error)
                response = result.get_response()
                final = response.parameters.get("triton_final_response")
                if response.outputs:
                    yield self._result(result, batch)
                if final is not None and final.bool_param:
                    return
        finally:
            client.stop_stream()


class AsyncioModelClient(_Base):
    """``ModelClient`` for asyncio (tritonclient's aio clients): ``await client.infer_batch(...)``."""

    def __init__(self, url, model_name, model_version=None, **kwargs):
        super().__init__(url, model_name, model_version, **kwargs)
        if self._protocol == "grpc":
            import tritonclient.grpc.aio as aio
        else:
            import tritonclient.http.aio as aio
        self._aio = aio
        self._client = aio.InferenceServerClient(self._address)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *_):
        await self.close()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _live(self):
        if self._client is None:
            raise PyTritonClientClosedError("AsyncioModelClient is closed")
        return self._client

    async def wait_for_model(self, timeout_s: float) -> None:
        import asyncio

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if await self._live().is_model_ready(self._model_name, self._model_version):
                    return
            except PyTritonClientClosedError:
                raise
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise PyTritonClientTimeoutError(f"Waiting for model {self._model_name} to be ready timed out after {timeout_s} s")
            await asyncio.sleep(0.05)

    async def model_config(self) -> ModelConfigView:
        if self._model_config is None:
            if self._ensure_ready:
                await self.wait_for_model(self._init_timeout_s)
            self._model_config = self._config_from(await self._live().get_model_config(self._model_name, self._model_version))
        return self._model_config

    async def infer_sample(self, *inputs, parameters=None, headers=None, **named_inputs):
        return await self._infer(inputs, named_inputs, parameters, headers, batch=False)

    async def infer_batch(self, *inputs, parameters=None, headers=None, **named_inputs):
        if not (await self.model_config()).batching:
            raise PyTritonClientModelDoesntSupportBatchingError(f"Model {self._model_name} doesn't support batching - use infer_sample method instead")
        return await self._infer(inputs, named_inputs, parameters, headers, batch=True)

    async def _infer(self, inputs, named_inputs, parameters, headers, batch):
        _check_args(inputs, named_inputs)
        _check_parameters(parameters)
        _check_parameters(headers)
        await self.model_config()
        request = self._request(inputs or named_inputs, parameters, headers, batch)
        try:
            response = await self._live().infer(**request)
        except Exception as error:  # noqa: BLE001 - tritonclient's errors, and socket errors
            raise self._server_error(error) from error
        return self._result(response, batch)


__all__ = ["ModelClient", "AsyncioModelClient", "DecoupledModelClient"]
