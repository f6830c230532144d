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
    """Each request's InferRequest span (Triton's name; the caller's span, if any, is its parent)."""
    return [s for s in spans if s["name"] == "InferRequest" and s["kind"] == SERVER]


def children(spans, parent, name=None):
    return [s for s in spans if s["parent_span_id"] == parent["span_id"] and (name is None or s["name"] == name)]


def model_span(spans, root):
    """The span named after the model under a request's InferRequest span (Triton's shape)."""
    (span,) = [s for s in children(spans, root) if s["name"] != "worker"]
    return span


def dropped(server) -> dict:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    found = dict(re.findall(r'^tritium_trace_spans_dropped_total\{reason="(\w+)"\} (\d+)', text, re.M))
    assert found, f"no tritium_trace_spans_dropped_total on the metrics port:\n{text[-2000:]}"
    return {k: int(v) for k, v in found.items()}


@pytest.fixture
def receiver():
    with OtlpReceiver() as rx:
        yield rx


def test_kserve_request_has_triton_s_span_shape_with_queue_and_compute(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url, "opentelemetry,resource=deployment.environment=test"))
    identity(grpcclient.InferenceServerClient(server.url), grpcclient)
    spans = receiver.wait_for(lambda s: roots(s) and any(x["name"] == "compute" for x in s))
    root = roots(spans)[0]
    assert root["transport"] == "http"
    assert root["resource"]["service.name"] == "triton-inference-server"
    assert root["resource"]["deployment.environment"] == "test"
    assert root["parent_span_id"] == ""
    assert {"GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "GRPC_SEND_START", "GRPC_SEND_END"} <= set(root.event_names)
    trace = receiver.trace(root["trace_id"])
    model = model_span(trace, root)
    assert model["name"] == "identity"
    assert model["attributes"]["triton.model_name"] == "identity"
    assert model["attributes"]["triton.model_version"] == 1
    assert model["attributes"]["triton.trace_parent_id"] == 0
    assert model.event_names == ["REQUEST_START", "QUEUE_START", "REQUEST_END"]
    assert root["start"] <= model["start"] <= model["end"] <= root["end"]
    below = {s["name"]: s for s in children(trace, model)}
    assert {"queue", "compute"} == set(below), below
    for child in below.values():
        assert model["start"] <= child["start"] <= child["end"] <= model["end"]
    assert below["compute"].event_names == ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END"]
    stamps = [e[1] for e in below["compute"]["events"]]
    assert stamps == sorted(stamps)
    assert below["queue"]["end"] <= below["compute"]["start"]


def test_ensemble_steps_are_model_spans_under_the_ensemble_s(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url))
    client = grpcclient.InferenceServerClient(server.url)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [16], "INT32")
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32))
        inputs.append(tensor)
    result = client.infer("add_sub_twice", inputs, request_id="ens-1")
    assert np.array_equal(result.as_numpy("DOUBLE0"), 2 * np.arange(16, dtype=np.int32))
    spans = receiver.wait_for(lambda s: len([x for x in s if x["name"] == "add_sub"]) >= 2)
    root = roots(spans)[0]
    trace = receiver.trace(root["trace_id"])
    ensemble = model_span(trace, root)
    assert ensemble["name"] == "add_sub_twice"
    assert ensemble["attributes"]["triton.request_id"] == "ens-1"
    assert children(trace, ensemble, "compute") == [], "an ensemble computes nothing itself (as in Triton)"
    steps = children(trace, ensemble, "add_sub")
    assert len(steps) == 2
    for step in steps:
        assert step["attributes"]["triton.trace_parent_id"] == ensemble["attributes"]["triton.trace_id"]
        assert step["attributes"]["triton.request_id"] == "ens-1"
        assert len(children(trace, step, "compute")) == 1
    first, second = sorted(steps, key=lambda s: s["start"])
    assert first["end"] <= second["start"], "the second step waits for the first one's outputs"


