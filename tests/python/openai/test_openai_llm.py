"""The OpenAI HTTP API (`/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/v1/embeddings`) through
the official `openai` client against the real SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 models,
plus the plain HTTP endpoints (`/health`, `/live`) and raw malformed requests.

Generation is greedy (temperature 0) so texts are deterministic; max_tokens stays small because a debug
build decodes about 20 tokens/s on 2 cores.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
import urllib.request

import numpy as np
import openai
import pytest

LLM = "smollm2"
EMBEDDER = "minilm"
PROMPT = "The capital of France is"
QUESTION = "What is the capital of France?"
MAX_TOKENS = 8
LONG_TOKENS = 14
CHAT_TOKENS = 8
REQUEST_TIMEOUT_S = 120
# all-MiniLM-L6-v2 (sentence-transformers reference value)
SENTENCE_A = "A man is eating food."
SENTENCE_B = "A man is eating a piece of bread."
EXPECTED_COSINE = 0.7553


@pytest.fixture(scope="module")
def oai(llm_server):
    # max_retries=0: a retried request would hide the status the server really answered with.
    client = openai.OpenAI(base_url=llm_server.http_url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    yield client
    client.close()


@pytest.fixture(scope="module")
def greedy_completion(oai):
    """The non-streaming greedy completion of PROMPT, shared by the tests that compare against it."""
    return oai.completions.create(model=LLM, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)


@pytest.fixture(scope="module")
def greedy_chat(oai):
    return oai.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": QUESTION}], max_tokens=CHAT_TOKENS, temperature=0
    )


def check_usage(usage, max_completion: int) -> None:
    assert usage is not None
    assert 0 < usage.prompt_tokens < 200, usage
    assert 0 < usage.completion_tokens <= max_completion, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage


# ---- completions -------------------------------------------------------------------------------------------


def test_completion_greedy(greedy_completion):
    r = greedy_completion
    assert r.object == "text_completion"
    assert r.model == LLM
    assert r.id and isinstance(r.created, int) and r.created > 0
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.text.startswith(" Paris"), repr(choice.text)
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    check_usage(r.usage, MAX_TOKENS)
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == MAX_TOKENS, r.usage
    # Sanity for the tokenization: a 5-word prompt is a handful of tokens, not characters or bytes.
    assert r.usage.prompt_tokens <= 10, r.usage


def test_completion_max_tokens_gives_length(oai):
    r = oai.completions.create(model=LLM, prompt=PROMPT, max_tokens=4, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "length", (choice.finish_reason, choice.text)
    assert choice.text.startswith(" Paris"), repr(choice.text)
    assert r.usage.completion_tokens == 4, r.usage
    check_usage(r.usage, 4)


def test_completion_stream_matches_non_stream(oai, greedy_completion):
    chunks = list(oai.completions.create(model=LLM, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True))
    assert chunks, "no chunks"
    with_choices = [c for c in chunks if c.choices]
    assert with_choices, chunks
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "text_completion" and c.model == LLM for c in chunks), chunks[0]
    text = "".join(c.choices[0].text for c in with_choices)
    assert text == greedy_completion.choices[0].text
    reasons = [c.choices[0].finish_reason for c in with_choices]
    assert reasons[-1] == greedy_completion.choices[0].finish_reason, reasons
    assert all(reason is None for reason in reasons[:-1]), reasons
    # Without stream_options.include_usage no chunk carries usage.
    assert all(getattr(c, "usage", None) is None for c in chunks), [c.usage for c in chunks]


def test_completion_stream_include_usage(oai, greedy_completion):
    chunks = list(
        oai.completions.create(
            model=LLM, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == [], last
    assert last.usage is not None
    assert last.usage.completion_tokens == greedy_completion.usage.completion_tokens
    assert last.usage.prompt_tokens == greedy_completion.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in chunks[:-1] if c.choices) == greedy_completion.choices[0].text


@pytest.fixture(scope="module")
def long_greedy(oai):
    """A greedy completion that runs to max_tokens whatever the model predicts (ignore_eos), to take stop strings from."""
    r = oai.completions.create(model=LLM, prompt=PROMPT, max_tokens=LONG_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    # ignore_eos (an extension, sent in the body) runs to max_tokens.
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == LONG_TOKENS, r.usage
    return r.choices[0].text


def stop_string_in(text: str) -> str:
    """A 4-character stop string from the second half of `text` whose first occurrence is after ' Paris', so
    greedy decoding is certain to meet it and the text before it is not empty."""
    for start in range(len(text) // 2, len(text) - 3):
        stop = text[start : start + 4]
        if stop.strip() and text.index(stop) >= len(" Paris"):
            return stop
    pytest.fail(f"no stop string found in the greedy text {text!r}")


def test_completion_stop_string(oai, long_greedy):
    full = long_greedy
    stop = stop_string_in(full)
    expected = full[: full.index(stop)]
    options = {"model": LLM, "prompt": PROMPT, "max_tokens": LONG_TOKENS, "temperature": 0, "extra_body": {"ignore_eos": True}}
    r = oai.completions.create(**options, stop=["@@never@@", stop])
    assert r.choices[0].text == expected, (full, stop)
    assert r.choices[0].finish_reason == "stop"
    # A single string works as well as a list.
    r = oai.completions.create(**options, stop=stop)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop"), (full, stop)


def test_completion_stop_string_streaming(oai, long_greedy):
    # The stream must hold back text that could be the start of a stop string, and never send any of it.
    full = long_greedy
    stop = stop_string_in(full)
    chunks = list(
        oai.completions.create(
            model=LLM, prompt=PROMPT, max_tokens=LONG_TOKENS, temperature=0, extra_body={"ignore_eos": True}, stop=[stop], stream=True
        )
    )
    with_choices = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in with_choices) == full[: full.index(stop)], (full, stop)
    assert with_choices[-1].choices[0].finish_reason == "stop"


# ---- chat ----------------------------------------------------------------------------------------------------


def test_chat_greedy(oai, greedy_chat):
    r = greedy_chat
    assert r.object == "chat.completion"
    assert r.model == LLM
    assert r.id and isinstance(r.created, int)
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip(), choice.message
    assert choice.finish_reason in ("stop", "length")
    check_usage(r.usage, CHAT_TOKENS)
    # The chat template wraps the question in role markers, so the prompt is longer than the raw text alone.
    raw = oai.completions.create(model=LLM, prompt=QUESTION, max_tokens=1, temperature=0)
    assert r.usage.prompt_tokens > raw.usage.prompt_tokens, (r.usage, raw.usage)


def test_chat_stream(oai, greedy_chat):
    chunks = list(
        oai.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=CHAT_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) >= 2, chunks
    assert all(c.object == "chat.completion.chunk" and c.model == LLM for c in chunks), chunks[0]
    assert {c.id for c in chunks} == {chunks[0].id}
    with_choices, usage_chunk = chunks[:-1], chunks[-1]
    # include_usage: one final chunk with empty choices and the usage; no other chunk has usage.
    assert usage_chunk.choices == [], usage_chunk
    assert usage_chunk.usage is not None
    assert all(c.usage is None for c in with_choices), [c.usage for c in with_choices]
    assert all(len(c.choices) == 1 for c in with_choices), with_choices
    assert with_choices[0].choices[0].delta.role == "assistant", with_choices[0]
    reasons = [c.choices[0].finish_reason for c in with_choices]
    assert reasons[-1] == greedy_chat.choices[0].finish_reason, reasons
    assert all(reason is None for reason in reasons[:-1]), reasons
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == greedy_chat.choices[0].message.content
    assert usage_chunk.usage.completion_tokens == greedy_chat.usage.completion_tokens
    assert usage_chunk.usage.prompt_tokens == greedy_chat.usage.prompt_tokens
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens


# ---- models and embeddings -----------------------------------------------------------------------------------


def test_models_lists_both(oai):
    models = list(oai.models.list())
    ids = {m.id for m in models}
    assert {LLM, EMBEDDER} <= ids, ids
    assert all(m.object == "model" for m in models), models


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def float_embeddings(oai):
    r = oai.embeddings.create(model=EMBEDDER, input=[SENTENCE_A, SENTENCE_B], encoding_format="float")
    assert r.object == "list"
    assert r.model == EMBEDDER
    assert [d.index for d in r.data] == [0, 1]
    assert all(d.object == "embedding" for d in r.data)
    assert r.usage.prompt_tokens > 0
    return [np.asarray(d.embedding, dtype=np.float32) for d in r.data]


def test_embeddings_cosine(float_embeddings):
    a, b = float_embeddings
    assert a.shape == b.shape == (384,)
    # The model ends in a Normalize module: unit vectors.
    np.testing.assert_allclose([np.linalg.norm(a), np.linalg.norm(b)], [1.0, 1.0], atol=1e-3)
    assert abs(cosine(a, b) - EXPECTED_COSINE) <= 0.001, cosine(a, b)


def test_embeddings_base64(oai, float_embeddings):
    # Explicit base64: the client hands the string back untouched; it is little-endian float32.
    r = oai.embeddings.create(model=EMBEDDER, input=[SENTENCE_A, SENTENCE_B], encoding_format="base64")
    for d, expected in zip(r.data, float_embeddings):
        assert isinstance(d.embedding, str), type(d.embedding)
        decoded = np.frombuffer(base64.b64decode(d.embedding), dtype="<f4")
        np.testing.assert_allclose(decoded, expected, rtol=1e-6, atol=1e-7)
    # Default: the client asks for base64 itself and decodes it to floats.
    r = oai.embeddings.create(model=EMBEDDER, input=SENTENCE_A)
    assert len(r.data) == 1
    np.testing.assert_allclose(np.asarray(r.data[0].embedding, dtype=np.float32), float_embeddings[0], rtol=1e-6, atol=1e-7)


# ---- errors ----------------------------------------------------------------------------------------------------


def check_error_body(body: object) -> dict:
    """OpenAI's error object (the client passes the inner `error` object as `body`)."""
    assert isinstance(body, dict), body
    assert {"message", "type", "param", "code"} <= set(body), body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["type"], str) and body["type"], body
    return body


