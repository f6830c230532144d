"""Session affinity against Dynamo 1.6.1's frontend: two echo workers of a token-input model and two of a
text-input model, behind both frontends in round-robin mode with `--router-session-affinity-ttl-secs`.
A session's requests (`x-dynamo-session-id`) stay on one worker on both frontends and requests without
one alternate; Tritium's keeps text-input workers' sessions too (forwarded as sent), where Dynamo's
frontend routes those past its session table. On Tritium's, a Responses API conversation (a chain of
`previous_response_id`s, or a Conversations API conversation) is its own session there too."""

from __future__ import annotations

import json
import urllib.request

import pytest

from deployment import Deployment, models_at, tiny_model, wait_until  # noqa: F401 - tiny_model: a fixture
from helpers import start_server

pytestmark = pytest.mark.dynamo
START = 90
AFFINITY = ["--router-session-affinity-ttl-secs", "600"]


@pytest.fixture(scope="module")
def sticky(tmp_path_factory, tiny_model):
    deployment = Deployment(tmp_path_factory.mktemp("dynamo-affinity"), tiny_model, namespace="affinity")
    tokens = [deployment.echo("sticky", "--log-requests") for _ in range(2)]
    texts = [deployment.echo("sticky-text", "--text", "--log-requests") for _ in range(2)]
    flags, env = deployment.frontend_options()
    # Round-robin on both: Dynamo's frontend refuses text-input workers in kv mode.
    mode = flags.index("--router-mode") + 1
    flags[mode] = "round-robin"
    tritium = start_server(*flags, *AFFINITY, env=env)
    deployment.tritium.append(tritium)
    dynamo = deployment.dynamo_frontend("--router-mode", "round-robin", *AFFINITY)
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: {"sticky", "sticky-text"} <= set(models_at(base)), START, f"both models listed at {base}")
    wait_until(lambda: tritium.stderr().count("Dynamo worker joined") >= 4, START, "all four workers joined")
    yield tritium.http_url, dynamo, tokens, texts
    deployment.stop()


def chat(base: str, model: str, session: str | None, text: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 3,
            "nvext": {"extra_fields": ["worker_id"]}}  # fmt: skip
    headers = {"content-type": "application/json"} | ({"x-dynamo-session-id": session} if session else {})
    request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def served(workers, model: str) -> list[int]:
    """Requests each worker logged so far."""
    return [worker.log().count(f"REQUEST {model}") for worker in workers]


def spread_of(workers, model: str, send) -> list[int]:
    """How many of the requests `send` makes each worker got."""
    before = served(workers, model)
    send()
    wait_until(lambda: sum(served(workers, model)) - sum(before) >= 6, 30, "every request logged")
    return [after - was for after, was in zip(served(workers, model), before)]


@pytest.mark.parametrize("frontend", ["tritium", "dynamo"])
@pytest.mark.parametrize("model", ["sticky", "sticky-text"])
def test_a_sessions_requests_stay_on_one_worker_on_both_frontends(sticky, frontend, model):
    tritium, dynamo, tokens, texts = sticky
    base = tritium if frontend == "tritium" else dynamo
    workers = tokens if model == "sticky" else texts
    alone = spread_of(workers, model, lambda: [chat(base, model, None, f"free {i}") for i in range(6)])
    assert sorted(alone) == [3, 3], alone
    session = f"{frontend}-{model}"
    kept = spread_of(workers, model, lambda: [chat(base, model, session, f"turn {i}") for i in range(6)])
    if frontend == "dynamo" and model == "sticky-text":
        # Dynamo 1.6.1 forwards text-input requests past its router's session table: they alternate.
        assert sorted(kept) == [3, 3], kept
        return
    assert sorted(kept) == [0, 6], kept
    if model == "sticky":
        # The token path also names the worker in nvext: the same one each turn.
        named = {str(chat(base, model, session, "again")["nvext"]["worker_id"]["decode_worker_id"]) for _ in range(3)}
        assert len(named) == 1, named


def post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("thread", ["previous_response_id", "conversation"])
def test_a_responses_conversation_stays_on_one_text_input_worker(sticky, thread):
    """Without a session header, Tritium's Responses door makes a conversation its own session on
    Dynamo's text-input workers too: a chain of `previous_response_id`s (bound from its second turn,
    the chain's first response naming it) or a Conversations API conversation keeps one worker, where
    requests without one alternate."""
    tritium, _, _, texts = sticky
    model = "sticky-text"
    if thread == "previous_response_id":
        last = post(tritium, "/v1/responses", {"model": model, "input": "begin", "max_output_tokens": 3})["id"]

        def turn(i: int) -> None:
            nonlocal last
            last = post(tritium, "/v1/responses", {"model": model, "input": f"step {i}", "previous_response_id": last,
                                                   "max_output_tokens": 3})["id"]  # fmt: skip
    else:
        conversation = post(tritium, "/v1/conversations", {})["id"]

        def turn(i: int) -> None:
            post(tritium, "/v1/responses", {"model": model, "input": f"step {i}", "conversation": conversation, "max_output_tokens": 3})

    kept = spread_of(texts, model, lambda: [turn(i) for i in range(6)])
    assert sorted(kept) == [0, 6], kept
    alone = spread_of(texts, model, lambda: [post(tritium, "/v1/responses", {"model": model, "input": f"free {i}", "max_output_tokens": 3})
                                              for i in range(6)])  # fmt: skip
    assert sorted(alone) == [3, 3], alone
