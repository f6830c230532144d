"""Engines reached over gRPC as model-repository models (issue 62): a `config.pbtxt` with `backend: "engine_grpc"`
and the engine's URL in `parameters` is the engine's model on every door, as `--engine-grpc` makes it; it loads
and unloads through the repository API and on demand, and `tritium worker --engine-grpc` serves and registers it
for a frontend. An engine that is absent or still warming up fails the load, saying so, and the server stays up.
The engine is `engine-replay` (frames recorded from the real vLLM engine); answers are compared with what vLLM's
own OpenAI server gave for the same prompts."""

from __future__ import annotations

import json
import socket

import numpy as np
import openai
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from engine_replay import EXCHANGE, MODEL, Replay
from helpers import finish_server, start_server, start_worker, wait_for, write_model


def engine_config(url: str, extra: str = "") -> str:
    return f'name: "{MODEL}"\nbackend: "engine_grpc"\nparameters {{ key: "url" value {{ string_value: "{url}" }} }}\n{extra}'


def case(name: str) -> dict:
    return next(c for c in EXCHANGE["cases"] if c["name"] == name)


def first_case(route: str, stream: bool) -> dict:
    return next(c for c in EXCHANGE["cases"] if c["route"] == route and bool(c["body"].get("stream")) == stream)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def answers_like_vllm(server) -> None:
    """A completion and a streamed chat through `server` equal vLLM's own server's."""
    completion = first_case("/v1/completions", False)
    got = client(server).completions.create(**completion["body"]).model_dump()
    want = completion["openai"]
    assert got["choices"][0]["text"] == want["choices"][0]["text"]
    assert (got["usage"]["prompt_tokens"], got["usage"]["completion_tokens"]) == (
        want["usage"]["prompt_tokens"],
        want["usage"]["completion_tokens"],
    )
    chat = first_case("/v1/chat/completions", True)
    text = "".join(
        (chunk.choices[0].delta.content or "") for chunk in client(server).chat.completions.create(**chat["body"]) if chunk.choices
    )
    want_text = "".join(
        ((event.get("choices") or [{}])[0].get("delta") or {}).get("content") or "" for event in chat["openai"]
    )
    assert text == want_text


@pytest.fixture(scope="module")
def replay():
    engine = Replay()
    yield engine
    engine.stop()


def unused_port() -> int:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


def test_a_repository_model_is_the_engines_model_on_every_door(replay, tmp_path):
    write_model(tmp_path, MODEL, engine_config(replay.address))
    server = start_server("--model-repository", str(tmp_path))
    try:
        answers_like_vllm(server)
        france = case("completion_france")
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([france["body"]["prompt"].encode()], dtype=np.object_))
        grpc = grpcclient.InferenceServerClient(server.url)
        result = grpc.infer(MODEL, [text], parameters={"max_tokens": 16, "temperature": 0.0})
        assert result.as_numpy("text_output").reshape(-1)[0].decode() == france["openai"]["choices"][0]["text"]
        config = grpc.get_model_config(MODEL, as_json=True)["config"]
        assert config["backend"] == "engine_grpc" and config["input"][0]["name"] == "text_input"
        # The context length is the engine's (GetModelInfo).
        limit = EXCHANGE["model_info"]["max_context_length"]
        with pytest.raises(openai.BadRequestError, match=str(limit)):
            client(server).completions.create(model=MODEL, prompt="hello " * (limit + 10), max_tokens=4)
    finally:
        finish_server(server)


def test_the_repository_api_loads_and_unloads_it_and_a_warming_engine_fails_the_load_saying_so(replay, tmp_path):
    warming = Replay("--misbehave", "warming")
    write_model(tmp_path, MODEL, engine_config(warming.address))
    write_model(tmp_path, "noaddress", 'name: "noaddress"\nbackend: "engine_grpc"\n')
    server = start_server("--model-repository", str(tmp_path), "--model-control-mode", "explicit")
    grpc = grpcclient.InferenceServerClient(server.url)
    try:
        with pytest.raises(InferenceServerException, match="is not serving .its health is NOT_SERVING.") as refused:
            grpc.load_model(MODEL)
        assert "load the model again once it is" in str(refused.value)
        with pytest.raises(InferenceServerException, match="needs the parameter 'url'"):
            grpc.load_model("noaddress")
        assert grpc.is_server_live() and not grpc.is_model_ready(MODEL)
        # Pointed at a serving engine (a config override), it loads and answers.
        override = {"backend": "engine_grpc", "parameters": {"url": {"string_value": replay.address}}}
        grpc.load_model(MODEL, config=json.dumps(override))
        assert grpc.is_model_ready(MODEL)
        answers_like_vllm(server)
        grpc.unload_model(MODEL)
        assert wait_for(lambda: not grpc.is_model_ready(MODEL), timeout=30)
        assert MODEL not in requests.get(server.http_url + "/v1/models", timeout=5).text
    finally:
        finish_server(server)
        warming.stop()


def test_an_absent_engine_fails_the_load_naming_its_address(tmp_path):
    address = f"127.0.0.1:{unused_port()}"
    write_model(tmp_path, MODEL, engine_config(address))
    server = start_server("--model-repository", str(tmp_path), "--model-control-mode", "explicit")
    try:
        with pytest.raises(InferenceServerException, match=f"the engine at http://{address} cannot be reached"):
            grpcclient.InferenceServerClient(server.url).load_model(MODEL)
        assert requests.get(server.http_url + "/v2/health/live", timeout=5).status_code == 200
    finally:
        finish_server(server)


