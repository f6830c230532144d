"""PyTriton's ``pytriton.triton``: ``Triton`` serves bound Python functions, ``TritonConfig`` its
options. Here the server is an in-process ``tritium.Server`` (no ``tritonserver`` child, no proxy
backend, no shared-memory hop): ``TritonConfig``'s fields that Tritium has become its options,
fields that only tune Triton's internals are accepted and have nothing to tune, and the others
are refused by name."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import signal
import threading
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .. import Server
from .. import _model
from .._runtime import Binding, wait_for_stop
from .exceptions import PyTritonBadParameterError, PyTritonInvalidOperationError, PyTritonValidationError
from .model_config import ModelConfig, Tensor, batcher_text, named
from . import _context

LOGGER = logging.getLogger("tritium.pytriton.triton")

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002

# TritonConfig fields Tritium has under another option name.
_RENAMED = {"id": "server_name", "grpc_infer_response_compression_level": "grpc_response_compression"}
# Fields that tune Triton's own threads, pools and probes: Tritium has none of these to tune.
_INTERNAL = {
    "http_thread_count",
    "grpc_infer_allocation_pool_size",
    "buffer_manager_thread_count",
    "allow_gpu_metrics",
    "allow_cpu_metrics",
    "exit_on_error",
    "cache_directory",
    "sagemaker_thread_count",
    "vertex_ai_thread_count",
}
# Fields whose only value with a meaning here is the one Tritium always has.
_ALWAYS = {"allow_grpc": True, "strict_readiness": True, "allow_sagemaker": False, "allow_vertex_ai": False}


@dataclasses.dataclass
class TritonConfig:
    """PyTriton's server options (its field names); ``None`` leaves Tritium's default."""

    model_repository: Optional[pathlib.Path] = None
    id: Optional[str] = None
    log_verbose: Optional[int] = None
    log_file: Optional[pathlib.Path] = None
    exit_timeout_secs: Optional[int] = None
    exit_on_error: Optional[bool] = None
    strict_readiness: Optional[bool] = None
    allow_http: Optional[bool] = None
    http_address: Optional[str] = None
    http_port: Optional[int] = None
    http_header_forward_pattern: Optional[str] = None
    http_thread_count: Optional[int] = None
    http_restricted_api: Optional[str] = None
    allow_grpc: Optional[bool] = None
    grpc_address: Optional[str] = None
    grpc_port: Optional[int] = None
    grpc_header_forward_pattern: Optional[str] = None
    grpc_infer_allocation_pool_size: Optional[int] = None
    grpc_use_ssl: Optional[bool] = None
    grpc_use_ssl_mutual: Optional[bool] = None
    grpc_server_cert: Optional[pathlib.Path] = None
    grpc_server_key: Optional[pathlib.Path] = None
    grpc_root_cert: Optional[pathlib.Path] = None
    grpc_infer_response_compression_level: Optional[str] = None
    grpc_keepalive_time: Optional[int] = None
    grpc_keepalive_timeout: Optional[int] = None
    grpc_keepalive_permit_without_calls: Optional[bool] = None
    grpc_http2_max_pings_without_data: Optional[int] = None
    grpc_http2_min_recv_ping_interval_without_data: Optional[int] = None
    grpc_http2_max_ping_strikes: Optional[int] = None
    grpc_restricted_protocol: Optional[str] = None
    allow_metrics: Optional[bool] = None
    allow_gpu_metrics: Optional[bool] = None
    allow_cpu_metrics: Optional[bool] = None
    metrics_interval_ms: Optional[int] = None
    metrics_port: Optional[int] = None
    metrics_address: Optional[str] = None
    allow_sagemaker: Optional[bool] = None
    sagemaker_port: Optional[int] = None
    sagemaker_safe_port_range: Optional[str] = None
    sagemaker_thread_count: Optional[int] = None
    allow_vertex_ai: Optional[bool] = None
    vertex_ai_port: Optional[int] = None
    vertex_ai_thread_count: Optional[int] = None
    vertex_ai_default_model: Optional[str] = None
    metrics_config: Optional[List[str]] = None
    trace_config: Optional[List[str]] = None
    cache_config: Optional[List[str]] = None
    cache_directory: Optional[str] = None
    buffer_manager_thread_count: Optional[int] = None

    def __post_init__(self):
        if self.allow_http not in (True, None) and self.allow_grpc not in (True, None):
            raise PyTritonValidationError("The `http` or `grpc` endpoint has to be allowed.")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> "TritonConfig":
        """A config from a dict, its string values cast to each field's type (unknown keys dropped)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in config.items():
            if key not in fields:
                continue
            values[key] = _cast(fields[key].type, value)
        return cls(**values)

    @classmethod
    def from_env(cls) -> "TritonConfig":
        """A config from ``PYTRITON_TRITON_CONFIG_<FIELD>`` environment variables, as PyTriton's."""
        prefix = "PYTRITON_TRITON_CONFIG_"
        found = {name[len(prefix) :].lower(): value for name, value in os.environ.items() if name.startswith(prefix)}
        return cls.from_dict(found)


