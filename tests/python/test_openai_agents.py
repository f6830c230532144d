"""Agent-style APIs through the official clients against the real SmolLM2-135M-Instruct (GGUF): OpenAI's
Responses API (`/v1/responses`: items, instructions, stored conversations, typed SSE events, function
calls), chat tool calling and structured output (`response_format`, `nvext.guided_*`, `parse()`), raw
responses, and Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) with the `anthropic`
client.

The server runs with `--enable-anthropic-api --dyn-tool-call-parser hermes`. A tiny model rarely calls a
tool on its own, so the tool tests force the call (`tool_choice` required or named): the server then writes
the call with a grammar, which any model can follow. The schemas keep strings short (`maxLength`) so that a
call or an object always ends within max_tokens. Generation is greedy (temperature 0) and short.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import anthropic
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import LLM_NAME, LLM_START_TIMEOUT, model_paths
from helpers import finish_server, start_server

LLM = LLM_NAME
REQUEST_TIMEOUT_S = 120
QUESTION = "What is the capital of France?"
WEATHER_QUESTION = "What is the weather in Paris?"
SYSTEM = "Be brief."
ANSWER_TOKENS = 16
TOOL_TOKENS = 48
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 16}},
    "required": ["city"],
    "additionalProperties": False,
}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather of a city", "parameters": WEATHER_SCHEMA}}
]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Get the current weather of a city", "parameters": WEATHER_SCHEMA}]
# anthropic 2.x no longer takes `temperature` as an argument (newer Claude models ignore it); the
# Messages API still defines the field, so it goes in the body.
GREEDY = {"temperature": 0}
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Get the current weather of a city", "input_schema": WEATHER_SCHEMA}]
TOOL_RESULT = "Sunny, 22 degrees Celsius"
JSON_PROMPT = "Give a JSON object describing Paris"
PERSON_PROMPT = "Invent a person, as JSON with name and age."


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)


@pytest.fixture(scope="module")
def agent_server():
    gguf, _ = model_paths()
    server = start_server(
        "--model-path", str(gguf), "--model-name", LLM, "--enable-anthropic-api", "--dyn-tool-call-parser", "hermes",
        timeout=LLM_START_TIMEOUT,
    )
    yield server
    finish_server(server)


@pytest.fixture(scope="module")
def oai(agent_server):
    # max_retries=0: a retried request would hide the status the server really answered with.
    client = openai.OpenAI(base_url=agent_server.http_url + "/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    yield client
    client.close()


@pytest.fixture(scope="module")
def claude(agent_server):
    client = anthropic.Anthropic(base_url=agent_server.http_url, api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_S)
    yield client
    client.close()


def check_weather_arguments(arguments: str | dict) -> dict:
    """Tool arguments (a JSON string for OpenAI, a dict for Anthropic) valid for WEATHER_SCHEMA."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(value, WEATHER_SCHEMA)
    assert value["city"].strip(), value
    return value


def check_openai_error(err: openai.APIStatusError, status: int, fragment: str) -> dict:
    """OpenAI's error object (the client hands over the inner `error` object as `body`)."""
    assert err.status_code == status, (err.status_code, err.body)
    body = err.body
    assert isinstance(body, dict) and {"message", "type"} <= set(body), body
    assert fragment in body["message"], body
    assert set(err.response.json()) == {"error"}, err.response.text
    return body


# ---- Responses API: text ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capital_response(oai):
    return oai.responses.create(model=LLM, input=QUESTION, max_output_tokens=ANSWER_TOKENS, temperature=0)


@pytest.fixture(scope="module")
def capital_chat(oai):
    return oai.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": QUESTION}], max_tokens=ANSWER_TOKENS, temperature=0
    )


def check_response_usage(usage, max_output: int) -> None:
    assert usage is not None
    assert 0 < usage.input_tokens < 500, usage
    assert 0 < usage.output_tokens <= max_output, usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens, usage


