"""Called by the native ``python_llm`` backend for each generation: runs a bound language-model
handler (an async generator, or a plain generator) and hands what it yields to the engine, which
enforces the stop conditions and says when to end it. The request carries the model's
``KvPublisher`` as ``kv``, through which the handler announces the KV blocks it stores and evicts
to the frontends' KV-aware routers."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Dict, List


class GenerateRequest:
    """What a language-model handler receives: ``token_ids`` (the prompt, tokenized by the
    frontend), ``sampling`` (temperature, top_p, top_k, seed, penalties), ``stop`` (max_tokens,
    stop_token_ids, ignore_eos, min_tokens), ``cancelled``, true once the client went away, and
    ``kv``, the model's ``tritium.worker.KvPublisher``: ``request.kv.stored(request.token_ids)``
    tells the routers this worker now holds the prompt's blocks (it returns their hashes, for
    ``request.kv.removed(hashes)`` when they are evicted)."""

    def __init__(self, token_ids: List[int], sampling: Dict[str, Any], stop: Dict[str, Any], sink, kv=None):
        self.token_ids = token_ids
        self.sampling = sampling
        self.stop = stop
        self.kv = kv
        self._sink = sink

    @property
    def cancelled(self) -> bool:
        return self._sink.cancelled


def _ids(item) -> List[int]:
    if isinstance(item, int) and not isinstance(item, bool):
        return [item]
    ids = list(item)
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 for i in ids):
        raise TypeError(f"a language-model handler yields token ids (ints) or lists of them, not {item!r:.80}")
    return ids


def drive(handler, token_ids, sampling, stop, sink, kv) -> None:
    request = GenerateRequest(token_ids, sampling, stop, sink, kv)
    tokens = handler(request)
    if inspect.isgenerator(tokens):
        for item in tokens:
            if not sink(_ids(item)):
                tokens.close()
                return
        return
    if not inspect.isasyncgen(tokens):
        raise TypeError("a language-model handler is an async generator (async def ... yield token ids)")
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                item = loop.run_until_complete(tokens.__anext__())
            except StopAsyncIteration:
                return
            if not sink(_ids(item)):
                loop.run_until_complete(tokens.aclose())
                return
    finally:
        loop.close()
