"""What evaluators ask of `/v1/completions` (issue 43, item 2), against the real SmolLM2 GGUF: prompt
scoring with `echo` and `logprobs` (as lm-eval's `local-completions` sends it: a list of token-id
lists, `max_tokens: 1`, `logprobs: 1`, `echo: true`), `max_tokens: 0`, a list of prompts answered
one choice each with usage summed, vLLM's `prompt_logprobs`, and vLLM's `/tokenize`,
`/detokenize` and `/tokenizer_info` with and without `/v1`.

The scores are checked against themselves through independent paths: a prompt position's score
must equal the log-probability the engine reports when it generates that same token greedily
after the prefix, and the greedy token must be the top alternative."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest

LLM = "smollm2"
TIMEOUT_S = 120
TEXT = "The capital of France is Paris. The capital of Italy is"


def post(server, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        server.http_url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(server, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(server.http_url + path, timeout=TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def ids(llm_server) -> list[int]:
    status, body = post(llm_server, "/tokenize", {"model": LLM, "prompt": TEXT, "add_special_tokens": False})
    assert status == 200, body
    return body["tokens"]


def test_tokenize_detokenize_and_info_with_and_without_v1(llm_server, ids):
    assert len(ids) > 8
    for prefix in ("", "/v1"):
        status, body = post(llm_server, prefix + "/tokenize", {"prompt": TEXT, "return_token_strs": True})
        assert status == 200, body
        # The only language model is taken when none is named; add_special_tokens defaults to true.
        assert body["count"] == len(body["tokens"]) and body["max_model_len"] > 1000
        assert len(body["token_strs"]) == body["count"]
        status, body = post(llm_server, prefix + "/detokenize", {"model": LLM, "tokens": ids})
        assert (status, body) == (200, {"prompt": TEXT})
        status, info = get(llm_server, prefix + "/tokenizer_info")
        assert status == 200, info
        assert info["eos_token"] == "<|im_end|>" and "chat_template" in info and info["tokenizer_class"]
    chat = {"model": LLM, "messages": [{"role": "user", "content": "Hi"}]}
    status, body = post(llm_server, "/tokenize", chat)
    assert status == 200, body
    status, text = post(llm_server, "/detokenize", {"tokens": body["tokens"]})
    assert text["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), text
    status, body = post(llm_server, "/tokenize", {**chat, "add_generation_prompt": False})
    assert post(llm_server, "/detokenize", {"tokens": body["tokens"]})[1]["prompt"].endswith("Hi<|im_end|>\n")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/detokenize", {"model": LLM, "tokens": [10**9]}, "tokens"),
        ("/detokenize", {"model": LLM, "tokens": [-1]}, None),
        ("/detokenize", {"model": LLM, "tokens": [1] * 9000}, "tokens"),
        ("/tokenize", {"model": "minilm", "messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/tokenize", {"model": LLM, "prompt": "x", "extra": 1}, "prompt"),
        ("/tokenize", {"model": LLM, "messages": [{"content": "no role"}]}, "messages[0].role"),
        ("/tokenize", {"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/tokenize", {"model": LLM, "messages": [], "continue_final_message": True}, "continue_final_message"),
    ],
)
def test_tokenizer_endpoints_refuse_bad_input(llm_server, path, body, field):
    status, error = post(llm_server, path, body)
    assert status == 400, error
    if field is not None:
        assert error["error"]["param"] == field, error


def test_echo_scores_the_prompt_as_lm_eval_reads_it(llm_server, ids):
    # lm-eval's loglikelihood request, for two continuations of one context at once.
    context = ids[:-1]
    status, body = post(
        llm_server,
        "/v1/completions",
        {"model": LLM, "prompt": [ids, context], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0, "seed": 1234},
    )
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1]
    whole, short = body["choices"]
    logprobs = whole["logprobs"]
    assert len(logprobs["tokens"]) == len(ids) + 1 == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"])
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert all(lp <= 0 for lp in logprobs["token_logprobs"][1:])
    assert whole["text"].startswith(TEXT)
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[len(ids)] == len(TEXT)
    # The same prompt positions score the same whether the prompt is longer or not.
    assert short["logprobs"]["token_logprobs"][: len(context)] == logprobs["token_logprobs"][: len(context)]
    # Usage sums both prompts; each generated one token.
    assert body["usage"]["prompt_tokens"] == 2 * len(ids) - 1 and body["usage"]["completion_tokens"] == 2

    # Prompt position p's score is what the engine says of the same token generated after p's prefix.
    generated = short["logprobs"]
    last = len(context)
    greedy_token, greedy_lp = generated["tokens"][last], generated["token_logprobs"][last]
    top = logprobs["top_logprobs"][last]
    # Bit for bit: the same logits (batch-invariant kernels), the same log-sum-exp.
    assert top == {greedy_token: greedy_lp}, (top, greedy_token, greedy_lp)
    # lm-eval's is_greedy: the token's score equals the best alternative's, exactly, where it is the top.
    for lp, alternatives in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]):
        assert lp <= max(alternatives.values()) + 1e-6


def test_max_tokens_zero_scores_the_prompt_alone(llm_server, ids):
    status, body = post(llm_server, "/v1/completions", {"model": LLM, "prompt": TEXT, "max_tokens": 0, "logprobs": 2, "echo": True})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["text"] == TEXT and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert all(len(top) >= 1 for top in choice["logprobs"]["top_logprobs"][1:])
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] == len(ids)
    # Echo without logprobs: the text only.
    status, body = post(llm_server, "/v1/completions", {"model": LLM, "prompt": TEXT, "max_tokens": 0, "echo": True})
    assert status == 200 and body["choices"][0]["text"] == TEXT and body["choices"][0]["logprobs"] is None


def test_vllm_prompt_logprobs(llm_server, ids):
    status, body = post(llm_server, "/v1/completions", {"model": LLM, "prompt": ids, "max_tokens": 2, "prompt_logprobs": 3, "temperature": 0})
    assert status == 200, body
    scores = body["choices"][0]["prompt_logprobs"]
    assert len(scores) == len(ids) and scores[0] is None
    for token, position in zip(ids[1:], scores[1:]):
        # The three most likely, and the prompt's own token beside them when it is not one of them.
        rank = position[str(token)]["rank"]
        assert sorted(entry["rank"] for entry in position.values()) == [1, 2, 3] + ([rank] if rank > 3 else []), position
        assert position[str(token)]["decoded_token"]
        ordered = sorted(position.values(), key=lambda entry: entry["rank"])
        assert [e["logprob"] for e in ordered] == sorted((e["logprob"] for e in ordered), reverse=True)
    status, echo = post(llm_server, "/v1/completions", {"model": LLM, "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 3})
    for lp, token, position in zip(echo["choices"][0]["logprobs"]["token_logprobs"][1:], ids[1:], scores[1:]):
        assert math.isclose(lp, position[str(token)]["logprob"], abs_tol=1e-6)


def test_a_list_of_prompts_gets_one_choice_each(llm_server):
    prompts = ["The capital of France is", "One, two, three,", "The capital of France is"]
    status, body = post(llm_server, "/v1/completions", {"model": LLM, "prompt": prompts, "max_tokens": 4, "temperature": 0})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["choices"][0]["text"] == body["choices"][2]["text"] != body["choices"][1]["text"]
    usage = body["usage"]
    assert usage["completion_tokens"] <= 12 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    single = post(llm_server, "/v1/completions", {"model": LLM, "prompt": prompts[1], "max_tokens": 4, "temperature": 0})[1]
    assert single["choices"][0]["text"] == body["choices"][1]["text"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"prompt": "a", "echo": True, "stream": True}, "echo"),
        ({"prompt": "a", "prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": ["a"] * 65}, "prompt"),
        ({"prompt": [[1], []]}, "prompt"),
    ],
)
def test_bad_scoring_requests_name_their_field(llm_server, body, field):
    status, error = post(llm_server, "/v1/completions", {"model": LLM, **body})
    assert status == 400, error
    assert error["error"]["param"] == field, error


def test_the_token_that_stops_a_completion_is_in_its_logprobs(llm_server, ids):
    # The greedy token after the prompt, made a stop token: the completion's text is empty, and
    # its one logprob entry is that token (as vLLM answers; lm-eval drops the last entry as the
    # generated one, so without it a one-token continuation would score 0).
    first = post(llm_server, "/v1/completions", {"model": LLM, "prompt": ids, "max_tokens": 1, "logprobs": 1, "temperature": 0})[1]
    token_text, logprob = first["choices"][0]["logprobs"]["tokens"][0], first["choices"][0]["logprobs"]["token_logprobs"][0]
    greedy = post(llm_server, "/tokenize", {"prompt": token_text, "add_special_tokens": False})[1]["tokens"]
    assert len(greedy) == 1, (token_text, greedy)
    body = {"model": LLM, "prompt": [ids], "max_tokens": 1, "logprobs": 1, "echo": True, "temperature": 0, "stop_token_ids": greedy}
    status, stopped = post(llm_server, "/v1/completions", body)
    assert status == 200, stopped
    choice = stopped["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == TEXT
    assert len(choice["logprobs"]["tokens"]) == len(ids) + 1
    assert choice["logprobs"]["tokens"][-1] == token_text and choice["logprobs"]["token_logprobs"][-1] == logprob
    assert stopped["usage"]["completion_tokens"] == 1
    # Without logprobs nothing changes: no text, no entry.
    plain = post(llm_server, "/v1/completions", {**body, "echo": False, "logprobs": None})[1]["choices"][0]
    assert plain["text"] == "" and plain["logprobs"] is None
