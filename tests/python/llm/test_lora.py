"""LoRA adapters (issue 43, item 5) on the real SmolLM2 GGUF through the real clients: a GGUF adapter as llama.cpp
writes them, served with `--lora`, answers greedy as llama-cpp-python does with the same adapter (recorded in
fixtures/lora/llamacpp.json by fixtures/lora/record.py); it is a model in /v1/models with its base as `parent`,
chosen by name on the OpenAI routes and by `lora_name` over KServe (tritonclient); vLLM's load and unload routes
load a PEFT folder at run time from inside `--lora-dir` behind the restricted-API header; and every refusal
(a path outside the folder, a rank over `--max-lora-rank`, another architecture, a duplicate, an unknown adapter,
no header) names its cause and changes nothing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from conftest import model_paths
from helpers import TESTS, finish_server, start_server
from lora_files import write_gguf_adapter, write_peft

pytestmark = pytest.mark.llm  # every test serves SmolLM2 (model_paths())

BASE = "smollm2"
FIXTURE = json.loads((TESTS / "fixtures" / "lora" / "llamacpp.json").read_text())
ADMIN = {"x-lora-admin": "let-me-in"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    gguf_adapter = write_gguf_adapter(folder / "recorded.gguf", FIXTURE["seed"], scale=FIXTURE["scale"])
    write_peft(folder / "peft", seed=44)
    write_gguf_adapter(folder / "rank32.gguf", seed=45, rank=32)
    write_gguf_adapter(folder / "qwen.gguf", seed=46, architecture="qwen2")
    gguf, _ = model_paths()
    server = start_server("--model-path", str(gguf), "--model-name", BASE, "--lora", f"recorded={gguf_adapter}",
                          "--lora-dir", str(folder), "--http-restricted-api", "lora:x-lora-admin=let-me-in",
                          timeout=300)  # fmt: skip
    yield server, folder
    finish_server(server)


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=120)


def post(server, path: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(server.http_url + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json", **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def greedy_ids(server, model: str, prompt: str) -> list[int]:
    answer = client(server).completions.create(model=model, prompt=prompt, max_tokens=FIXTURE["tokens"], temperature=0,
                                               extra_body={"ignore_eos": True})  # fmt: skip
    status, body = post(server, "/tokenize", {"model": BASE, "prompt": answer.choices[0].text, "add_special_tokens": False})
    assert status == 200, body
    return json.loads(body)["tokens"]


# A step where llama.cpp's top two tokens are closer than this may go either way here: the two engines' base
# logits differ by about 0.1 nats (Tritium multiplies this GGUF's Q4_1 matrices as Q8_0, llama.cpp as they are).
NEAR_TIE = 0.3


def test_a_gguf_adapter_answers_as_llama_cpp_with_it(served):
    """Tokens agree with llama.cpp's up to its first near-tie, with and without the adapter."""
    server, _ = served
    compared = {"base": 0, "lora": 0}
    adapter_mattered = False
    for prompt, expected in FIXTURE["answers"].items():
        for label, model in (("base", BASE), ("lora", "recorded")):
            want, margins = expected[label]["tokens"], expected[label]["margins"]
            decided = next((i for i, margin in enumerate(margins) if margin < NEAR_TIE), len(margins))
            got = greedy_ids(server, model, prompt)
            assert got[:decided] == want[:decided], f"{label} {prompt!r}: {got} against llama.cpp's {want} ({margins})"
            compared[label] += decided
        base, lora = expected["base"]["tokens"], expected["lora"]["tokens"]
        adapter_mattered |= base[0] != lora[0] and expected["lora"]["margins"][0] >= NEAR_TIE
    assert compared["base"] >= 15 and compared["lora"] >= 15, compared
    assert adapter_mattered, "some first token is the adapter's doing, decided by a clear margin"