def message_text(response) -> str:
    """The text of the response's single message item (checked to be the only output item)."""
    assert [item.type for item in response.output] == ["message"], response.output
    item = response.output[0]
    assert item.role == "assistant" and item.status == "completed", item
    assert item.id.startswith("msg_"), item.id
    assert [part.type for part in item.content] == ["output_text"], item.content
    return item.content[0].text


def test_responses_text_input(capital_response, capital_chat):
    r = capital_response
    assert r.object == "response"
    assert r.id.startswith("resp_"), r.id
    assert r.model == LLM
    assert r.created_at > 0
    assert r.status == "completed", (r.status, r.incomplete_details, r.output)
    assert r.incomplete_details is None and r.error is None
    assert r.store is True and r.previous_response_id is None
    text = message_text(r)
    assert "Paris" in text, text
    assert r.output_text == text
    check_response_usage(r.usage, ANSWER_TOKENS)
    # A string input is one user message: the same prompt and answer as chat completions.
    assert text == capital_chat.choices[0].message.content
    assert r.usage.input_tokens == capital_chat.usage.prompt_tokens
    assert r.usage.output_tokens == capital_chat.usage.completion_tokens


def test_responses_item_input_equals_string(oai, capital_response):
    # input_text parts are joined; a message item without "type" is a message too.
    r = oai.responses.create(
        model=LLM,
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is the capital"}, {"type": "input_text", "text": " of France?"}]}],
        max_output_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert r.output_text == capital_response.output_text
    assert r.usage.input_tokens == capital_response.usage.input_tokens
    r = oai.responses.create(model=LLM, input=[{"role": "user", "content": QUESTION}], max_output_tokens=ANSWER_TOKENS, temperature=0)
    assert r.output_text == capital_response.output_text


def test_responses_instructions_are_a_system_message(oai, capital_response):
    with_instructions = oai.responses.create(
        model=LLM, input=QUESTION, instructions=SYSTEM, max_output_tokens=ANSWER_TOKENS, temperature=0
    )
    assert with_instructions.instructions == SYSTEM
    # SmolLM2's template puts its own default system message in when there is none: another prompt.
    assert with_instructions.usage.input_tokens != capital_response.usage.input_tokens
    # A developer message is the same system message.
    as_item = oai.responses.create(
        model=LLM,
        input=[{"role": "developer", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_output_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert as_item.usage.input_tokens == with_instructions.usage.input_tokens
    assert as_item.output_text == with_instructions.output_text
    # And the same as chat completions with a system message.
    chat = oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert chat.usage.prompt_tokens == with_instructions.usage.input_tokens
    assert chat.choices[0].message.content == with_instructions.output_text


def test_responses_max_output_tokens_incomplete(oai, capital_response):
    r = oai.responses.create(model=LLM, input=QUESTION, max_output_tokens=4, temperature=0)
    assert r.status == "incomplete", r.status
    assert r.incomplete_details is not None and r.incomplete_details.reason == "max_output_tokens", r.incomplete_details
    assert r.max_output_tokens == 4
    assert r.usage.output_tokens == 4, r.usage
    text = message_text(r)
    assert text and capital_response.output_text.startswith(text), (text, capital_response.output_text)


def test_responses_stream_events(oai):
    """The typed events of a streamed text answer cut by max_output_tokens, in OpenAI's order."""
    unary = oai.responses.create(model=LLM, input=QUESTION, max_output_tokens=6, temperature=0)
    assert unary.status == "incomplete"
    with oai.responses.create(model=LLM, input=QUESTION, max_output_tokens=6, temperature=0, stream=True) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events))), types
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas, types
    expected = (
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
        + ["response.output_text.delta"] * len(deltas)
        + ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete"]
    )
    assert types == expected
    created, in_progress, added, part_added = events[:4]
    text_done, part_done, item_done, final = events[-4:]
    response_id = created.response.id
    assert response_id.startswith("resp_") and created.response.status == "in_progress", created.response
    assert in_progress.response.id == response_id and in_progress.response.status == "in_progress"
    assert added.output_index == 0 and added.item.type == "message" and added.item.status == "in_progress", added
    item_id = added.item.id
    assert item_id.startswith("msg_"), item_id
    assert part_added.item_id == item_id and part_added.part.type == "output_text" and part_added.part.text == ""
    assert all(d.item_id == item_id and d.output_index == 0 and d.content_index == 0 for d in deltas)
    text = "".join(d.delta for d in deltas)
    assert text == unary.output_text
    assert text_done.item_id == item_id and text_done.text == text
    assert part_done.item_id == item_id and part_done.part.text == text
    assert item_done.item.id == item_id and item_done.item.status == "completed" and item_done.item.content[0].text == text
    response = final.response
    assert response.id == response_id
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == text
    assert (response.usage.input_tokens, response.usage.output_tokens) == (unary.usage.input_tokens, 6)


def test_responses_stream_helper_completed(oai, capital_response):
    """The client's `responses.stream()` helper accumulates the events into the final response."""
    with oai.responses.stream(model=LLM, input=QUESTION, max_output_tokens=ANSWER_TOKENS, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert events[-1].type == "response.completed", [e.type for e in events]
    assert final.status == "completed"
    assert final.output_text == capital_response.output_text
    assert final.usage.output_tokens == capital_response.usage.output_tokens
    assert final.usage.input_tokens == capital_response.usage.input_tokens
    # A streamed response is stored like a unary one.
    stored = oai.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.status == "completed"


def test_responses_with_raw_and_streaming_response(oai, capital_response):
    raw = oai.responses.with_raw_response.create(model=LLM, input=QUESTION, max_output_tokens=ANSWER_TOKENS, temperature=0)
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json"), raw.headers
    parsed = raw.parse()
    assert parsed.output_text == capital_response.output_text
    assert raw.http_response.json()["id"] == parsed.id
    # The stream's wire format: `event: <type>` lines naming the type in each `data:` object.
    with oai.responses.with_streaming_response.create(model=LLM, input=QUESTION, max_output_tokens=4, temperature=0, stream=True) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream"), raw.headers
        lines = [line for line in raw.iter_lines() if line]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    datas = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert len(names) == len(datas) and names, lines
    assert names == [d["type"] for d in datas]
    assert names[0] == "response.created" and names[-1] == "response.incomplete", names


# ---- Responses API: stored responses ---------------------------------------------------------------------


def test_responses_previous_response_id(oai):
    first = oai.responses.create(
        model=LLM, input="My name is Alice.", instructions="You are a friendly assistant.", max_output_tokens=12, temperature=0
    )
    second = oai.responses.create(
        model=LLM, input="What is my name?", previous_response_id=first.id, max_output_tokens=12, temperature=0
    )
    assert second.previous_response_id == first.id
    assert second.instructions is None
    # The same conversation sent in full (instructions are not carried to the next turn, as in OpenAI's API).
    explicit = oai.responses.create(
        model=LLM,
        input=[
            {"role": "user", "content": "My name is Alice."},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": first.output_text}]},
            {"role": "user", "content": "What is my name?"},
        ],
        max_output_tokens=12,
        temperature=0,
    )
    assert explicit.usage.input_tokens == second.usage.input_tokens, (explicit.usage, second.usage)
    assert explicit.output_text == second.output_text


def test_responses_retrieve_and_delete(oai):
    r = oai.responses.create(model=LLM, input="Hello!", max_output_tokens=6, temperature=0)
    stored = oai.responses.retrieve(r.id)
    assert stored.id == r.id
    assert stored.status == r.status
    assert stored.output_text == r.output_text
    assert stored.usage == r.usage
    assert [item.id for item in stored.output] == [item.id for item in r.output]
    deleted = oai.responses.with_raw_response.delete(r.id)
    assert deleted.status_code == 200
    assert deleted.http_response.json() == {"id": r.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.retrieve(r.id)
    check_openai_error(info.value, 404, r.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(r.id)
    # A deleted response cannot be continued.
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=LLM, input="Go on.", previous_response_id=r.id, max_output_tokens=4)
    check_openai_error(info.value, 400, r.id)


def test_responses_store_false(oai):
    r = oai.responses.create(model=LLM, input="Hello!", store=False, max_output_tokens=4, temperature=0)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=LLM, input="Go on.", previous_response_id=r.id, max_output_tokens=4)


def test_responses_unknown_id_is_404(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.retrieve("resp_0000000000000000000000ff")
    check_openai_error(info.value, 404, "resp_0000000000000000000000ff")
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete("resp_0000000000000000000000ff")


def test_responses_errors(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.responses.create(model="no-such-model", input="Hi", max_output_tokens=2)
    check_openai_error(info.value, 404, "no-such-model")
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=LLM, input="Hi", max_output_tokens=2, temperature=5)
    check_openai_error(info.value, 400, "temperature")
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=LLM, input=[], max_output_tokens=2)
    check_openai_error(info.value, 400, "input")
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(
            model=LLM, input="Hi", tools=RESPONSES_TOOLS, tool_choice={"type": "function", "name": "no_such_tool"}, max_output_tokens=2
        )
    check_openai_error(info.value, 400, "no_such_tool")


# ---- Responses API: function calls -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def forced_response_call(oai):
    return oai.responses.create(
        model=LLM, input=WEATHER_QUESTION, tools=RESPONSES_TOOLS, tool_choice="required", max_output_tokens=TOOL_TOKENS, temperature=0
    )


def check_function_call_item(item) -> None:
    assert item.type == "function_call", item
    assert item.id.startswith("fc_"), item.id
    assert item.call_id.startswith("call_"), item.call_id
    assert item.name == "get_weather"
    assert item.status == "completed"
    check_weather_arguments(item.arguments)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "name": "get_weather"}], ids=["required", "named"])
