"""Explicit prompt caching (issue 58, item 3) with the real SmolLM2, through the official `anthropic`
and `openai` clients: a `cache_control` breakpoint pins its prompt prefix in the engine's prefix
cache; the first request reports the tokens it wrote (`cache_creation_input_tokens`), the next one
sharing the prefix reads them (`cache_read_input_tokens`, OpenAI's `prompt_tokens_details.cached_tokens`),
and the three Anthropic counts add up to the prompt. The same holds through the router to a
`tritium worker` (the pin travels on the worker plane). Bad `cache_control` objects are refused by field.
The pinned prefix outliving pressure that evicts unpinned ones is the engine's test
(`a_pinned_prefix_survives_the_pressure_that_evicts_an_unpinned_one`)."""

from __future__ import annotations

import anthropic
import openai
import pytest

from agent_clients import LLM, REQUEST_TIMEOUT_S, agent_server, claude  # noqa: F401 (fixtures used by name)
from cluster import cluster_args, listed_models, start_etcd, start_nats, stop_cluster, wait_until, workers_serving
from conftest import LLM_START_TIMEOUT, model_paths
from helpers import start_server, start_worker

pytestmark = pytest.mark.llm

RULES = "You are the reference desk of a city library. Answer from the rules below and nothing else. " * 12
EPHEMERAL = {"type": "ephemeral"}


def ask(client: anthropic.Anthropic, question: str, ttl: str | None = None):
    control = EPHEMERAL | ({"ttl": ttl} if ttl else {})
    system = [{"type": "text", "text": RULES, "cache_control": control}]
    reply = client.messages.create(model=LLM, max_tokens=2, system=system, messages=[{"role": "user", "content": question}])
    usage = reply.usage
    return usage, usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens


def check_write_then_read(client: anthropic.Anthropic, tag: str) -> None:
    first, _ = ask(client, f"{tag}: when do you open?", "1h")
    assert first.cache_creation_input_tokens >= 200, first  # the rules' full blocks
    second, total = ask(client, f"{tag}: may I renew a book?")
    assert second.cache_creation_input_tokens == 0, second
    assert second.cache_read_input_tokens >= first.cache_creation_input_tokens, (first, second)
    assert second.input_tokens > 0 and total > second.cache_read_input_tokens


def test_a_breakpoint_writes_its_prefix_once_and_later_requests_read_it(claude):
    check_write_then_read(claude, "in process")


def test_openai_messages_carry_cache_control_too(agent_server):
    client = openai.OpenAI(base_url=f"{agent_server.http_url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    docs = "Opening hours: nine to six on weekdays, nine to one on Saturdays. Loans last three weeks. " * 10
    for question in ("When do you open?", "How long is a loan?"):
        messages = [{"role": "system", "content": [{"type": "text", "text": docs, "cache_control": EPHEMERAL}]},
                    {"role": "user", "content": question}]  # fmt: skip
        reply = client.chat.completions.create(model=LLM, messages=messages, max_tokens=2, temperature=0)
    assert reply.usage.prompt_tokens_details.cached_tokens >= 150, reply.usage
    client.close()


@pytest.mark.parametrize(
    ("control", "field"),
    [({"type": "persistent"}, "system[0].cache_control.type"), ({"type": "ephemeral", "ttl": "1d"}, "system[0].cache_control.ttl")],
)
def test_a_bad_cache_control_is_refused_by_field(claude, control, field):
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=LLM, max_tokens=2, system=[{"type": "text", "text": "x", "cache_control": control}],
                               messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert field in str(refused.value), refused.value


@pytest.mark.etcd
@pytest.mark.nats
def test_the_pin_travels_through_the_router_to_a_remote_worker():
    etcd, nats = start_etcd(), start_nats()
    common = cluster_args(etcd, nats, "pins")
    gguf, _ = model_paths()
    started = []
    try:
        worker = start_worker(*common, "--model-path", str(gguf), "--model-name", LLM, "--worker-id", "w1", timeout=LLM_START_TIMEOUT)
        started.append(worker)
        frontend = start_server(*common, "--router-mode", "kv", "--enable-anthropic-api")
        started.append(frontend)
        wait_until(lambda: workers_serving(frontend, LLM) == 1, 30, "the worker serving the model")
        wait_until(lambda: LLM in listed_models(frontend), 30, "the model listed")
        client = anthropic.Anthropic(base_url=frontend.http_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
        check_write_then_read(client, "remote")
        client.close()
    finally:
        stop_cluster(started, etcd, nats)
