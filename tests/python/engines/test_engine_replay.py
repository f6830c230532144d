"""Engines reached over their own gRPC (issue 62) in the default run: Tritium's frontend serves a vLLM gRPC
engine played back from frames recorded with the real one (`tests/fixtures/engine_grpc/`, re-recorded with
`bash scripts/test-engines.sh --record`), through the real `openai` client. The answers must equal what
vLLM's own OpenAI server gave for the same prompts (recorded in the same run): text, finish reason and usage,
streamed and not. A client that goes away reaches the engine as `Abort`; a misbehaving engine (a stream that
stops before its final message, garbage, a flood of tokens, a hung call) costs the request a clear error and
the server nothing. The live engine is driven by `scripts/test-engines.sh` (tests/python/engines/test_vllm_live.py)."""

from __future__ import annotations

import json
import pathlib
import socket

import numpy as np
import openai
import pytest
import requests
import tritonclient.grpc as grpcclient

from engine_replay import EXCHANGE, MODEL, Replay
from helpers import finish_server, start_failure, start_server, wait_for

def serve_engine(replay: Replay, *args: str):
    server = start_server("--engine-grpc", f"{MODEL}={replay.address}", *args)
    listed = lambda: MODEL in requests.get(server.http_url + "/v1/models", timeout=5).text  # noqa: E731
    if not wait_for(listed, timeout=60):
        finish_server(server)
        pytest.fail(f"the engine's model never joined:\n{server.stderr()[-3000:]}")
    return server


@pytest.fixture(scope="module")
def engine():
    replay = Replay()
    server = serve_engine(replay)
    yield server, replay
    finish_server(server)
    replay.stop()


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def cases(route: str, stream: bool):
    return [c for c in EXCHANGE["cases"] if c["route"] == route and bool(c["body"].get("stream")) == stream]


def ids(items):
    return [c["name"] for c in items]


def streamed(events: list[dict], chat: bool) -> tuple[str, str | None, dict | None]:
    """Text, finish reason and usage of a stream's events (recorded dicts or the client's chunks)."""
    text, finish, usage = "", None, None
    for event in events:
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            text += piece or ""
            finish = choice.get("finish_reason") or finish
        usage = event.get("usage") or usage
    return text, finish, usage


def usage_of(usage: dict) -> tuple[int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"]


@pytest.mark.parametrize("case", cases("/v1/completions", False), ids=ids(cases("/v1/completions", False)))
def test_completions_equal_vllm_own_server(engine, case):
    server, _ = engine
    got = client(server).completions.create(**case["body"]).model_dump()
    want = case["openai"]
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert usage_of(got["usage"]) == usage_of(want["usage"])
    if case["body"].get("logprobs"):
        mine, theirs = got["choices"][0]["logprobs"], want["choices"][0]["logprobs"]
        assert mine["tokens"] == theirs["tokens"]
        assert mine["token_logprobs"] == pytest.approx(theirs["token_logprobs"], abs=1e-4)


@pytest.mark.parametrize("case", cases("/v1/completions", True), ids=ids(cases("/v1/completions", True)))
def test_streamed_completions_equal_vllm_own_server(engine, case):
    server, _ = engine
    events = [chunk.model_dump() for chunk in client(server).completions.create(**case["body"])]
    text, finish, usage = streamed(events, chat=False)
    want_text, want_finish, want_usage = streamed(case["openai"], chat=False)
    assert (text, finish) == (want_text, want_finish)
    assert usage_of(usage) == usage_of(want_usage)


@pytest.mark.parametrize("case", cases("/v1/chat/completions", False), ids=ids(cases("/v1/chat/completions", False)))
def test_chat_equals_vllm_own_server(engine, case):
    server, _ = engine
    got = client(server).chat.completions.create(**case["body"]).model_dump()
    want = case["openai"]
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]
    assert got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert usage_of(got["usage"]) == usage_of(want["usage"])


