"""Tritium, a KServe v2 / Triton inference server, in Python.

``tritium.Server`` serves in this process (a model repository, Python functions bound as models,
or both) on the server's own threads; ``python -m tritium serve ...`` is the ``tritium`` command
line. Example::

    import numpy as np
    import tritium

    @tritium.batch
    def double(x):
        return {"y": x * 2}

    server = tritium.Server(grpc_port=0, http_port=0, metrics_port=0)
    server.bind("double", double,
                inputs=[tritium.Tensor(name="x", dtype=np.float32, shape=(-1,))],
                outputs=[tritium.Tensor(name="y", dtype=np.float32, shape=(-1,))],
                config=tritium.ModelConfig(max_batch_size=8))
    with server:
        print("gRPC on", server.grpc_port, "HTTP on", server.http_port)
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import os
import threading
import weakref
from typing import Any, Iterable, List, Optional, Union

from . import _process, _tritium
from ._model import DynamicBatcher, ModelConfig, Request, Tensor, batch, config_text
from ._runtime import Binding, wait_for_stop

__all__ = ["Server", "Tensor", "ModelConfig", "DynamicBatcher", "Request", "batch"]

# Started servers, stopped at interpreter exit (in the process that started them).
_running: "weakref.WeakSet[Server]" = weakref.WeakSet()


def _options(options: dict, command: str = "serve") -> List[str]:
    """``tritium serve`` (or ``worker``) arguments from keyword options: ``grpc_address="127.0.0.1"``
    is ``--grpc-address 127.0.0.1``; a list repeats the option; ``True`` alone is a flag."""
    lookup = _tritium.option_takes_value if command == "serve" else _tritium.worker_option_takes_value
    argv: List[str] = []
    for key, value in options.items():
        long = key.replace("_", "-")
        takes_value = lookup(long)
        if takes_value is None:
            raise TypeError(f"tritium {command} has no option --{long} (keyword '{key}')")
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is None:
                continue
            if not takes_value:
                if not isinstance(item, bool):
                    raise TypeError(f"--{long} is a flag: give True or False")
                if item:
                    argv.append(f"--{long}")
            elif isinstance(item, bool):
                argv += [f"--{long}", "true" if item else "false"]
            else:
                argv += [f"--{long}", os.fspath(item) if isinstance(item, os.PathLike) else str(item)]
    return argv


def _binding(model_name, infer_func, inputs, outputs, config, strict):
    """What the native side binds: the function with its checks, and the model's config text."""
    if not callable(infer_func):
        raise TypeError("infer_func must be callable")
    if not model_name or "/" in model_name:
        raise ValueError(f"'{model_name}' is not a usable model name")
    config = config or ModelConfig()
    if not config.decoupled and _answers_several_times(infer_func):
        # A generator answers each request with what it yields: a decoupled model, whether or not
        # the config says so (PyTriton requires saying it; nothing else fits a generator).
        config = dataclasses.replace(config, decoupled=True)
    text = config_text(model_name, _tritium.BACKEND_NAME, list(inputs), list(outputs), config)
    return _process.binding(model_name, infer_func, list(outputs), strict, config), text


def _answers_several_times(func) -> bool:
    """A generator or async generator function (a callable object's ``__call__``, a partial's target)."""
    target = func if inspect.isroutine(func) or not callable(func) else getattr(func, "__call__", func)
    return inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target)


class Server:
    """A Tritium server in this process; keyword options are ``tritium serve``'s long options
    with ``_`` for ``-``. Port 0 binds any free port: read the one bound from ``grpc_port`` etc.
    once started. Use it as a context manager, or ``start()``/``stop()``, or ``run()`` to block
    until Ctrl-C or ``stop()`` from another thread."""

    def __init__(
        self,
        model_repository: Union[None, str, os.PathLike, Iterable[Union[str, os.PathLike]]] = None,
        grpc_port: int = 8001,
        http_port: int = 8000,
        metrics_port: int = 8002,
        **options: Any,
    ):
        if _process.in_child():
            raise RuntimeError("a process instance of a bound function imported a script that starts a server: "
                               "put its serving code under `if __name__ == \"__main__\":`")
        if model_repository is not None and not isinstance(model_repository, (str, os.PathLike)):
            model_repository = list(model_repository)
        argv = _options(
            {
                "model_repository": model_repository,
                "grpc_port": grpc_port,
                "http_port": http_port,
                "metrics_port": metrics_port,
                **options,
            }
        )
        self._native = _tritium._Server(argv)
        self._stopped = threading.Event()
        self._processes: List[_process.ProcessBinding] = []

    def bind(
        self,
        model_name: str,
        infer_func,
        inputs: List[Tensor],
        outputs: List[Tensor],
        config: Optional[ModelConfig] = None,
        strict: bool = False,
    ) -> None:
        """Serves ``infer_func`` as model ``model_name``. It is called with a list of requests
        (dicts of numpy arrays) and returns a list of dicts of output arrays, one per request;
        decorated with ``@tritium.batch`` it takes stacked inputs as keyword arguments instead.
        ``strict`` also checks each output's shape against its declared one (the datatype and
        the batch size are always checked)."""
        binding, text = _binding(model_name, infer_func, inputs, outputs, config, strict)
        if isinstance(binding, _process.ProcessBinding):
            try:
                self._native.bind(model_name, binding, text)
            except BaseException:
                binding.close()
                raise
            self._processes.append(binding)
        else:
            self._native.bind(model_name, binding, text)

    def start(self) -> "Server":
        """Starts serving; returns once every model is loaded and the ports listen."""
        self._native.start()
        self._stopped.clear()
        _running.add(self)
        return self

    def stop(self) -> None:
        """Stops the server: in-flight calls finish (within ``exit_timeout_secs``)."""
        try:
            self._native.stop()
        finally:
            for processes in self._processes:
                processes.close()
            _running.discard(self)
            self._stopped.set()

    def run(self) -> None:
        """Serves until Ctrl-C (SIGINT) or ``stop()``, then stops."""
        if not self._native.running:
            self.start()
        try:
            wait_for_stop(self._stopped)
        finally:
            self.stop()

    @property
    def running(self) -> bool:
        return self._native.running

    @property
    def grpc_port(self) -> Optional[int]:
        return self._native.grpc_port

    @property
    def http_port(self) -> Optional[int]:
        return self._native.http_port

    @property
    def metrics_port(self) -> Optional[int]:
        return self._native.metrics_port

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _stop_at_exit() -> None:
    for server in list(_running):
        try:
            if server._native.pid == os.getpid():
                server.stop()
        except Exception:  # noqa: BLE001 - exiting: nothing left to tell
            pass
