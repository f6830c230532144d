"""On-demand loading (`--model-control-mode on-demand`) with the real tritonclient: every model of the repository is
listed and none loaded until its first request (inference, metadata, config, readiness); past `--max-loaded-models`
or `--model-memory-budget` the least recently used idle model is unloaded; a model with a request running is never
unloaded; concurrent first requests share one load; pinned models stay; explicit load and unload keep working; the
metrics port counts loads, unloads by reason and the loaded models; bad flags are refused at start.

The slow models are Python models that wait for a file the test writes, so nothing here depends on timing.
"""

from __future__ import annotations

import pathlib
import re
import sys
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import expect_error, identity_config, start_failure, wait_for, write_model, write_python_model

PYTHON = sys.executable
NAMES = [f"m{i}" for i in range(6)]

# initialize() appends a line to LOADS and waits for INIT_GATE (when set) to exist; execute() writes STARTED and
# waits for RELEASE to exist (when set), then answers OUT = IN.
GATED = """
    import json
    import os
    import time
    import triton_python_backend_utils as pb_utils

    def wait_for(path):
        deadline = time.monotonic() + 120
        while path and not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.02)

    class TritonPythonModel:
        def initialize(self, args):
            params = json.loads(args["model_config"]).get("parameters", {})
            get = lambda key: params.get(key, {}).get("string_value", "")
            self.started, self.release = get("STARTED"), get("RELEASE")
            with open(get("LOADS"), "a") as f:
                f.write("load\\n")
            wait_for(get("INIT_GATE"))

        def execute(self, requests):
            if self.started:
                open(self.started, "w").close()
            wait_for(self.release)
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                    .as_numpy().copy())]) for r in requests]
"""


def gated_model(repo: pathlib.Path, name: str, work: pathlib.Path, **gates: pathlib.Path) -> None:
    params = {"LOADS": work / f"{name}.loads", **gates}
    parameters = "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())
    config = """
        max_batch_size: 0
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ -1 ] } ]
    """
    write_python_model(repo, name, config + parameters, GATED)


def identity_repo(repo: pathlib.Path, names=NAMES, blob: int = 0) -> None:
    for name in names:
        folder = write_model(repo, name, identity_config(name, "TYPE_INT32"))
        if blob:
            (folder / "1" / "weights.bin").write_bytes(b"\0" * blob)


def infer(client: grpcclient.InferenceServerClient, name: str, value: int, input_name: str = "INPUT0",
          output_name: str = "OUTPUT0") -> None:
    data = np.array([value, value + 1], dtype=np.int32)
    tensor = grpcclient.InferInput(input_name, [2], "INT32")
    tensor.set_data_from_numpy(data)
    result = client.infer(name, [tensor])
    assert result.as_numpy(output_name).tolist() == data.tolist()


def metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as answer:
        return answer.read().decode("utf-8")


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name}{labels} not in the metrics:\n{text}"
    return float(found.group(1))


def index_states(client: grpcclient.InferenceServerClient) -> dict[str, str]:
    return {m.name: m.state for m in client.get_model_repository_index().models}


def loaded(client: grpcclient.InferenceServerClient) -> set[str]:
    return {name for name, state in index_states(client).items() if state == "READY"}


def serve(start_tritium, repo: pathlib.Path, *args: str):
    server = start_tritium("--model-repository", str(repo), "--model-control-mode", "on-demand",
                           "--python-interpreter", PYTHON, *args)
    return server, grpcclient.InferenceServerClient(server.url)


