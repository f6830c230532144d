"""Tritium's frontend serving unmodified Dynamo 1.6.1 workers (issue 57), started exactly as
Dynamo's own frontend is (file discovery, TCP request plane, ZeroMQ events), and compared with
Dynamo's frontend on the same workers: the echo worker (Dynamo's Python API, deterministic) for
texts, finish reasons and usage; `dynamo.mocker` for counts."""

from __future__ import annotations

import json
import pathlib
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import deserialize_bytes_tensor

from deployment import Deployment, assert_same_answers, completion, deployment, free_i16_port, http, model_ready_at, models_at, outputs_of, stream_killing_its_worker, tiny_model, transient_frontends, wait_until  # noqa: F401 - deployment, tiny_model, transient_frontends: fixtures

pytestmark = [pytest.mark.dynamo, pytest.mark.usefixtures("transient_frontends")]
START = 90


@pytest.fixture(scope="module")
def frontends(deployment):
    """Both frontends over one echo worker ("echo") and one mocker ("mock")."""
    return deployment.echo_and_mock(START)


# Deterministic requests to the echo worker; each is answered alike by both frontends.
ECHO_REQUESTS = [
    ("/v1/completions", {"model": "echo", "prompt": "hello there", "max_tokens": 5}),
    # No max_tokens: Dynamo sends the worker none, and so does Tritium for Dynamo's models (no 16-token default).
    ("/v1/completions", {"model": "echo", "prompt": "a prompt longer than sixteen tokens, by far"}),
    ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}),
    ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}),
    ("/v1/chat/completions", {"model": "echo", "messages": [{"role": "system", "content": "be brief"},
                                                           {"role": "user", "content": "tell me"}]}),
]  # fmt: skip


@pytest.mark.parametrize("path,body", ECHO_REQUESTS)
def test_answers_equal_dynamos_frontend_on_the_same_worker(frontends, path, body):
    tritium, dynamo = frontends
    assert_same_answers(tritium.http_url, dynamo, path, body)


def test_the_mocker_generates_what_was_asked_and_without_max_tokens_too(frontends):
    tritium, dynamo = frontends
    body = {"model": "mock", "prompt": "count these", "max_tokens": 9}
    status, answer = http("POST", tritium.http_url + "/v1/completions", body)
    assert status == 200, answer
    assert answer["choices"][0]["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 9
    # The mocker needs max_tokens and publishes no token budget: Dynamo's frontend refuses, Tritium fills in
    # what the context leaves (the card's 4096 less the prompt).
    chat = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    status, theirs = http("POST", dynamo + "/v1/chat/completions", chat)
    assert status == 400 and "max_tokens" in json.dumps(theirs), theirs
    status, ours = http("POST", tritium.http_url + "/v1/chat/completions", chat)
    assert status == 200, ours
    assert ours["usage"]["prompt_tokens"] + ours["usage"]["completion_tokens"] == 4096


def test_kserve_parameters_reach_the_dynamo_worker(frontends):
    """Dynamo's KServe door drops `parameters` (no max_tokens); Tritium's maps them."""
    tritium, _ = frontends
    with grpcclient.InferenceServerClient(tritium.url) as client:
        assert client.is_model_ready("echo")
        metadata = client.get_model_metadata("echo", as_json=True)
        assert [i["name"] for i in metadata["inputs"]][0] == "text_input"
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"hello there"], dtype=object))
        results = []
        done = threading.Event()

        def callback(result, error):
            results.append(error if error else result)
            if error or result.get_response().parameters.get("triton_final_response", None) is not None:
                done.set()

        client.start_stream(callback)
        client.async_stream_infer("echo", [text], parameters={"max_tokens": 5})
        assert done.wait(30)
        client.stop_stream()
    outputs = [r.as_numpy("text_output") for r in results if not isinstance(r, Exception) and r.as_numpy("text_output") is not None]
    assert b"".join(o.reshape(-1)[0] for o in outputs).decode() == "hello"


def kserve_text(url: str, model: str, prompt: str) -> str:
    """The text a unary KServe ModelInfer on `url` answers for `prompt` (no parameters)."""
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=object))
    with grpcclient.InferenceServerClient(url) as client:
        response = client.infer(model, [text]).get_response()
    index = [o.name for o in response.outputs].index("text_output")
    if response.raw_output_contents:
        return b"".join(deserialize_bytes_tensor(response.raw_output_contents[index]).reshape(-1)).decode()
    # Dynamo answers in typed contents, which tritonclient's as_numpy cannot read under numpy 2.
    return b"".join(response.outputs[index].contents.bytes_contents).decode()