def test_on_demand_loading_reaches_the_engine_on_first_use(replay, tmp_path):
    write_model(tmp_path, MODEL, engine_config(replay.address))
    server = start_server("--model-repository", str(tmp_path), "--model-control-mode", "on-demand")
    try:
        grpc = grpcclient.InferenceServerClient(server.url)
        states = lambda: {m.name: m.state for m in grpc.get_model_repository_index().models}  # noqa: E731
        assert states().get(MODEL) != "READY"
        answers_like_vllm(server)
        assert states()[MODEL] == "READY"
    finally:
        finish_server(server)


def test_a_worker_serves_and_registers_an_engine_for_a_frontend(replay, tmp_path):
    discovery = ["--discovery-backend", "file", "--discovery-dir", str(tmp_path)]
    worker = start_worker(*discovery, "--engine-grpc", f"{MODEL}={replay.address}")
    frontend = start_server(*discovery)
    try:
        listed = lambda: MODEL in requests.get(frontend.http_url + "/v1/models", timeout=5).text  # noqa: E731
        assert wait_for(listed, timeout=60), frontend.stderr()[-3000:]
        answers_like_vllm(frontend)
    finally:
        finish_server(frontend)
        finish_server(worker)


def test_a_worker_takes_one_engine_per_model(replay):
    from helpers import tritium_bin
    import subprocess

    refused = subprocess.run(
        [str(tritium_bin()), "worker", "--engine-grpc", f"{MODEL}={replay.address},127.0.0.1:{unused_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "a worker serves one engine per model" in refused.stderr


def embedding_of(ids: list[int]) -> list[float]:
    """What `engine-replay --embedder` answers for `ids` (its `embedding_of`)."""
    return [float(len(ids)), sum(ids) / 1000.0, float(ids[0]), float(ids[-1])]


@pytest.mark.parametrize("form", ["option", "repository"])
def test_an_embedding_engine_serves_embeddings_from_the_ids_tritium_tokenized(form, tmp_path):
    """An engine whose GetModelInfo says it does not generate is an embedding model: /v1/embeddings sends it
    each input's token ids (Tritium's tokenizing, with the engine's tokenizer) and answers its vectors; the
    generating routes refuse it by name."""
    embedder = Replay("--embedder")
    if form == "option":
        server = start_server("--engine-grpc", f"{MODEL}={embedder.address}")
    else:
        write_model(tmp_path, MODEL, engine_config(embedder.address))
        server = start_server("--model-repository", str(tmp_path))
    try:
        listed = lambda: MODEL in requests.get(server.http_url + "/v1/models", timeout=5).text  # noqa: E731
        assert wait_for(listed, timeout=60), server.stderr()[-3000:]
        answer = client(server).embeddings.create(model=MODEL, input=["The capital of France is", "hello"])
        sent = [[int(i) for i in line.removeprefix("embed ").split(",")] for line in embedder.lines if line.startswith("embed ")]
        assert len(sent) == 2 and all(sent)
        assert [item.embedding for item in answer.data] == [pytest.approx(embedding_of(ids)) for ids in sent]
        assert answer.usage.prompt_tokens == sum(len(ids) for ids in sent)
        scored = requests.post(server.http_url + "/v1/score", json={"model": MODEL, "text_1": "hello", "text_2": ["hi", "bye"]}, timeout=60)
        assert scored.status_code == 200 and len(scored.json()["data"]) == 2, scored.text
        with pytest.raises(openai.BadRequestError, match="is an embedding model"):
            client(server).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    finally:
        finish_server(server)
        embedder.stop()


def test_an_engine_without_a_tokenizer_uses_the_files_the_config_names(tmp_path):
    """`tokenizer_path` (a folder inside the model folder) stands in for `GetTokenizer`: the answers are the same."""
    import zipfile

    from engine_replay import FIXTURE

    silent = Replay("--no-tokenizer")
    model_dir = write_model(tmp_path, MODEL, engine_config(silent.address, 'parameters { key: "tokenizer_path" value { string_value: "tokenizer" } }\n'))
    with zipfile.ZipFile(FIXTURE / "tokenizer.zip") as archive:
        archive.extractall(model_dir / "tokenizer")
    write_model(tmp_path, "outside", engine_config(silent.address, 'parameters { key: "tokenizer_path" value { string_value: "../smollm2/tokenizer" } }\n').replace(f'"{MODEL}"', '"outside"', 1))
    write_model(tmp_path, "without", engine_config(silent.address).replace(f'"{MODEL}"', '"without"', 1))
    server = start_server("--model-repository", str(tmp_path), "--model-control-mode", "explicit")
    grpc = grpcclient.InferenceServerClient(server.url)
    try:
        grpc.load_model(MODEL)
        answers_like_vllm(server)
        with pytest.raises(InferenceServerException, match="tokenizer_path '../smollm2/tokenizer' must be a relative path inside the model folder"):
            grpc.load_model("outside")
        with pytest.raises(InferenceServerException, match="GetTokenizer failed"):
            grpc.load_model("without")
    finally:
        finish_server(server)
        silent.stop()


def test_a_repository_models_idle_timeout_is_its_own(tmp_path):
    """`idle_timeout_secs` bounds that model's silent engine, whatever --engine-grpc-idle-timeout says."""
    hung = Replay("--misbehave", "hang")
    write_model(tmp_path, MODEL, engine_config(hung.address, 'parameters { key: "idle_timeout_secs" value { string_value: "1" } }\n'))
    server = start_server("--model-repository", str(tmp_path), "--migration-limit", "0")
    try:
        body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}
        answer = requests.post(server.http_url + "/v1/completions", json=body, timeout=60)
        assert answer.status_code >= 500 and "sent nothing for 1 s" in answer.text, answer.text
    finally:
        finish_server(server)
        hung.stop()