def test_responses_forced_function_call(oai, tool_choice):
    r = oai.responses.create(
        model=LLM, input=WEATHER_QUESTION, tools=RESPONSES_TOOLS, tool_choice=tool_choice, max_output_tokens=TOOL_TOKENS, temperature=0
    )
    assert r.status == "completed", (r.status, r.output)
    # Only the call: no (empty) message item beside it.
    assert [item.type for item in r.output] == ["function_call"], r.output
    check_function_call_item(r.output[0])
    assert r.output_text == ""
    assert [t.name for t in r.tools] == ["get_weather"]
    check_response_usage(r.usage, TOOL_TOKENS)


def test_responses_function_call_stream(oai):
    tool_choice = {"type": "function", "name": "get_weather"}
    unary = oai.responses.create(
        model=LLM, input=WEATHER_QUESTION, tools=RESPONSES_TOOLS, tool_choice=tool_choice, max_output_tokens=TOOL_TOKENS, temperature=0
    )
    with oai.responses.create(
        model=LLM, input=WEATHER_QUESTION, tools=RESPONSES_TOOLS, tool_choice=tool_choice, max_output_tokens=TOOL_TOKENS, temperature=0, stream=True
    ) as stream:
        events = list(stream)
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events))), types
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    expected = (
        ["response.created", "response.in_progress", "response.output_item.added"]
        + ["response.function_call_arguments.delta"] * len(deltas)
        + ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    )
    assert deltas and types == expected, types
    added, done_args, item_done, completed = events[2], events[-3], events[-2], events[-1]
    assert added.item.type == "function_call" and added.item.name == "get_weather" and added.item.status == "in_progress"
    item_id = added.item.id
    assert item_id.startswith("fc_") and added.item.call_id.startswith("call_"), added.item
    arguments = "".join(d.delta for d in deltas)
    assert all(d.item_id == item_id for d in deltas)
    assert done_args.item_id == item_id and done_args.arguments == arguments
    check_weather_arguments(arguments)
    assert arguments == unary.output[0].arguments
    check_function_call_item(item_done.item)
    assert item_done.item.id == item_id and item_done.item.arguments == arguments
    assert completed.response.status == "completed"
    assert [item.type for item in completed.response.output] == ["function_call"]
    assert completed.response.output[0].arguments == arguments