def test_the_kserve_setup_serves_grpc_on_the_http_port_as_dynamos(deployment, frontends):
    """Started for the KServe door as Dynamo's users start it (`--kserve-grpc-server --http-port G
    --grpc-metrics-port M`), both frontends serve KServe gRPC on G and metrics on M over the same echo
    worker, with the same text."""
    ours = deployment.kserve_frontend("tritium")
    theirs = deployment.kserve_frontend("dynamo")
    texts = []
    for url, metrics in (ours, theirs):
        wait_until(lambda: model_ready_at(url, "echo"), START, f"echo ready over gRPC at {url}")
        texts.append(kserve_text(url, "echo", "a prompt longer than sixteen tokens, by far"))
        with urllib.request.urlopen(metrics, timeout=30) as response:
            assert response.status == 200
    assert texts[0] == texts[1] and texts[0], texts


def test_an_embedding_worker_is_served_on_v1_embeddings_as_dynamos(deployment, frontends):
    """A Dynamo embedding worker (model type Embedding, token input): both frontends tokenize with its card
    and answer /v1/embeddings with the worker's vectors (base64 on the wire, as vLLM's handler sends them),
    number for number, in both payload codecs. Dynamo 1.6.1's frontend fails every embedding under
    `--router-mode kv` ("KV routing should not call generate on PushRouter"): it is compared in round-robin
    mode; Tritium's serves them in the KV mode the fixture runs."""
    tritium, _ = frontends
    deployment.echo("embedder", "--embed")
    deployment.echo("embedder-json", "--embed", env={"DYN_REQUEST_PLANE_CODEC": "json"})
    dynamo = deployment.dynamo_frontend("--router-mode", "round-robin")
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: {"embedder", "embedder-json"} <= set(models_at(base)), START, f"embedders listed at {base}")
    inputs = ["hello there", "a second, longer input to embed"]
    answers = []
    for base in (tritium.http_url, dynamo):
        for model in ("embedder", "embedder-json"):
            status, answer = http("POST", base + "/v1/embeddings", {"model": model, "input": inputs})
            assert status == 200, (base, model, answer)
            answers.append(answer)
    vectors = [[d["embedding"] for d in answer["data"]] for answer in answers]
    assert all(v == vectors[0] for v in vectors) and len(vectors[0]) == 2 and vectors[0][0][0] > 0, vectors
    assert len({answer["usage"]["prompt_tokens"] for answer in answers}) == 1, answers
    # Not a language model: generation on it is refused.
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "embedder", "prompt": "x", "max_tokens": 2})
    assert status in (400, 404), answer


def add_sub_config(name: str) -> str:
    """Triton's ModelConfig of the tensor worker's model, serialized and hex-encoded."""
    import tritonclient.grpc.model_config_pb2 as mc

    fp32 = lambda tensor, name: tensor(name=name, data_type=mc.TYPE_FP32, dims=[4])  # noqa: E731
    config = mc.ModelConfig(
        name=name, backend="python", max_batch_size=0,
        input=[fp32(mc.ModelInput, "INPUT0"), fp32(mc.ModelInput, "INPUT1")],
        output=[fp32(mc.ModelOutput, "OUTPUT0"), fp32(mc.ModelOutput, "OUTPUT1"), mc.ModelOutput(name="NOTE", data_type=mc.TYPE_STRING, dims=[1])],
    )  # fmt: skip
    return config.SerializeToString().hex()


