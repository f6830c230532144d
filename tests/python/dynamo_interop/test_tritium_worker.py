"""The reverse (issue 57): `tritium worker --worker-protocol dynamo` registers in Dynamo's layout
(records, a card whose tokenizer files carry real checksums, a TCP request listener, call-home
response streams), and Dynamo 1.6.1's own, unmodified frontend serves it; Tritium's frontend,
reading the same records, answers the same."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from deployment import assert_same_answers, deployment, http, models_at, tiny_model, wait_until  # noqa: F401 - deployment, tiny_model: fixtures
from cluster import metric
from helpers import tritium_bin

pytestmark = pytest.mark.dynamo
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
    (["--discovery-backend", "mem"], "--discovery-backend file or etcd"),
    (["--discovery-backend", "file", "--request-plane", "nats", "--nats-url", "nats://127.0.0.1:1"], "--request-plane tcp"),
])  # fmt: skip
def test_combinations_it_cannot_serve_are_refused_by_name(args, named):
    binary = str(tritium_bin())
    done = subprocess.run([binary, "worker", "--worker-protocol", "dynamo", "--engine", "mock", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and named in done.stderr, done.stderr
