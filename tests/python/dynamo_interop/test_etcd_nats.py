"""Dynamo's second setup (issue 57): etcd discovery, the NATS request plane and NATS events, every
option given as Dynamo's environment variables, to both frontends alike."""

from __future__ import annotations

import pytest

from cluster import start_etcd, start_nats
from deployment import Deployment, assert_same_answers, deployment, http, models_at, tiny_model, wait_until  # noqa: F401 - deployment, tiny_model: fixtures
from test_dynamo_workers import ECHO_REQUESTS

pytestmark = [pytest.mark.dynamo, pytest.mark.etcd, pytest.mark.nats]
START = 90


@pytest.fixture(scope="module")
def services():
    etcd, nats = start_etcd(), start_nats()
    yield etcd, nats
    nats.stop()
    etcd.stop()


@pytest.fixture(scope="module")
def etcd_frontends(tmp_path_factory, tiny_model, services):
    etcd, nats = services
    deployment = Deployment(tmp_path_factory.mktemp("dynamo-etcd"), tiny_model, "interop-etcd", etcd.address, nats.address)
    tritium, dynamo = deployment.echo_and_mock(START)
    yield deployment, tritium, dynamo
    deployment.stop()


@pytest.mark.parametrize("path,body", ECHO_REQUESTS[:3])
def test_answers_equal_dynamos_over_etcd_and_nats(etcd_frontends, path, body):
    _, tritium, dynamo = etcd_frontends
    assert_same_answers(tritium.http_url, dynamo, path, body)


def test_the_mocker_answers_over_nats_and_a_killed_worker_leaves_with_its_lease(etcd_frontends):
    deployment, tritium, _ = etcd_frontends
    status, answer = http("POST", tritium.http_url + "/v1/completions", {"model": "mock", "prompt": "n", "max_tokens": 6})
    assert status == 200 and answer["usage"]["completion_tokens"] == 6, answer
    doomed = deployment.echo("doomed")
    wait_until(lambda: "doomed" in models_at(tritium.http_url), START, "doomed listed")
    doomed.kill()
    # Its keys go with its etcd lease (Dynamo's 10 s TTL).
    wait_until(lambda: "doomed" not in models_at(tritium.http_url), 40, "doomed forgotten")
