"""Disaggregated Dynamo 1.6.1 workers behind Tritium's frontend, compared with Dynamo's frontend on
the same workers: a decode worker (`worker_type` decode, needing a prefill worker) is not served
until its prefill worker is up, as Dynamo's frontend holds it; then every prompt goes to the prefill
worker first (one token, its instance id in `routing`), and its handoff (`prefill_result`) to the
decode worker, which answers only requests that carry the handoff for their prompt."""

from __future__ import annotations

import pytest

from deployment import Deployment, assert_same_answers, free_port, http, models_at, tiny_model, wait_until  # noqa: F401 - tiny_model: fixture

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


def test_a_prefill_worker_with_a_bootstrap_rendezvous_is_refused_by_name(disaggregated):
    """SGLang's kind (here the mocker's with `--bootstrap-ports`): not driven yet, so neither it nor the decode
    worker needing it is served; the log says why."""
    deployment, tritium, _ = disaggregated
    deployment.mocker("bootsplit", "--disaggregation-mode", "decode")
    deployment.mocker("bootsplit", "--disaggregation-mode", "prefill", "--bootstrap-ports", str(free_port()))
    wait_until(lambda: "bootstrap rendezvous" in tritium.stderr(), START, "the bootstrap prefill worker refused")
    assert "bootsplit" not in models_at(tritium.http_url)
