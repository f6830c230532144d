"""Shared by the agent-API tests (`test_openai_responses.py`, `test_openai_agents.py`): one server with the real
SmolLM2-135M-Instruct (GGUF) and the official `openai` and `anthropic` clients on it, the tool and schema
definitions, and the checks both files make.

The server runs with `--enable-anthropic-api --dyn-tool-call-parser hermes`. A tiny model rarely calls a
tool on its own, so the tool tests force the call (`tool_choice` required or named): the server then writes
the call with a grammar, which any model can follow. The schemas keep strings short (`maxLength`) so that a
call or an object always ends within max_tokens. Generation is greedy (temperature 0) and short.
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import LLM_NAME, LLM_START_TIMEOUT, model_paths
from helpers import finish_server, needs, start_server

LLM = LLM_NAME
REQUEST_TIMEOUT_S = 120
# SmolLM2-135M's greedy answer to this one is "The capital of France is Paris." with or without a system
# prompt, under our kernels and under llama.cpp alike; "What is the capital of France?" with no system prompt
# wanders off into French nouns on both, past the answer's token budget.
QUESTION = "Name the capital of France."
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
@needs("llm")
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