def test_round_robin_over_more_models_than_the_limit_has_no_errors(start_tritium, model_repo):
    identity_repo(model_repo)
    server, client = serve(start_tritium, model_repo, "--max-loaded-models", "2", "--pin-model", "m0")
    # Every model is listed; only the pinned one is loaded.
    states = index_states(client)
    assert sorted(states) == NAMES
    assert states["m0"] == "READY"
    assert all(states[name] == "" for name in NAMES[1:]), states
    text = metrics(server)
    assert metric(text, "tritium_models_loaded") == 1
    assert metric(text, "tritium_model_loads_total") == 1

    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def traffic(worker: int) -> None:
        own = grpcclient.InferenceServerClient(server.url)
        for turn in range(24):
            name = NAMES[(worker + turn) % len(NAMES)]
            try:
                infer(own, name, turn)
                with lock:
                    done[0] += 1
            except Exception as error:  # every failure is collected and reported below
                with lock:
                    errors.append(f"{name}: {error}")
        own.close()

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [], errors[:5]
    assert done[0] == 4 * 24

    # Idle again: the pinned model and at most one other are loaded (a model loaded past the limit while all the
    # others were busy goes when the last request on them ends).
    assert wait_for(lambda: len(loaded(client)) <= 2), loaded(client)
    now = loaded(client)
    assert "m0" in now, now
    text = metrics(server)
    assert metric(text, "tritium_model_unloads_total", '{reason="evicted"}') > 0
    assert metric(text, "tritium_model_unloads_total", '{reason="explicit"}') == 0
    assert metric(text, "tritium_models_loaded") == len(now)
    # Loads = evictions + the loaded models (the pinned one counts once, at start).
    assert metric(text, "tritium_model_loads_total") == metric(text, "tritium_model_unloads_total",
                                                               '{reason="evicted"}') + len(now)
    # Evicted models answer in the index as unloaded, and load again at their next request.
    states = index_states(client)
    assert any(state == "UNAVAILABLE" for state in states.values()), states
    evicted = next(name for name, state in states.items() if state == "UNAVAILABLE")
    infer(client, evicted, 7)
    assert evicted in loaded(client)
    client.close()


@pytest.mark.python_backend
def test_a_model_with_a_running_request_is_never_unloaded(start_tritium, model_repo, tmp_path):
    identity_repo(model_repo, NAMES[:4])
    started, release = tmp_path / "started", tmp_path / "release"
    gated_model(model_repo, "slow", tmp_path, STARTED=started, RELEASE=release)
    server, client = serve(start_tritium, model_repo, "--max-loaded-models", "2")
    answer: dict = {}

    def slow_request() -> None:
        own = grpcclient.InferenceServerClient(server.url)
        try:
            infer(own, "slow", 41, "IN", "OUT")
            answer["ok"] = True
        except Exception as error:  # reported by the assertion below
            answer["error"] = error
        own.close()

    thread = threading.Thread(target=slow_request)
    thread.start()
    assert wait_for(started.exists, timeout=120), "the slow model never started executing"
    # Four other models load one after another while 'slow' runs: each load evicts, never 'slow'.
    for turn, name in enumerate(NAMES[:4]):
        infer(client, name, turn)
        assert "slow" in loaded(client)
    text = metrics(server)
    assert metric(text, "tritium_model_unloads_total", '{reason="evicted"}') >= 3
    release.touch()
    thread.join(timeout=120)
    assert answer.get("ok"), answer
    # Idle now, it is the least recently used: the next load evicts it.
    infer(client, NAMES[0], 1)
    infer(client, NAMES[1], 1)
    assert "slow" not in loaded(client)
    client.close()


@pytest.mark.python_backend
def test_concurrent_first_requests_share_one_load(start_tritium, model_repo, tmp_path):
    gate = tmp_path / "init-gate"
    gated_model(model_repo, "gated", tmp_path, INIT_GATE=gate)
    server, client = serve(start_tritium, model_repo)
    results: list = []
    calling = threading.Semaphore(0)

    def first_request(value: int) -> None:
        own = grpcclient.InferenceServerClient(server.url)
        calling.release()
        try:
            infer(own, "gated", value, "IN", "OUT")
            results.append("ok")
        except Exception as error:  # reported by the assertion below
            results.append(error)
        own.close()

    threads = [threading.Thread(target=first_request, args=(v,)) for v in range(8)]
    threads[0].start()
    loads = tmp_path / "gated.loads"
    # The first request's load is under way (initialize waits for the gate); the others arrive during it.
    assert wait_for(loads.exists, timeout=120), "the load never started"
    for thread in threads[1:]:
        thread.start()
    for _ in threads:
        calling.acquire(timeout=60)
    gate.touch()
    for thread in threads:
        thread.join(timeout=120)
    assert results == ["ok"] * 8, results
    assert loads.read_text().count("load") == 1
    assert metric(metrics(server), "tritium_model_loads_total") == 1
    client.close()