def test_responses_function_call_output_continues_stored_call(oai, forced_response_call):
    call = forced_response_call.output[0]
    r = oai.responses.create(
        model=LLM,
        previous_response_id=forced_response_call.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}],
        tools=RESPONSES_TOOLS,
        max_output_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert r.previous_response_id == forced_response_call.id
    assert message_text(r).strip(), r.output
    assert r.usage.input_tokens > forced_response_call.usage.input_tokens


def test_responses_function_call_items_in_input(oai, forced_response_call):
    """The client-side agent loop: the previous output items and the tool's output sent back as input."""
    call = forced_response_call.output[0]
    r = oai.responses.create(
        model=LLM,
        input=[
            {"role": "user", "content": WEATHER_QUESTION},
            *forced_response_call.output,
            {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT},
        ],
        tools=RESPONSES_TOOLS,
        max_output_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert message_text(r).strip(), r.output
    # The same conversation continued on the server renders the same prompt.
    continued = oai.responses.create(
        model=LLM,
        previous_response_id=forced_response_call.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}],
        tools=RESPONSES_TOOLS,
        max_output_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert r.usage.input_tokens == continued.usage.input_tokens
    assert r.output_text == continued.output_text


# ---- Responses API: structured output --------------------------------------------------------------------


def test_responses_json_schema(oai):
    r = oai.responses.create(
        model=LLM,
        input="The weather in Paris, as JSON",
        text={"format": {"type": "json_schema", "name": "weather", "schema": WEATHER_SCHEMA, "strict": True}},
        max_output_tokens=24,
        temperature=0,
    )
    assert r.status == "completed", (r.status, r.output_text)
    check_weather_arguments(r.output_text)
    assert r.text.format.type == "json_schema" and r.text.format.name == "weather"