def test_an_adapter_is_a_model_with_its_base_as_parent_and_kserve_picks_it_by_lora_name(served):
    server, folder = served
    models = {m.id: m for m in client(server).models.list().data}
    assert models["recorded"].model_extra["parent"] == BASE
    assert models["recorded"].model_extra["root"] == str(folder / "recorded.gguf")
    assert "parent" not in models[BASE].model_extra
    prompt = "Once upon a time, there was a"
    openai_text = client(server).completions.create(model="recorded", prompt=prompt, max_tokens=8, temperature=0,
                                                    extra_body={"ignore_eos": True}).choices[0].text  # fmt: skip
    triton = grpcclient.InferenceServerClient(server.url)
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    params = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
    adapted = triton.infer(BASE, [text], parameters={**params, "lora_name": "recorded"}).as_numpy("text_output")
    plain = triton.infer(BASE, [text], parameters=params).as_numpy("text_output")
    assert adapted[0].decode() == openai_text
    assert plain[0].decode() != openai_text
    with pytest.raises(grpcclient.InferenceServerException, match="has no LoRA adapter 'nope'"):
        triton.infer(BASE, [text], parameters={**params, "lora_name": "nope"})
    chat = client(server).chat.completions.create(model="recorded", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.model == "recorded" and chat.choices[0].message.content is not None
    triton.close()


def test_kserve_serves_a_local_adapter_by_its_name(served):
    """Over KServe an adapter is a model of its own: ready, with its base's metadata and config under
    its name, and inference by name (gRPC, and HTTP's generate extension) answers as `lora_name` on the base,
    under the adapter's name. A `lora_name` naming another adapter is refused; an unknown name is
    Triton's unknown model."""
    server, _ = served
    import tritonclient.http as httpclient

    triton = grpcclient.InferenceServerClient(server.url)
    web = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    try:
        assert triton.is_model_ready("recorded") and web.is_model_ready("recorded")
        assert not triton.is_model_ready("nope")
        metadata, base_metadata = triton.get_model_metadata("recorded"), triton.get_model_metadata(BASE)
        assert metadata.name == "recorded" and list(metadata.versions) == list(base_metadata.versions)
        assert [i.name for i in metadata.inputs] == [i.name for i in base_metadata.inputs]
        assert web.get_model_metadata("recorded")["name"] == "recorded"
        assert triton.get_model_config("recorded").config.name == "recorded"
        assert triton.get_model_config("recorded").config.backend == triton.get_model_config(BASE).config.backend

        prompt = "Once upon a time, there was a"
        params = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        by_parameter = triton.infer(BASE, [text], parameters={**params, "lora_name": "recorded"}).as_numpy("text_output")[0]
        by_name = triton.infer("recorded", [text], parameters=params)
        assert by_name.get_response().model_name == "recorded"
        assert by_name.as_numpy("text_output")[0] == by_parameter
        assert triton.infer("recorded", [text], parameters={**params, "lora_name": "recorded"}).as_numpy("text_output")[0] == by_parameter

        # HTTP inference on a decoupled model is Triton's generate extension.
        status, body = post(server, "/v2/models/recorded/generate", {"text_input": prompt, **params})
        assert status == 200, body
        assert json.loads(body)["model_name"] == "recorded"
        assert json.loads(body)["text_output"] == by_parameter.decode()

        with pytest.raises(grpcclient.InferenceServerException, match="'lora_name' names adapter 'other'"):
            triton.infer("recorded", [text], parameters={**params, "lora_name": "other"})
        with pytest.raises(grpcclient.InferenceServerException, match="Request for unknown model: 'nope' is not found"):
            triton.infer("nope", [text], parameters=params)
    finally:
        triton.close()
        web.close()


def test_vllms_routes_load_and_unload_a_peft_folder_at_run_time(served):
    server, _ = served
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "peft", "lora_path": "peft"})[0] == 403, "no header"
    status, body = post(server, "/v1/load_lora_adapter", {"lora_name": "peft", "lora_path": "peft"}, ADMIN)
    assert (status, body) == (200, "Success: LoRA adapter 'peft' added successfully.")
    assert "peft" in {m.id for m in client(server).models.list().data}
    adapted = client(server).completions.create(model="peft", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert adapted.choices[0].text
    status, body = post(server, "/v1/load_lora_adapter", {"lora_name": "peft", "lora_path": "peft"}, ADMIN)
    assert status == 400 and "already been loaded" in json.loads(body)["error"]["message"]
    status, body = post(server, "/v1/unload_lora_adapter", {"lora_name": "peft"}, ADMIN)
    assert (status, body) == (200, "Success: LoRA adapter 'peft' removed successfully.")
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="peft", prompt="Hi", max_tokens=2)
    status, body = post(server, "/v1/unload_lora_adapter", {"lora_name": "peft"}, ADMIN)
    assert status == 404 and json.loads(body)["error"]["message"] == "The lora adapter 'peft' cannot be found."


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"lora_name": "x", "lora_path": "/etc"}, 400, "inside --lora-dir"),
        ({"lora_name": "x", "lora_path": "../"}, 400, "inside --lora-dir"),
        ({"lora_name": "x", "lora_path": "rank32.gguf"}, 400, "LoRA rank 32 is greater than max_lora_rank 16"),
        ({"lora_name": "x", "lora_path": "qwen.gguf"}, 400, "the adapter is for 'qwen2' models"),
        ({"lora_name": "recorded", "lora_path": "peft"}, 400, "already been loaded"),
        ({"lora_name": BASE, "lora_path": "peft"}, 400, "names a served model"),
        ({"lora_name": "x", "lora_path": "peft", "base_model_name": "gpt"}, 404, "does not exist"),
        ({"lora_name": "", "lora_path": ""}, 400, "must be provided"),
    ],
)
def test_bad_loads_are_refused_and_change_nothing(served, body, status, fragment):
    server, _ = served
    before = [m.id for m in client(server).models.list().data]
    got, text = post(server, "/v1/load_lora_adapter", body, ADMIN)
    assert got == status and fragment in json.loads(text)["error"]["message"], text
    assert [m.id for m in client(server).models.list().data] == before


