"""The NATS request plane (Dynamo's `--request-plane nats`): workers reached through subjects on a
real nats-server instead of their TCP ports, with requests, streams and migration as on TCP."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from cluster import listed_models, metric, nats_monitor, scrape, start_nats, wait_until, workers_serving
from dynamo_cluster import NVEXT_WORKER, FileCluster, worker_of
from helpers import needs, start_server


@pytest.fixture
@needs("nats")
def nats():
    nats = start_nats(monitor=True)
    yield nats
    nats.stop()


def request_plane_traffic(nats) -> dict[str, tuple[int, int]]:
    """Messages (in, out) of each request-plane connection on the server, by worker or frontend name."""
    with urllib.request.urlopen(f"{nats_monitor(nats)}/connz", timeout=10) as response:
        connections = json.loads(response.read())["connections"]
    prefix = "tritium-request-plane/"
    return {c["name"][len(prefix) :]: (c["in_msgs"], c["out_msgs"]) for c in connections if c.get("name", "").startswith(prefix)}


def test_workers_on_nats_serve_through_it_and_a_killed_ones_stream_moves_on(tmp_path, nats):
    plane = ["--request-plane", "nats", "--nats-url", nats.address]
    cluster = FileCluster(tmp_path / "discovery")
    try:
        first = cluster.worker(*plane, "--worker-id", "first")
        cluster.worker(*plane, "--worker-id", "second")
        for worker in cluster.started:
            assert " at=nats:tritium.tritium.workers." in worker.ready_line and "grpc=" not in worker.ready_line, worker.ready_line
        records = "".join(path.read_text() for path in (tmp_path / "discovery").rglob("*") if path.is_file())
        assert '"nats:tritium.tritium.workers.first.' in records, "discovery advertises the subject, not a port"
        frontend = cluster.frontend(*plane, "--router-mode", "direct")

        client = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="none")
        answer = client.completions.create(
            model="mock-llm", prompt="Over NATS.", max_tokens=5, extra_body=NVEXT_WORKER, extra_headers={"x-tritium-worker": "second"}
        )
        assert (worker_of(answer), answer.choices[0].finish_reason) == ("second", "length")
        traffic = request_plane_traffic(nats)
        assert traffic["second"][0] > 0 and traffic["second"][1] > 0, f"the call went over NATS: {traffic}"
        assert traffic["tritium"][1] > 0, f"the frontend's connection carried it: {traffic}"

        stream = client.completions.create(
            model="mock-llm", prompt="Tell me a story.", max_tokens=60, stream=True, extra_headers={"x-tritium-worker": "first"}
        )
        text, finish = "", None
        for index, chunk in enumerate(stream):
            if index == 10:
                first.proc.kill()
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        assert (len(text), finish) == (60, "length"), f"every token arrives once, before and after the worker died: {text!r}"
        assert metric(scrape(frontend), "tritium_router_migrations_total") >= 1
        first.proc.wait(timeout=10)
        cluster.started.remove(first)  # killed on purpose
    finally:
        cluster.stop()


def test_a_frontend_on_tcp_does_not_route_to_a_nats_worker_and_says_why(tmp_path, nats):
    cluster = FileCluster(tmp_path / "discovery")
    try:
        cluster.worker("--request-plane", "nats", "--nats-url", nats.address, "--worker-id", "on-nats")
        cluster.worker("--worker-id", "on-tcp")
        frontend = cluster.frontend(workers=1)
        assert workers_serving(frontend, "mock-llm") == 1
        wait_until(lambda: "start this process with --request-plane nats" in frontend.stderr_path.read_text(), 10, "the warning")
    finally:
        cluster.stop()


def test_request_plane_max_connections_refuses_a_frontend_past_the_bound(tmp_path, nats):
    """A worker holding one connection (--request-plane-max-connections 1) serves the first
    frontend; the second is refused, says why, and does not list the worker's model."""
    plane = ["--request-plane", "nats", "--nats-url", nats.address]
    cluster = FileCluster(tmp_path / "discovery")
    try:
        cluster.worker(*plane, "--worker-id", "only", "--request-plane-max-connections", "1")
        first = cluster.frontend(*plane, workers=1)
        client = openai.OpenAI(base_url=f"{first.http_url}/v1", api_key="none")
        assert client.completions.create(model="mock-llm", prompt="hi", max_tokens=2).choices[0].finish_reason == "length"
        second = start_server("--discovery-backend", "file", "--discovery-dir", str(tmp_path / "discovery"), *plane)
        cluster.started.append(second)
        refusal = "1 request-plane connections open (--request-plane-max-connections)"
        wait_until(lambda: refusal in second.stderr_path.read_text(), 20, "the refusal in the second frontend's log")
        assert "mock-llm" not in listed_models(second)
    finally:
        cluster.stop()
