"""Dynamo's session affinity (`--router-session-affinity-ttl-secs`, `--router-session-affinity-mode`):
the requests of one agent session, named by `x-dynamo-session-id` or a coding agent's session
headers, stay on the worker the session's first request went to, observed through the worker each
answer names in `nvext.worker_id`; two mock-engine workers behind a round-robin frontend."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.error
import urllib.request

import openai
import pytest

from cluster import wait_until
from dynamo_cluster import NVEXT_WORKER, file_cluster, metric_or_zero, nats_events, worker_of  # noqa: F401 (fixtures)

AFFINITY = ("--router-session-affinity-ttl-secs", "600")


def served_by(frontend, headers: dict[str, str] | None = None, prompt: str = "hello") -> str:
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none", default_headers=headers or {})
    answer = client.chat.completions.create(
        model="mock-llm", messages=[{"role": "user", "content": prompt}], max_tokens=2, extra_body=NVEXT_WORKER
    )
    return worker_of(answer)


def test_a_sessions_requests_stay_on_its_first_worker_and_sessions_spread(file_cluster):
    file_cluster.worker()
    file_cluster.worker()
    frontend = file_cluster.frontend(*AFFINITY)
    # Without a session, round-robin alternates.
    assert len({served_by(frontend) for _ in range(4)}) == 2
    for session in ("alpha", "beta", "gamma"):
        headers = {"x-dynamo-session-id": session}
        first = served_by(frontend, headers)
        assert all(served_by(frontend, headers, f"turn {turn}") == first for turn in range(5)), session
    # Sessions are spread by the policy: two new ones in a row land on both workers.
    assert served_by(frontend, {"x-dynamo-session-id": "delta"}) != served_by(frontend, {"x-dynamo-session-id": "epsilon"})
    assert metric_or_zero(frontend, "tritium_router_session_affinity_hits_total") == 15
    assert metric_or_zero(frontend, "tritium_router_session_affinity_misses_total") == 5
    assert metric_or_zero(frontend, "tritium_router_session_affinity_sessions") == 5


def test_the_first_requests_of_a_session_sent_at_once_all_go_to_one_worker(file_cluster):
    """The second request of a new session waits while the first picks its worker and follows it,
    instead of being spread by round-robin."""
    file_cluster.worker()
    file_cluster.worker()
    frontend = file_cluster.frontend(*AFFINITY, "--router-session-affinity-mode", "soft")
    for session in ("burst-1", "burst-2", "burst-3"):
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            workers = set(pool.map(lambda i: served_by(frontend, {"x-dynamo-session-id": session}, f"q{i}"), range(6)))
        assert len(workers) == 1, (session, workers)


def test_agent_headers_name_sessions_and_subagents_share_their_parents_group(file_cluster):
    file_cluster.worker()
    file_cluster.worker()
    frontend = file_cluster.frontend(*AFFINITY)
    for headers in ({"thread-id": "codex-thread"}, {"x-session-id": "opencode"}, {"x-claude-code-session-id": "claude"}):
        first = served_by(frontend, headers)
        assert all(served_by(frontend, headers) == first for _ in range(3)), headers
    # Claude Code's subagents of one session share a worker (their group's), each time.
    sub = lambda agent: {"x-claude-code-session-id": "root", "x-claude-code-agent-id": agent}  # noqa: E731
    group = served_by(frontend, sub("researcher"))
    assert all(served_by(frontend, sub(agent)) == group for agent in ("planner", "coder", "researcher", "tester"))


def test_a_session_whose_worker_died_moves_to_another_and_stays_there(file_cluster):
    workers = {name: file_cluster.worker("--worker-id", name) for name in ("w-a", "w-b")}
    frontend = file_cluster.frontend(*AFFINITY, "--router-session-affinity-mode", "hard")
    headers = {"x-dynamo-session-id": "survivor"}
    first = served_by(frontend, headers)
    workers[first].proc.kill()
    workers[first].proc.wait(timeout=10)
    file_cluster.started.remove(workers[first])
    moved = served_by(frontend, headers)
    assert moved != first
    assert all(served_by(frontend, headers) == moved for _ in range(3))


def test_sessions_past_the_bound_are_refused_and_an_over_long_id_is_the_clients_error(file_cluster):
    file_cluster.worker()
    file_cluster.worker()
    frontend = file_cluster.frontend(*AFFINITY, "--router-session-affinity-max-sessions", "2")
    chat = {"model": "mock-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    def post_with(session: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"{frontend.http_url}/v1/chat/completions",
            data=json.dumps(chat).encode(),
            headers={"content-type": "application/json", "x-dynamo-session-id": session},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    assert post_with("one")[0] == 200 and post_with("two")[0] == 200
    status, body = post_with("three")
    assert status == 429, (status, body)
    assert "session affinity" in body["error"]["message"] and "three" not in body["error"]["message"], body
    # A bound session still runs; an over-long id is the client's error.
    assert post_with("one")[0] == 200
    status, body = post_with("x" * 257)
    assert status == 400 and "longer than 256 bytes" in body["error"]["message"], (status, body)


def test_a_responses_conversation_is_its_own_session_without_a_header(file_cluster):
    """A Responses API chain of `previous_response_id`s, and a Conversations API conversation, keep
    their turns on one worker with no session header: the chain's first response keys it (its
    second turn binds), the conversation's id keys its own; a header still names the session."""
    file_cluster.worker()
    file_cluster.worker()
    frontend = file_cluster.frontend(*AFFINITY, "--router-session-affinity-max-sessions", "3")
    client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
    counts = lambda: tuple(  # noqa: E731
        metric_or_zero(frontend, f"tritium_router_session_affinity_{name}") for name in ("hits_total", "misses_total", "sessions")
    )
    first = client.responses.create(model="mock-llm", input="hello", max_output_tokens=2)
    assert counts() == (0, 0, 0), "a chain's first response binds nothing"
    second = client.responses.create(model="mock-llm", input="more", previous_response_id=first.id, max_output_tokens=2)
    assert counts() == (0, 1, 1)
    third = client.responses.create(model="mock-llm", input="again", previous_response_id=second.id, max_output_tokens=2)
    # A branch from the first response is the same chain.
    client.responses.create(model="mock-llm", input="other way", previous_response_id=first.id, max_output_tokens=2)
    assert counts() == (2, 1, 1)
    conversation = client.conversations.create()
    for turn in ("one", "two"):
        client.responses.create(model="mock-llm", input=turn, conversation=conversation.id, max_output_tokens=2)
    assert counts() == (3, 2, 2)
    headed = {"x-dynamo-session-id": "named"}
    client.responses.create(model="mock-llm", input="x", previous_response_id=third.id, max_output_tokens=2, extra_headers=headed)
    assert counts() == (3, 3, 3), "the header's session, not the chain's"
    # The table is full: a new chain goes without affinity rather than being refused (the client
    # asked for none), while a header's new session is refused as before.
    fresh = client.responses.create(model="mock-llm", input="new", max_output_tokens=2)
    client.responses.create(model="mock-llm", input="on", previous_response_id=fresh.id, max_output_tokens=2)
    assert counts() == (3, 3, 3)
    try:
        client.responses.create(model="mock-llm", input="y", max_output_tokens=2, extra_headers={"x-dynamo-session-id": "new"})
        raise AssertionError("a header's session past the bound must be refused")
    except openai.RateLimitError as error:
        assert "session affinity" in str(error)


@pytest.mark.nats
def test_replica_sync_shares_session_bindings_between_frontends(nats_events, file_cluster):
    """With --router-replica-sync, a session bound through one frontend goes to the same worker
    through another (Dynamo's routers sync bindings the same way, best-effort); round-robin would
    spread the second frontend's requests (each of three sessions by chance: 1 in 2)."""
    file_cluster.worker(*nats_events)
    file_cluster.worker(*nats_events)
    shared = [*AFFINITY, "--router-replica-sync", *nats_events]
    first, second = file_cluster.frontend(*shared), file_cluster.frontend(*shared)
    bound = {session: served_by(first, {"x-dynamo-session-id": session}) for session in ("s1", "s2", "s3")}
    adopted = lambda: metric_or_zero(second, "tritium_router_session_affinity_sessions")  # noqa: E731
    wait_until(lambda: adopted() == 3, 10, "the second frontend to hear the first's bindings")
    for session, worker in bound.items():
        assert all(served_by(second, {"x-dynamo-session-id": session}, f"turn {t}") == worker for t in range(3)), session
    assert metric_or_zero(second, "tritium_router_session_affinity_misses_total") == 0, "every session was known there"
