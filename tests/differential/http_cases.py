"""HTTP/REST cases replayed in order on the real Triton 2.51 and on Tritium (see record_triton_http.py and
tests/python/http/test_http_differential.py).

A case is a dict:
    id        unique name (the recording's key and the pytest id)
    method    GET, POST, PUT, ...; the pseudo-method SHM_READ reads `size` bytes at `offset` of the system
              shared-memory segment named by `path` (no HTTP; shows what an output written there holds)
    path      request target
    headers   extra request headers (optional)
    body      None, bytes, or a JSON-able value (sent compact); with `binary: True` it is
              {"json": header, "binary": [bytes, ...]} and Inference-Header-Content-Length is set to the header's
              length unless `headers` sets it
    encode    "gzip" / "deflate": compress the finished body and send Content-Encoding
    server    "main" (default; --model-control-mode explicit --load-model '*') or "none" (--model-control-mode none)
    wait      {"model": m, "state": s}: before sending, poll POST /v2/repository/index (up to 15 s) until model m
              has state s ("absent": not listed), because Triton unloads asynchronously
    allow     [(path, rule, why)]: differences the comparison accepts for this case (see http_compare.py)
    note      what the case checks

The cases run in list order on one fresh server each, because some change state (stats counters, trace and
log settings, registered regions, loaded models). Keep every case that changes state followed by one that
restores it. In a case with `backend_model: m`, a literal "@BACKEND@" in the body becomes m's backend: "python" on
Triton, the built-in backend on Tritium (config overrides must name one).
"""

from __future__ import annotations

import contextlib
from multiprocessing import shared_memory

import numpy as np

from http_cases_admin import ADMIN_CASES, NONE_MODE_CASES
from http_cases_infer import GENERATE_CASES, INFER_CASES
from http_cases_meta import FINAL_STATS_CASES, META_CASES

CASES: list[dict] = META_CASES + INFER_CASES + GENERATE_CASES + FINAL_STATS_CASES + ADMIN_CASES + NONE_MODE_CASES

_ids = [case["id"] for case in CASES]
assert len(_ids) == len(set(_ids)), sorted({i for i in _ids if _ids.count(i) > 1})

# System shared-memory segments the cases use (created before a run, removed after). Their contents:
# "in": INPUT0 = 0..15 and INPUT1 = 16 x 1 as INT32 at offsets 0 and 64; "out": zeros; "extra": zeros, for
# the registration quirks; "small": one page no region ever fits in (a key already registered fails otherwise on
# Triton). Triton mmaps with the region offset, so offsets into a segment must be page-aligned.
SHM_SEGMENTS: dict[str, bytes] = {
    "tritium_httpdiff_in": np.arange(16, dtype=np.int32).tobytes() + np.ones(16, dtype=np.int32).tobytes() + bytes(4096 - 128),
    "tritium_httpdiff_out": bytes(4096),
    "tritium_httpdiff_extra": bytes(8192),
    "tritium_httpdiff_small": bytes(4096),
}


@contextlib.contextmanager
def shared_memory_segments():
    """Create the SHM_SEGMENTS (replacing leftovers of an earlier run) and remove them afterwards."""
    made = []
    try:
        for name, content in SHM_SEGMENTS.items():
            with contextlib.suppress(FileNotFoundError):
                old = shared_memory.SharedMemory(name)
                old.close()
                old.unlink()
            seg = shared_memory.SharedMemory(name, create=True, size=len(content))
            seg.buf[: len(content)] = content
            made.append(seg)
        yield {seg.name.lstrip("/"): seg for seg in made}
    finally:
        for seg in made:
            seg.close()
            with contextlib.suppress(FileNotFoundError):
                seg.unlink()


def cases_for(server: str) -> list[dict]:
    return [case for case in CASES if case.get("server", "main") == server]