def test_one_trace_through_a_frontend_and_a_worker_process(tmp_path, receiver):
    common = ["--discovery", "file", "--discovery-dir", str(tmp_path), "--lease-ttl-secs", "3"]
    frontend = start_server(*common, *otel_args(receiver.http_url, "opentelemetry,resource=service.name=frontend"))
    worker = start_worker(*common, "--worker-id", "w-otel", *otel_args(receiver.http_url, "opentelemetry,resource=service.name=worker", "rate=1000"))
    try:
        client = grpcclient.InferenceServerClient(frontend.url)
        assert wait_for(lambda: client.is_model_ready("identity"), timeout=15)
        identity(client, grpcclient, headers={"traceparent": CALLER})
        spans = receiver.wait_for(lambda s: len([r for r in roots(s) if r["trace_id"] == CALLER_TRACE]) >= 2, timeout=30)
        trace = receiver.trace(CALLER_TRACE)
        (front,) = [r for r in roots(trace) if r["resource"]["service.name"] == "frontend"]
        (back,) = [r for r in roots(trace) if r["resource"]["service.name"] == "worker"]
        assert front["parent_span_id"] == CALLER_SPAN
        front_model = model_span(trace, front)
        (hop,) = children(trace, front_model, "worker")
        assert hop["kind"] == CLIENT
        assert hop["attributes"]["tritium.worker"] == "w-otel"
        # The worker traced the request its caller sampled, at rate=1000 of its own.
        assert back["parent_span_id"] == hop["span_id"]
        back_model = model_span(trace, back)
        assert back_model["attributes"]["triton.model_name"] == "identity"
        assert len(children(trace, back_model, "compute")) == 1
        assert hop["start"] <= back["start"] and back["end"] <= hop["end"]
    finally:
        for process in (worker, frontend):
            process.proc.terminate()
            process.proc.wait(timeout=30)


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


def test_a_grpc_url_in_the_trace_config_exports_over_grpc(start_tritium, receiver):
    grpc_url = receiver.grpc_url.replace("http://", "grpc://", 1)
    args = ["--trace-config", "mode=opentelemetry", "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", f"opentelemetry,url={grpc_url}", "--trace-config", "opentelemetry,bsp_schedule_delay=50"]  # fmt: skip
    server = start_tritium(*args)
    identity(grpcclient.InferenceServerClient(server.url), grpcclient, headers={"traceparent": CALLER})
    spans = receiver.wait_for(lambda s: any(r["trace_id"] == CALLER_TRACE for r in roots(s)), timeout=30)
    assert [r for r in roots(spans) if r["trace_id"] == CALLER_TRACE][0]["transport"] == "grpc"


