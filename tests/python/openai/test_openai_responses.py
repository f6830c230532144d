"""OpenAI's Responses API (`/v1/responses`) through the official `openai` client against the real
SmolLM2-135M-Instruct: string and item input, instructions, stored conversations (`previous_response_id`,
retrieve, delete), typed SSE events, raw responses, function calls and structured output (`text.format`).
The server and the shared definitions are in `agent_clients.py`.
"""

from __future__ import annotations

import json

import openai
import pytest

from agent_clients import (  # noqa: F401 (the fixtures are used by name)
    ANSWER_TOKENS,
    JSON_PROMPT,
    LLM,
    PERSON_PROMPT,
    Person,
    QUESTION,
    RESPONSES_TOOLS,
    SYSTEM,
    TOOL_RESULT,
    TOOL_TOKENS,
    WEATHER_QUESTION,
    WEATHER_SCHEMA,
    check_openai_error,
    check_weather_arguments,
    agent_server,
    oai,
)


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
        input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Name the capital"}, {"type": "input_text", "text": " of France."}]}],
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


@pytest.fixture(scope="module")
def continued_call(oai, forced_response_call):
    """The stored call continued on the server with the tool's output."""
    call = forced_response_call.output[0]
    return oai.responses.create(
        model=LLM,
        previous_response_id=forced_response_call.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}],
        tools=RESPONSES_TOOLS,
        max_output_tokens=ANSWER_TOKENS,
        temperature=0,
    )


def test_responses_function_call_output_continues_stored_call(forced_response_call, continued_call):
    assert continued_call.previous_response_id == forced_response_call.id
    assert message_text(continued_call).strip(), continued_call.output
    assert continued_call.usage.input_tokens > forced_response_call.usage.input_tokens


def test_responses_function_call_items_in_input(oai, forced_response_call, continued_call):
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
    assert r.usage.input_tokens == continued_call.usage.input_tokens
    assert r.output_text == continued_call.output_text


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