def test_responses_json_object(oai):
    r = oai.responses.create(model=LLM, input=JSON_PROMPT, text={"format": {"type": "json_object"}}, max_output_tokens=40, temperature=0)
    assert r.status == "completed", (r.status, r.output_text)
    assert isinstance(json.loads(r.output_text), dict), r.output_text


def test_responses_parse_pydantic(oai):
    r = oai.responses.parse(model=LLM, input=PERSON_PROMPT, text_format=Person, max_output_tokens=40, temperature=0)
    assert r.status == "completed", (r.status, r.output_text)
    person = r.output_parsed
    assert isinstance(person, Person), person
    assert Person.model_validate_json(r.output_text) == person
    assert 0 < len(person.name) <= 12 and 0 <= person.age <= 120, person


# ---- chat completions: tool calls ------------------------------------------------------------------------


def chat_tool_call(oai, tool_choice, **extra):
    return oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": WEATHER_QUESTION}],
        tools=CHAT_TOOLS,
        tool_choice=tool_choice,
        max_tokens=TOOL_TOKENS,
        temperature=0,
        **extra,
    )


@pytest.fixture(scope="module")
def named_chat_call(oai):
    return chat_tool_call(oai, {"type": "function", "function": {"name": "get_weather"}})


@pytest.mark.parametrize("tool_choice", ["required", "named"])
def test_chat_forced_tool_call(oai, named_chat_call, tool_choice):
    r = named_chat_call if tool_choice == "named" else chat_tool_call(oai, "required")
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None, choice.message
    assert choice.message.role == "assistant"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1, calls
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_"), call
    assert call.function.name == "get_weather"
    check_weather_arguments(call.function.arguments)
    assert 0 < r.usage.completion_tokens <= TOOL_TOKENS, r.usage


def test_chat_tool_call_stream(oai, named_chat_call):
    chunks = list(chat_tool_call(oai, {"type": "function", "function": {"name": "get_weather"}}, stream=True))
    assert {c.id for c in chunks} == {chunks[0].id}
    with_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(with_calls) == 1, chunks
    (call,) = with_calls[0].choices[0].delta.tool_calls
    assert call.index == 0 and call.id.startswith("call_") and call.type == "function", call
    assert call.function.name == "get_weather"
    assert call.function.arguments == named_chat_call.choices[0].message.tool_calls[0].function.arguments
    # No text around the call (the call is not echoed as content).
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "tool_calls" and all(r is None for r in reasons[:-1]), reasons


