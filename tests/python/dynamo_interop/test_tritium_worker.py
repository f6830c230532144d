"""The reverse (issue 57): `tritium worker --worker-protocol dynamo` registers in Dynamo's layout
(records, a card whose tokenizer files carry real checksums, a TCP request listener, call-home
response streams), and Dynamo 1.6.1's own, unmodified frontend serves it; Tritium's frontend,
reading the same records, answers the same."""

from __future__ import annotations

import json
import pathlib
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from deployment import assert_same_answers, deployment, http, model_ready_at, models_at, outputs_of, tiny_model, transient_frontends, wait_until  # noqa: F401 - deployment, tiny_model, transient_frontends: fixtures
from cluster import metric
from helpers import tritium_bin

pytestmark = [pytest.mark.dynamo, pytest.mark.usefixtures("transient_frontends")]
START = 90


@pytest.fixture(scope="module")
def served_worker(deployment):
    worker = deployment.tritium_worker("--engine", "mock", "--model-name", "tritium-mock", "--mock-decode-ms-per-step", "1")
    dynamo = deployment.dynamo_frontend()
    tritium = deployment.tritium_frontend()
    for base in (dynamo, tritium.http_url):
        wait_until(lambda: "tritium-mock" in models_at(base), START, f"tritium-mock listed at {base}")
    return worker, dynamo, tritium


def test_dynamos_frontend_serves_a_tritium_worker(served_worker):
    _, dynamo, _ = served_worker
    body = {"model": "tritium-mock", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}
    status, answer = http("POST", dynamo + "/v1/chat/completions", body)
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 6 and answer["choices"][0]["finish_reason"] == "length", answer
    status, answer = http("POST", dynamo + "/v1/completions", {"model": "tritium-mock", "prompt": "count", "max_tokens": 4})
    assert status == 200 and answer["usage"]["completion_tokens"] == 4, answer


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"model": "tritium-mock", "prompt": "the same words", "max_tokens": 8, "seed": 7}),
    ("/v1/chat/completions", {"model": "tritium-mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "seed": 7}),
])  # fmt: skip
def test_both_frontends_answer_alike_from_the_tritium_worker(served_worker, path, body):
    _, dynamo, tritium = served_worker
    assert_same_answers(tritium.http_url, dynamo, path, body)


def test_its_kv_events_in_dynamos_format_reach_a_kv_router(served_worker):
    """Tritium's frontend reads them exactly as it reads the mocker's (Dynamo's decoder, Dynamo's hashes)."""
    _, _, tritium = served_worker
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "tritium-mock", "prompt": "z" * 300, "max_tokens": 2})
    assert status == 200, answer

    def indexed() -> float:
        return metric(http("GET", tritium.metrics_url)[1], "tritium_router_kv_blocks_indexed")

    wait_until(lambda: indexed() > 0, 30, "the worker's blocks indexed from its Dynamo-format KV events")