@pytest.mark.parametrize("case", cases("/v1/chat/completions", True), ids=ids(cases("/v1/chat/completions", True)))
def test_streamed_chat_equals_vllm_own_server(engine, case):
    server, _ = engine
    events = [chunk.model_dump() for chunk in client(server).chat.completions.create(**case["body"])]
    assert streamed(events, chat=True)[:2] == streamed(case["openai"], chat=True)[:2]
    assert usage_of(streamed(events, chat=True)[2]) == usage_of(streamed(case["openai"], chat=True)[2])


def test_the_kserve_door_answers_with_the_language_model_tensors(engine):
    server, _ = engine
    france = next(c for c in EXCHANGE["cases"] if c["name"] == "completion_france")
    want = france["openai"]["choices"][0]["text"]
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([france["body"]["prompt"].encode()], dtype=np.object_))
    result = grpcclient.InferenceServerClient(server.url).infer(MODEL, [text], parameters={"max_tokens": 16, "temperature": 0.0})
    assert result.as_numpy("text_output").reshape(-1)[0].decode() == want
    generated = requests.post(
        server.http_url + f"/v2/models/{MODEL}/generate",
        json={"text_input": france["body"]["prompt"], "parameters": {"max_tokens": 16, "temperature": 0}},
        timeout=60,
    ).json()
    assert (generated["text_output"], generated["finish_reason"]) == (want, "length")


def test_the_engine_describes_the_model(engine):
    server, _ = engine
    models = requests.get(server.http_url + "/v1/models", timeout=5).json()["data"]
    assert MODEL in [m["id"] for m in models]
    assert requests.get(server.http_url + f"/v2/models/{MODEL}/ready", timeout=5).status_code == 200
    # The context length is the engine's (GetModelInfo), not the tokenizer config's.
    limit = EXCHANGE["model_info"]["max_context_length"]
    with pytest.raises(openai.BadRequestError, match=str(limit)):
        client(server).completions.create(model=MODEL, prompt="hello " * (limit + 10), max_tokens=4)


def test_an_unrecorded_prompt_is_the_engines_refusal_not_a_crash(engine):
    server, _ = engine
    with pytest.raises(openai.APIStatusError) as refused:
        client(server).completions.create(model=MODEL, prompt="Never recorded", max_tokens=3, temperature=0)
    assert "no recorded exchange" in str(refused.value)
    assert requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200