def test_unknown_model_is_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    err = info.value
    assert err.status_code == 404
    body = check_error_body(err.body)
    assert "no-such-model" in body["message"], body
    assert err.code == "model_not_found", body
    assert set(err.response.json()) == {"error"}


def test_unknown_model_chat_is_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert "no-such-model" in check_error_body(info.value.body)["message"]


def test_bad_temperature_is_400(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=LLM, prompt=PROMPT, max_tokens=2, temperature=5)
    err = info.value
    assert err.status_code == 400
    body = check_error_body(err.body)
    assert "temperature" in body["message"], body
    assert body["param"] in (None, "temperature"), body
    assert body["type"] == "invalid_request_error", body


def post_raw(server, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict | str]:
    url = urllib.parse.urlsplit(server.http_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        text = response.read().decode(errors="replace")
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_bad_json_is_400_with_openai_body(llm_server, path):
    status, body = post_raw(llm_server, path, b'{"model": "smollm2", "prompt": "The capital')
    assert status == 400, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    check_error_body(body["error"])
    assert body["error"]["type"] == "invalid_request_error", body


def test_wrong_json_shape_is_400(llm_server):
    status, body = post_raw(llm_server, "/v1/completions", json.dumps({"model": LLM, "prompt": PROMPT, "max_tokens": "many"}).encode())
    assert status == 400, body
    error = check_error_body(body["error"])
    assert "max_tokens" in error["message"] or error["param"] == "max_tokens", error


@pytest.mark.parametrize("path", ["/health", "/live"])
def test_health_endpoints(llm_server, path):
    with urllib.request.urlopen(llm_server.http_url + path, timeout=30) as response:
        assert response.status == 200
