"""The prefix cache as clients see it, with the real SmolLM2: a long shared system prompt is computed once,
and every later request that starts with it reports the reused tokens: OpenAI `usage.prompt_tokens_details.
cached_tokens` (chat, completions, streaming usage chunks, Responses), the `cached_tokens` parameter on the final
KServe gRPC response, and the engine's metrics. (Anthropic's `cache_read_input_tokens`: test_openai_agents.py.)
Also the offload tier through the command line: a prefix pushed out of a small pool comes back from disk.

Greedy decoding keeps the repeated answers comparable; the prompts are unique to this module so the other
modules sharing nothing with it cannot warm the cache first.
"""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

from conftest import LLM_START_TIMEOUT, model_paths
from helpers import finish_server, start_server

pytestmark = pytest.mark.llm  # every test serves SmolLM2 (model_paths() or llm_server)

LLM = "smollm2"
BLOCK = 16
REQUEST_TIMEOUT_S = 120
SYSTEM = (
    "You are the help desk of the Riverside Observatory. Visitors ask about opening hours, ticket prices, the "
    "planetarium shows and the telescope evenings. The observatory opens at ten in the morning and closes at five "
    "in the afternoon, except on Fridays when the telescope evening runs until eleven at night. Adult tickets cost "
    "twelve euros, children under twelve enter free, and students pay eight euros with a valid card. Answer in one "
    "short sentence."
)


@pytest.fixture(scope="module")
def oai(llm_server):
    client = openai.OpenAI(base_url=llm_server.http_url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    yield client
    client.close()


def chat(oai, question: str, **extra):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return oai.chat.completions.create(model=LLM, messages=messages, max_tokens=8, temperature=0, **extra)


def reusable(prompt_tokens: int) -> int:
    """The cached tokens of a repeated prompt: its full blocks, but the one holding its last token."""
    return (prompt_tokens - 1) // BLOCK * BLOCK


def test_chat_repeat_and_shared_system_prompt_report_cached_tokens(oai):
    first = chat(oai, "When does the observatory close on Fridays?")
    assert first.usage.prompt_tokens > 4 * BLOCK
    assert first.usage.prompt_tokens_details.cached_tokens == 0, first.usage

    again = chat(oai, "When does the observatory close on Fridays?")
    assert again.usage.prompt_tokens_details.cached_tokens == reusable(again.usage.prompt_tokens), again.usage
    assert again.choices[0].message.content == first.choices[0].message.content

    other = chat(oai, "How much does a student ticket cost?")
    cached = other.usage.prompt_tokens_details.cached_tokens
    assert 3 * BLOCK <= cached < other.usage.prompt_tokens, other.usage
    assert cached % BLOCK == 0


def test_streaming_usage_chunk_reports_cached_tokens(oai):
    chat(oai, "Do children pay for the planetarium?")
    stream = chat(oai, "Do children pay for the planetarium?", stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    assert len(usage) == 1
    assert usage[0].prompt_tokens_details.cached_tokens == reusable(usage[0].prompt_tokens), usage[0]


def test_completions_and_responses_report_cached_tokens(oai):
    prompt = SYSTEM + "\nQuestion: is there a telescope evening on Mondays?\nAnswer:"
    oai.completions.create(model=LLM, prompt=prompt, max_tokens=4, temperature=0)
    completion = oai.completions.create(model=LLM, prompt=prompt, max_tokens=4, temperature=0)
    usage = completion.usage
    assert usage.prompt_tokens_details.cached_tokens == reusable(usage.prompt_tokens), usage

    response = oai.responses.create(model=LLM, instructions=SYSTEM, input="Is the observatory open on Sundays?", max_output_tokens=4, temperature=0)
    assert response.usage.input_tokens_details.cached_tokens >= 3 * BLOCK, response.usage


def test_a_stop_string_still_reports_cached_tokens(oai):
    """A stop string ends the sequence in the frontend, before the engine's own count: the first token
    carries it."""
    prompt = SYSTEM + "\nQuestion: what do students pay?\nAnswer:"
    oai.completions.create(model=LLM, prompt=prompt, max_tokens=2, temperature=0)
    stopped = oai.completions.create(model=LLM, prompt=prompt, max_tokens=16, temperature=0, stop=[" ", "."])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.prompt_tokens_details.cached_tokens == reusable(stopped.usage.prompt_tokens), stopped.usage


def test_kserve_final_response_carries_cached_tokens_and_metrics_count_them(llm_server):
    client = grpcclient.InferenceServerClient(llm_server.url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([("Over KServe. " + SYSTEM + " Where can I park?").encode()], dtype=np.object_))
    parameters = {"max_tokens": 4, "temperature": 0.0}
    first = client.infer(LLM, [text], parameters=parameters)
    assert first.get_response().parameters["cached_tokens"].int64_param == 0
    second = client.infer(LLM, [text], parameters=parameters)
    assert second.get_response().parameters["cached_tokens"].int64_param >= 4 * BLOCK
    assert second.as_numpy("text_output")[0] == first.as_numpy("text_output")[0]
    client.close()

    with urllib.request.urlopen(llm_server.http_url + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    cached = [line for line in lines if line.startswith("tritium_llm_engine_prompt_tokens_cached_total{")]
    assert cached and float(cached[0].rsplit(" ", 1)[1]) >= 4 * BLOCK, cached


def engine_metric(server, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    values = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{")]
    return values[0] if values else 0.0


def test_a_prefix_pushed_out_of_memory_comes_back_from_the_offload_tier(tmp_path):
    gguf, _ = model_paths()
    # Twelve blocks: the second prompt's blocks push the first one's out of memory, to disk.
    server = start_server(
        "--model-path", str(gguf), "--model-name", LLM, "--llm-max-kv-tokens", "192",
        "--llm-kv-offload-dir", str(tmp_path), "--llm-kv-offload-bytes", str(64 << 20),
        timeout=LLM_START_TIMEOUT,
    )  # fmt: skip
    try:
        llm = openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
        first = SYSTEM + "\nQuestion: is the planetarium open on Mondays?\nAnswer:"
        cold = llm.completions.create(model=LLM, prompt=first, max_tokens=4, temperature=0)
        other = "Rivers, mountains and the sea: a text that shares nothing with the first prompt. " * 6
        llm.completions.create(model=LLM, prompt=other, max_tokens=4, temperature=0)
        deadline = time.monotonic() + 60
        while engine_metric(server, "tritium_llm_engine_kv_blocks_offloaded_total") < 1:
            assert time.monotonic() < deadline, "no block was written to the offload tier"
            time.sleep(0.05)
        again = llm.completions.create(model=LLM, prompt=first, max_tokens=4, temperature=0)
        assert again.usage.prompt_tokens_details.cached_tokens > 0, again.usage
        assert again.choices[0].text == cold.choices[0].text
        assert engine_metric(server, "tritium_llm_engine_kv_blocks_restored_total") >= 1
        assert list(tmp_path.glob("model-*/*.kvb")), "block files under the offload folder"
        llm.close()
    finally:
        finish_server(server)