@pytest.mark.slow  # two SmolLM2 worker processes and a frontend
def test_a_workers_adapters_are_models_routed_only_to_the_workers_that_hold_them(tmp_path):
    """Two `tritium worker`s of SmolLM2 behind a frontend (file discovery), one started with the adapter: the adapter
    is a model of the frontend served by that worker alone (the base model by both), every request for it runs
    there, and it answers as llama.cpp does with the adapter. vLLM's load route on the frontend loads a PEFT folder
    on both workers (each from its own --lora-dir), so both answer for it, alike; one a worker cannot find is
    refused naming that worker and unloaded from the other ('with' comes first); unloading removes it from both."""
    from helpers import start_worker

    gguf, _ = model_paths()
    adapter = write_gguf_adapter(tmp_path / "recorded.gguf", FIXTURE["seed"], scale=FIXTURE["scale"])
    common = ["--discovery", "file", "--discovery-dir", str(tmp_path / "discovery"), "--lease-ttl-secs", "5"]
    model = ["--model-path", str(gguf), "--model-name", BASE]
    processes = [start_server(*common)]
    try:
        # Each worker loads adapters at run time from a folder of its own; `only` is in one of them.
        dirs = {"with": tmp_path / "dir-with", "without": tmp_path / "dir-without"}
        for folder in dirs.values():
            write_peft(folder / "peft", seed=44)
        write_peft(dirs["with"] / "only", seed=48)
        processes.append(start_worker(*common, *model, "--worker-id", "with", "--lora", f"recorded={adapter}",
                                      "--lora-dir", str(dirs["with"]), timeout=300))  # fmt: skip
        processes.append(start_worker(*common, *model, "--worker-id", "without", "--lora-dir", str(dirs["without"]), timeout=300))
        frontend = processes[0]

        def ready() -> bool:
            return "recorded" in {m.id for m in client(frontend).models.list().data}

        import time

        deadline = time.monotonic() + 60
        while not ready():
            assert time.monotonic() < deadline, "the adapter never reached the frontend"
            time.sleep(0.2)
        prompt = "Once upon a time, there was a"
        expected = FIXTURE["answers"][prompt]["lora"]
        decided = next((i for i, m in enumerate(expected["margins"]) if m < NEAR_TIE), len(expected["margins"]))
        assert decided > 0 and expected["tokens"][0] != FIXTURE["answers"][prompt]["base"]["tokens"][0]
        workers = {"recorded": set(), BASE: set()}
        for _ in range(4):
            for name in workers:
                answer = client(frontend).completions.create(model=name, prompt=prompt, max_tokens=FIXTURE["tokens"],
                                                             temperature=0, extra_body={"ignore_eos": True,
                                                             "nvext": {"extra_fields": ["worker_id"]}})  # fmt: skip
                workers[name].add(answer.model_extra["nvext"]["worker_id"]["decode_worker_id"])
                if name == "recorded":
                    status, body = post(frontend, "/tokenize", {"model": BASE, "prompt": answer.choices[0].text,
                                                                 "add_special_tokens": False})  # fmt: skip
                    assert json.loads(body)["tokens"][:decided] == expected["tokens"][:decided], body
        assert workers["recorded"] == {"with"}, workers
        with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
            lines = response.read().decode().splitlines()
        serving = {m: [l for l in lines if l.startswith("tritium_router_workers{") and f'model="{m}"' in l] for m in workers}
        assert serving["recorded"][0].endswith(" 1") and serving[BASE][0].endswith(" 2"), serving
        listed_models = {m.id: m for m in client(frontend).models.list().data}
        assert listed_models["recorded"].model_extra["parent"] == BASE, "the worker's adapter names its base"

        # Loaded at run time through the frontend: on every worker serving the base, from inside each one's --lora-dir.
        status, body = post(frontend, "/v1/load_lora_adapter", {"lora_name": "peft", "lora_path": "peft"})
        assert status == 200, body
        assert body == "Success: LoRA adapter 'peft' added successfully."
        assert "peft" in {m.id for m in client(frontend).models.list().data}, "listed when the load returns"
        def blocks_cached() -> float:
            with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
                text = response.read().decode()
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("tritium_router_prompt_blocks_cached"))

        long_prompt = "Once upon a time, there was a little fox who lived at the edge of a quiet wood. " * 6
        cached = blocks_cached()
        answers = {}
        for _ in range(4):
            answer = client(frontend).completions.create(model="peft", prompt=long_prompt, max_tokens=6, temperature=0,
                                                         extra_body={"nvext": {"extra_fields": ["worker_id"]}})  # fmt: skip
            answers[answer.model_extra["nvext"]["worker_id"]["decode_worker_id"]] = answer.choices[0].text
        assert set(answers) == {"with", "without"} and len(set(answers.values())) == 1, answers
        # The workers hash the adapter's blocks from its name and files, and the router hashes its prompts alike: a
        # worker that already ran the prompt is credited with its blocks (under per-load seeds it never was).
        assert blocks_cached() > cached, "the adapter's prompt blocks were found in the workers' KV events"
        # A worker that cannot load it refuses; the one that had loaded it unloads it again.
        status, body = post(frontend, "/v1/load_lora_adapter", {"lora_name": "only", "lora_path": "only"})
        assert status == 400 and "worker 'without'" in body and "inside --lora-dir" in body, (status, body)
        listed = lambda: {m.id for m in client(frontend).models.list().data}  # noqa: E731
        deadline = time.monotonic() + 30
        while "only" in listed():
            assert time.monotonic() < deadline, "the refused adapter stayed on a worker"
            time.sleep(0.2)
        status, body = post(frontend, "/v1/unload_lora_adapter", {"lora_name": "peft"})
        assert (status, body) == (200, "Success: LoRA adapter 'peft' removed successfully.")
        assert "peft" not in listed()
        with pytest.raises(openai.NotFoundError):
            client(frontend).completions.create(model="peft", prompt="Hi", max_tokens=2)
        assert post(frontend, "/v1/unload_lora_adapter", {"lora_name": "peft"})[0] == 404
    finally:
        for process in reversed(processes):
            finish_server(process)