@pytest.mark.parametrize("collector", ["dead", "hanging"])
def test_a_dead_or_hanging_collector_never_fails_requests_and_drops_are_counted(start_tritium, collector):
    with HangingCollector() as hanging:
        url = hanging.url if collector == "hanging" else f"http://127.0.0.1:{closed_port()}/v1/traces"
        server = start_tritium(*otel_args(url, "opentelemetry,bsp_max_queue_size=8", "opentelemetry,bsp_max_export_batch_size=4"))
        grpc_client = grpcclient.InferenceServerClient(server.url)
        http_client = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
        for i in range(40):
            identity(grpc_client if i % 2 else http_client, grpcclient if i % 2 else httpclient)
        # A hanging collector holds the one export in flight: the queue fills. A dead one refuses each batch.
        reason = "queue_full" if collector == "hanging" else "export_failed"
        assert wait_for(lambda: dropped(server)[reason] > 0, timeout=30), dropped(server)
        if collector == "hanging":
            assert hanging.accepted >= 1
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
    model = model_span(receiver.trace(CALLER_TRACE), root)
    attrs = model["attributes"]
    assert model["name"] == "mock-llm"
    assert attrs["gen_ai.request.model"] == "mock-llm"
    assert attrs["gen_ai.request.max_tokens"] == 3
    assert attrs["gen_ai.request.temperature"] == pytest.approx(0.5)
    assert attrs["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert attrs["gen_ai.usage.output_tokens"] == 3
    assert "first_token" in model.event_names
    assert root["parent_span_id"] == CALLER_SPAN


def test_rate_count_and_runtime_settings_apply_to_opentelemetry(start_tritium, receiver):
    server = start_tritium(*otel_args(receiver.http_url, "rate=2", "count=2"))
    client = grpcclient.InferenceServerClient(server.url)
    for i in range(8):
        identity(client, grpcclient, headers={"traceparent": f"00-{i + 1:032x}-{CALLER_SPAN}-01"})
    spans = receiver.wait_for(lambda s: len(roots(s)) >= 2)
    assert client.get_trace_settings(as_json=True)["settings"]["trace_count"]["value"] == ["0"]
    traced = sorted(int(r["trace_id"], 16) for r in roots(spans))
    assert traced == [2, 4], "the 2nd and 4th request, then the count is spent"
    # OpenTelemetry mode answers with the exporter's settings, as Triton 2.51 does.
    settings = client.get_trace_settings(as_json=True)["settings"]
    assert "trace_file" not in settings and "log_frequency" not in settings
    assert settings["url"]["value"] == [receiver.http_url]
    assert settings["trace_mode"]["value"] == ["opentelemetry"]
    client.update_trace_settings(settings={"trace_count": "-1", "trace_rate": "1"})
    client.update_trace_settings(model_name="identity", settings={"trace_level": ["OFF"]})
    identity(client, grpcclient, headers={"traceparent": f"00-{99:032x}-{CALLER_SPAN}-01"})
    client.update_trace_settings(model_name="identity", settings={"trace_level": None})
    identity(client, grpcclient, headers={"traceparent": f"00-{100:032x}-{CALLER_SPAN}-01"})
    spans = receiver.wait_for(lambda s: any(int(r["trace_id"], 16) == 100 for r in roots(s)))
    assert 99 not in {int(r["trace_id"], 16) for r in roots(spans)}, "level OFF for the model traces nothing"
    # Over HTTP too, OFF then TIMESTAMPS again: OpenTelemetry mode needs no trace file.
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    for level in (["OFF"], ["TIMESTAMPS"]):
        assert http.update_trace_settings(settings={"trace_level": level})["trace_level"] == level


@pytest.mark.llm
@pytest.mark.embedding
def test_a_remote_embedding_joins_the_callers_trace_on_the_worker(tmp_path, receiver):
    """An embedding served by a worker process is a hop of the frontend's trace (a CLIENT span naming the
    worker), and the worker's own request (an `embeddings` model span) is under it, with the input token
    count (issue 59)."""
    import openai

    from conftest import model_paths

    _, minilm = model_paths()
    common = ["--discovery", "file", "--discovery-dir", str(tmp_path), "--lease-ttl-secs", "3"]
    frontend = start_server(*common, *otel_args(receiver.http_url, "opentelemetry,resource=service.name=frontend"))
    worker = start_worker(*common, "--worker-id", "w-embed", "--model-path", str(minilm), "--model-name", "minilm",
                          *otel_args(receiver.http_url, "opentelemetry,resource=service.name=worker", "rate=1000"))  # fmt: skip
    try:
        llm = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="unused", max_retries=0,
                            default_headers={"traceparent": CALLER})  # fmt: skip
        listed = lambda: "minilm" in [m.id for m in llm.models.list().data]  # noqa: E731
        assert wait_for(listed, timeout=30)
        llm.embeddings.create(model="minilm", input=["a traced sentence", "and another"])
        def found(spans) -> bool:
            mine = [x for x in spans if x["trace_id"] == CALLER_TRACE]
            served = any(x["attributes"].get("gen_ai.operation.name") == "embeddings" for x in mine)
            hop = any(x["kind"] == CLIENT and x["attributes"].get("tritium.worker") == "w-embed" for x in mine)
            # Each process exports on its own schedule: wait for the frontend's hop too.
            return served and hop and any(r["resource"]["service.name"] == "worker" for r in roots(mine))

        receiver.wait_for(found, timeout=30)
        trace = receiver.trace(CALLER_TRACE)
        (hop,) = [s for s in trace if s["kind"] == CLIENT and s["attributes"].get("tritium.worker") == "w-embed"]
        (served,) = [s for s in trace if s["attributes"].get("gen_ai.operation.name") == "embeddings"]
        assert served["resource"]["service.name"] == "worker" and served["name"] == "minilm"
        # Triton's shape on the worker too: its InferRequest span, child of the hop, then the model's span.
        (back,) = [r for r in roots(trace) if r["resource"]["service.name"] == "worker"]
        assert back["parent_span_id"] == hop["span_id"] and served["parent_span_id"] == back["span_id"]
        assert served["attributes"]["gen_ai.usage.input_tokens"] > 0
    finally:
        for process in (worker, frontend):
            process.proc.terminate()
            process.proc.wait(timeout=30)