def test_a_tensor_worker_is_served_on_kserve_as_by_dynamos_kserve_door(deployment, frontends):
    """A tensor-input Dynamo worker (as dynamo.triton registers Triton's models): both frontends serve its
    model over KServe gRPC with the ModelConfig its card carries and the same answers; Tritium also serves it
    over KServe HTTP and honours the outputs a request names. (Dynamo 1.6.1's frontend fails tensor models
    under `--router-mode kv`, "KV routing should not call generate on PushRouter": it runs round-robin here.)"""
    tritium, _ = frontends
    deployment.tensor("add_sub_dyn", add_sub_config("add_sub_dyn"))
    theirs, _ = deployment.kserve_frontend("dynamo", "--router-mode", "round-robin")
    a, b = np.array([1, 2, 3, 4], dtype=np.float32), np.array([10, 20, 30, 40], dtype=np.float32)
    answers = []
    for url in (tritium.url, theirs):
        wait_until(lambda: model_ready_at(url, "add_sub_dyn"), START, f"add_sub_dyn ready over gRPC at {url}")
        with grpcclient.InferenceServerClient(url) as client:
            metadata = client.get_model_metadata("add_sub_dyn", as_json=True)
            assert [i["name"] for i in metadata["inputs"]] == ["INPUT0", "INPUT1"], metadata
            assert [o["name"] for o in metadata["outputs"]] == ["OUTPUT0", "OUTPUT1", "NOTE"], metadata
            inputs = [grpcclient.InferInput(name, [4], "FP32") for name in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            answers.append(outputs_of(client.infer("add_sub_dyn", inputs).get_response()))
    assert answers[0] == answers[1], answers
    assert answers[0]["OUTPUT0"] == [11, 22, 33, 44] and answers[0]["OUTPUT1"] == [-9, -18, -27, -36], answers
    assert answers[0]["NOTE"] == [b"summed 4"], answers
    with grpcclient.InferenceServerClient(tritium.url) as client:
        config = client.get_model_config("add_sub_dyn", as_json=True)["config"]
        assert config["name"] == "add_sub_dyn" and config["backend"] == "python", config
        inputs = [grpcclient.InferInput(name, [4], "FP32") for name in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        only = client.infer("add_sub_dyn", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
        assert list(outputs_of(only.get_response())) == ["OUTPUT1"]
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "data": a.tolist()},
                       {"name": "INPUT1", "datatype": "FP32", "shape": [4], "data": b.tolist()}]}  # fmt: skip
    status, answer = http("POST", tritium.http_url + "/v2/models/add_sub_dyn/infer", body)
    assert status == 200, answer
    assert {o["name"]: o["data"] for o in answer["outputs"]}["OUTPUT0"] == [11, 22, 33, 44], answer
    # A request the model's contract refuses never reaches the worker: Triton's wording, from the card's config.
    status, answer = http("POST", tritium.http_url + "/v2/models/add_sub_dyn/infer", {"inputs": body["inputs"][:1]})
    assert status == 400 and "INPUT1" in json.dumps(answer), answer


def test_the_message_bound_refuses_a_request_over_it_before_sending(deployment, frontends):
    """`DYN_TCP_MAX_MESSAGE_SIZE` (Dynamo's variable) bounds Tritium's frames too: a prompt whose request frame
    is over it gets a 400 naming the bound, the worker never sees it, and requests under it still run."""
    small = deployment.tritium_frontend("--tcp-max-message-size", "4096")
    wait_until(lambda: "echo" in models_at(small.http_url), START, "echo listed at the bounded frontend")
    status, answer = http("POST", small.http_url + "/v1/completions", {"model": "echo", "prompt": "word " * 800, "max_tokens": 2})
    assert status == 400 and "over the 4096 a message may have" in json.dumps(answer), answer
    status, answer = http("POST", small.http_url + "/v1/completions", {"model": "echo", "prompt": "hello there", "max_tokens": 2})
    assert status == 200, answer


def test_a_lora_adapter_of_a_dynamo_worker_is_served_as_by_dynamo(deployment, frontends):
    """An adapter registered as vLLM's worker registers one (its own card, `lora`, a key suffix) is listed and
    served by both frontends under its name, which reaches the worker as the request's model (the echo
    worker's adapter answers backwards), with the same texts."""
    tritium, dynamo = frontends
    deployment.echo("lora-base", "--lora", "backwards")
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: {"lora-base", "backwards"} <= set(models_at(base)), START, f"the adapter listed at {base}")
    body = {"model": "backwards", "prompt": "hello there", "max_tokens": 20}
    assert_same_answers(tritium.http_url, dynamo, "/v1/completions", body)
    adapter, _, _ = completion(http("POST", tritium.http_url + "/v1/completions", body)[1])
    plain, _, _ = completion(http("POST", tritium.http_url + "/v1/completions", body | {"model": "lora-base"})[1])
    assert plain.startswith("hello") and adapter != plain, (adapter, plain)


GUIDED_REQUESTS = [
    {"response_format": {"type": "json_object"}},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}}},
    {"guided_regex": "[a-z]+"},
    {"guided_choice": ["yes", "no"]},
    {"guided_json": {"type": "array"}},
]  # fmt: skip


