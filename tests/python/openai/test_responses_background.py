"""`background: true` on the Responses API (issue 61 item 3), on `--engine mock` paced per step: the request is
answered at once `in_progress`, polling `GET /v1/responses/{id}` sees it end, `POST …/cancel` stops one and
stores it `cancelled`, a finished one continues a conversation, `--responses-background-max` bounds how many run
(429 past it), and background with `stream` or without `store` is refused by field."""

from __future__ import annotations

import json

import pytest

from cluster import wait_until
from http_helpers import json_call as call
from helpers import finish_server, start_server

MODEL = "mock-llm"


@pytest.fixture(scope="module")
def server():
    started = start_server("--engine", "mock", "--model-name", MODEL, "--mock-decode-ms-per-step", "20",
                           "--responses-background-max", "2")  # fmt: skip
    yield started
    finish_server(started)


def status_of(server, response_id: str) -> str:
    status, answer = call("GET", server.http_url + f"/v1/responses/{response_id}")
    assert status == 200, answer
    return answer["status"]


def test_a_background_response_is_answered_at_once_and_polled_to_its_end(server):
    body = {"model": MODEL, "input": "count for me", "max_output_tokens": 20, "background": True}
    status, accepted = call("POST", server.http_url + "/v1/responses", body)
    assert status == 200 and accepted["status"] == "in_progress" and accepted["background"] is True, accepted
    wait_until(lambda: status_of(server, accepted["id"]) != "in_progress", 60, "the background response to end")
    status, done = call("GET", server.http_url + f"/v1/responses/{accepted['id']}")
    assert done["status"] == "incomplete" and done["usage"]["output_tokens"] == 20 and done["output"], done
    # It continues a conversation like any stored response.
    turn = {"model": MODEL, "input": "and more", "previous_response_id": accepted["id"], "max_output_tokens": 3}
    status, next_turn = call("POST", server.http_url + "/v1/responses", turn)
    assert status == 200 and next_turn["usage"]["input_tokens"] > done["usage"]["input_tokens"], next_turn


def test_a_cancelled_background_response_is_stored_cancelled_and_the_bound_holds(server):
    body = {"model": MODEL, "input": "a long one", "max_output_tokens": 4000, "background": True}
    ids = []
    for _ in range(2):
        status, accepted = call("POST", server.http_url + "/v1/responses", body)
        assert status == 200, accepted
        ids.append(accepted["id"])
    status, refused = call("POST", server.http_url + "/v1/responses", body)
    assert status == 429 and "--responses-background-max" in json.dumps(refused), refused
    for response_id in ids:
        status, cancelled = call("POST", server.http_url + f"/v1/responses/{response_id}/cancel")
        assert status == 200 and cancelled["status"] == "cancelled", cancelled
        assert status_of(server, response_id) == "cancelled"
    status, accepted = call("POST", server.http_url + "/v1/responses", body | {"max_output_tokens": 2})
    assert status == 200, "the slots are free again"
    status, unknown = call("POST", server.http_url + "/v1/responses/resp_nothing/cancel")
    assert status == 404, unknown


@pytest.mark.parametrize("extra", [{"stream": True}, {"store": False}])
def test_background_with_stream_or_without_store_is_refused_by_field(server, extra):
    body = {"model": MODEL, "input": "x", "background": True} | extra
    status, answer = call("POST", server.http_url + "/v1/responses", body)
    assert status == 400 and answer["error"]["param"] == "background", answer
