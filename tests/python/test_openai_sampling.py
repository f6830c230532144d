"""Sampling controls of the OpenAI door (issue 43, item 3), against the real SmolLM2 GGUF with the official
openai client: `logit_bias` forcing and banning tokens (ids checked against the GGUF tokenizer's vocabulary),
vLLM's `min_p` (1.0 keeps only the most likely token, so a sampled answer equals the greedy one), the same
through `nvext` and the KServe parameters, and the refusals of each, by field."""

from __future__ import annotations

import json

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
