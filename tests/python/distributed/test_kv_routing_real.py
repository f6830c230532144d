"""KV-aware routing on the real engine: two `tritium worker` processes serving SmolLM2 announce the KV blocks
their prefix caches hold (KV events over a real NATS, discovery in a real etcd), and a `--router-mode kv`
frontend sends each repeat of a long shared prefix to the worker that holds it. The engines' own
`cached_tokens`, carried back over the worker plane into OpenAI's `usage.prompt_tokens_details`, say where each
request found its prefix. A round-robin frontend over the same workers is the baseline.
"""

from __future__ import annotations

import random

import openai
import pytest

from cluster import WORDS, cluster_args, listed_models, metric, scrape, start_etcd, start_nats, stop_cluster, wait_until, workers_serving
from conftest import LLM_START_TIMEOUT, model_paths
from helpers import start_server, start_worker

# Slow: two SmolLM2 worker processes and a frontend, long shared prefixes prefilled again and again.
pytestmark = [pytest.mark.etcd, pytest.mark.nats, pytest.mark.llm, pytest.mark.slow]

LLM = "smollm2"
BLOCK = 16
PREFIXES = 4
REPEATS = 4


@pytest.fixture(scope="module")
def cluster():
    etcd, nats = start_etcd(), start_nats()
    common = cluster_args(etcd, nats, "kv")
    gguf, _ = model_paths()
    started = []
    try:
        for name in ("real-a", "real-b"):
            started.append(start_worker(*common, "--worker-id", name, "--model-path", str(gguf), "--model-name", LLM, timeout=LLM_START_TIMEOUT))
        frontends = {mode: start_server(*common, "--router-mode", mode) for mode in ("kv", "round-robin")}
        started += frontends.values()
        for frontend in frontends.values():
            wait_until(lambda f=frontend: workers_serving(f, LLM) == 2, 30, "both workers serving smollm2")
            # The OpenAI routes know the model once its card has come from a worker, a moment later.
            wait_until(lambda f=frontend: LLM in listed_models(f), 30, "smollm2 on /v1/models")
        yield frontends
    finally:
        stop_cluster(started, etcd, nats)


def blocks_indexed(frontend) -> int:
    return int(metric(scrape(frontend), "tritium_router_kv_blocks_indexed"))


def shared_prefix_hits(frontend, seed: int, indexes: bool) -> tuple[int, int]:
    """Sends PREFIXES long prefixes, each REPEATS + 1 times with a new question, in a shuffled order
    (the first of each prefix first). `indexes`: the frontend's router indexes KV events (kv mode).
    Returns (repeats that found their whole prefix cached, repeats)."""
    rng = random.Random(seed)
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(120)) + "." for _ in range(PREFIXES)]
    llm = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="unused", max_retries=0, timeout=120)
    full_blocks = {}
    for index, prefix in enumerate(prefixes):
        indexed = blocks_indexed(frontend)
        first = llm.completions.create(model=LLM, prompt=f"{prefix} Question 0?", max_tokens=1, temperature=0)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        # The prefix's own full blocks (a word is at least one token), less one in case the
        # question's first token merges with the prefix's last.
        full_blocks[index] = (len(prefix.split()) // BLOCK - 1) * BLOCK
        # KV events reach the router over NATS after the reply: wait until it has heard them.
        wanted = indexed + full_blocks[index] // BLOCK
        if indexes:
            wait_until(lambda: blocks_indexed(frontend) >= wanted, 10, "the router heard the first request's KV events")
    order = [index for index in range(PREFIXES) for _ in range(REPEATS)]
    rng.shuffle(order)
    hits = 0
    for n, index in enumerate(order, start=1):
        reply = llm.completions.create(model=LLM, prompt=f"{prefixes[index]} Question {n}?", max_tokens=1, temperature=0)
        hits += reply.usage.prompt_tokens_details.cached_tokens >= full_blocks[index]
    llm.close()
    return hits, len(order)


def test_kv_routing_sends_repeats_to_the_worker_holding_their_prefix(cluster):
    kv_hits, repeats = shared_prefix_hits(cluster["kv"], seed=11, indexes=True)
    rr_hits, _ = shared_prefix_hits(cluster["round-robin"], seed=12, indexes=False)
    print(f"\n{PREFIXES} shared prefixes x {REPEATS} repeats on two real workers: kv {kv_hits}/{repeats}, round-robin {rr_hits}/{repeats}")
    assert kv_hits >= 0.9 * repeats, f"kv routing found the prefix {kv_hits} times of {repeats}"
    assert rr_hits < repeats, "round-robin cannot find every prefix"