def test_the_api_keys_name_is_on_the_trace_and_never_the_key(start_tritium, receiver, tmp_path):
    """With API keys on, each door's request span says which key it came with (`tritium.api_key.name`), by the
    key's name only: the OpenAI door and KServe's generate over HTTP (gRPC's doors set it the same way)."""
    keys = tmp_path / "keys"
    keys.write_text("team:k-team-s3cret\n")
    server = start_tritium("--engine", "mock", "--model-name", "mock-llm", "--api-key-file", str(keys), *otel_args(receiver.http_url))
    llm = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="k-team-s3cret", default_headers={"traceparent": CALLER})
    assert llm.completions.create(model="mock-llm", prompt="Hello", max_tokens=2).usage.completion_tokens == 2
    kserve_trace = uuid.uuid4().hex
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/mock-llm/generate", data=b'{"text_input": "Hello", "max_tokens": 2}',
        headers={"authorization": "Bearer k-team-s3cret", "traceparent": f"00-{kserve_trace}-{CALLER_SPAN}-01"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=30).read()
    for trace_id in (CALLER_TRACE, kserve_trace):
        receiver.wait_for(lambda s: any(r["trace_id"] == trace_id for r in roots(s)))
        spans = receiver.trace(trace_id)
        named = [s for s in spans if s["attributes"].get("tritium.api_key.name") == "team"]
        assert named, [s["attributes"] for s in spans]
        assert "k-team-s3cret" not in repr([s["attributes"] for s in spans])


@pytest.mark.python_backend
def test_a_bls_call_made_with_the_request_s_trace_is_a_child_span(tmp_path, receiver):
    """OpenTelemetry mode, as Triton's trace file: `InferenceRequest(..., trace=request.trace())` is a model span
    under the request's, in the same trace; the call made without it is not traced."""
    import sys

    from helpers import identity_config, write_model
    from test_trace_file import BLS_CONFIG, BLS_MODEL

    repo = tmp_path / "models"
    write_model(repo, "identity", identity_config("identity", "TYPE_FP32"))
    write_model(repo, "bls_traced", BLS_CONFIG)
    (repo / "bls_traced" / "1" / "model.py").write_text(BLS_MODEL)
    server = start_server("--model-repository", str(repo), "--python-interpreter", sys.executable, *otel_args(receiver.http_url))
    try:
        client = grpcclient.InferenceServerClient(server.url)
        tensor = grpcclient.InferInput("INPUT0", [3], "FP32")
        tensor.set_data_from_numpy(np.array([1.0, 2.0, 3.0], dtype=np.float32))
        client.infer("bls_traced", [tensor])
        spans = receiver.wait_for(lambda s: any(span["name"] == "identity" for span in s))
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    (bls,) = [s for s in spans if s["name"] == "bls_traced"]
    called = [s for s in spans if s["name"] == "identity"]
    assert len(called) == 1, "the untraced call exports nothing"
    assert called[0]["trace_id"] == bls["trace_id"]
    by_id = {s["span_id"]: s for s in spans}
    ancestors, parent = [], called[0]["parent_span_id"]
    while parent in by_id:
        ancestors.append(by_id[parent]["name"])
        parent = by_id[parent]["parent_span_id"]
    assert "bls_traced" in ancestors, (ancestors, spans)
