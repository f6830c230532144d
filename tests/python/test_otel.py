"""OpenTelemetry export (issue 42): spans of sampled requests reach a real OTLP receiver started here
(otlp_receiver.py, on the published opentelemetry-proto messages), over OTLP/HTTP protobuf
(`--trace-config opentelemetry,url=...`, as Triton) and OTLP/gRPC (Dynamo's OTEL_* variables); a
caller's W3C traceparent is continued through gRPC metadata and HTTP headers, a malformed one
ignored; a dead or hanging collector costs spans (counted), never a request."""

import re
import urllib.request
import uuid

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import start_server, start_worker, wait_for
from otlp_receiver import HangingCollector, OtlpReceiver, closed_port

SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP's SpanKind numbers
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


def otel_args(url: str, *extra: str) -> list[str]:
    """Every request traced, exported within 50 ms."""
    args = ["--trace-config", "mode=opentelemetry", "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS"]
    args += ["--trace-config", f"opentelemetry,url={url}", "--trace-config", "opentelemetry,bsp_schedule_delay=50"]
    for e in extra:
        args += ["--trace-config", e]
    return args


def identity(client, module, data=None, headers=None):
    data = np.arange(4, dtype=np.float32) if data is None else data
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity", [tensor], headers=headers)
    assert np.array_equal(result.as_numpy("OUTPUT0"), data)


def roots(spans):
    return [s for s in spans if s["name"] == "InferRequest" and s["kind"] == SERVER]


def dropped(server) -> dict:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    found = dict(re.findall(r'^tritium_trace_spans_dropped_total\{reason="(\w+)"\} (\d+)', text, re.M))
    assert found, f"no tritium_trace_spans_dropped_total on the metrics port:\n{text[-2000:]}"
    return {k: int(v) for k, v in found.items()}


@pytest.fixture
def receiver():
    with OtlpReceiver() as rx:
        yield rx


def test_kserve_request_is_a_root_span_with_queue_and_compute_children(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url, "opentelemetry,resource=deployment.environment=test"))
    identity(grpcclient.InferenceServerClient(server.url), grpcclient)
    spans = receiver.wait_for(lambda s: roots(s) and any(x["name"] == "compute" for x in s))
    root = roots(spans)[0]
    assert root["transport"] == "http"
    assert root["resource"]["service.name"] == "triton-inference-server"
    assert root["resource"]["deployment.environment"] == "test"
    assert root["attributes"]["triton.model_name"] == "identity"
    assert root["attributes"]["triton.model_version"] == 1
    assert root["parent_span_id"] == ""
    names = root.event_names
    for stamp in ("GRPC_WAITREAD_END", "REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END", "REQUEST_END"):
        assert stamp in names, names
    assert [e[1] for e in root["events"] if not e[0].startswith("GRPC_")] == sorted(
        e[1] for e in root["events"] if not e[0].startswith("GRPC_")
    )
    children = {s["name"]: s for s in receiver.trace(root["trace_id"]) if s["parent_span_id"] == root["span_id"]}
    assert {"queue", "compute"} <= set(children), children
    for child in children.values():
        assert root["start"] <= child["start"] <= child["end"] <= root["end"]
        assert child["kind"] == INTERNAL
    assert children["queue"]["end"] <= children["compute"]["start"]


def test_a_callers_traceparent_is_continued_over_grpc_and_http(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url))
    http_trace = uuid.uuid4().hex
    identity(grpcclient.InferenceServerClient(server.url), grpcclient, headers={"traceparent": CALLER})
    identity(
        httpclient.InferenceServerClient(server.http_url.removeprefix("http://")),
        httpclient,
        headers={"traceparent": f"00-{http_trace}-{CALLER_SPAN}-01", "tracestate": "vendor=blue"},
    )
    spans = receiver.wait_for(lambda s: {CALLER_TRACE, http_trace} <= {r["trace_id"] for r in roots(s)})
    for trace_id in (CALLER_TRACE, http_trace):
        (root,) = [r for r in roots(spans) if r["trace_id"] == trace_id]
        assert root["parent_span_id"] == CALLER_SPAN
        assert root["span_id"] != CALLER_SPAN