def _cast(annotation: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = str(annotation)
    if "List" in text:
        return [part for part in value.split(",") if part]
    if "bool" in text:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise PyTritonBadParameterError(f"'{value}' is not a boolean")
    if "int" in text:
        try:
            return int(value)
        except ValueError:
            raise PyTritonBadParameterError(f"'{value}' is not an integer") from None
    if "Path" in text:
        return pathlib.Path(value)
    return value


def server_options(config: TritonConfig) -> Dict[str, Any]:
    """``tritium.Server`` keyword options for ``config``; refuses what Tritium cannot honour."""
    options: Dict[str, Any] = {
        "http_port": DEFAULT_HTTP_PORT,
        "grpc_port": DEFAULT_GRPC_PORT,
        "metrics_port": DEFAULT_METRICS_PORT,
    }
    for field, value in config.to_dict().items():
        if value is None or field in _INTERNAL:
            continue
        if field in _ALWAYS:
            if bool(value) != _ALWAYS[field]:
                raise PyTritonBadParameterError(f"TritonConfig.{field}={value!r}: Tritium serves only with {field}={_ALWAYS[field]}")
            continue
        if field in ("sagemaker_port", "sagemaker_safe_port_range", "vertex_ai_port", "vertex_ai_default_model"):
            continue  # only used with allow_sagemaker / allow_vertex_ai, refused above
        name = _RENAMED.get(field, field)
        if _model_option_exists(name):
            options[name] = value
        else:
            raise PyTritonBadParameterError(f"TritonConfig.{field} is not supported by Tritium")
    return options


def _model_option_exists(name: str) -> bool:
    from .. import _tritium

    return _tritium.option_takes_value(name.replace("_", "-")) is not None


@dataclasses.dataclass
class TritonSecurityConfig:
    """PyTriton's access-token protection of endpoints. Tritium has no such tokens: only
    ``restricted_endpoints=[]`` (nothing protected) is accepted."""

    access_token: Optional[str] = None
    restricted_endpoints: Optional[List[str]] = None


class _Binding:
    """One bound model: its functions (one per instance), tensors and config."""

    def __init__(self, name, funcs, inputs, outputs, config: ModelConfig, strict: bool):
        self.name = name
        self.funcs = funcs
        self.inputs = inputs
        self.outputs = outputs
        self.config = config
        self.strict = strict
        self._assigned = threading.local()
        self._next = 0
        self._lock = threading.Lock()

    def _func(self) -> Callable:
        """This thread's function: each server thread keeps one instance's function."""
        func = getattr(self._assigned, "func", None)
        if func is None:
            with self._lock:
                func = self._assigned.func = self.funcs[self._next % len(self.funcs)]
                self._next += 1
        return func

    def __call__(self, requests):
        with _context.model(self):
            answers = self._func()(requests)
        if hasattr(answers, "__await__"):
            return self._finish_async(answers)
        if hasattr(answers, "__next__") or hasattr(answers, "__anext__"):
            return _context.map_iter(answers, self._as_dicts)
        return self._as_dicts(answers)

    async def _finish_async(self, answers):
        return self._as_dicts(await answers)

    def _as_dicts(self, answers):
        """PyTriton lets a function answer each request with a list of outputs in the declared order."""
        if isinstance(answers, dict):
            answers = [answers]
        return [_context.as_dict(answer, self.outputs) for answer in answers]


class Triton:
    """PyTriton's ``Triton``: bind functions as models, then serve (``serve()``, ``run()`` or a
    ``with`` block) on the ports of its ``TritonConfig`` (8000, 8001, 8002 by default)."""

    def __init__(self, *, config: Optional[TritonConfig] = None, workspace: Any = None, triton_lifecycle_policy: Any = None, security_config: Any = None):
        merged = {k: v for k, v in TritonConfig.from_env().to_dict().items() if v is not None}
        if config is not None:
            merged.update({k: v for k, v in config.to_dict().items() if v is not None})
        self._config = TritonConfig(**merged)
        self._launch = getattr(triton_lifecycle_policy, "launch_triton_on_startup", True)
        if security_config is not None and (security_config.restricted_endpoints != [] or security_config.access_token):
            raise PyTritonBadParameterError(
                "security_config: endpoints restricted by an access token are not supported by Tritium (restricted_endpoints=[] is)"
            )
        options = server_options(self._config)
        # PyTriton's server starts with no model: an empty repository of its own (in the
        # workspace, when one is given), as PyTriton's workspace holds its models' folders.
        self._workspace = None
        if "model_repository" not in options:
            parent = os.fspath(workspace) if workspace is not None else None
            if parent is not None:
                os.makedirs(parent, exist_ok=True)
            self._workspace = tempfile.TemporaryDirectory(prefix="tritium-pytriton-", dir=parent)
            options["model_repository"] = self._workspace.name
        self._server = Server(**options)
        self._bound: Dict[str, _Binding] = {}
        self._stopped = threading.Event()

    def bind(
        self,
        model_name: str,
        infer_func: Union[Callable, Sequence[Callable]],
        inputs: Sequence[Tensor],
        outputs: Sequence[Tensor],
        model_version: int = 1,
        config: Optional[ModelConfig] = None,
        strict: bool = False,
        trace_config: Optional[List[str]] = None,
    ) -> None:
        """Serves ``infer_func`` (or a list of functions, one per instance) as ``model_name``;
        on a running server the model is loaded before this returns."""
        if model_version != 1:
            raise PyTritonBadParameterError("a bound model has version 1 only")
        if trace_config:
            raise PyTritonBadParameterError("trace_config is not supported by Tritium")
        if model_name in self._bound:
            raise PyTritonInvalidOperationError(f"Model {model_name} is already bound")
        funcs = list(infer_func) if isinstance(infer_func, (list, tuple)) else [infer_func]
        if not funcs or not all(callable(f) for f in funcs):
            raise PyTritonBadParameterError("infer_func must be a callable or a list of callables")
        config = config or ModelConfig()
        inputs, outputs = named(inputs, "INPUT"), named(outputs, "OUTPUT")
        binding = _Binding(model_name, funcs, inputs, outputs, config, strict)
        text = _model.config_text(
            model_name,
            "python_function",
            [_tensor(t) for t in inputs],
            [_tensor(t) for t in outputs],
            _model.ModelConfig(batching=config.batching, max_batch_size=config.max_batch_size, batcher=None, instance_count=len(funcs), decoupled=config.decoupled),
        )
        if config.batching and config.max_batch_size > 0 and config.batcher is not None:
            text += batcher_text(config.batcher) + "\n"
        if config.response_cache:
            text += "response_cache { enable: true }\n"
        try:
            self._server._native.bind(model_name, Binding(binding, [_tensor(t) for t in outputs], strict), text)
        except (ValueError, RuntimeError) as error:
            raise PyTritonValidationError(str(error)) from None
        self._bound[model_name] = binding

    def run(self) -> None:
        """Starts serving and returns (PyTriton's background mode)."""
        if not self._server.running:
            self._server.start()
            LOGGER.info(
                "Tritium serving: grpc port %s, http port %s, metrics port %s",
                self._server.grpc_port,
                self._server.http_port,
                self._server.metrics_port,
            )
            self._stopped.clear()

    def connect(self) -> None:
        self.run()

    def serve(self, monitoring_period_s: float = 5.0) -> None:
        """Serves until SIGINT, SIGTERM (in the main thread) or ``stop()``, then stops."""
        self.run()
        try:
            wait_for_stop(self._stopped, signal.SIGINT, signal.SIGTERM, period_s=monitoring_period_s)
        finally:
            self.stop()

    def stop(self) -> bool:
        """Stops the server (in-flight requests finish); ``True`` when it was running."""
        was = self._server.running
        self._stopped.set()
        try:
            self._server.stop()
        finally:
            if self._workspace is not None and was:
                self._workspace.cleanup()
        return was

    def is_alive(self) -> bool:
        return self._server.running

    def is_connected(self) -> bool:
        return self._server.running

    @property
    def grpc_port(self) -> Optional[int]:
        """The gRPC port bound (Tritium's addition: with port 0 in the config, the one chosen)."""
        return self._server.grpc_port

    @property
    def http_port(self) -> Optional[int]:
        return self._server.http_port

    @property
    def metrics_port(self) -> Optional[int]:
        return self._server.metrics_port

    def __enter__(self) -> "Triton":
        """Starts the server, as PyTriton's does; models bound inside the block load at once."""
        if self._launch:
            self.run()
        return self

    def __exit__(self, *_) -> None:
        self.stop()


def _tensor(tensor: Tensor) -> _model.Tensor:
    return _model.Tensor(name=tensor.name, dtype=tensor.dtype, shape=tuple(tensor.shape), optional=bool(tensor.optional))