def test_chat_tool_result_round_trip(oai, named_chat_call):
    """The classic loop: append the assistant message as the client returned it, then the tool's result."""
    call = named_chat_call.choices[0].message.tool_calls[0]
    r = oai.chat.completions.create(
        model=LLM,
        messages=[
            {"role": "user", "content": WEATHER_QUESTION},
            named_chat_call.choices[0].message,
            {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT},
        ],
        tools=CHAT_TOOLS,
        max_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length"), choice
    assert choice.message.content and choice.message.content.strip(), choice.message
    assert r.usage.prompt_tokens > named_chat_call.usage.prompt_tokens


def test_chat_unknown_named_tool_is_400(oai):
    with pytest.raises(openai.BadRequestError) as info:
        chat_tool_call(oai, {"type": "function", "function": {"name": "no_such_tool"}})
    check_openai_error(info.value, 400, "no_such_tool")


# ---- chat completions: structured output -----------------------------------------------------------------


def test_chat_parse_pydantic(oai):
    r = oai.chat.completions.parse(
        model=LLM, messages=[{"role": "user", "content": PERSON_PROMPT}], response_format=Person, max_tokens=40, temperature=0
    )
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "stop", (r.choices[0].finish_reason, message.content)
    assert isinstance(message.parsed, Person), message
    assert Person.model_validate_json(message.content) == message.parsed
    assert 0 < len(message.parsed.name) <= 12 and 0 <= message.parsed.age <= 120, message.parsed


def test_chat_json_schema_dict(oai):
    r = oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "The weather in Paris, as JSON"}],
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA, "strict": True}},
        max_tokens=24,
        temperature=0,
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    check_weather_arguments(r.choices[0].message.content)


def test_chat_json_object(oai):
    r = oai.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": JSON_PROMPT}], response_format={"type": "json_object"}, max_tokens=40, temperature=0
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content


@pytest.mark.parametrize("choices", [["yes", "no"], ["banana split", "quantum physics"]], ids=["yes-no", "unlikely"])
def test_chat_guided_choice(oai, choices):
    # The second pair is nothing the model would say by itself: only the grammar makes it one of them.
    r = oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Is Paris in France?"}],
        # Under a grammar the model may spell a choice in short tokens: room for a whole one.
        max_tokens=16,
        temperature=0,
        extra_body={"nvext": {"guided_choice": choices}},
    )
    assert r.choices[0].message.content in choices, r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_chat_guided_regex(oai):
    r = oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Give me a number."}],
        max_tokens=8,
        temperature=0,
        extra_body={"nvext": {"guided_regex": "[0-9]{3}"}},
    )
    content = r.choices[0].message.content
    assert re.fullmatch("[0-9]{3}", content), content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens <= 4, r.usage


def test_chat_guided_and_response_format_conflict(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            response_format={"type": "json_object"},
            extra_body={"nvext": {"guided_choice": ["a", "b"]}},
        )
    check_openai_error(info.value, 400, "guided")


# ---- Anthropic Messages API ------------------------------------------------------------------------------


