"""The real perf_analyzer 2.60.0 (scripts/perf_analyzer, installed by scripts/install-perf-analyzer.sh)
against the default server: small bounded runs in sync, async, streaming and system-shared-memory modes;
and against the LLM server (`llm_server`): streaming generation on `smollm2` with a real prompt.

Each run is capped in requests (count windows), wall time (subprocess timeout) and address space
(`prlimit --as`, util-linux), because perf_analyzer's memory grows per request and is never released (peers.md).
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess

import pytest

from perf_analyzer_helpers import PERF_ANALYZER, perf_analyzer

pytestmark = pytest.mark.perf_analyzer

MODES = {
    "sync": ["--sync"],
    "async_c4": ["--async", "--concurrency-range", "4"],
    "streaming": ["--async", "--streaming"],
    "system_shm": ["--shared-memory", "system", "--output-shared-memory-size", "1024"],
}

MODELS = {
    "identity": ["--shape", "INPUT0:16"],
    "add_sub": [],
}


def test_perf_analyzer_runs():
    proc = subprocess.run([str(PERF_ANALYZER)], capture_output=True, text=True, timeout=60)
    assert "--concurrency-range" in proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("model", list(MODELS))
def test_perf_analyzer(tritium, model, mode):
    perf_analyzer(tritium.url, "-m", model, *MODELS[model], *MODES[mode])


def test_perf_analyzer_decoupled_repeat(tritium, tmp_path: pathlib.Path):
    # Random data would ask the repeat model for billions of responses; give it IN = 2 explicitly.
    data = tmp_path / "repeat.json"
    data.write_text(json.dumps({"data": [{"IN": [2], "DELAY_MS": [0]}]}))
    perf_analyzer(tritium.url, "-m", "repeat", "--async", "--streaming", "--input-data", str(data))


def test_perf_analyzer_batched_identity(tritium):
    perf_analyzer(tritium.url, "-m", "identity_batch", "--shape", "INPUT0:16", "-b", "4", "--async", "--concurrency-range", "2")


# Lines perf_analyzer prints when something went wrong ("error: ...", "Failed to ...", "Thread [0] had error: ...").
ERROR_LINE = re.compile(r"error|fail", re.IGNORECASE)


def test_perf_analyzer_smollm2_streaming(llm_server, tmp_path: pathlib.Path):
    # BYTES data as a string list with its shape; BOOL as a JSON bool. max_tokens is the server's default (16).
    data = tmp_path / "llm.json"
    data.write_text(
        json.dumps(
            {
                "data": [
                    {
                        "text_input": {"content": ["The capital of France is"], "shape": [1]},
                        "streaming": {"content": [True], "shape": [1]},
                    }
                ]
            }
        )
    )
    proc = perf_analyzer(
        llm_server.url,
        "-m", "smollm2",
        "--async", "--streaming",
        "--input-data", str(data),
        "--concurrency-range", "2",
        "-p", "1000",
        "-v",  # prints the error of each failed pass ("Pass [1] cb::Error: ...") instead of retrying silently
        request_count=8,
        timeout=150,
    )
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if ERROR_LINE.search(line)]
    assert errors == [], output[-6000:]


# --- the same over KServe v2 REST (-i http): perf_analyzer takes the HTTP port as host:port, without the scheme.
# Its HTTP client sends binary tensors by default; --output-tensor-format json asks for JSON "data" outputs.

HTTP_MODES = {
    "sync": ["--sync"],
    "async_c4": ["--async", "--concurrency-range", "4"],
    "system_shm": ["--shared-memory", "system", "--output-shared-memory-size", "1024"],
    "json_out": ["--output-tensor-format", "json"],
    "json_out_async": ["--async", "--concurrency-range", "2", "--output-tensor-format", "json"],
}


def http_address(server) -> str:
    return server.http_url.removeprefix("http://")


@pytest.mark.parametrize("mode", list(HTTP_MODES))
@pytest.mark.parametrize("model", list(MODELS))
def test_perf_analyzer_http(tritium, model, mode):
    perf_analyzer(http_address(tritium), "-m", model, *MODELS[model], *HTTP_MODES[mode], protocol="http")


def test_perf_analyzer_http_json_input(tritium):
    # perf_analyzer 2.60's --input-tensor-format json writes only the first element of each tensor into "data"
    # (recorded: shape [16] with "data":[0]), which Triton 2.51 refuses (500 "Unable to parse 'data': Shape does not
    # match true shape of 'data' field"); so JSON inputs are run with one-element tensors.
    perf_analyzer(
        http_address(tritium), "-m", "identity", "--shape", "INPUT0:1",
        "--input-tensor-format", "json", "--output-tensor-format", "json", protocol="http",
    )


def test_perf_analyzer_http_batched_identity(tritium):
    perf_analyzer(
        http_address(tritium), "-m", "identity_batch", "--shape", "INPUT0:16", "-b", "4",
        "--async", "--concurrency-range", "2", protocol="http",
    )