@pytest.mark.parametrize("extra", GUIDED_REQUESTS)
def test_structured_output_reaches_the_worker_as_dynamos_frontend_sends_it(deployment, frontends, extra):
    """Structured output is the engine's work: the worker gets `sampling_options.guided_decoding` as Dynamo's
    frontend fills it (a schema, `{"type": "object"}` for any JSON object, a regex, a choice), from
    `response_format` or vLLM's guided fields at the top level of the request."""
    tritium, dynamo = frontends
    echo = next(p for p in deployment.dynamo if "echo-echo" in str(p.log_path))
    seen = []
    for base in (tritium.http_url, dynamo):
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        body |= extra
        before = echo.log().count("GUIDED ")
        status, answer = http("POST", base + "/v1/chat/completions", body)
        assert status == 200, answer
        wait_until(lambda: echo.log().count("GUIDED ") > before, 10, "the worker logged the guided decoding")
        seen.append([line for line in echo.log().splitlines() if line.startswith("GUIDED ")][-1])
    assert seen[0] == seen[1], seen


TEXT_REQUESTS = [
    ("/v1/chat/completions", {"model": "texty", "messages": [{"role": "user", "content": "one two three four five"}], "max_tokens": 2}),
    ("/v1/chat/completions", {"model": "texty", "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "one two"}]}),
    ("/v1/completions", {"model": "texty", "prompt": "alpha beta gamma delta", "max_tokens": 3}),
]  # fmt: skip


def response_text(answer: dict) -> str:
    return "".join(part["text"] for item in answer["output"] if item["type"] == "message" for part in item["content"])


def test_a_text_input_worker_answers_responses_and_messages_made_into_chat(text_input):
    """As Dynamo's frontend does for Responses: the request is made into a chat request (instructions, input,
    limits, function tools) and the worker's chunks into the door's answer; Tritium does the same for Anthropic's
    Messages (which Dynamo 1.6.1's frontend does not serve by default)."""
    tritium, dynamo = text_input
    body = {"model": "texty", "input": "one two three four", "max_output_tokens": 3, "instructions": "be brief"}
    answers = []
    for base in (tritium.http_url, dynamo):
        status, answer = http("POST", base + "/v1/responses", body)
        assert status == 200, answer
        answers.append(answer)
    assert response_text(answers[0]) == response_text(answers[1]) == "one two three", answers
    assert answers[0]["usage"]["output_tokens"] == answers[1]["usage"]["output_tokens"] == 3, answers
    # Streamed: the deltas add up to the same text.
    request = urllib.request.Request(tritium.http_url + "/v1/responses", data=json.dumps(body | {"stream": True}).encode(),
                                     headers={"content-type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [json.loads(line[6:]) for line in response.read().decode().splitlines() if line.startswith("data: ")]
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "one two three" and events[-1]["type"] == f"response.{answers[0]['status']}", events
    tools = [{"type": "function", "name": "count", "parameters": {"type": "object"}}]
    status, answer = http("POST", tritium.http_url + "/v1/responses", {"model": "texty", "input": "a b", "tools": tools})
    calls = [item for item in answer["output"] if item["type"] == "function_call"]
    assert status == 200 and calls and calls[0]["name"] == "count" and calls[0]["arguments"] == '{"words": 2}', answer
    message = {"model": "texty", "max_tokens": 2, "messages": [{"role": "user", "content": "alpha beta gamma"}]}
    status, answer = http("POST", tritium.http_url + "/v1/messages", message)
    assert status == 200 and answer["content"][0]["text"] == "alpha beta" and answer["stop_reason"] == "max_tokens", answer
    anthropic_tools = [{"name": "count", "input_schema": {"type": "object"}}]
    status, answer = http("POST", tritium.http_url + "/v1/messages", message | {"tools": anthropic_tools})
    assert status == 200 and answer["content"][-1]["type"] == "tool_use" and answer["stop_reason"] == "tool_use", answer


TEXT_TASKS = ("embed", "classify", "rerank")


def test_text_input_embedding_classifying_and_reranking_workers_get_requests_as_sent(text_input):
    """Text-input workers of the unary tasks (SGLang's embedding worker with its own tokenizer, `dynamo.triton
    --task classify`, a reranker): the client's request is forwarded and the worker's answer folded. Embeddings
    and classifications equal Dynamo's frontend's answer (ids aside); a rerank comes in this door's shape
    (`results`, `relevance_score`, most relevant first) where Dynamo's gives the worker's bare list."""
    tritium, dynamo = text_input
    bodies = {
        "/v1/embeddings": {"model": "texty-embed", "input": ["one two", "three four five"]},
        "/v1/classify": {"model": "texty-classify", "input": ["short one", "this one is rather long"]},
    }
    for path, body in bodies.items():
        answers = []
        for base in (tritium.http_url, dynamo):
            status, answer = http("POST", base + path, body)
            assert status == 200, (base, path, answer)
            answers.append({k: v for k, v in answer.items() if k not in ("id", "created")})
        assert answers[0] == answers[1], answers
    assert answers[0]["data"][1]["label"] == "long"
    body = {"model": "texty-rerank", "query": "red apples", "documents": ["green pears", "red apples here", "red car"]}
    status, mine = http("POST", tritium.http_url + "/v1/rerank", body)
    assert status == 200, mine
    status, theirs = http("POST", dynamo + "/v1/rerank", body)
    assert status == 200, theirs
    assert [r["index"] for r in mine["results"]] == [r["index"] for r in theirs] == [1, 2, 0], (mine, theirs)
    assert [r["relevance_score"] for r in mine["results"]] == [r["score"] for r in theirs]
    assert mine["results"][0]["document"] == {"text": "red apples here"}
    # A route the worker does not serve is refused by name, before anything is sent.
    status, answer = http("POST", tritium.http_url + "/v1/embeddings", {"model": "texty-classify", "input": "x"})
    assert status == 400 and "/v1/embeddings" in answer["error"]["message"], answer


@pytest.fixture(scope="module")
def text_input(tmp_path_factory, tiny_model):
    """A text-input worker ("texty") in a deployment of its own, behind Tritium's frontend started as the
    others (KV mode) and Dynamo's in round-robin mode: Dynamo 1.6.1's frontend refuses text-input workers
    under `--router-mode kv` ("KV routing is incompatible with text-input workers"), and then refuses
    every later discovery snapshot of that namespace, which would hide the other tests' workers from it."""
    deployment = Deployment(tmp_path_factory.mktemp("dynamo-text"), tiny_model, namespace="textinput")
    deployment.echo("texty", "--text")
    for task in TEXT_TASKS:
        deployment.echo(f"texty-{task}", "--text-task", task)
    tritium = deployment.tritium_frontend("--enable-anthropic-api")
    dynamo = deployment.dynamo_frontend("--router-mode", "round-robin")
    names = {"texty", *(f"texty-{task}" for task in TEXT_TASKS)}
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: names <= set(models_at(base)), START, f"the text-input models listed at {base}")
    yield tritium, dynamo
    deployment.stop()


def test_a_text_input_worker_gets_requests_as_sent_and_answers_alike_on_both_frontends(text_input):
    """A text-input Dynamo worker (`ModelInput.Text`, as SGLang's worker registers with its own tokenizer) is
    sent the client's OpenAI request and answers with chunk objects: both frontends relay them streamed and
    fold them alike, tool calls included; the routes that need Tritium's tokenizer refuse it by name."""
    tritium, dynamo = text_input
    for path, body in TEXT_REQUESTS:
        assert_same_answers(tritium.http_url, dynamo, path, body)
    tools = [{"type": "function", "function": {"name": "count", "parameters": {"type": "object"}}}]
    body = {"model": "texty", "messages": [{"role": "user", "content": "a b c"}], "tools": tools}
    answers = []
    for base in (tritium.http_url, dynamo):
        status, answer = http("POST", base + "/v1/chat/completions", body)
        assert status == 200, answer
        answers.append(answer["choices"][0])
    calls = [[{k: c[k] for k in ("id", "type", "function")} for c in a["message"]["tool_calls"]] for a in answers]
    assert calls[0] == calls[1] and calls[0][0]["function"] == {"name": "count", "arguments": '{"words": 3}'}, answers
    assert answers[0]["finish_reason"] == answers[1]["finish_reason"] == "tool_calls", answers
    status, answer = http("POST", tritium.http_url + "/tokenize", {"model": "texty", "prompt": "hi"})
    assert status in (400, 501) and "text input" in json.dumps(answer), answer


def test_a_cancelled_stream_stops_the_worker(deployment, frontends):
    tritium, _ = frontends
    slow = deployment.echo("slow-echo", "--delay", "0.2")
    wait_until(lambda: "slow-echo" in models_at(tritium.http_url), START, "slow-echo listed")
    body = {"model": "slow-echo", "prompt": "x" * 200, "max_tokens": 200, "stream": True}
    request = urllib.request.Request(
        tritium.http_url + "/v1/completions", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        seen = 0
        for raw in response:
            if raw.startswith(b"data: "):
                seen += 1
            if seen == 2:
                break
    # Closing the connection ends the request: Tritium sends the worker Dynamo's "stop".
    wait_until(lambda: 'cancellation.signal="stop"' in slow.log(), 30, "the worker told to stop")


def test_a_killed_worker_is_forgotten_when_its_records_expire(deployment, frontends):
    tritium, _ = frontends
    doomed = deployment.echo("doomed")
    wait_until(lambda: "doomed" in models_at(tritium.http_url), START, "doomed listed")
    doomed.kill()
    # Its files stay behind (no clean shutdown); their 10 s TTL passes and Tritium drops them itself.
    wait_until(lambda: "doomed" not in models_at(tritium.http_url), 40, "doomed forgotten")
    status, _ = http("POST", tritium.http_url + "/v1/completions", {"model": "echo", "prompt": "still", "max_tokens": 2})
    assert status == 200


def test_malformed_records_are_refused_by_version_and_the_rest_served(deployment, frontends):
    tritium, _ = frontends
    instances = pathlib.Path(deployment.store) / "v1" / "instances"
    (instances / "interop%2Fbad%2Fgenerate%2F1").write_text('{"type":"Endpoint","instance_id":"not a number"}')
    (pathlib.Path(deployment.store) / "v1" / "mdc" / "interop%2Fbad%2Fgenerate%2F2").write_bytes(b"\xff\x00 not json")
    wait_until(lambda: "not a record Dynamo 1.6.1 writes" in tritium.stderr(), 20, "the malformed record refused")
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "echo", "prompt": "ok", "max_tokens": 2})
    assert status == 200 and answer["choices"][0]["text"] == "ok"


def test_a_token_budget_fills_max_tokens_and_refuses_overflow_as_dynamo(deployment, frontends):
    tritium, dynamo = frontends
    deployment.echo("budget", "--token-budget", "30")
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: "budget" in models_at(base), START, f"budget listed at {base}")
    # 20 prompt tokens leave 10 of the worker's 30: Tritium sends max_tokens 10 and the echo stops there.
    # (Dynamo 1.6.1's frontend sends none and leaves the worker to stop at its limit, as vLLM does.)
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "budget", "prompt": "twenty bytes of text"})
    assert status == 200 and completion(answer)[1:] == ("length", {"prompt": 20, "completion": 10}), answer
    # A prompt filling the budget is refused by both, before the worker.
    for base in (tritium.http_url, dynamo):
        status, answer = http("POST", base + "/v1/completions", {"model": "budget", "prompt": "x" * 40})
        assert status == 400, (base, answer)
        assert base == dynamo or "at most 30 combined input and output tokens" in json.dumps(answer), answer