def test_a_malformed_traceparent_is_ignored_and_a_new_trace_starts(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url))
    client = grpcclient.InferenceServerClient(server.url)
    bad = [
        "garbage",
        f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",
        f"00-{'0' * 32}-{CALLER_SPAN}-01",
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",
    ]
    for header in bad:
        identity(client, grpcclient, headers={"traceparent": header})
    spans = receiver.wait_for(lambda s: len(roots(s)) >= len(bad))
    ids = {r["trace_id"] for r in roots(spans)}
    assert len(ids) == len(bad), "each request started a trace of its own"
    assert CALLER_TRACE not in ids and "0" * 32 not in ids
    assert all(r["parent_span_id"] == "" for r in roots(spans))


def test_dynamo_variables_export_over_grpc(start_tritium, receiver, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORT_ENABLED", "1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.grpc_url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tritium-frontend")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    server = start_tritium()
    client = grpcclient.InferenceServerClient(server.url)
    identity(client, grpcclient, headers={"traceparent": CALLER})
    spans = receiver.wait_for(lambda s: any(r["trace_id"] == CALLER_TRACE for r in roots(s)), timeout=30)
    root = [r for r in roots(spans) if r["trace_id"] == CALLER_TRACE][0]
    assert root["transport"] == "grpc"
    assert root["resource"]["service.name"] == "tritium-frontend"


@pytest.mark.parametrize("collector", ["dead", "hanging"])
def test_a_dead_or_hanging_collector_never_fails_requests_and_drops_are_counted(start_tritium, collector):
    with HangingCollector() as hanging:
        url = hanging.url if collector == "hanging" else f"http://127.0.0.1:{closed_port()}/v1/traces"
        server = start_tritium(*otel_args(url, "opentelemetry,bsp_max_queue_size=8", "opentelemetry,bsp_max_export_batch_size=4"))
        grpc_client = grpcclient.InferenceServerClient(server.url)
        http_client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        for i in range(40):
            identity(grpc_client if i % 2 else http_client, grpcclient if i % 2 else httpclient)
        assert wait_for(lambda: sum(dropped(server).values()) > 0, timeout=30), dropped(server)
        counts = dropped(server)
        if collector == "hanging":
            assert hanging.accepted >= 1
            assert counts["queue_full"] > 0, counts
        else:
            assert counts["export_failed"] > 0, counts
        # Still serving after the drops.
        identity(grpc_client, grpcclient)


def test_tracing_off_exports_nothing(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url, "level=OFF"))
    identity(grpcclient.InferenceServerClient(server.url), grpcclient)
    # The count of exported spans stays 0 (read after the request finished and one schedule passed).
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert re.search(r"^tritium_trace_spans_exported_total 0$", text, re.M), text[-1500:]
    assert receiver.spans == []


def test_llm_request_has_genai_attributes_and_a_first_token_event(start_tritium, receiver):
    server = start_tritium("--engine", "mock", "--model-name", "mock-llm", *otel_args(receiver.http_url))
    llm = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", default_headers={"traceparent": CALLER})
    completion = llm.completions.create(model="mock-llm", prompt="Hello there", max_tokens=3, temperature=0.5)
    assert completion.usage.completion_tokens == 3
    spans = receiver.wait_for(lambda s: any(r["trace_id"] == CALLER_TRACE for r in roots(s)))
    root = [r for r in roots(spans) if r["trace_id"] == CALLER_TRACE][0]
    attrs = root["attributes"]
    assert attrs["gen_ai.request.model"] == "mock-llm"
    assert attrs["gen_ai.request.max_tokens"] == 3
    assert attrs["gen_ai.request.temperature"] == pytest.approx(0.5)
    assert attrs["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert "first_token" in root.event_names
    assert root["parent_span_id"] == CALLER_SPAN
