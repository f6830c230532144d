"""Sampling controls of the OpenAI door (issue 43, item 3), against the real SmolLM2 GGUF with the official
openai client: `n` and `best_of` on completions and chat (choices indexed, streamed too, distinct and repeatable
with a seed, the prompt computed once and found in the prefix cache by the other choices), `logit_bias` forcing
and banning tokens (ids checked against the GGUF tokenizer's vocabulary), vLLM's `min_p` (1.0 keeps only the most
likely token, so a sampled answer equals the greedy one), the same through `nvext` and the KServe parameters, and
the refusals of each, by field."""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient

LLM = "smollm2"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def client(llm_server):
    return openai.OpenAI(base_url=f"{llm_server.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def tokenize(client, text: str) -> list[int]:
    answer = client.post("/tokenize", body={"model": LLM, "prompt": text, "add_special_tokens": False}, cast_to=object)
    return answer["tokens"]


def greedy(client, **extra):
    return client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1, **extra)


def test_a_bias_of_100_forces_a_token_and_minus_100_bans_one(client):
    (forced,) = tokenize(client, " Rome")
    answer = greedy(client, logit_bias={str(forced): 100})
    assert answer.choices[0].logprobs.tokens == [" Rome"] * 6
    plain = greedy(client)
    first = tokenize(client, plain.choices[0].logprobs.tokens[0])[0]
    banned = greedy(client, logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.tokens[0] != plain.choices[0].logprobs.tokens[0]
    assert first not in [tokenize(client, t)[0] for t in banned.choices[0].logprobs.tokens]
    chat = client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "Say a word."}], max_tokens=4,
                                          temperature=0, logit_bias={str(forced): 100})  # fmt: skip
    assert chat.choices[0].message.content == " Rome" * 4


def test_min_p_of_one_keeps_only_the_most_likely_token(client):
    plain = greedy(client).choices[0].text
    for seed in (1, 2, 3):
        sampled = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=seed,
                                            extra_body={"min_p": 1.0})  # fmt: skip
        assert sampled.choices[0].text == plain
    through_nvext = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=4,
                                              extra_body={"nvext": {"min_p": 1.0}})  # fmt: skip
    assert through_nvext.choices[0].text == plain


def test_kserve_parameters_carry_logit_bias_and_min_p(client, llm_server):
    (forced,) = tokenize(client, " Rome")
    kserve = grpcclient.InferenceServerClient(llm_server.url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
    params = {"max_tokens": 3, "temperature": 1.0, "min_p": 1.0, "logit_bias": json.dumps({str(forced): 100})}
    result = kserve.infer(LLM, [text], parameters=params)
    assert result.as_numpy("text_output")[0].decode().endswith(" Rome Rome Rome")


def sampled_choices(client, n, seed, max_tokens=8, **extra):
    answer = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=max_tokens, temperature=1.0, n=n, seed=seed,
                                       **extra)  # fmt: skip
    assert [c.index for c in answer.choices] == list(range(n))
    return answer


def cached_total(server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    return sum(float(v) for v in re.findall(r"^tritium_llm_engine_prompt_tokens_cached_total(?:\{[^}]*\})? (\S+)$", text, re.M))


def test_n_choices_are_distinct_repeatable_and_share_one_prefill(client, llm_server):
    first = sampled_choices(client, 4, seed=7)
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1, texts
    assert [c.text for c in sampled_choices(client, 4, seed=7).choices] == texts, "a seed repeats every choice"
    # Choice i samples with seed + i: the first choice of n=4 is the answer of n=1 with the same seed.
    assert sampled_choices(client, 1, seed=7).choices[0].text == texts[0]
    assert first.usage.prompt_tokens == len(tokenize(client, PROMPT)), "the prompt counts once"
    assert first.usage.completion_tokens >= 4
    # A prompt no request has sent before: the later choices find its blocks cached by the first one's prefill.
    fresh = "Once upon a time, in a village by a river where the " + "very " * 40 + "long"
    before = cached_total(llm_server)
    client.completions.create(model=LLM, prompt=fresh, max_tokens=2, temperature=1.0, n=3, seed=1)
    assert cached_total(llm_server) - before >= 2 * 32, "choices 1 and 2 reuse the prompt's blocks"


def test_n_streams_each_choice_with_its_index(client):
    stream = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=7, stream=True)
    texts, finished = ["", "", ""], set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2}
    assert texts == [c.text for c in sampled_choices(client, 3, seed=7).choices], "streamed as answered whole"


def test_best_of_answers_the_most_likely_choices(client):
    answer = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=1.0, n=2, best_of=5, seed=3,
                                       logprobs=0)  # fmt: skip
    assert [c.index for c in answer.choices] == [0, 1]
    scores = [sum(c.logprobs.token_logprobs) for c in answer.choices]
    assert scores[0] >= scores[1]
    candidates = sampled_choices(client, 5, seed=3, max_tokens=6, logprobs=0).choices
    best = sorted((sum(c.logprobs.token_logprobs) for c in candidates), reverse=True)[:2]
    assert scores == pytest.approx(best, abs=1e-5), "the two most likely of the same five"
    assert answer.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in candidates), "every candidate counts"
    plain = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=1.0, n=1, best_of=3, seed=3)
    assert plain.choices[0].logprobs is None, "logprobs only when asked for"


