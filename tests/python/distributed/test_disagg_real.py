"""Disaggregated prefill and decode on the real engine: a `tritium worker --disaggregation-mode prefill` and a
`--disaggregation-mode decode` serving SmolLM2 (discovery in a real etcd, KV events on a real NATS) behind a
`--router-mode kv` frontend. A long prompt is prefilled on the prefill worker, whose KV blocks go straight to
the decode worker; short prompts and prompts the decode worker holds are prefilled where they decode. Every
answer is the aggregated server's, token for token, and `nvext.extra_fields: ["worker_id"]` names both
workers as Dynamo does. A prefill worker killed mid-transfer costs the client nothing but time. A
`cache_control` breakpoint's prefix, prefilled on the prefill worker, is pinned on the decode worker that took
its blocks over, and read from there by the next request.
"""

from __future__ import annotations

import concurrent.futures

import anthropic
import openai
import pytest

from cluster import WORDS, cluster_args, listed_models, start_etcd, start_nats, stop_cluster, wait_until, workers_serving
from conftest import LLM_START_TIMEOUT, model_paths
from helpers import start_server, start_worker

# Slow: a prefill and a decode worker each serving SmolLM2, long prompts moved between them.
pytestmark = [pytest.mark.etcd, pytest.mark.nats, pytest.mark.llm, pytest.mark.slow]

LLM = "smollm2"


def long_prompt(seed: int, words: int = 600) -> str:
    """Over 512 tokens (a word is at least one)."""
    return " ".join(WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(words)) + ". Summary:"


@pytest.fixture(scope="module")
def cluster():
    etcd, nats = start_etcd(), start_nats()
    common = cluster_args(etcd, nats, "disagg")
    gguf, _ = model_paths()
    model = ["--model-path", str(gguf), "--model-name", LLM]
    started = []
    try:
        aggregated = start_server(*model, timeout=LLM_START_TIMEOUT)
        started.append(aggregated)
        prefill = start_worker(*common, *model, "--worker-id", "prefill-1", "--disaggregation-mode", "prefill", "--log-verbose", "1", timeout=LLM_START_TIMEOUT)  # fmt: skip
        started.append(prefill)
        decode = start_worker(*common, *model, "--worker-id", "decode-1", "--disaggregation-mode", "decode", timeout=LLM_START_TIMEOUT)  # fmt: skip
        started.append(decode)
        frontend = start_server(*common, "--router-mode", "kv", "--enable-anthropic-api")
        started.append(frontend)
        wait_until(lambda: workers_serving(frontend, LLM) == 2, 30, "both workers serving smollm2")
        wait_until(lambda: LLM in listed_models(frontend), 30, "smollm2 on /v1/models")
        yield {"aggregated": aggregated, "prefill": prefill, "decode": decode, "frontend": frontend}
    finally:
        stop_cluster(started, etcd, nats)


def complete(server, prompt: str) -> tuple[str, dict, object]:
    """Greedy text, nvext.worker_id and usage."""
    llm = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = llm.completions.create(
        model=LLM, prompt=prompt, max_tokens=16, temperature=0, extra_body={"nvext": {"extra_fields": ["worker_id"]}}
    )
    llm.close()
    nvext = (reply.model_extra or {}).get("nvext") or {}
    return reply.choices[0].text, nvext.get("worker_id", {}), reply.usage


def test_a_long_prompt_is_prefilled_on_the_prefill_worker_and_decoded_as_aggregated(cluster):
    prompt = long_prompt(1)
    text, workers, usage = complete(cluster["frontend"], prompt)
    assert usage.prompt_tokens > 512
    assert workers == {"prefill_worker_id": "prefill-1", "decode_worker_id": "decode-1"}
    assert usage.prompt_tokens_details.cached_tokens == 0, "blocks from the prefill worker are not cache hits"
    assert text == complete(cluster["aggregated"], prompt)[0], "token for token the aggregated answer"

    # The decode worker now holds the prompt: nothing left to prefill elsewhere.
    again, workers, usage = complete(cluster["frontend"], prompt)
    assert workers == {"prefill_worker_id": "decode-1", "decode_worker_id": "decode-1"}
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 32
    assert again == text


def test_a_short_prompt_is_prefilled_where_it_decodes(cluster):
    prompt = "The capital of France is"
    text, workers, _ = complete(cluster["frontend"], prompt)
    assert workers == {"prefill_worker_id": "decode-1", "decode_worker_id": "decode-1"}
    assert text == complete(cluster["aggregated"], prompt)[0]


def test_a_pinned_prefix_prefilled_elsewhere_is_pinned_where_it_decodes(cluster):
    """Explicit prompt caching with disaggregation: the breakpoint's long prefix is prefilled on the
    prefill worker, and the decode worker that imported its blocks pins them; the next request
    sharing it reads them there, and nothing is prefilled elsewhere."""
    client = anthropic.Anthropic(base_url=cluster["frontend"].http_url, api_key="unused", max_retries=0, timeout=300)
    system = [{"type": "text", "text": long_prompt(3), "cache_control": {"type": "ephemeral", "ttl": "1h"}}]

    def ask(question: str):
        reply = client.messages.create(model=LLM, max_tokens=2, system=system, messages=[{"role": "user", "content": question}])
        return reply.usage

    prefills = lambda: cluster["prefill"].stderr().count("prefilling for another worker")  # noqa: E731
    before = prefills()
    first = ask("Who wrote it?")
    assert prefills() == before + 1, "the long prompt was prefilled on the prefill worker"
    assert first.cache_creation_input_tokens >= 512, first
    second = ask("When was it written?")
    assert second.cache_creation_input_tokens == 0, second
    assert second.cache_read_input_tokens >= first.cache_creation_input_tokens, (first, second)
    assert prefills() == before + 1, "the decode worker held the pinned prefix"
    client.close()


def test_a_prefill_worker_killed_mid_transfer_costs_the_client_nothing(cluster):
    prompt = long_prompt(2, words=1400)
    expected = complete(cluster["aggregated"], prompt)[0]
    prefill = cluster["prefill"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(complete, cluster["frontend"], prompt)
        wait_until(lambda: "prefilling for another worker" in prefill.stderr(), 60, "the prefill worker started")
        prefill.proc.kill()
        text, workers, _ = pending.result(timeout=300)
    assert text == expected, "the decode worker computed the rest"
    assert workers["decode_worker_id"] == "decode-1"
    assert "KV transfer stopped" in cluster["decode"].stderr()