def test_its_tensor_models_are_served_by_both_frontends(deployment):
    """A worker of tensor models (the built-in repository) registers them as `dynamo.triton` registers
    Triton's: Dynamo's KServe door (round-robin: its KV mode fails tensor models) and Tritium's frontend
    answer alike, a decoupled model streams through Tritium's, and a request its config refuses is
    refused with Triton's wording."""
    worker = deployment.tritium_worker()
    theirs, _ = deployment.kserve_frontend("dynamo", "--router-mode", "round-robin")
    ours = deployment.tritium_frontend()
    a, b = np.arange(16, dtype=np.int32), np.full(16, 3, dtype=np.int32)
    answers = []
    for url in (ours.url, theirs):
        wait_until(lambda: model_ready_at(url, "add_sub"), START, f"add_sub ready over gRPC at {url}")
        with grpcclient.InferenceServerClient(url) as client:
            inputs = [grpcclient.InferInput(name, [16], "INT32") for name in ("INPUT0", "INPUT1")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(b)
            answers.append(outputs_of(client.infer("add_sub", inputs).get_response()))
            config = client.get_model_config("add_sub", as_json=True)["config"]
            assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"], config
    assert answers[0] == answers[1] and answers[0]["OUTPUT0"] == (a + b).tolist(), answers
    streamed = []
    with grpcclient.InferenceServerClient(ours.url) as client:
        count = grpcclient.InferInput("IN", [1], "INT32")
        count.set_data_from_numpy(np.array([3], dtype=np.int32))
        client.start_stream(lambda result, error: streamed.append(error or result))
        client.async_stream_infer("repeat", [count], enable_empty_final_response=True)
        wait_until(lambda: any(not isinstance(r, Exception) and r.get_response().parameters["triton_final_response"].bool_param for r in streamed)
                   or any(isinstance(r, Exception) for r in streamed), 30, "repeat's final response")  # fmt: skip
        client.stop_stream()
    assert not [r for r in streamed if isinstance(r, Exception)], streamed
    values = [int(r.as_numpy("OUT")[0]) for r in streamed if r.as_numpy("OUT") is not None]
    assert values == [0, 1, 2], values
    # Refused with Triton's wording: by Tritium's frontend before sending, by the worker (its prologue)
    # behind Dynamo's, which sends it on.
    for url in (ours.url, theirs):
        with grpcclient.InferenceServerClient(url) as client:
            short = grpcclient.InferInput("INPUT0", [16], "INT32")
            short.set_data_from_numpy(a)
            with pytest.raises(Exception, match="expected 2 inputs but got 1 inputs for model 'add_sub'"):
                client.infer("add_sub", [short])
    deployment.tritium.remove(worker)
    assert worker.stop() == 0


def test_the_host_variables_choose_the_addresses_bound_and_advertised(deployment):
    """`DYN_TCP_RPC_HOST` on the worker and `--tcp-response-stream-host` on the frontend, set to another
    loopback address than the default: the worker's record advertises its listener there, the frontend's
    response streams are bound there, and a request still makes the round trip through both."""
    worker = deployment.tritium_worker("--engine", "mock", "--model-name", "elsewhere", env={"DYN_TCP_RPC_HOST": "127.0.0.2"})
    frontend = deployment.tritium_frontend("--tcp-response-stream-host", "127.0.0.3")
    wait_until(lambda: "elsewhere" in models_at(frontend.http_url), START, "elsewhere listed")
    def records(bucket: str) -> list[dict]:
        folder = pathlib.Path(deployment.store) / "v1" / bucket
        return [json.loads(p.read_bytes()) for p in folder.iterdir() if not p.name.startswith(".")]

    # This worker's records only: the module's other Tritium worker shares the component.
    ours = {r["instance_id"] for r in records("mdc") if r["card_json"]["display_name"] == "elsewhere"}
    advertised = [r["transport"]["tcp"] for r in records("instances") if r["instance_id"] in ours]
    assert advertised and all(a.startswith("127.0.0.2:") for a in advertised), advertised
    assert "address=127.0.0.3:" in frontend.stderr(), "the response-stream listener is bound on the host asked for"
    status, answer = http("POST", frontend.http_url + "/v1/completions", {"model": "elsewhere", "prompt": "hi", "max_tokens": 3})
    assert status == 200 and answer["usage"]["completion_tokens"] == 3, answer
    deployment.tritium.remove(worker)
    assert worker.stop() == 0


def test_the_records_leave_with_the_worker(deployment):
    worker = deployment.tritium_worker("--engine", "mock", "--model-name", "leaving")
    mdc = pathlib.Path(deployment.store) / "v1" / "mdc"
    cards = [json.loads(p.read_bytes()) for p in mdc.iterdir() if b'"leaving"' in p.read_bytes()]
    assert cards, "no model card for 'leaving'"
    card = cards[0]["card_json"]
    for artifact in ("tokenizer", "prompt_formatter", "model_info", "gen_config"):
        (entry,) = card[artifact].values()
        assert entry["checksum"].startswith("blake3:") and pathlib.Path(entry["path"]).stat().st_size == entry["size"]
    folder = pathlib.Path(card["tokenizer"]["hf_tokenizer_json"]["path"]).parent
    deployment.tritium.remove(worker)
    assert worker.stop() == 0
    assert not any(b'"leaving"' in p.read_bytes() for p in mdc.iterdir())
    assert not folder.exists()


@pytest.mark.parametrize("args,named", [
    (["--discovery-backend", "mem"], "--discovery-backend file, etcd or kubernetes"),
    (["--discovery-backend", "file", "--request-plane", "nats", "--nats-url", "nats://127.0.0.1:1"], "--request-plane tcp"),
])  # fmt: skip
def test_combinations_it_cannot_serve_are_refused_by_name(args, named):
    binary = str(tritium_bin())
    done = subprocess.run([binary, "worker", "--worker-protocol", "dynamo", "--engine", "mock", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and named in done.stderr, done.stderr


def test_dynamos_frontend_serves_a_tritium_embedding_model(deployment):
    """MiniLM in `tritium worker --worker-protocol dynamo`: registered as an Embedding model, it answers Dynamo's
    `PreprocessedEmbeddingRequest` with base64 vectors as Dynamo's vLLM worker does. Dynamo's frontend (in
    round-robin mode: 1.6.1's fails embeddings under KV routing) and Tritium's give the vectors Tritium computes
    when it serves MiniLM itself."""
    from conftest import model_paths
    from helpers import finish_server, start_server

    _, minilm = model_paths()
    deployment.tritium_worker("--model-path", str(minilm), "--model-name", "tminilm")
    dynamo = deployment.dynamo_frontend("--router-mode", "round-robin")
    tritium = deployment.tritium_frontend()
    direct = start_server("--model-path", str(minilm), "--model-name", "tminilm")
    try:
        inputs = {"model": "tminilm", "input": ["hello there", "a second sentence"]}
        status, expected = http("POST", direct.http_url + "/v1/embeddings", inputs)
        assert status == 200, expected
        for base in (dynamo, tritium.http_url):
            wait_until(lambda: "tminilm" in models_at(base), START, f"tminilm listed at {base}")
            status, answer = http("POST", base + "/v1/embeddings", inputs)
            assert status == 200, (base, answer)
            for got, want in zip(answer["data"], expected["data"], strict=True):
                assert np.allclose(got["embedding"], want["embedding"], atol=1e-5), base
    finally:
        finish_server(direct)


def test_dynamos_frontend_gets_guided_decoding_and_logprobs_from_a_tritium_worker(deployment):
    """SmolLM2 on `tritium worker --worker-protocol dynamo`: Dynamo's frontend sends structured output as
    `sampling_options.guided_decoding` and `logprobs` as `output_options.logprobs`; the worker's engine follows
    the choice and answers each token's log-probability with its alternatives (Dynamo's `log_probs`,
    `top_logprobs`), which Dynamo's frontend gives the client. A whitespace pattern, which the engine cannot
    follow, is refused rather than dropped."""
    from conftest import model_paths

    smollm, _ = model_paths()
    worker = deployment.tritium_worker("--model-path", str(smollm), "--model-name", "tsmol")
    dynamo = deployment.dynamo_frontend("--router-mode", "round-robin")
    wait_until(lambda: "tsmol" in models_at(dynamo), 240, "tsmol listed at Dynamo's frontend")
    base = {"model": "tsmol", "messages": [{"role": "user", "content": "Is the sky blue? Answer yes or no."}], "max_tokens": 4}
    status, answer = http("POST", dynamo + "/v1/chat/completions", base | {"guided_choice": ["maybe so", "not at all"], "max_tokens": 16}, timeout=120)
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"] in ("maybe so", "not at all"), answer
    tritium = deployment.tritium_frontend()
    wait_until(lambda: "tsmol" in models_at(tritium.http_url), 240, "tsmol listed at Tritium's frontend")
    status, answer = http("POST", tritium.http_url + "/v1/chat/completions", base | {"guided_choice": ["maybe so", "not at all"], "max_tokens": 16}, timeout=120)
    assert status == 200 and answer["choices"][0]["message"]["content"] in ("maybe so", "not at all"), answer
    greedy = base | {"logprobs": True, "top_logprobs": 2, "temperature": 0}
    status, ours = http("POST", tritium.http_url + "/v1/chat/completions", greedy, timeout=120)
    assert status == 200, ours
    status, answer = http("POST", dynamo + "/v1/chat/completions", greedy, timeout=120)
    assert status == 200, answer
    content = answer["choices"][0]["logprobs"]["content"]
    # Over either frontend, the worker's log-probabilities; Tritium's frontend lists the 2 alternatives asked for.
    mine = ours["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in mine] == [t["token"] for t in content], (mine, content)
    assert all(abs(a["logprob"] - b["logprob"]) < 1e-4 and len(a["top_logprobs"]) == 2 for a, b in zip(mine, content)), mine
    # The 2 alternatives asked for; Dynamo's frontend adds the chosen token when it is not among them, as vLLM's.
    assert content and all(t["logprob"] <= 0 and len(t["top_logprobs"]) in (2, 3) for t in content), json.dumps(content[0])
    assert all(t["logprob"] in [a["logprob"] for a in t["top_logprobs"]] for t in content), json.dumps(content[0])
    status, answer = http("POST", dynamo + "/v1/chat/completions", base | {"guided_regex": "[a-z]+", "guided_whitespace_pattern": " "}, timeout=120)
    # Dynamo's frontend answers a worker's refusal as a bare 500; the worker says why.
    assert status == 500, answer
    wait_until(lambda: "whitespace_pattern is not served" in worker.stderr(), 10, "the worker named the refused option")


def test_dynamos_frontend_serves_a_vllm_engine_through_a_tritium_worker(deployment):
    """`tritium worker --worker-protocol dynamo --engine-grpc NAME=URL`: an engine reached over its own gRPC
    (frames recorded from the real vLLM, played by `engine-replay`) is registered in Dynamo's layout with the
    engine's tokenizer as its card; Dynamo 1.6.1's unmodified frontend tokenizes with it, and the greedy
    answers equal what vLLM's own OpenAI server gave for the same prompts."""
    from engine_replay import EXCHANGE, Replay

    replay = Replay()
    try:
        deployment.tritium_worker("--engine-grpc", f"vllm-engine={replay.address}")
        dynamo = deployment.dynamo_frontend("--router-mode", "round-robin")
        wait_until(lambda: "vllm-engine" in models_at(dynamo), START, "vllm-engine listed at Dynamo's frontend")
        case = next(c for c in EXCHANGE["cases"] if c["name"] == "completion_france")
        status, answer = http("POST", dynamo + "/v1/completions", {**case["body"], "model": "vllm-engine"})
        assert status == 200, answer
        want = case["openai"]
        assert answer["choices"][0]["text"] == want["choices"][0]["text"]
        assert answer["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
        assert any(line.startswith("generate ") for line in replay.lines)
    finally:
        replay.stop()