def user_text(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def capital_message(claude):
    return claude.messages.create(model=LLM, system=SYSTEM, messages=user_text(QUESTION), max_tokens=ANSWER_TOKENS, extra_body=GREEDY)


def test_messages_create(capital_message, oai):
    m = capital_message
    assert m.type == "message" and m.role == "assistant" and m.model == LLM
    assert m.id.startswith("msg_"), m.id
    assert [block.type for block in m.content] == ["text"], m.content
    text = m.content[0].text
    assert "Paris" in text, text
    assert m.stop_reason == "end_turn", (m.stop_reason, text)
    assert m.stop_sequence is None
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens < ANSWER_TOKENS, m.usage
    # The same conversation through chat completions: the same prompt and greedy answer.
    chat = oai.chat.completions.create(
        model=LLM,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
        max_tokens=ANSWER_TOKENS,
        temperature=0,
    )
    assert chat.choices[0].message.content == text
    assert chat.usage.prompt_tokens == m.usage.input_tokens
    assert chat.usage.completion_tokens == m.usage.output_tokens


def test_messages_max_tokens(claude, capital_message):
    m = claude.messages.create(model=LLM, system=SYSTEM, messages=user_text(QUESTION), max_tokens=3, extra_body=GREEDY)
    assert m.stop_reason == "max_tokens", m
    assert m.usage.output_tokens == 3, m.usage
    assert capital_message.content[0].text.startswith(m.content[0].text), (m.content, capital_message.content)


@pytest.fixture(scope="module")
def long_message(claude):
    m = claude.messages.create(model=LLM, messages=[{"role": "user", "content": "Tell me about Paris."}], max_tokens=24, extra_body=GREEDY)
    assert m.stop_reason == "max_tokens", m
    return m.content[0].text


def stop_word_in(text: str) -> str:
    """A word of the second half of `text` whose first occurrence has text before it."""
    words = re.findall(r"[A-Za-z]{4,}", text)
    for word in words[len(words) // 2 :]:
        if text.index(word) > 0:
            return word
    pytest.fail(f"no stop word found in {text!r}")


def test_messages_stop_sequences(claude, long_message):
    stop = stop_word_in(long_message)
    m = claude.messages.create(
        model=LLM,
        messages=[{"role": "user", "content": "Tell me about Paris."}],
        max_tokens=24,
        extra_body=GREEDY,
        stop_sequences=["@@never@@", stop],
    )
    assert m.stop_reason == "stop_sequence", (m, long_message, stop)
    assert m.stop_sequence == stop
    assert m.content[0].text == long_message[: long_message.index(stop)], (long_message, stop)


def test_messages_stop_sequences_streaming(claude, long_message):
    stop = stop_word_in(long_message)
    with claude.messages.stream(
        model=LLM, messages=[{"role": "user", "content": "Tell me about Paris."}], max_tokens=24, extra_body=GREEDY, stop_sequences=[stop]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == long_message[: long_message.index(stop)], (long_message, stop)
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)


def test_messages_stream_helper(claude, capital_message):
    with claude.messages.stream(model=LLM, system=SYSTEM, messages=user_text(QUESTION), max_tokens=ANSWER_TOKENS, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text
    assert text == capital_message.content[0].text
    assert final.id.startswith("msg_")
    assert final.stop_reason == capital_message.stop_reason
    assert final.usage.input_tokens == capital_message.usage.input_tokens
    assert final.usage.output_tokens == capital_message.usage.output_tokens


def test_messages_stream_raw_events(claude, capital_message):
    events = list(
        claude.messages.create(model=LLM, system=SYSTEM, messages=user_text(QUESTION), max_tokens=ANSWER_TOKENS, extra_body=GREEDY, stream=True)
    )
    types = [e.type for e in events if e.type != "ping"]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas, types
    expected = ["message_start", "content_block_start"] + ["content_block_delta"] * len(deltas) + [
        "content_block_stop", "message_delta", "message_stop"
    ]
    assert types == expected
    start = events[0]
    assert start.message.id.startswith("msg_") and start.message.content == [] and start.message.role == "assistant"
    assert start.message.usage.input_tokens == capital_message.usage.input_tokens
    block_start = next(e for e in events if e.type == "content_block_start")
    assert block_start.index == 0 and block_start.content_block.type == "text"
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas)
    assert "".join(d.delta.text for d in deltas) == capital_message.content[0].text
    message_delta = next(e for e in events if e.type == "message_delta")
    assert message_delta.delta.stop_reason == capital_message.stop_reason
    assert message_delta.usage.output_tokens == capital_message.usage.output_tokens


def test_messages_count_tokens(claude, capital_message):
    counted = claude.messages.count_tokens(model=LLM, system=SYSTEM, messages=user_text(QUESTION))
    assert counted.input_tokens == capital_message.usage.input_tokens
    # With tools as well: count_tokens sees the same prompt as create.
    with_tools = claude.messages.count_tokens(model=LLM, messages=user_text(WEATHER_QUESTION), tools=ANTHROPIC_TOOLS)
    created = claude.messages.create(
        model=LLM, messages=user_text(WEATHER_QUESTION), tools=ANTHROPIC_TOOLS, max_tokens=1, extra_body=GREEDY
    )
    assert with_tools.input_tokens == created.usage.input_tokens


@pytest.fixture(scope="module")
def tool_use_message(claude):
    return claude.messages.create(
        model=LLM,
        messages=user_text(WEATHER_QUESTION),
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=TOOL_TOKENS,
        extra_body=GREEDY,
    )


def check_tool_use(message) -> None:
    assert message.stop_reason == "tool_use", message
    assert [block.type for block in message.content] == ["tool_use"], message.content
    block = message.content[0]
    assert block.id.startswith("toolu_"), block.id
    assert block.name == "get_weather"
    assert isinstance(block.input, dict), block.input
    check_weather_arguments(block.input)


def test_messages_tool_use(tool_use_message):
    check_tool_use(tool_use_message)


def test_messages_tool_use_any(claude):
    check_tool_use(
        claude.messages.create(
            model=LLM, messages=user_text(WEATHER_QUESTION), tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"}, max_tokens=TOOL_TOKENS, extra_body=GREEDY
        )
    )


def test_messages_tool_use_stream(claude, tool_use_message):
    with claude.messages.stream(
        model=LLM,
        messages=user_text(WEATHER_QUESTION),
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=TOOL_TOKENS,
        extra_body=GREEDY,
    ) as stream:
        final = stream.get_final_message()
    check_tool_use(final)
    assert final.content[0].input == tool_use_message.content[0].input


def test_messages_tool_result_continues(claude, tool_use_message):
    block = tool_use_message.content[0]
    m = claude.messages.create(
        model=LLM,
        messages=[
            *user_text(WEATHER_QUESTION),
            {"role": "assistant", "content": tool_use_message.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": TOOL_RESULT}]},
        ],
        tools=ANTHROPIC_TOOLS,
        max_tokens=ANSWER_TOKENS,
        extra_body=GREEDY,
    )
    assert [b.type for b in m.content] == ["text"], m.content
    assert m.content[0].text.strip(), m
    assert m.stop_reason in ("end_turn", "max_tokens"), m
    assert m.usage.input_tokens > tool_use_message.usage.input_tokens


def test_messages_unknown_model_is_404(claude):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.create(model="no-such-model", messages=user_text("Hi"), max_tokens=2)
    err = info.value
    assert err.status_code == 404
    assert err.body["type"] == "error", err.body
    assert err.body["error"]["type"] == "not_found_error", err.body
    assert "no-such-model" in err.body["error"]["message"], err.body


def test_messages_temperature_out_of_range_is_400(claude):
    # Anthropic's range is 0..1 (OpenAI's goes to 2).
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=LLM, messages=user_text("Hi"), max_tokens=2, extra_body={"temperature": 1.5})
    err = info.value
    assert err.status_code == 400
    assert err.body["type"] == "error" and err.body["error"]["type"] == "invalid_request_error", err.body
    assert "temperature" in err.body["error"]["message"], err.body


def test_messages_unknown_model_count_tokens_is_404(claude):
    with pytest.raises(anthropic.NotFoundError) as info:
        claude.messages.count_tokens(model="no-such-model", messages=user_text("Hi"))
    assert info.value.body["error"]["type"] == "not_found_error", info.value.body


# ---- the Anthropic API is off by default -----------------------------------------------------------------


def post_status(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def test_anthropic_api_off_without_flag(start_tritium):
    gguf, _ = model_paths()
    server = start_tritium("--model-path", str(gguf), "--model-name", LLM, timeout=LLM_START_TIMEOUT)
    body = {"model": LLM, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    assert post_status(server.http_url + "/v1/messages", body) == 404
    assert post_status(server.http_url + "/v1/messages/count_tokens", body) == 404
    # The OpenAI routes are there all the same.
    chat = {"model": LLM, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    assert post_status(server.http_url + "/v1/chat/completions", chat) == 200