@pytest.mark.python_backend
def test_a_load_past_the_timeout_is_unavailable_and_goes_on(start_tritium, model_repo, tmp_path):
    gate = tmp_path / "init-gate"
    gated_model(model_repo, "gated", tmp_path, INIT_GATE=gate)
    server, client = serve(start_tritium, model_repo, "--model-load-timeout-secs", "1")
    expect_error("UNAVAILABLE", "the load did not finish within 1 s (--model-load-timeout-secs)",
                 infer, client, "gated", 1, "IN", "OUT")
    gate.touch()
    assert wait_for(lambda: "gated" in loaded(client), timeout=120)
    infer(client, "gated", 2, "IN", "OUT")
    assert (tmp_path / "gated.loads").read_text().count("load") == 1
    client.close()


def test_metadata_config_and_readiness_load_the_model(start_tritium, model_repo):
    identity_repo(model_repo, NAMES[:3])
    server, client = serve(start_tritium, model_repo, "--max-loaded-models", "2")
    assert loaded(client) == set()
    assert client.get_model_metadata("m0").name == "m0"
    assert client.get_model_config("m1").config.name == "m1"
    assert loaded(client) == {"m0", "m1"}
    # Over HTTP too; readiness loads it (and evicts the least recently used, m0).
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert http.is_model_ready("m2")
    assert loaded(client) == {"m1", "m2"}
    assert http.get_model_metadata("m0")["name"] == "m0"
    assert loaded(client) == {"m2", "m0"}
    # Unknown models are as unknown as ever; statistics of an unloaded model do not load it.
    expect_error("NOT_FOUND", "Request for unknown model: 'nope' is not found", infer, client, "nope", 1)
    assert not http.is_model_ready("nope")
    assert metric(metrics(server), "tritium_model_loads_total") == 4
    http.close()
    client.close()


def test_explicit_load_and_unload_keep_working(start_tritium, model_repo):
    identity_repo(model_repo, NAMES[:3])
    server, client = serve(start_tritium, model_repo, "--max-loaded-models", "2")
    client.load_model("m0")
    client.load_model("m1")
    client.load_model("m2")
    # The explicit load of m2 evicted the least recently used, m0.
    assert loaded(client) == {"m1", "m2"}
    client.unload_model("m1")
    assert loaded(client) == {"m2"}
    text = metrics(server)
    assert metric(text, "tritium_model_unloads_total", '{reason="explicit"}') == 1
    assert metric(text, "tritium_model_unloads_total", '{reason="evicted"}') == 1
    # An explicitly unloaded model loads again at its next request.
    infer(client, "m1", 3)
    assert loaded(client) == {"m1", "m2"}
    client.close()


def test_the_memory_budget_counts_model_files(start_tritium, model_repo):
    identity_repo(model_repo, NAMES[:3], blob=10_000)
    big = write_model(model_repo, "big", identity_config("big", "TYPE_INT32"))
    (big / "1" / "weights.bin").write_bytes(b"\0" * 50_000)
    server, client = serve(start_tritium, model_repo, "--model-memory-budget", "25000")
    for turn, name in enumerate(NAMES[:3]):
        infer(client, name, turn)
    # Two models of about 10 kB fit in 25 kB; the third evicted the first.
    assert loaded(client) == {"m1", "m2"}
    expect_error("UNAVAILABLE", "more than --model-memory-budget (25000 bytes)", infer, client, "big", 1)
    # The failure is reported, and not retried by every request; the others are unaffected.
    expect_error("UNAVAILABLE", "load it explicitly to try again", infer, client, "big", 1)
    assert index_states(client)["big"] == "UNAVAILABLE"
    # An explicit load of it is refused alike, and leaves the loaded models be.
    expect_error("INTERNAL", "more than --model-memory-budget (25000 bytes)", client.load_model, "big")
    assert loaded(client) == {"m1", "m2"}
    infer(client, "m1", 5)
    client.close()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--max-loaded-models", "0"), "--max-loaded-models must be at least 1"),
        (("--model-memory-budget", "0"), "--model-memory-budget must be at least 1 byte"),
        (("--pin-model", "ghost"), "no model of that name in the model repository"),
        (("--max-loaded-models", "1", "--pin-model", "m0", "--pin-model", "m1"),
         "2 models pinned with --pin-model, more than --max-loaded-models 1"),
    ],
)
def test_bad_flags_are_refused_at_start(model_repo, args, words):
    identity_repo(model_repo, NAMES[:2])
    failure = start_failure("--model-repository", str(model_repo), "--model-control-mode", "on-demand", *args)
    assert words in failure, failure


