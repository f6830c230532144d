"""Tool-call and reasoning parsers compared with Dynamo 1.6.1's own frontend (issue 61): a scripted Dynamo
worker per parser pair (the echo worker with `--answer-user`: its output is the user message's text, its
card's `runtime_config` names the parsers, as `dynamo.vllm --dyn-tool-call-parser …` publishes them),
served by both frontends; each family's markup is sent whole and streamed, and the two answers must
agree on content, reasoning, calls (names and arguments) and finish reason, except where DIFFERENCES
says why they do not and what Dynamo answers instead. Tritium's streamed answer must equal its whole
one for every parser."""

from __future__ import annotations

import json
import urllib.request

import pytest

from deployment import Deployment, http, models_at, tiny_model, wait_until  # noqa: F401 - tiny_model: a fixture

pytestmark = pytest.mark.dynamo
START = 120

WEATHER = '{"city": "Paris", "days": 3}'
# (tool-call parser, reasoning parser or "", what the model writes)
SCRIPTS = [
    ("hermes", "qwen3", f'<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>'),
    ("qwen3_coder", "", "I'll check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"),
    ("llama3_json", "", f'{{"name": "get_weather", "parameters": {WEATHER}}}'),
    ("mistral", "", f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {WEATHER}}}]'),
    ("pythonic", "", '[get_weather(city="Paris", days=3)]'),
    ("nemotron_deci", "", f'<TOOLCALL>[{{"name": "get_weather", "arguments": {WEATHER}}}]</TOOLCALL>'),
    ("deepseek_v3_1", "deepseek_r1", f"Weather is needed.</think>Looking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{WEATHER}<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    ("kimi_k2", "kimi_k25", f"Weather is needed.</think>Checking.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{WEATHER}<|tool_call_end|><|tool_calls_section_end|>"),
    ("glm47", "glm45", "<think>Need the weather.</think>Checking.<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value><arg_key>days</arg_key><arg_value>3</arg_value></tool_call>"),
    ("minimax_m2", "minimax_m2", '<think>Weather.</think>\n<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris</parameter>\n<parameter name="days">3</parameter>\n</invoke>\n</minimax:tool_call>'),
    ("harmony", "gpt_oss", f"<|channel|>analysis<|message|>Need the weather tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{WEATHER}<|call|>"),
    ("deepseek_v3_2", "", '<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>'),
]  # fmt: skip

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}]  # fmt: skip



def think_left_in_content(ours: tuple, theirs: tuple) -> bool:
    """Dynamo's answer keeps the `<think>` block in the content, with the same calls."""
    return theirs[1] == "" and "<think>" in theirs[0] and ours[1] in theirs[0] and theirs[2] == ours[2]


# Where the two frontends differ, by tool-call parser: why, and what Dynamo's answer is instead.
DIFFERENCES = {
    # Dynamo 1.6.1 applies a reasoning parser whose reasoning the template does not open (`qwen3`, `glm45`:
    # `<think>` written by the model) only when it judges thinking to be on for the request, which it does not
    # for this worker's template (no thinking switch); Tritium splits the reasoning off whenever the model
    # writes the markers. With the parsers that start inside the reasoning (deepseek_r1, kimi_k25,
    # minimax_m2) both split alike.
    "hermes": ("a <think> the model writes is split off by Tritium only", think_left_in_content),
    "glm47": ("a <think> the model writes is split off by Tritium only", think_left_in_content),
    # Dynamo's gpt_oss parser reads harmony's special token ids (o200k_harmony), which a tokenizer without
    # them (this worker's byte-level one) never produces, so Dynamo's answer is empty; Tritium reads the
    # channels in the text.
    "harmony": ("harmony read from its text by Tritium, from o200k token ids by Dynamo", lambda ours, theirs: theirs == ("", "", [], "stop")),
}


def model_of(tools: str) -> str:
    return f"p-{tools}"


@pytest.fixture(scope="module")
def frontends(tmp_path_factory, tiny_model):
    deployment = Deployment(tmp_path_factory.mktemp("dynamo-parsers"), tiny_model, namespace="parsers")
    for tools, reasoning, _ in SCRIPTS:
        args = ["--answer-user", "--tool-call-parser", tools] + (["--reasoning-parser", reasoning] if reasoning else [])
        deployment.echo(model_of(tools), *args)
    tritium = deployment.tritium_frontend()
    dynamo = deployment.dynamo_frontend()
    names = {model_of(tools) for tools, _, _ in SCRIPTS}
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: names <= set(models_at(base)), START, f"the scripted models listed at {base}")
    yield tritium.http_url, dynamo
    deployment.stop()


def whole(base: str, body: dict) -> tuple:
    status, answer = http("POST", base + "/v1/chat/completions", body)
    assert status == 200, answer
    choice = answer["choices"][0]
    message = choice["message"]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
    return (message.get("content") or "").strip(), (message.get("reasoning_content") or "").strip(), calls, choice["finish_reason"]


def streamed(base: str, body: dict) -> tuple:
    request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body | {"stream": True}).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    content, reasoning, calls, finish = "", "", {}, None
    with urllib.request.urlopen(request, timeout=30) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                for piece in delta.get("tool_calls") or []:
                    call = calls.setdefault(piece["index"], ["", ""])
                    call[0] += (piece.get("function") or {}).get("name") or ""
                    call[1] += (piece.get("function") or {}).get("arguments") or ""
                finish = choice.get("finish_reason") or finish
    parsed = [(name, json.loads(arguments)) for name, arguments in (calls[i] for i in sorted(calls))]
    return content.strip(), reasoning.strip(), parsed, finish


@pytest.mark.parametrize("tools,reasoning,script", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_a_parser_reads_a_workers_output_as_dynamos_frontend_does(frontends, tools, reasoning, script):
    tritium, dynamo = frontends
    body = {"model": model_of(tools), "messages": [{"role": "user", "content": script}], "tools": TOOLS, "max_tokens": 4000}
    ours, theirs = whole(tritium, body), whole(dynamo, body)
    ours_streamed, theirs_streamed = streamed(tritium, body), streamed(dynamo, body)
    # Tritium's streamed answer is its whole answer, always.
    assert ours_streamed == ours, (ours_streamed, ours)
    assert ours[2] == [("get_weather", {"city": "Paris", "days": 3})], ours
    if tools in DIFFERENCES:
        why, dynamos_answer = DIFFERENCES[tools]
        assert dynamos_answer(ours, theirs) and dynamos_answer(ours, theirs_streamed), f"{tools} ({why}): {ours} {theirs}"
        return
    assert ours == theirs, f"{tools} whole: Tritium {ours} Dynamo {theirs}"
    assert ours_streamed == theirs_streamed, f"{tools} streamed: Tritium {ours_streamed} Dynamo {theirs_streamed}"
