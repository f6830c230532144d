"""Speculative decoding (issue 43, item 6) through `tritium serve` and the openai client, with the real SmolLM2:
prompt lookup (`--speculative ngram`) and a draft model (`--draft-model-path`, here SmolLM2 itself) answer exactly
as the server without speculation, greedy and seeded, while the `spec_decode` counters show proposals made and kept
(all of them for a model drafting for itself, greedy); contradictory flags stop the server at start."""

from __future__ import annotations

import urllib.request

import openai
import pytest
from conftest import model_paths
from helpers import finish_server, start_failure, start_server

pytestmark = pytest.mark.llm  # every test serves SmolLM2 (model_paths())

PROMPTS = ["def add(a, b):\n    return a + b\n\ndef add(a, b):\n", "1, 2, 3, 1, 2, 3, 1, 2,", "The capital of France is"]


def answers(server) -> list[str]:
    llm = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=300)
    out = []
    for prompt in PROMPTS:
        for extra in ({"temperature": 0}, {"temperature": 0.8, "seed": 5}):
            answer = llm.completions.create(model="smollm2", prompt=prompt, max_tokens=24, extra_body={"ignore_eos": True}, **extra)
            out.append(answer.choices[0].text)
    return out


def counters(server) -> tuple[float, float]:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    value = lambda name: sum(float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith(name + "{"))  # noqa: E731,E741
    return value("tritium_llm_spec_decode_num_draft_tokens_total"), value("tritium_llm_spec_decode_num_accepted_tokens_total")


@pytest.fixture(scope="module")
def plain_answers():
    gguf, _ = model_paths()
    server = start_server("--model-path", str(gguf), "--model-name", "smollm2", timeout=300)
    try:
        return answers(server)
    finally:
        finish_server(server)


# The draft run is slow: SmolLM2 loaded twice, and each token costs 5 draft steps and a 6-row verification
# (0.19-0.25x plain speed, bench/README.md).
@pytest.mark.parametrize("flags", [["--speculative", "ngram"], pytest.param(["--draft-model-path", "GGUF"], marks=pytest.mark.slow)],
                         ids=["ngram", "draft"])
def test_speculation_changes_no_answer(plain_answers, flags):
    gguf, _ = model_paths()
    flags = [str(gguf) if flag == "GGUF" else flag for flag in flags]
    server = start_server("--model-path", str(gguf), "--model-name", "smollm2", *flags, timeout=300)
    try:
        assert answers(server) == plain_answers
        proposed, kept = counters(server)
        assert 0 < kept <= proposed, (proposed, kept)
    finally:
        finish_server(server)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--speculative", "draft"], "--speculative draft needs --draft-model-path"),
        (["--speculative", "ngram", "--draft-model-path", "GGUF"], "drop --speculative ngram"),
        (["--speculative", "ngram", "--num-speculative-tokens", "17"], "--num-speculative-tokens must be between 1 and 16"),
        (["--speculative", "ngram", "--prompt-lookup-min", "5"], "--prompt-lookup-min (5) must be at least 1 and at most"),
        # Tuning flags that would do nothing are refused, not ignored.
        (["--num-speculative-tokens", "3", "--speculative-disable-by-batch-size", "2"],
         "--num-speculative-tokens, --speculative-disable-by-batch-size tune speculative decoding: give --speculative"),
        (["--draft-model-path", "GGUF", "--prompt-lookup-max", "6"], "--prompt-lookup-max tune --speculative ngram"),
    ],
)
def test_contradictory_flags_stop_the_server_at_start(flags, message):
    gguf, _ = model_paths()
    flags = [str(gguf) if flag == "GGUF" else flag for flag in flags]
    assert message in start_failure("--model-path", str(gguf), *flags)
