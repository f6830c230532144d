"""The tokenizer prefix cache (issue 58) seen from outside, through the `openai` client on a real
`tritium serve` with the mock engine (ChatML, special-token boundaries): a shared system prompt and a
conversation's earlier turns come from the cache (the per-model metrics say how many ids), the ids
are those of a server with the cache off (`DYN_TOKENIZER_CACHE=0`, which then shows no cache
series), and `--tokenizer-cache-bytes` bounds what one model's cache holds."""

from __future__ import annotations

import re
import urllib.request

import openai
import pytest

from helpers import finish_server, start_server
from http_helpers import json_call

MODEL = "mock-llm"
SYSTEM = "You are the build assistant of a large monorepo; follow the repository's conventions. " * 40


@pytest.fixture(scope="module")
def servers():
    cached = start_server("--engine", "mock", "--mock-prefill-us-per-token", "0")
    plain = start_server("--engine", "mock", "--mock-prefill-us-per-token", "0", env={"DYN_TOKENIZER_CACHE": "0"})
    yield cached, plain
    finish_server(cached)
    finish_server(plain)


def cache_metrics(server) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(rf'^tritium_llm_tokenizer_cache_(\w+)\{{model="{MODEL}"\}} (\S+)$', text, re.MULTILINE)
    return {name: float(value) for name, value in found}


def chat(server, messages: list[dict]) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)


def prompt_ids(server, messages: list[dict]) -> list[int]:
    status, body = json_call("POST", f"{server.http_url}/tokenize", {"model": MODEL, "messages": messages})
    assert status == 200, body
    return body["tokens"]


def test_a_shared_system_prompt_and_earlier_turns_come_from_the_cache_with_the_same_ids(servers):
    cached, plain = servers
    before = cache_metrics(cached)
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Build the api crate, please."}]
    for turn in range(4):
        answers = [chat(server, conversation) for server in (cached, plain)]
        assert answers[0].usage.prompt_tokens == answers[1].usage.prompt_tokens
        assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
        assert prompt_ids(cached, conversation) == prompt_ids(plain, conversation)
        conversation += [
            {"role": "assistant", "content": answers[0].choices[0].message.content},
            {"role": "tool", "content": f"build step {turn}: compiled 41 crates in 12.5 s; warnings: 0. " * 8},
        ]
    after = cache_metrics(cached)
    # The first request misses; every later one (and each /tokenize) starts from a cached prefix.
    assert after["hits_total"] - before.get("hits_total", 0) >= 6, after
    reused = after["cached_tokens_total"] - before.get("cached_tokens_total", 0)
    assert reused >= 6 * len(SYSTEM), after  # the mock tokenizer: one id per byte
    assert after["bytes"] > 0 and after["entries"] >= 2, after
    # With DYN_TOKENIZER_CACHE=0 there is no cache, and no series.
    assert cache_metrics(plain) == {}


def test_the_bytes_bound_holds_whatever_the_prompts():
    server = start_server("--engine", "mock", "--mock-prefill-us-per-token", "0", "--tokenizer-cache-bytes", "8192")
    try:
        for n in range(24):
            messages = [{"role": "system", "content": f"prompt {n}: " + "distinct words here " * 60},
                        {"role": "user", "content": "go " * 30}]  # fmt: skip
            assert chat(server, messages).usage.prompt_tokens > 1200
            assert cache_metrics(server)["bytes"] <= 8192
    finally:
        finish_server(server)


def test_the_entries_bound_holds_whatever_the_prompts():
    server = start_server("--engine", "mock", "--mock-prefill-us-per-token", "0", "--tokenizer-cache-entries", "6")
    try:
        for n in range(12):
            messages = [{"role": "system", "content": f"prompt {n}: " + "more distinct words " * 10},
                        {"role": "user", "content": f"question {n} " * 10}]  # fmt: skip
            chat(server, messages)
            assert cache_metrics(server)["entries"] <= 6
        assert cache_metrics(server)["entries"] > 0
    finally:
        finish_server(server)


def cached_per_turn(server, turns: int) -> list[float]:
    """The ids each turn of a growing conversation took from the cache."""
    conversation = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Start."}]
    taken = []
    for turn in range(turns):
        before = cache_metrics(server).get("cached_tokens_total", 0)
        answer = chat(server, conversation)
        taken.append(cache_metrics(server).get("cached_tokens_total", 0) - before)
        conversation += [{"role": "assistant", "content": answer.choices[0].message.content},
                         {"role": "user", "content": f"turn {turn}: " + "a longer tool result follows. " * 20}]  # fmt: skip
    return taken


@pytest.mark.parametrize("extend", [True, False])
def test_extending_caches_each_turns_new_pieces_and_off_keeps_only_whole_misses(extend):
    env = {} if extend else {"DYN_TOKENIZER_CACHE_EXTEND": "0"}
    server = start_server("--engine", "mock", "--mock-prefill-us-per-token", "0", env=env)
    try:
        taken = cached_per_turn(server, 4)
    finally:
        finish_server(server)
    assert taken[0] == 0, taken
    if extend:
        # Each turn reuses the one before it whole: what comes from the cache grows turn by turn.
        assert taken[1] < taken[2] < taken[3], taken
    else:
        # Only the first prompt (a whole miss) was cached: later turns reuse that much and no more.
        assert taken[1] > 0 and taken[1] == taken[2] == taken[3], taken
