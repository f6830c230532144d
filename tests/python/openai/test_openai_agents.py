"""Chat tool calling and structured output (`response_format`, `nvext.guided_*`, `parse()`) through the official
`openai` client, and Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) through the
`anthropic` client, against the real SmolLM2-135M-Instruct. The server and the shared definitions are in
`agent_clients.py`.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from agent_clients import (  # noqa: F401 (the fixtures are used by name)
    ANSWER_TOKENS,
    ANTHROPIC_TOOLS,
    CHAT_TOOLS,
    GREEDY,
    JSON_PROMPT,
    LLM,
    PERSON_PROMPT,
    Person,
    QUESTION,
    REQUEST_TIMEOUT_S,
    SYSTEM,
    TOOL_RESULT,
    TOOL_TOKENS,
    WEATHER_QUESTION,
    WEATHER_SCHEMA,
    check_openai_error,
    check_weather_arguments,
    agent_server,
    claude,
    oai,
)
from conftest import LLM_START_TIMEOUT, model_paths


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
    pieces = [p for c in chunks if c.choices for p in c.choices[0].delta.tool_calls or []]
    # OpenAI's shape: the first piece names the call, the rest carry more of its arguments.
    first = pieces[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function", first
    assert first.function.name == "get_weather"
    assert all(p.index == 0 and p.id is None and p.function.name is None for p in pieces[1:]), pieces
    arguments = "".join(p.function.arguments or "" for p in pieces)
    assert arguments == named_chat_call.choices[0].message.tool_calls[0].function.arguments
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
    assert chat.usage.prompt_tokens == prompt_tokens(m.usage)
    assert chat.usage.completion_tokens == m.usage.output_tokens


def test_messages_count_prefix_cache_reads_apart(claude):
    """A repeated conversation is read from the prefix cache: Anthropic counts those tokens in
    `cache_read_input_tokens`, apart from `input_tokens` (the ones computed)."""
    system = SYSTEM + " Keep every answer to one short sentence, and never list more than three items at once."
    messages = user_text("Which three rivers flow through Paris, Lyon and Bordeaux?")
    first = claude.messages.create(model=LLM, system=system, messages=messages, max_tokens=2, extra_body=GREEDY)
    again = claude.messages.create(model=LLM, system=system, messages=messages, max_tokens=2, extra_body=GREEDY)
    prompt = prompt_tokens(first.usage)
    assert prompt_tokens(again.usage) == prompt
    assert again.usage.cache_read_input_tokens == (prompt - 1) // 16 * 16 > 0, again.usage
    assert again.usage.cache_creation_input_tokens == 0


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
    assert prompt_tokens(final.usage) == prompt_tokens(capital_message.usage)
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
    assert start.message.usage.input_tokens == prompt_tokens(capital_message.usage)
    block_start = next(e for e in events if e.type == "content_block_start")
    assert block_start.index == 0 and block_start.content_block.type == "text"
    assert all(d.index == 0 and d.delta.type == "text_delta" for d in deltas)
    assert "".join(d.delta.text for d in deltas) == capital_message.content[0].text
    message_delta = next(e for e in events if e.type == "message_delta")
    assert message_delta.delta.stop_reason == capital_message.stop_reason
    assert message_delta.usage.output_tokens == capital_message.usage.output_tokens


def prompt_tokens(usage) -> int:
    """The whole prompt: Anthropic counts the tokens read from the prefix cache apart."""
    return usage.input_tokens + usage.cache_read_input_tokens


def test_messages_count_tokens(claude, capital_message):
    counted = claude.messages.count_tokens(model=LLM, system=SYSTEM, messages=user_text(QUESTION))
    assert counted.input_tokens == prompt_tokens(capital_message.usage)
    # With tools as well: count_tokens sees the same prompt as create.
    with_tools = claude.messages.count_tokens(model=LLM, messages=user_text(WEATHER_QUESTION), tools=ANTHROPIC_TOOLS)
    created = claude.messages.create(
        model=LLM, messages=user_text(WEATHER_QUESTION), tools=ANTHROPIC_TOOLS, max_tokens=1, extra_body=GREEDY
    )
    assert with_tools.input_tokens == prompt_tokens(created.usage)


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
    assert prompt_tokens(m.usage) > prompt_tokens(tool_use_message.usage)


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


@pytest.mark.llm  # its own server on SmolLM2 (model_paths())
def test_anthropic_api_off_without_flag(start_tritium):
    gguf, _ = model_paths()
    server = start_tritium("--model-path", str(gguf), "--model-name", LLM, timeout=LLM_START_TIMEOUT)
    body = {"model": LLM, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    assert post_status(server.http_url + "/v1/messages", body) == 404
    assert post_status(server.http_url + "/v1/messages/count_tokens", body) == 404
    # The OpenAI routes are there all the same.
    chat = {"model": LLM, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    assert post_status(server.http_url + "/v1/chat/completions", chat) == 200