def test_best_of_on_chat_is_refused_beyond_n_rather_than_dropped(client):
    """vLLM takes best_of on chat; a chat here answers its n choices, so best_of equal to n is what it does and more is
    refused naming the field (it was dropped before)."""
    messages = [{"role": "user", "content": "Hi"}]
    answer = client.chat.completions.create(model=LLM, messages=messages, max_tokens=2, n=2, extra_body={"best_of": 2})
    assert len(answer.choices) == 2
    with pytest.raises(openai.BadRequestError, match="best_of greater than n is a /v1/completions parameter") as refused:
        client.chat.completions.create(model=LLM, messages=messages, max_tokens=2, extra_body={"best_of": 3})
    assert refused.value.body["param"] == "best_of"


def test_kserve_best_of_answers_what_the_completions_route_does(client, llm_server):
    """`best_of` as a KServe parameter ranks the same seeded candidates as `/v1/completions`: the
    same texts, most likely first; fewer candidates than `n`, or more than the bound, are refused."""
    openai_answer = client.completions.create(model=LLM, prompt=PROMPT, max_tokens=6, temperature=1.0, n=2, best_of=5,
                                              seed=3, extra_body={"ignore_eos": True})  # fmt: skip
    kserve = grpcclient.InferenceServerClient(llm_server.url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
    params = {"max_tokens": 6, "temperature": 1.0, "seed": 3, "n": 2, "best_of": 5, "ignore_eos": True}
    answer = kserve.infer(LLM, [text], parameters=params)
    assert [t.decode() for t in answer.as_numpy("text_output")] == [c.text for c in openai_answer.choices]
    candidates = [t.decode() for t in kserve.infer(LLM, [text], parameters={**params, "n": 5}).as_numpy("text_output")]
    assert set(c.text for c in openai_answer.choices) <= set(candidates), "two of the same five candidates"
    for bad, wording in (({**params, "best_of": 1}, "must be at least n \\(2\\)"), ({**params, "best_of": 17}, "between 1 and 16")):
        with pytest.raises(Exception, match=wording):
            kserve.infer(LLM, [text], parameters=bad)
    kserve.close()


def test_chat_n_whole_and_streamed(client):
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=LLM, messages=messages, max_tokens=6, temperature=1.0, n=3, seed=5)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    stream = client.chat.completions.create(model=LLM, messages=messages, max_tokens=6, temperature=1.0, n=3, seed=5,
                                            stream=True)  # fmt: skip
    texts, roles = ["", "", ""], set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.role:
                roles.add(choice.index)
    assert roles == {0, 1, 2}
    assert texts == [c.message.content for c in whole.choices]


def test_kserve_n_answers_every_choice_in_one_response(llm_server):
    kserve = grpcclient.InferenceServerClient(llm_server.url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
    params = {"max_tokens": 6, "temperature": 1.0, "seed": 7, "n": 3, "ignore_eos": True}
    first = kserve.infer(LLM, [text], parameters=params)
    outputs = [t.decode() for t in first.as_numpy("text_output")]
    assert len(outputs) == 3 and len(set(outputs)) > 1, outputs
    assert [r.decode() for r in first.as_numpy("finish_reason")] == ["length"] * 3
    again = kserve.infer(LLM, [text], parameters=params)
    assert [t.decode() for t in again.as_numpy("text_output")] == outputs, "a seed repeats every choice"
    for bad, wording in (({**params, "n": 17}, "between 1 and 16"), ({**params, "n": 0}, "at least 1")):
        with pytest.raises(Exception, match=wording):
            kserve.infer(LLM, [text], parameters=bad)


@pytest.mark.parametrize(
    "extra, field, wording",
    [
        ({"n": 0}, "n", "between 1 and 16"),
        ({"n": 17}, "n", "between 1 and 16"),
        ({"n": 2, "best_of": 1}, "best_of", "between n (2)"),
        ({"best_of": 3, "stream": True}, "best_of", "not supported with stream"),
        ({"n": 16, "prompt": [PROMPT] * 5}, "n", "at most 64 sequences"),
    ],
)
def test_bad_choice_counts_are_refused_by_field(client, extra, field, wording):
    body = {"model": LLM, "prompt": PROMPT, "max_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        client.post("/completions", body=body, cast_to=object)
    error = refused.value.body
    assert error["param"] == field and wording in error["message"], error


@pytest.mark.parametrize(
    "extra, wording",
    [
        ({"logit_bias": {"99999999": 5}}, "out of the model's vocabulary"),
        ({"logit_bias": {"12": 101}}, "between -100 and 100"),
        ({"logit_bias": {"twelve": 1}}, "is not a token id"),
        ({"logit_bias": {"12": "high"}}, "is not a number"),
        ({"min_p": 1.5}, "min_p"),
        ({"nvext": {"min_p": -0.1}}, "nvext.min_p"),
    ],
)
def test_bad_sampling_controls_are_refused_by_field(client, extra, wording):
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=LLM, prompt=PROMPT, max_tokens=2, extra_body=extra)
    error = refused.value.body
    field = "nvext.min_p" if "nvext" in extra else next(iter(extra))
    assert error["param"] == field and wording in error["message"], error