def france(max_tokens: int = 16) -> dict:
    return {"model": MODEL, "prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0}


@pytest.mark.parametrize("mode", ["slow", "late"])
def test_a_client_that_goes_away_aborts_the_engines_generation(mode):
    """`slow`: the client leaves mid-stream; `late`: before the engine answered the call at all (engines send
    a call's headers with its first token), which only dropping the call would not tell the engine."""
    replay = Replay("--misbehave", mode)
    server = serve_engine(replay)
    try:
        host, port = server.http_url.removeprefix("http://").split(":")
        payload = json.dumps({**france(), "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = f"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            sock.sendall(head.encode() + payload)
            # Leave once the engine has the call (before that, nothing has started to abort).
            assert wait_for(lambda: any(line.startswith("generate tritium-") for line in replay.lines), timeout=30), replay.lines
            if mode == "slow":
                received = b""
                while b"data:" not in received:
                    received += sock.recv(4096)
        assert wait_for(lambda: any(line.startswith("abort tritium-") for line in replay.lines), timeout=30), replay.lines
    finally:
        finish_server(server)
        replay.stop()


@pytest.mark.parametrize(
    "mode, fragment",
    [
        ("unfinished", "ended the stream before completing"),
        ("garbage", "a choice never asked for"),
        ("flood", "where at most 16 were asked for"),
        ("hang", "sent nothing for 1 s"),
    ],
)
def test_a_misbehaving_engine_costs_one_request_a_clear_error(mode, fragment):
    replay = Replay("--misbehave", mode)
    server = serve_engine(replay, "--engine-grpc-idle-timeout", "1", "--migration-limit", "0")
    try:
        answer = requests.post(server.http_url + "/v1/completions", json=france(), timeout=60)
        assert answer.status_code >= 500, answer.text
        assert fragment in answer.text, answer.text
        # The server is still whole: its health, and its other models.
        assert requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200
        assert requests.get(server.http_url + "/v1/models", timeout=5).status_code == 200
    finally:
        finish_server(server)
        replay.stop()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--engine-grpc", "smollm2"], "is not NAME=URL"),
        (["--engine-grpc", "smollm2=127.0.0.1"], "names no port"),
        (["--engine-grpc", "smollm2=https://127.0.0.1:1"], "the 'https' scheme is not supported for engines"),
        (["--engine-grpc", "smollm2=127.0.0.1:1", "--engine-grpc-idle-timeout", "0"], "--engine-grpc-idle-timeout must be at least 1 second"),
        (["--engine-grpc", "smollm2=127.0.0.1:1", "--engine-grpc-max-message-size", "100"], "must be at least 4096 bytes"),
    ],
)
def test_engine_options_are_checked_at_start(args, fragment):
    assert fragment in start_failure(*args)


def test_an_engine_that_is_not_there_leaves_the_model_out_and_the_server_up():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    server = start_server("--engine-grpc", f"{MODEL}=127.0.0.1:{port}")
    try:
        assert requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200
        assert MODEL not in requests.get(server.http_url + "/v1/models", timeout=5).text
        assert wait_for(lambda: "engine not serving" in server.stderr(), timeout=30), server.stderr()[-2000:]
    finally:
        finish_server(server)


def test_a_traced_request_hands_its_trace_to_the_engine(tmp_path):
    """The engine's call is a hop of the request's trace: its `traceparent` continues the caller's trace."""
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    replay = Replay()
    server = serve_engine(replay, "--trace-config", f"triton,file={tmp_path / 'trace.json'}", "--trace-config", "rate=1",
                          "--trace-config", "level=TIMESTAMPS")  # fmt: skip
    try:
        traced = openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0,
                               default_headers={"traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"})  # fmt: skip
        traced.completions.create(**france())
        calls = [line for line in replay.lines if line.startswith("generate tritium-")]
        assert len(calls) == 1 and f"traceparent=00-{caller_trace}-" in calls[0], calls
    finally:
        finish_server(server)
        replay.stop()


def test_a_tokenizer_past_its_bound_keeps_the_engine_out_saying_why():
    """--engine-grpc-max-tokenizer-size bounds the GetTokenizer archive (and each file unpacked from it)."""
    replay = Replay()
    server = start_server("--engine-grpc", f"{MODEL}={replay.address}", "--engine-grpc-max-tokenizer-size", "4096")
    try:
        said = lambda: "the tokenizer archive is over 4096 bytes (--engine-grpc-max-tokenizer-size)" in server.stderr()  # noqa: E731
        assert wait_for(said, timeout=30), server.stderr()[-2000:]
        assert MODEL not in requests.get(server.http_url + "/v1/models", timeout=5).text
        assert requests.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200
    finally:
        finish_server(server)
        replay.stop()


def test_a_message_past_its_bound_keeps_the_engine_out():
    """--engine-grpc-max-message-size bounds every message read from the engine: the tokenizer archive comes in
    64 KiB pieces, so a 4096-byte bound stops the description, named in the log."""
    replay = Replay()
    server = start_server("--engine-grpc", f"{MODEL}={replay.address}", "--engine-grpc-max-message-size", "4096")
    try:
        said = lambda: "GetTokenizer broke off" in server.stderr()  # noqa: E731
        assert wait_for(said, timeout=30), server.stderr()[-2000:]
        assert MODEL not in requests.get(server.http_url + "/v1/models", timeout=5).text
    finally:
        finish_server(server)
        replay.stop()