def test_the_adapter_bounds_are_the_flags(tmp_path):
    """`--max-lora-rank` and `--max-loras` bound what `--lora` loads: over either, the model does not load (the
    server comes up without it and says why)."""
    gguf, _ = model_paths()
    rank16 = write_gguf_adapter(tmp_path / "rank16.gguf", seed=47, rank=16)
    base = ["--model-path", str(gguf), "--model-name", BASE]
    for flags, reason in [
        (["--lora", f"a={rank16}", "--max-lora-rank", "8"], "LoRA rank 16 is greater than max_lora_rank 8"),
        (["--lora", f"a={rank16}", "--lora", f"b={rank16}", "--max-loras", "1"], "holds its limit of 1 LoRA adapters"),
    ]:
        server = start_server(*base, *flags, timeout=300)
        try:
            assert [m.id for m in client(server).models.list().data] == []
            assert reason in server.stderr(), server.stderr()[-2000:]
        finally:
            finish_server(server)
    server = start_server(*base, "--lora", f"a={rank16}", "--max-lora-rank", "16", timeout=300)
    try:
        assert {m.id for m in client(server).models.list().data} == {BASE, "a"}
    finally:
        finish_server(server)


def test_an_adapters_answers_are_the_same_with_speculation(served):
    """LoRA × speculative decoding: with prompt-lookup speculation the adapter's answers (greedy and seeded) are
    the adapter's without it, the proposals being checked by the model with the adapter's deltas; and some are kept."""
    plain, folder = served
    gguf, _ = model_paths()
    adapter = write_gguf_adapter(folder / "speculated.gguf", FIXTURE["seed"], scale=FIXTURE["scale"])
    speculating = start_server("--model-path", str(gguf), "--model-name", BASE, "--lora", f"recorded={adapter}",
                               "--speculative", "ngram", timeout=300)  # fmt: skip
    try:
        prompts = ["1, 2, 3, 1, 2, 3, 1, 2,", "def add(a, b):\n    return a + b\n\ndef add(a, b):\n"]

        def answers(server) -> list[str]:
            out = []
            for prompt in prompts:
                for extra in ({"temperature": 0}, {"temperature": 0.8, "seed": 5}):
                    answer = client(server).completions.create(model="recorded", prompt=prompt, max_tokens=20,
                                                               extra_body={"ignore_eos": True}, **extra)  # fmt: skip
                    out.append(answer.choices[0].text)
            return out

        assert answers(speculating) == answers(plain)
        with urllib.request.urlopen(speculating.http_url + "/metrics", timeout=30) as response:
            lines = response.read().decode().splitlines()
        kept = sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("tritium_llm_spec_decode_num_accepted_tokens_total{"))
        assert kept > 0, "some proposals were kept"
    finally:
        finish_server(speculating)