def test_on_demand_flags_need_on_demand_mode(model_repo):
    identity_repo(model_repo, NAMES[:2])
    failure = start_failure("--model-repository", str(model_repo), "--max-loaded-models", "2")
    assert "need --model-control-mode on-demand" in failure, failure


@pytest.mark.perf_analyzer
def test_perf_analyzer_loads_the_model_it_measures(start_tritium, model_repo):
    from perf_analyzer_helpers import perf_analyzer

    identity_repo(model_repo, NAMES[:3])
    server, client = serve(start_tritium, model_repo, "--max-loaded-models", "2")
    infer(client, "m0", 1)
    infer(client, "m1", 1)
    # perf_analyzer asks for m2's metadata and config (which load it, evicting m0), then infers.
    perf_analyzer(server.url, "-m", "m2", "--shape", "INPUT0:16", "--async", "--concurrency-range", "4", request_count=100)
    assert loaded(client) == {"m1", "m2"}
    perf_analyzer(server.http_url.removeprefix("http://"), "-m", "m0", "--shape", "INPUT0:16", request_count=100,
                  protocol="http")
    assert loaded(client) == {"m2", "m0"}
    client.close()


def test_the_openai_doors_load_on_demand_and_a_stream_holds_its_model(start_tritium):
    """The OpenAI routes load a language model on first use and mark it used, as the KServe ones do, and a
    streamed generation keeps its model loaded until its last token: another model's load past
    --max-loaded-models waits for nothing and evicts nothing in use (issue 59)."""
    import openai

    server = start_tritium("--engine", "mock", "--model-name", "a", "--model-name", "b", "--mock-decode-ms-per-step", "20",
                           "--model-control-mode", "on-demand", "--max-loaded-models", "1")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    assert loaded(client) == set()
    openai_client = openai.OpenAI(base_url=server.http_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    stream = openai_client.completions.create(model="a", prompt="hello", max_tokens=40, stream=True, temperature=0)
    chunks = [next(stream)]
    assert loaded(client) == {"a"}
    # b loads past the limit while a is busy; what goes when b's request ends is b, never a under its stream.
    assert openai_client.chat.completions.create(model="b", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert "a" in loaded(client)
    chunks.extend(stream)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    # Once a's stream is over, the next use of b evicts a.
    openai_client.completions.create(model="b", prompt="hello", max_tokens=2)
    assert wait_for(lambda: loaded(client) == {"b"}, timeout=30), loaded(client)


def test_a_kserve_generate_stream_holds_its_model_to_the_end(start_tritium):
    """KServe's `generate_stream` (SSE) holds its language model for the stream's whole life too."""
    import json

    import requests

    server = start_tritium("--engine", "mock", "--model-name", "a", "--model-name", "b", "--mock-decode-ms-per-step", "20",
                           "--model-control-mode", "on-demand", "--max-loaded-models", "1")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    body = {"text_input": "hello", "parameters": {"max_tokens": 40, "temperature": 0}}
    with requests.post(server.http_url + "/v2/models/a/generate_stream", json=body, stream=True, timeout=60) as answer:
        lines = answer.iter_lines()
        events = [json.loads(next(line for line in lines if line.startswith(b"data:"))[5:])]
        generated = requests.post(server.http_url + "/v2/models/b/generate", json={**body, "parameters": {"max_tokens": 2}}, timeout=60)
        assert generated.status_code == 200, generated.text
        assert "a" in loaded(client)
        events += [json.loads(line[5:]) for line in lines if line.startswith(b"data:")]
    assert "error" not in events[-1] and events[-1].get("finish_reason") == "length", events[-1]
