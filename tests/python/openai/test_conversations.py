"""OpenAI's Conversations API (issue 61 item 3) with the real `openai` SDK on `--engine mock`: create, get,
update and delete a conversation; add, list (both orders, paged), get and delete its items; a Responses request
made in a conversation continues its items and adds its input and output to it; two frontends behind one
Redis continue one conversation; bad input is refused by field and changes nothing."""

from __future__ import annotations

import openai
import pytest

from cluster import wait_until
from http_helpers import json_call as call
from helpers import finish_server, start_server
from redis_service import redis  # noqa: F401 - a fixture

MODEL = "mock-llm"


def frontend(*args: str):
    return start_server("--engine", "mock", "--model-name", MODEL, "--mock-decode-ms-per-step", "1", *args)


@pytest.fixture(scope="module")
def server():
    started = frontend()
    yield started
    finish_server(started)


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0)


def test_a_conversation_and_its_items_through_the_sdk(server):
    client = client_of(server)
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "hello"}], metadata={"topic": "demo"})
    assert conversation.id.startswith("conv") and conversation.metadata == {"topic": "demo"}
    assert client.conversations.retrieve(conversation.id).id == conversation.id
    updated = client.conversations.update(conversation.id, metadata={"topic": "other"})
    assert updated.metadata == {"topic": "other"}
    added = client.conversations.items.create(conversation.id, items=[
        {"type": "message", "role": "assistant", "content": "hi there"},
        {"type": "message", "role": "user", "content": "third"},
    ])  # fmt: skip
    assert len(added.data) == 2 and all(item.id for item in added.data)
    newest_first = client.conversations.items.list(conversation.id)
    assert newest_first.data[0].content[0].text == "third" and newest_first.data[0].content[0].type == "input_text"
    page = client.conversations.items.list(conversation.id, order="asc", limit=1)
    assert page.has_more and len(page.data) == 1
    rest = client.conversations.items.list(conversation.id, order="asc", after=page.data[0].id)
    assert len(rest.data) == 2 and not rest.has_more
    one = client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
    assert one.id == added.data[0].id
    after_delete = client.conversations.items.delete(added.data[0].id, conversation_id=conversation.id)
    assert after_delete.id == conversation.id
    assert len(client.conversations.items.list(conversation.id).data) == 2
    deleted = client.conversations.delete(conversation.id)
    assert deleted.deleted and deleted.id == conversation.id
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)


def test_a_response_in_a_conversation_continues_it_and_adds_its_turn(server):
    client = client_of(server)
    conversation = client.conversations.create(items=[{"type": "message", "role": "user", "content": "remember the word apple"}])
    alone = client.responses.create(model=MODEL, input="what was it?", max_output_tokens=4)
    first = client.responses.create(model=MODEL, input="what was it?", conversation=conversation.id, max_output_tokens=4)
    # The mock engine's prompt holds the conversation's items before the input.
    assert first.usage.input_tokens > alone.usage.input_tokens
    assert first.conversation.id == conversation.id
    items = client.conversations.items.list(conversation.id, order="asc").data
    kinds = [(item.type, getattr(item, "role", None)) for item in items]
    assert kinds == [("message", "user"), ("message", "user"), ("message", "assistant")], kinds
    assert items[2].id == first.output[-1].id
    second = client.responses.create(model=MODEL, input="and again?", conversation={"id": conversation.id}, max_output_tokens=4)
    assert second.usage.input_tokens > first.usage.input_tokens
    assert len(client.conversations.items.list(conversation.id).data) == 5
    # Streamed, the turn is added too.
    events = list(client.responses.create(model=MODEL, input="streamed", conversation=conversation.id, max_output_tokens=2, stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete"), events[-1]
    # A stream's turn is added beside its last event.
    wait_until(lambda: len(client.conversations.items.list(conversation.id, limit=100).data) == 7, 10, "the streamed turn added")


def test_bad_requests_are_refused_by_field_and_change_nothing(server):
    conversation = client_of(server).conversations.create()
    base = server.http_url + "/v1"
    both = {"model": MODEL, "input": "x", "conversation": conversation.id, "previous_response_id": "resp_1"}
    status, answer = call("POST", base + "/responses", both)
    assert status == 400 and answer["error"]["param"] == "conversation", answer
    status, answer = call("POST", base + "/responses", {"model": MODEL, "input": "x", "conversation": "conv_missing"})
    assert status == 400 and "not found" in answer["error"]["message"], answer
    status, answer = call("POST", base + "/responses", {"model": MODEL, "input": "x", "conversation": 7})
    assert status == 400 and answer["error"]["param"] == "conversation", answer
    status, answer = call("POST", base + f"/conversations/{conversation.id}/items", {"items": [{"role": "robot", "content": "x"}]})
    assert status == 400 and answer["error"]["param"] == "items[0]", answer
    status, answer = call("POST", base + f"/conversations/{conversation.id}/items", {"items": [{"role": "user", "content": "x"}] * 21})
    assert status == 400 and answer["error"]["param"] == "items", answer
    status, answer = call("POST", base + "/conversations", {"metadata": {f"k{i}": "v" for i in range(17)}})
    assert status == 400 and answer["error"]["param"] == "metadata", answer
    status, answer = call("GET", base + f"/conversations/{conversation.id}/items?limit=0")
    assert status == 400 and answer["error"]["param"] == "limit", answer
    status, answer = call("GET", base + f"/conversations/{conversation.id}/items/msg_missing")
    assert status == 404, answer
    status, answer = call("GET", base + f"/conversations/{conversation.id}/items")
    assert status == 200 and answer["data"] == [], answer
    # A response's id is not a conversation.
    response = client_of(server).responses.create(model=MODEL, input="x", max_output_tokens=1)
    status, answer = call("GET", base + f"/conversations/{response.id}")
    assert status == 404, answer


@pytest.mark.redis
def test_two_frontends_behind_one_redis_continue_one_conversation(redis):
    store = f"redis://127.0.0.1:{redis.port}/0"
    one, two = frontend("--responses-store", store), frontend("--responses-store", store)
    try:
        conversation = client_of(one).conversations.create(items=[{"type": "message", "role": "user", "content": "first"}])
        client_of(two).responses.create(model=MODEL, input="second", conversation=conversation.id, max_output_tokens=2)
        items = client_of(one).conversations.items.list(conversation.id, order="asc").data
        assert len(items) == 3 and items[1].content[0].text == "second", items
        # Deleted on one frontend, gone on the other (which also held it).
        client_of(two).conversations.delete(conversation.id)
        with pytest.raises(openai.NotFoundError):
            client_of(one).conversations.retrieve(conversation.id)
    finally:
        finish_server(one)
        finish_server(two)
