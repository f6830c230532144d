"""Disaggregated Dynamo 1.6.1 workers behind Tritium's frontend, compared with Dynamo's frontend on
the same workers: a decode worker (`worker_type` decode, needing a prefill worker) is not served
until its prefill worker is up, as Dynamo's frontend holds it; then every prompt goes to the prefill
worker first (one token, its instance id in `routing`), and its handoff (`prefill_result`) to the
decode worker, which answers only requests that carry the handoff for their prompt. A prefill worker with a
bootstrap rendezvous (SGLang's kind) gets its request beside the decode worker's instead."""

from __future__ import annotations

import pytest

from deployment import Deployment, assert_same_answers, free_port, http, models_at, stream_killing_its_worker, streamed, tiny_model, wait_until  # noqa: F401 - tiny_model: fixture

pytestmark = pytest.mark.dynamo
START = 90


@pytest.fixture(scope="module")
def disaggregated(tmp_path_factory, tiny_model):
    deployment = Deployment(tmp_path_factory.mktemp("dynamo-disagg"), tiny_model, namespace="disagg")
    deployment.echo("split", "--role", "decode")
    tritium = deployment.tritium_frontend()
    dynamo = deployment.dynamo_frontend()
    yield deployment, tritium, dynamo
    deployment.stop()


def test_a_decode_worker_waits_for_its_prefill_worker_then_both_serve_alike(disaggregated):
    deployment, tritium, dynamo = disaggregated
    wait_until(lambda: "waits for the workers it needs" in tritium.stderr(), START, "the decode worker held back")
    for base in (tritium.http_url, dynamo):
        assert "split" not in models_at(base), f"{base} serves a decode worker with no prefill worker"
    deployment.echo("split", "--role", "prefill")
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: "split" in models_at(base), START, f"split listed at {base}")
    assert_same_answers(tritium.http_url, dynamo, "/v1/completions", {"model": "split", "prompt": "hello there world", "max_tokens": 4})
    assert_same_answers(tritium.http_url, dynamo, "/v1/chat/completions", {"model": "split", "messages": [{"role": "user", "content": "hi"}]})
    # A longer prompt, as a real client's: the handoff carries its length, which the decode worker checks.
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "split", "prompt": "word " * 200, "max_tokens": 3})
    assert status == 200 and answer["usage"]["completion_tokens"] == 3, answer


def test_the_mockers_disaggregated_pair_generates_what_was_asked(disaggregated):
    """`dynamo.mocker --disaggregation-mode decode|prefill`: counts only (its text is random)."""
    deployment, tritium, dynamo = disaggregated
    deployment.mocker("mocksplit", "--disaggregation-mode", "decode")
    deployment.mocker("mocksplit", "--disaggregation-mode", "prefill")
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: "mocksplit" in models_at(base), START, f"mocksplit listed at {base}")
    for base in (tritium.http_url, dynamo):
        status, answer = http("POST", base + "/v1/completions", {"model": "mocksplit", "prompt": "count these words " * 20, "max_tokens": 7})
        assert status == 200 and answer["usage"]["completion_tokens"] == 7, (base, answer)


def test_a_decode_stream_whose_worker_dies_continues_from_a_new_prefill(disaggregated):
    """Migration on disaggregated Dynamo workers: the rest of the sequence goes to the other decode worker with
    a fresh prefill handoff for the prompt so far, as Dynamo's frontend re-enters its prefill step (the echo
    decode worker fails a request without the handoff for its prompt, as SGLang's fails one without its
    bootstrap_info)."""
    deployment, tritium, _ = disaggregated
    workers = [deployment.echo("moving", "--role", "decode", "--delay", "0.1") for _ in range(2)]
    deployment.echo("moving", "--role", "prefill")
    wait_until(lambda: "moving" in models_at(tritium.http_url), START, "the moving pair listed")
    wait_until(lambda: tritium.stderr().count('models=["moving"]') >= 3, START, "all three moving workers joined")
    body = {"model": "moving", "prompt": "y" * 60, "max_tokens": 30}
    finish, usage = stream_killing_its_worker(tritium.http_url, body, workers)
    assert finish == "length" and usage["completion_tokens"] == 30, (finish, usage, tritium.stderr()[-2000:])
    assert "continuing the stream on another worker" in tritium.stderr()


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_a_prefill_worker_with_a_bootstrap_rendezvous_serves_with_its_decode_worker(disaggregated, engine):
    """SGLang's kind (here the mocker's with `--bootstrap-ports`, with SGLang's handoff order, where the
    decode side registers first, and vLLM's, where the prefill side does): the prefill and decode requests go
    out together under one request id with one `bootstrap_info` (room and handoff id), and the decode worker
    takes the blocks over from the prefill worker's rendezvous. The mockers fail a request whose handoff does
    not complete, so an answer of the asked length is the handoff done."""
    deployment, tritium, dynamo = disaggregated
    model = f"boot-{engine}"
    deployment.mocker(model, "--engine-type", engine, "--disaggregation-mode", "decode")
    deployment.mocker(model, "--engine-type", engine, "--disaggregation-mode", "prefill", "--bootstrap-ports", str(free_port()))
    for base in (tritium.http_url, dynamo):
        wait_until(lambda: model in models_at(base), START, f"{model} listed at {base}")
    for base in (tritium.http_url, dynamo):
        for round in range(3):
            body = {"model": model, "prompt": f"round {round} " + "count these words " * 30, "max_tokens": 6}
            status, answer = http("POST", base + "/v1/completions", body)
            assert status == 200 and answer["usage"]["completion_tokens"] == 6, (base, answer)
        chat = {"model": model, "messages": [{"role": "user", "content": "hello " * 40}], "max_tokens": 5}
        _, finish, _ = streamed(base, "/v1/chat/completions", chat)
        assert finish == "length", (base, finish)
    assert "a bootstrapped prefill" not in tritium.stderr(), tritium.stderr()[-3000:]
