"""``tritium.worker.Worker``: this Python process joins a Tritium cluster as a worker.

It serves functions bound on it (as ``tritium.Server.bind`` does) and optionally a model
repository on the worker request plane, registered in discovery exactly as a ``tritium worker``
process is, so frontends started with ``tritium serve --discovery file|etcd ...`` route KServe
(and OpenAI) requests to it; it deregisters when stopped, and a killed worker's registration
expires with its lease. Example::

    import numpy as np
    from tritium import Tensor, batch
    from tritium.worker import Worker

    @batch
    def double(x):
        return {"y": x * 2}

    worker = Worker(discovery="file", discovery_dir="/tmp/cluster")
    worker.bind("double", double,
                inputs=[Tensor(name="x", dtype=np.float32, shape=(-1,))],
                outputs=[Tensor(name="y", dtype=np.float32, shape=(-1,))])
    worker.run()  # until Ctrl-C; a frontend on the same folder serves "double"
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any, Iterable, List, Optional, Union

from . import _binding, _options, _tritium
from ._llm import GenerateRequest
from ._model import ModelConfig, Tensor
from ._runtime import wait_for_stop

KvPublisher = _tritium.KvPublisher
kv_block_hashes = _tritium.kv_block_hashes

__all__ = ["Worker", "GenerateRequest", "KvPublisher", "kv_block_hashes"]

_running: "weakref.WeakSet[Worker]" = weakref.WeakSet()

_DISCOVERY = ("file", "etcd")


class Worker:
    """A Tritium worker in this process. ``discovery`` is ``"file"`` (a folder shared with the
    frontends: ``discovery_dir``) or ``"etcd"`` (``etcd_endpoints``); ``namespace`` keeps
    deployments apart; ``events`` is None or a NATS URL (``"nats://host:4222"``) for KV events and
    load reports. Other keyword options are ``tritium worker``'s long options with ``_`` for
    ``-`` (``lease_ttl_secs=2``, ``worker_token=...``). The worker plane binds ``worker_port``
    (0: any free port, read ``port`` once started) on loopback unless ``worker_address`` says
    otherwise."""

    def __init__(
        self,
        discovery: str = "file",
        discovery_dir: Union[None, str, os.PathLike] = None,
        etcd_endpoints: Union[None, str, Iterable[str]] = None,
        namespace: Optional[str] = None,
        events: Optional[str] = None,
        worker_id: Optional[str] = None,
        model_repository: Union[None, str, os.PathLike, Iterable[Union[str, os.PathLike]]] = None,
        worker_port: int = 0,
        **options: Any,
    ):
        if discovery not in _DISCOVERY:
            raise ValueError(f"discovery must be one of {', '.join(map(repr, _DISCOVERY))}, not {discovery!r}")
        if discovery == "file" and discovery_dir is None:
            raise ValueError("discovery='file' needs discovery_dir: the folder the frontends watch")
        if discovery == "etcd" and not etcd_endpoints:
            raise ValueError("discovery='etcd' needs etcd_endpoints")
        if isinstance(etcd_endpoints, str):
            etcd_endpoints = [etcd_endpoints]
        if events is not None and not str(events).startswith("nats://"):
            raise ValueError(f"events must be None or a NATS URL (nats://host:port), not {events!r}")
        if model_repository is not None and not isinstance(model_repository, (str, os.PathLike)):
            model_repository = list(model_repository)
        argv = _options(
            {
                "discovery": discovery,
                "discovery_dir": discovery_dir,
                "etcd_endpoints": list(etcd_endpoints) if etcd_endpoints else None,
                "namespace": namespace,
                "events": "nats" if events is not None else None,
                "nats_url": events,
                "worker_id": worker_id,
                "model_repository": model_repository,
                "worker_port": worker_port,
                **options,
            },
            command="worker",
        )
        self._native = _tritium._Worker(argv)
        self._stopped = threading.Event()

    def bind(
        self,
        model_name: str,
        infer_func,
        inputs: List[Tensor],
        outputs: List[Tensor],
        config: Optional[ModelConfig] = None,
        strict: bool = False,
    ) -> None:
        """Serves ``infer_func`` as model ``model_name``, as ``tritium.Server.bind`` does; bind
        before ``start``: the frontends learn the worker's models when it registers."""
        self._native.bind(model_name, *_binding(model_name, infer_func, inputs, outputs, config, strict))

    def bind_llm(
        self, model_name: str, handler, model_path: Union[str, os.PathLike], kv_block_size: int = 16
    ) -> "KvPublisher":
        """Serves a language model whose tokens ``handler`` makes: an async generator function
        taking a ``tritium.worker.GenerateRequest`` (``token_ids``, ``sampling``, ``stop``,
        ``cancelled``, ``kv``) and yielding token ids (ints or lists of them). The frontend
        tokenizes, applies the chat template and detokenizes with the card read from
        ``model_path`` (a GGUF file or a Hugging Face folder), as Dynamo's ``register_llm``; the
        worker stops the handler at ``max_tokens``, a stop token or end of sequence, and when the
        client goes.

        Returns the model's ``KvPublisher`` (also ``request.kv``): the KV blocks the handler's
        engine stores and evicts, announced through it, reach the frontends' KV-aware routers
        (``--router-mode kv``) over the worker's event plane (``events="nats://..."``), as a Rust
        engine's do. Blocks are ``kv_block_size`` tokens, which must equal the frontends'
        ``--kv-block-size`` (16 by default)."""
        if not callable(handler):
            raise TypeError("handler must be callable (an async generator function)")
        if not model_name or "/" in model_name:
            raise ValueError(f"'{model_name}' is not a usable model name")
        if isinstance(kv_block_size, bool) or not isinstance(kv_block_size, int):
            raise TypeError("kv_block_size must be an int")
        if kv_block_size < 1:
            raise ValueError(f"kv_block_size must be between 1 and 65536, not {kv_block_size}")
        return self._native.bind_llm(model_name, handler, os.fspath(model_path), kv_block_size)

    def start(self) -> "Worker":
        """Loads the models and registers; returns once frontends can find the worker."""
        self._native.start()
        self._stopped.clear()
        _running.add(self)
        return self

    def stop(self) -> None:
        """Deregisters (frontends stop sending at once), lets in-flight calls finish (within
        ``exit_timeout_secs``) and ends the worker."""
        try:
            self._native.stop()
        finally:
            _running.discard(self)
            self._stopped.set()

    def run(self) -> None:
        """Serves until Ctrl-C (SIGINT) or ``stop()`` from another thread, then stops."""
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
    def port(self) -> Optional[int]:
        """The worker-plane port, once started."""
        return self._native.port

    @property
    def worker_id(self) -> Optional[str]:
        """This worker's id in discovery, once started."""
        return self._native.worker_id

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@atexit.register
def _stop_at_exit() -> None:
    for worker in list(_running):
        try:
            if worker._native.pid == os.getpid():
                worker.stop()
        except Exception:  # noqa: BLE001 - exiting: nothing left to tell
            pass