def test_worker_hosted_card_files_are_fetched_and_checked(deployment, frontends):
    """With DYN_SYSTEM_PORT a worker serves its card's files itself (`http://…/v1/metadata/…`)."""
    tritium, _ = frontends
    port = str(free_i16_port())
    deployment.echo("hosted", env={"DYN_SYSTEM_PORT": port, "DYN_SYSTEM_ENABLED": "true"})
    wait_until(lambda: "hosted" in models_at(tritium.http_url), START, "hosted listed")
    texts = [p.read_bytes().decode(errors="replace") for p in (pathlib.Path(deployment.store) / "v1" / "mdc").iterdir()]
    records = [text for text in texts if '"display_name":"hosted"' in text]
    assert records and f"http://127.0.0.1:{port}/" in records[0], records
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "hosted", "prompt": "fetched", "max_tokens": 3})
    assert status == 200 and answer["choices"][0]["text"] == "fet", answer


def test_a_stream_whose_worker_dies_migrates_to_another(deployment, frontends):
    tritium, _ = frontends
    workers = [deployment.echo("migrating", "--delay", "0.1") for _ in range(2)]
    wait_until(lambda: tritium.stderr().count("models=[\"migrating\"]") >= 2, START, "both migrating workers joined")
    body = {"model": "migrating", "prompt": "y" * 60, "max_tokens": 30}
    finish, usage = stream_killing_its_worker(tritium.http_url, body, workers)
    assert finish == "length" and usage["completion_tokens"] == 30, (finish, usage)
