"""KV-aware routing on Dynamo workers' own KV events (issue 57): two `dynamo.mocker` workers
publish their blocks (ZeroMQ with the file store) in Dynamo's hashes; with `--router-mode kv`,
Tritium's router indexes them and sends a repeated long prompt back to the worker holding it,
as Dynamo's frontend does on the same workers."""

from __future__ import annotations

import pytest

from cluster import metric
from deployment import deployment, http, models_at, tiny_model, wait_until  # noqa: F401 - deployment, tiny_model: fixtures

pytestmark = pytest.mark.dynamo
START = 90


@pytest.fixture(scope="module")
def kv_frontends(deployment):
    for _ in range(2):
        deployment.mocker("kv-mock", "--block-size", "16")
    tritium = deployment.tritium_frontend()
    dynamo = deployment.dynamo_frontend()
    wait_until(lambda: "kv-mock" in models_at(tritium.http_url), START, "kv-mock listed by Tritium")
    wait_until(lambda: "kv-mock" in models_at(dynamo), START, "kv-mock listed by Dynamo")
    # Both workers joined (two member ids), so the router has a choice to make.
    wait_until(lambda: tritium.stderr().count("Dynamo worker joined") >= 2, START, "both workers joined")
    return tritium, dynamo


def worker_of(base: str, prompt: str) -> str:
    body = {"model": "kv-mock", "prompt": prompt, "max_tokens": 2, "nvext": {"extra_fields": ["worker_id"]}}
    status, answer = http("POST", base + "/v1/completions", body)
    assert status == 200, answer
    return str(answer["nvext"]["worker_id"]["decode_worker_id"])


def indexed(tritium) -> float:
    """The blocks Tritium's KV index holds now."""
    return metric(http("GET", tritium.metrics_url)[1], "tritium_router_kv_blocks_indexed")


@pytest.mark.parametrize("frontend", ["tritium", "dynamo"])
def test_a_repeated_long_prompt_goes_back_to_the_worker_holding_it(kv_frontends, frontend):
    tritium, dynamo = kv_frontends
    base = tritium.http_url if frontend == "tritium" else dynamo
    for topic in ("rivers", "mountains", "deserts"):
        prompt = f"A long shared context about {topic}, asked of {frontend}. " * 40
        before = indexed(tritium)
        first = worker_of(base, prompt)
        # The worker's stored blocks reach the routers as events, at once to both frontends (each subscribes
        # to the same publishers): wait until Tritium's index has them, not a fixed time, then ask again.
        wait_until(lambda: indexed(tritium) > before, START, f"the blocks of the {topic} prompt indexed")
        for _ in range(3):
            assert worker_of(base, prompt) == first
    if frontend == "tritium":
        scraped = http("GET", tritium.metrics_url.replace("/metrics", "") + "/metrics")[1]
        blocks = metric(scraped, "tritium_router_kv_blocks_indexed")
        cached = metric(scraped, "tritium_router_prompt_blocks_cached_total")
        assert blocks > 0 and cached > 0, [line for line in scraped.splitlines() if "tritium_router" in line]
