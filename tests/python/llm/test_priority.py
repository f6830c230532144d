"""Priority scheduling (issue 43, item 4) through the real clients, on `tritium serve --engine mock` (the real
engine, its queue and preemption, over a simulated model that takes 20 ms a step), one sequence at a time so
every request queues: vLLM's top-level `priority` (lower first), Dynamo's `nvext.agent_hints.priority` (higher
first, in place of the top-level one) and `strict_priority` (a tier), Dynamo's `x-dynamo-request-priority`
header (over the body), and Triton's KServe `priority` through tritonclient (level 1 ahead of the default);
an urgent arrival preempts a less urgent stream, which then ends with the text it would have had; FCFS ignores
priorities; bad values are 400s naming their field, and a bad policy stops the server at start."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from helpers import start_failure, wait_for

MODEL = "mock-llm"
PROMPT = "Tell me a story"
WAITING = "tritium_llm_engine_waiting_sequences"
PREEMPTED = "tritium_llm_engine_preempted_sequences_total"


def serve(start_tritium, policy: str):
    return start_tritium("--engine", "mock", "--model-name", MODEL, "--scheduling-policy", policy,
                         "--mock-max-sequences", "1", "--mock-decode-ms-per-step", "20")  # fmt: skip


@pytest.fixture(scope="module")
def server():
    from helpers import finish_server, start_server

    started = start_server("--engine", "mock", "--model-name", MODEL, "--scheduling-policy", "priority",
                           "--mock-max-sequences", "1", "--mock-decode-ms-per-step", "20")  # fmt: skip
    yield started
    finish_server(started)


def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def metric(server, name: str) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + "{"))


def start_stream(client, max_tokens: int, **extra):
    """A streamed completion, returned once its first chunk came (its sequence is running)."""
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=max_tokens, stream=True, **extra)
    chunks = iter(stream)
    first = next(chunks)
    return stream, first.choices[0].text, chunks


def first_token_order(server, requests: dict[str, dict]) -> list[str]:
    """Queues `requests` (name -> extra create() arguments) behind a running stream that outranks them all, ends
    that stream, and returns the names in the order their first tokens came: one sequence runs at a time, and each
    generates 5 tokens (100 ms) before the next can start."""
    client = openai_client(server)
    blocker, _, _ = start_stream(client, 1000, extra_body={"priority": -1000})
    started: dict[str, float] = {}

    def run(name: str, extra: dict) -> None:
        for _ in client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, stream=True, **extra):
            started.setdefault(name, time.monotonic())

    threads = [threading.Thread(target=run, args=item) for item in requests.items()]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: metric(server, WAITING) == len(requests)), "the requests never all queued"
    blocker.close()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(started) == sorted(requests)
    return sorted(started, key=started.__getitem__)


def test_the_queue_follows_vllm_and_dynamo_priorities_and_the_header_wins(server):
    order = first_token_order(server, {
        "low": {"extra_body": {"priority": 5}},
        "default": {},
        "hint": {"extra_body": {"nvext": {"agent_hints": {"priority": 100, "osl": 64, "speculative_prefill": False}}}},
        "header": {"extra_body": {"priority": 7}, "extra_headers": {"x-dynamo-request-priority": "50"}},
        "hint_over_field": {"extra_body": {"priority": 5, "nvext": {"agent_hints": {"priority": 20}}}},
    })  # fmt: skip
    assert order == ["hint", "header", "hint_over_field", "default", "low"]


def test_an_urgent_arrival_preempts_a_running_stream_which_ends_unchanged(server):
    client = openai_client(server)
    alone = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=60, temperature=0).choices[0].text
    preempted = metric(server, PREEMPTED)
    stream, text, chunks = start_stream(client, 60, temperature=0)
    urgent = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, extra_body={"priority": -1})
    assert urgent.choices[0].finish_reason == "length"
    assert metric(server, PREEMPTED) == preempted + 1, "one place in the batch: the stream gave it up"
    text += "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == alone, "the preempted stream resumed where it was"
    stream.close()

    # A strict tier outranks any priority within a lower one.
    stream, _, _ = start_stream(client, 200, extra_body={"priority": -1000})
    tiered = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3,
                                       extra_body={"nvext": {"agent_hints": {"strict_priority": 1}}})  # fmt: skip
    assert tiered.choices[0].text
    assert metric(server, PREEMPTED) == preempted + 2
    stream.close()


def test_triton_priority_level_one_preempts_a_default_stream_over_kserve(server):
    client = openai_client(server)
    preempted = metric(server, PREEMPTED)
    stream, _, _ = start_stream(client, 200)
    triton = grpcclient.InferenceServerClient(server.url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
    result = triton.infer(MODEL, [text], parameters={"max_tokens": 3}, priority=1)
    assert result.as_numpy("text_output") is not None
    assert metric(server, PREEMPTED) == preempted + 1
    stream.close()
    triton.close()


def test_fcfs_serves_in_arrival_order_whatever_the_priorities(start_tritium):
    server = serve(start_tritium, "fcfs")
    client = openai_client(server)
    stream, _, _ = start_stream(client, 100)
    urgent = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, extra_body={"priority": -100})
    assert urgent.choices[0].text
    assert metric(server, PREEMPTED) == 0, "FCFS preempts no one for a priority"
    stream.close()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"extra_body": {"priority": 1 << 40}}, "priority"),
        ({"extra_body": {"nvext": {"agent_hints": {"priority": -(1 << 31)}}}}, "nvext.agent_hints.priority"),
        ({"extra_headers": {"x-dynamo-request-priority": "high"}}, "x-dynamo-request-priority"),
        ({"extra_headers": {"x-dynamo-request-strict-priority": "-1"}}, "x-dynamo-request-strict-priority"),
    ],
)
def test_bad_priorities_are_refused_naming_the_field(server, extra, param):
    client = openai_client(server)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, **extra)
    assert refused.value.body["param"] == param, refused.value.body
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, **extra)
    assert refused.value.body["param"] == param, refused.value.body


def test_an_unknown_agent_hint_is_refused(server):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(server).completions.create(model=MODEL, prompt=PROMPT, max_tokens=3,
                                                 extra_body={"nvext": {"agent_hints": {"prio": 1}}})  # fmt: skip
    assert "unknown field `prio`" in refused.value.body["message"]


def test_an_unknown_policy_stops_the_server_at_start():
    failure = start_failure("--engine", "mock", "--scheduling-policy", "lifo")
    assert "unknown scheduling policy 'lifo': expected one of fcfs, priority" in failure


def tokens(server, messages: list[dict], add_generation_prompt: bool) -> int:
    body = {"model": MODEL, "messages": messages, "add_generation_prompt": add_generation_prompt}
    request = urllib.request.Request(server.http_url + "/tokenize", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["count"]


@pytest.mark.parametrize("stream", [False, True])
def test_speculative_prefill_computes_the_next_turns_prefix(server, stream):
    """The mock engine caches whole 16-token blocks. The answer's length is chosen so that a block boundary falls
    between what the turn itself computed (prompt and answer but its last token) and the end of the rendered
    answer (`<|im_end|>` and a newline more): only the speculative prefill can have cached that block."""
    client = openai_client(server)
    messages = [{"role": "user", "content": f"Speculate, streamed={stream}."}]
    prompt = tokens(server, messages, add_generation_prompt=True)
    answer_tokens = 16 + (-(prompt + 1)) % 16
    finished = metric(server, "tritium_llm_engine_finished_sequences_total")
    hints = {"nvext": {"agent_hints": {"speculative_prefill": True}}}
    if stream:
        chunks = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=answer_tokens, stream=True,
                                                extra_body=hints)  # fmt: skip
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=answer_tokens, extra_body=hints)
        answer = reply.choices[0].message.content
    assert wait_for(lambda: metric(server, "tritium_llm_engine_finished_sequences_total") == finished + 2), \
        "the turn and its speculative prefill"  # fmt: skip
    conversation = [*messages, {"role": "assistant", "content": answer}]
    prefix = tokens(server, conversation, add_generation_prompt=False)
    assert prefix == prompt + answer_tokens + 2
    following = client.chat.completions.create(model=MODEL, messages=[*conversation, {"role": "user", "content": "More."}],
                                               max_tokens=2)  # fmt: skip
    cached = following.usage.prompt_tokens_details.cached_tokens
    assert cached == prefix // 16 * 16 > prompt + answer_tokens - 1, following.usage
