"""The Responses API's store shared by frontends (`--responses-store redis://…`, issue 61 item 3): two
`tritium serve` processes behind one real redis-server continue each other's conversations through
`previous_response_id`, read and delete each other's stored responses; a store that cannot be reached
fails the request that needs it (a conversation does not silently start over); bad values are refused at
start naming the flag, never echoing a password."""

from __future__ import annotations

import json
import socket

import pytest

from http_helpers import json_call as call
from helpers import finish_server, start_failure, start_server
from redis_service import redis  # noqa: F401 - a fixture

pytestmark = pytest.mark.redis
MODEL = "mock-llm"


def frontend(*args: str):
    return start_server("--engine", "mock", "--model-name", MODEL, "--mock-decode-ms-per-step", "1", *args)


def test_two_frontends_behind_one_redis_continue_each_others_conversations(redis):
    store = f"redis://127.0.0.1:{redis.port}/0"
    one, two = frontend("--responses-store", store), frontend("--responses-store", store)
    try:
        status, first = call("POST", one.http_url + "/v1/responses", {"model": MODEL, "input": "remember this", "max_output_tokens": 4})
        assert status == 200, first
        turn = {"model": MODEL, "input": "and then?", "previous_response_id": first["id"], "max_output_tokens": 4}
        status, second = call("POST", two.http_url + "/v1/responses", turn)
        assert status == 200 and second["previous_response_id"] == first["id"], second
        # The mock engine answers from its prompt: the second turn's prompt holds the first turn.
        status, alone = call("POST", two.http_url + "/v1/responses", {"model": MODEL, "input": "and then?", "max_output_tokens": 4})
        assert status == 200 and second["usage"]["input_tokens"] > alone["usage"]["input_tokens"], (second, alone)
        status, got = call("GET", one.http_url + f"/v1/responses/{second['id']}")
        assert status == 200 and got["id"] == second["id"], got
        # Its input items, listed on the other frontend: the first turn and its own input, newest first.
        status, items = call("GET", one.http_url + f"/v1/responses/{second['id']}/input_items")
        texts = [item["content"][0]["text"] for item in items["data"] if item["type"] == "message"]
        assert status == 200 and texts[0] == "and then?" and texts[-1] == "remember this" and not items["has_more"], items
        status, page = call("GET", one.http_url + f"/v1/responses/{second['id']}/input_items?order=asc&limit=1")
        assert page["data"][0]["content"][0]["text"] == "remember this" and page["has_more"], page
        status, after = call("GET", one.http_url + f"/v1/responses/{second['id']}/input_items?order=asc&after={page['last_id']}")
        assert after["data"][0]["role"] == "assistant" and after["data"][0]["content"][0]["type"] == "output_text", after
        status, bad = call("GET", one.http_url + f"/v1/responses/{second['id']}/input_items?limit=0")
        assert status == 400 and bad["error"]["param"] == "limit", bad
        status, deleted = call("DELETE", one.http_url + f"/v1/responses/{first['id']}")
        assert status == 200 and deleted["deleted"] is True, deleted
        status, gone = call("POST", two.http_url + "/v1/responses", turn)
        assert status == 400 and "not found" in json.dumps(gone), gone
    finally:
        finish_server(one)
        finish_server(two)


def test_a_store_that_cannot_be_reached_fails_the_turn_that_needs_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    server = frontend("--responses-store", f"redis://127.0.0.1:{closed}")
    try:
        status, answer = call("POST", server.http_url + "/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2})
        assert status == 200, answer  # stored here; the shared write fails and is logged
        status, answer = call("POST", server.http_url + "/v1/responses", {"model": MODEL, "input": "x", "previous_response_id": "resp_elsewhere"})
        assert status == 500 and "responses store" in json.dumps(answer), answer
    finally:
        finish_server(server)


@pytest.mark.parametrize("value,named", [
    ("rediss://user:secret@127.0.0.1:1", "rediss://"),
    ("postgres://user:secret@host/db", "--responses-store must be"),
])  # fmt: skip
def test_bad_stores_are_refused_at_start_without_the_password(value, named):
    stderr = start_failure("--engine", "mock", "--responses-store", value).split("stderr:", 1)[1]
    assert named in stderr and "secret" not in stderr, stderr
