"""Triton's generate extension on the real language model (`smollm2`, the `llm_server` fixture): `/generate` answers
one JSON object with `text_output` and `finish_reason`; `/generate_stream` answers server-sent events, one per text
delta (the model's optional `streaming` input is set for it), whose texts add up to the `/generate` text; sampling
options travel as members that name no input. Greedy decoding keeps the texts deterministic.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

MODEL = "smollm2"
PROMPT = "The capital of France is"
TIMEOUT_S = 120


def post(server, path: str, body: dict) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        server.http_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def events(body: bytes) -> list[dict]:
    out = []
    for block in body.decode().split("\n\n"):
        data = [line[len("data:"):].strip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def test_generate_answers_one_object(llm_server):
    status, content_type, body = post(
        llm_server, f"/v2/models/{MODEL}/generate", {"text_input": PROMPT, "max_tokens": 8, "temperature": 0.0, "id": "g1"}
    )
    assert status == 200, body
    assert content_type.startswith("application/json")
    answer = json.loads(body)
    assert answer["model_name"] == MODEL and answer["id"] == "g1"
    assert answer["text_output"].startswith(" Paris"), answer
    assert answer["finish_reason"] in ("length", "stop"), answer


def test_generate_stream_sends_the_same_text_in_deltas(llm_server):
    whole = json.loads(post(llm_server, f"/v2/models/{MODEL}/generate", {"text_input": PROMPT, "max_tokens": 8, "temperature": 0.0})[2])
    status, content_type, body = post(
        llm_server, f"/v2/models/{MODEL}/generate_stream", {"text_input": PROMPT, "max_tokens": 8, "temperature": 0.0}
    )
    assert status == 200, body
    assert content_type == "text/event-stream; charset=utf-8"
    deltas = events(body)
    assert len(deltas) > 1, deltas
    assert all(d["model_name"] == MODEL and "error" not in d for d in deltas), deltas
    assert "".join(d["text_output"] for d in deltas) == whole["text_output"]
    assert deltas[-1]["finish_reason"] == whole["finish_reason"]


def test_generate_errors_name_the_problem(llm_server):
    status, _, body = post(llm_server, f"/v2/models/{MODEL}/generate", {"max_tokens": 8})
    assert status == 400, body
    assert "text_input" in json.loads(body)["error"]
    status, _, body = post(llm_server, f"/v2/models/{MODEL}/generate", {"text_input": PROMPT, "temperature": "hot"})
    assert status == 400, body
    assert "temperature" in json.loads(body)["error"]
    status, _, body = post(llm_server, "/v2/models/nope/generate", {"text_input": PROMPT})
    assert status == 404 and json.loads(body) == {"error": "Request for unknown model: 'nope' is not found"}
