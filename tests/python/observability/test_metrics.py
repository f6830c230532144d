"""Triton's metrics port (`GET /metrics`, Prometheus text) with the real clients.

What is proven:
- the answer is Prometheus text (`text/plain`, format 0.0.4), every family has HELP and TYPE lines, and every
  `nv_*` family Tritium serves has Triton 2.51's name, TYPE and label names (TRITON_2_51 below, recorded from a real
  Triton) with one sample per built-in model version (four per version for the failures, one per reason);
- after N infers on add_sub over gRPC and over HTTP, nv_inference_request_success / nv_inference_count /
  nv_inference_exec_count moved by N and equal ModelStatistics exactly, and every *_duration_us equals the
  statistics' nanoseconds // 1000; identity_batch with 4 rows per request counts 4 inferences but 1 execution;
- a request refused by a full dynamic-batcher queue (`Exceeds maximum queue size`) and one rejected by its queue
  timeout (`Request timeout expired`) count as nv_inference_request_failure{reason="REJECTED"}, as the statistics'
  fail count does; the pending gauge shows the request waiting in the queue; a request that fails validation is
  not an inference failure (Triton 2.51 counts it nowhere either);
- the host gauges: memory total is /proc/meminfo's MemTotal, used <= total, 0 <= utilization <= 1;
- `--metrics-config summary_latencies=true` serves Triton's five `*_summary_us` families (quantiles over recent
  requests, `_count` equal to the successes, `_sum` to the statistics' microseconds; `summary_quantiles` picks the
  quantiles); `histogram_latencies=true` serves the first-response histogram of decoupled models (the family
  Triton 2.52 added); `--allow-metrics=false` opens no metrics listener.
"""

from __future__ import annotations

import os
import pathlib
import re
import threading
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from helpers import (
    READY_PREFIX,
    bound_listener,
    finish_server,
    identity_config,
    launch,
    start_failure,
    start_server,
    write_model,
)
from http_helpers import add_sub_data, http_address, tensor
from prometheus_text import Family, parse

BUILT_IN = ["accumulate", "add_sub", "add_sub_twice", "dense", "identity", "identity_batch", "repeat"]
REASONS = {"REJECTED", "CANCELED", "BACKEND", "OTHER"}
# Counters with one sample per model version, and the statistics field each is read from (None: not a duration).
PER_MODEL_COUNTERS = {
    "nv_inference_request_success": None,
    "nv_inference_count": None,
    "nv_inference_exec_count": None,
    "nv_inference_request_duration_us": "success",
    "nv_inference_queue_duration_us": "queue",
    "nv_inference_compute_input_duration_us": "compute_input",
    "nv_inference_compute_infer_duration_us": "compute_infer",
    "nv_inference_compute_output_duration_us": "compute_output",
}
HOST_GAUGES = ["nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"]

# Recorded from the real Triton 2.51.0 (nvidia-pytriton 0.7.0, CPU only, python-backend add_sub from
# bench/triton-models) on 2026-11-23: `GET /metrics` after a few infers; name -> (TYPE, label names).
# Default settings serve the first 15; the five *_summary_us families appear only with
# `--metrics-config summary_latencies=true` (with it, `histogram_latencies=true` added nothing for a
# non-decoupled model). Triton answered `Content-Type: text/plain; charset=utf-8` and printed the failure
# reasons in the order OTHER, BACKEND, CANCELED, REJECTED, each with a 0 sample from the model's load on.
_MV = ("model", "version")
TRITON_2_51 = {
    "nv_inference_request_success": ("counter", _MV),
    "nv_inference_request_failure": ("counter", ("model", "reason", "version")),
    "nv_inference_count": ("counter", _MV),
    "nv_inference_exec_count": ("counter", _MV),
    "nv_inference_request_duration_us": ("counter", _MV),
    "nv_inference_queue_duration_us": ("counter", _MV),
    "nv_inference_compute_input_duration_us": ("counter", _MV),
    "nv_inference_compute_infer_duration_us": ("counter", _MV),
    "nv_inference_compute_output_duration_us": ("counter", _MV),
    "nv_inference_pending_request_count": ("gauge", _MV),
    "nv_pinned_memory_pool_total_bytes": ("gauge", ()),
    "nv_pinned_memory_pool_used_bytes": ("gauge", ()),
    "nv_cpu_utilization": ("gauge", ()),
    "nv_cpu_memory_total_bytes": ("gauge", ()),
    "nv_cpu_memory_used_bytes": ("gauge", ()),
    # Only with --metrics-config summary_latencies=true (samples also carry `quantile`, plus _count and _sum).
    "nv_inference_request_summary_us": ("summary", _MV),
    "nv_inference_queue_summary_us": ("summary", _MV),
    "nv_inference_compute_input_summary_us": ("summary", _MV),
    "nv_inference_compute_infer_summary_us": ("summary", _MV),
    "nv_inference_compute_output_summary_us": ("summary", _MV),
}
# Triton families (default settings) Tritium does not serve: the pinned-memory pool is CUDA host memory.
NOT_SERVED = {"nv_pinned_memory_pool_total_bytes", "nv_pinned_memory_pool_used_bytes"}



def scrape_raw(server) -> tuple[str, str]:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as answer:
        assert answer.status == 200
        return answer.headers.get("Content-Type", ""), answer.read().decode("utf-8")


def scrape(server) -> dict[str, Family]:
    return parse(scrape_raw(server)[1])


def model_value(families: dict[str, Family], name: str, model: str, **labels: str) -> float:
    return families[name].value(model=model, version="1", **labels)


def model_stats(client, model: str):
    stats = client.get_inference_statistics(model).model_stats
    assert len(stats) == 1, stats
    return stats[0]


def assert_metrics_equal_statistics(families: dict[str, Family], stats, model: str) -> None:
    """Every per-model counter equals what ModelStatistics says (durations: ns // 1000)."""
    assert model_value(families, "nv_inference_request_success", model) == stats.inference_stats.success.count
    assert model_value(families, "nv_inference_count", model) == stats.inference_count
    assert model_value(families, "nv_inference_exec_count", model) == stats.execution_count
    for name, phase in PER_MODEL_COUNTERS.items():
        if phase is not None:
            want = getattr(stats.inference_stats, phase).ns // 1000
            assert model_value(families, name, model) == want, (name, want)
    failures = sum(model_value(families, "nv_inference_request_failure", model, reason=r) for r in REASONS)
    assert failures == stats.inference_stats.fail.count


def test_parser_reads_escapes_suffixes_and_refuses_strays():
    text = (
        '# HELP a_total A "help" with \\\\ and \\n.\n# TYPE a_total counter\n'
        'a_total{x="q\\"uote",y="back\\\\slash\\n"} 3 1700000000\n'
        "# HELP s S.\n# TYPE s summary\ns_count 2\ns_sum 1.5\ns{quantile=\"0.5\"} 0.25\n"
    )
    families = parse(text)
    assert families["a_total"].help == 'A "help" with \\ and \n.'
    assert families["a_total"].samples == [("a_total", {"x": 'q"uote', "y": "back\\slash\n"}, 3.0)]
    assert [s[0] for s in families["s"].samples] == ["s_count", "s_sum", "s"]
    with pytest.raises(AssertionError):
        parse("stray 1\n")


# --- the default server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    s = start_server()
    yield s
    finish_server(s)


@pytest.fixture
def gclient(server):
    c = grpcclient.InferenceServerClient(url=server.url)
    yield c
    c.close()


def test_the_metrics_port_is_announced_and_answers_prometheus_text(server):
    assert f"metrics=127.0.0.1:{server.metrics_port}" in server.ready_line.split()
    content_type, text = scrape_raw(server)
    # Prometheus reads `text/plain` as its text format 0.0.4 (Triton 2.51 answers `text/plain; charset=utf-8`).
    media, *params = [p.strip() for p in content_type.split(";")]
    assert media == "text/plain", content_type
    assert all(p in ("version=0.0.4", "charset=utf-8") for p in params), content_type
    assert text.endswith("\n")
    families = parse(text)
    for family in families.values():
        assert family.help, f"{family.name} has no HELP line"
        assert family.type in ("counter", "gauge", "summary", "histogram", "untyped"), (family.name, family.type)


def test_every_nv_family_has_one_sample_per_built_in_model(server):
    families = scrape(server)
    for name in [*PER_MODEL_COUNTERS, "nv_inference_pending_request_count"]:
        family = families[name]
        assert family.type == TRITON_2_51[name][0], (name, family.type)
        # Triton's nv_* samples carry the family's own name (no _total suffix).
        assert {s[0] for s in family.samples} == {name}
        assert sorted((lbl["model"], lbl["version"]) for _, lbl, _ in family.samples) == [(m, "1") for m in BUILT_IN]
        assert all(set(lbl) == {"model", "version"} for _, lbl, _ in family.samples), family.samples
    failure = families["nv_inference_request_failure"]
    assert failure.type == "counter"
    assert {s[0] for s in failure.samples} == {"nv_inference_request_failure"}
    assert sorted((lbl["model"], lbl["reason"]) for _, lbl, _ in failure.samples) == sorted(
        (m, r) for m in BUILT_IN for r in REASONS
    )
    for name in HOST_GAUGES:
        assert families[name].type == "gauge"
        assert [(s[0], s[1]) for s in families[name].samples] == [(name, {})], families[name].samples


def test_names_types_and_labels_match_triton_2_51(server):
    families = scrape(server)
    ours = {name: f for name, f in families.items() if name.startswith("nv_")}
    invented = sorted(set(ours) - set(TRITON_2_51))
    assert not invented, f"nv_* families Triton 2.51 does not have: {invented}"
    for name, family in ours.items():
        kind, labels = TRITON_2_51[name]
        assert family.type == kind, (name, family.type, kind)
        for _, lbl, _ in family.samples:
            assert tuple(sorted(set(lbl) - {"quantile"})) == labels, (name, lbl)
    defaults = {name for name, (kind, _) in TRITON_2_51.items() if kind != "summary"}
    assert defaults - set(ours) == NOT_SERVED


def test_host_gauges(server):
    families = scrape(server)
    total = families["nv_cpu_memory_total_bytes"].value()
    used = families["nv_cpu_memory_used_bytes"].value()
    utilization = families["nv_cpu_utilization"].value()
    meminfo = pathlib.Path("/proc/meminfo").read_text()
    mem_total_kib = int(re.search(r"^MemTotal:\s+(\d+) kB$", meminfo, re.M).group(1))
    assert total == mem_total_kib * 1024
    assert 0 < used <= total
    assert 0.0 <= utilization <= 1.0


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_add_sub_counters_equal_model_statistics(server, gclient, protocol):
    n = 7
    a, b = add_sub_data()
    before = scrape(server)
    if protocol == "grpc":
        inputs = [tensor("INPUT0", a, "INT32", module=grpcclient), tensor("INPUT1", b, "INT32", module=grpcclient)]
        for _ in range(n):
            result = gclient.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    else:
        hclient = httpclient.InferenceServerClient(url=http_address(server))
        try:
            for _ in range(n):
                result = hclient.infer("add_sub", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")])
                np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        finally:
            hclient.close()
    after = scrape(server)
    stats = model_stats(gclient, "add_sub")
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count"):
        assert model_value(after, name, "add_sub") - model_value(before, name, "add_sub") == n, name
    assert_metrics_equal_statistics(after, stats, "add_sub")
    for name in PER_MODEL_COUNTERS:
        if name.endswith("_duration_us"):
            assert model_value(after, name, "add_sub") >= model_value(before, name, "add_sub"), name
    assert model_value(after, "nv_inference_request_duration_us", "add_sub") > 0
    assert model_value(after, "nv_inference_pending_request_count", "add_sub") == 0
    for reason in REASONS:
        assert model_value(after, "nv_inference_request_failure", "add_sub", reason=reason) == 0


def test_identity_batch_counts_rows_as_inferences_and_calls_as_executions(server, gclient):
    requests, rows = 3, 4
    before = scrape(server)
    for i in range(requests):
        values = np.arange(rows * 5, dtype=np.float32).reshape(rows, 5) + i
        got = gclient.infer("identity_batch", [tensor("INPUT0", values, "FP32", module=grpcclient)]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(got, values)
    after = scrape(server)
    stats = model_stats(gclient, "identity_batch")

    def delta(name: str) -> float:
        return model_value(after, name, "identity_batch") - model_value(before, name, "identity_batch")

    assert delta("nv_inference_request_success") == requests
    assert delta("nv_inference_count") == requests * rows
    assert delta("nv_inference_exec_count") == requests
    assert_metrics_equal_statistics(after, stats, "identity_batch")


def test_a_request_that_fails_validation_is_no_inference_failure(server, gclient):
    """Triton 2.51 answers add_sub without INPUT1 with INVALID_ARGUMENT and counts it in no failure (nor fail)."""
    a, _ = add_sub_data()
    before = scrape(server)
    with pytest.raises(Exception, match="INPUT1"):
        gclient.infer("add_sub", [tensor("INPUT0", a, "INT32", module=grpcclient)])
    after = scrape(server)
    for reason in REASONS:
        assert model_value(after, "nv_inference_request_failure", "add_sub", reason=reason) == model_value(
            before, "nv_inference_request_failure", "add_sub", reason=reason
        ), reason
    assert_metrics_equal_statistics(after, model_stats(gclient, "add_sub"), "add_sub")


# --- a full queue: REJECTED -------------------------------------------------------------------------------

# One waiting request fills the queue; it waits for partners (60 s) until its queue timeout (2 s) rejects it.
TINY_QUEUE = """
name: "tiny_queue"
backend: "identity"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
dynamic_batching {
  max_queue_delay_microseconds: 60000000
  default_queue_policy { max_queue_size: 1 timeout_action: REJECT default_timeout_microseconds: 2000000 }
}
"""


def wait_for(predicate, what: str, seconds: float = 30.0):
    """Polls `predicate` until it returns something true, or fails after `seconds`."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        while True:
            value = predicate()
            if value:
                return value
            if stop.wait(0.01):
                pytest.fail(f"{what} within {seconds:.0f}s")
    finally:
        timer.cancel()


def test_a_full_queue_and_a_queue_timeout_count_as_rejected(start_tritium, model_repo):
    write_model(model_repo, "tiny_queue", TINY_QUEUE)
    server = start_tritium("--model-repository", str(model_repo))
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        values = np.ones((1, 4), dtype=np.float32)
        first: dict[str, object] = {}
        done = threading.Event()

        def callback(result, error):
            first["result"], first["error"] = result, error
            done.set()

        client.async_infer("tiny_queue", [tensor("INPUT0", values, "FP32", module=grpcclient)], callback)
        # The first request waits in the queue: the pending gauge shows it.
        wait_for(
            lambda: model_value(scrape(server), "nv_inference_pending_request_count", "tiny_queue") == 1,
            "the first request never showed as pending",
        )
        with pytest.raises(Exception) as refused:
            client.infer("tiny_queue", [tensor("INPUT0", values, "FP32", module=grpcclient)], request_id="second")
        assert refused.value.status() == "StatusCode.UNAVAILABLE", refused.value
        assert refused.value.message() == "[request id: second] Exceeds maximum queue size"
        assert done.wait(60), "the waiting request was never answered"
        assert first["result"] is None and first["error"] is not None, first
        assert first["error"].status() == "StatusCode.UNAVAILABLE"
        assert first["error"].message() == "Request timeout expired"

        families = scrape(server)
        stats = model_stats(client, "tiny_queue")
        assert model_value(families, "nv_inference_request_failure", "tiny_queue", reason="REJECTED") == 2
        for reason in REASONS - {"REJECTED"}:
            assert model_value(families, "nv_inference_request_failure", "tiny_queue", reason=reason) == 0
        assert model_value(families, "nv_inference_request_success", "tiny_queue") == 0
        assert model_value(families, "nv_inference_pending_request_count", "tiny_queue") == 0
        assert stats.inference_stats.fail.count == 2
        assert_metrics_equal_statistics(families, stats, "tiny_queue")
    finally:
        client.close()


# --- start-up flags -------------------------------------------------------------------------------------------


def _repeat(client, n: int, delay_ms: int, request_id: str) -> None:
    count = grpcclient.InferInput("IN", [1], "INT32")
    count.set_data_from_numpy(np.array([n], dtype=np.int32))
    delay = grpcclient.InferInput("DELAY_MS", [1], "UINT32")
    delay.set_data_from_numpy(np.array([delay_ms], dtype=np.uint32))
    client.async_stream_infer("repeat", [count, delay], request_id=request_id, enable_empty_final_response=True)


def _histogram(families: dict[str, Family], model: str) -> tuple[float, float, dict[str, float]]:
    family = families["nv_inference_first_response_histogram_ms"]
    samples = [(name, labels, v) for name, labels, v in family.samples if labels.get("model") == model]
    count = [v for name, _, v in samples if name.endswith("_count")]
    total = [v for name, _, v in samples if name.endswith("_sum")]
    buckets = {labels["le"]: v for name, labels, v in samples if name.endswith("_bucket")}
    assert len(count) == 1 and len(total) == 1, samples
    return count[0], total[0], buckets


def test_first_response_histogram_of_decoupled_models(start_tritium):
    """`histogram_latencies=true`: one series per decoupled model version (Triton 2.52 and later; 2.51 accepts the
    setting and serves nothing), zero from the load on; a request counts at its first response (an error first
    response too), one that ends with no response does not; whole milliseconds, queue included."""
    server = start_tritium("--metrics-config", "histogram_latencies=true")
    families = scrape(server)
    family = families["nv_inference_first_response_histogram_ms"]
    assert family.type == "histogram" and family.help
    assert {labels["model"] for _, labels, _ in family.samples} == {"repeat"}, "only decoupled models have a series"
    assert _histogram(families, "repeat") == (0, 0, {"100": 0, "500": 0, "2000": 0, "5000": 0, "+Inf": 0})

    client = grpcclient.InferenceServerClient(server.url)
    events: list = []
    done = threading.Event()

    def callback(result, error):
        events.append((result, error))
        finals = sum(
            1 for r, e in events
            if e is not None or (r is not None and r.get_response().parameters["triton_final_response"].bool_param)
        )
        if finals == 6:
            done.set()

    client.start_stream(callback=callback)
    try:
        for i in range(3):
            _repeat(client, 2, 0, f"fast{i}")
        _repeat(client, 1, 150, "slow")
        _repeat(client, 0, 0, "silent")
        _repeat(client, -1, 0, "refused")
        assert done.wait(60), events
    finally:
        client.stop_stream()
        client.close()
    errors = [e for _, e in events if e is not None]
    assert len(errors) == 1 and "IN must be >= 0" in errors[0].message(), errors
    count, total, buckets = _histogram(scrape(server), "repeat")
    assert count == 5, "three fast, one slow, one error; the request with no response is not counted"
    assert buckets["+Inf"] == 5
    assert list(buckets) == ["100", "500", "2000", "5000", "+Inf"], "ascending bounds, printed as integers"
    values = list(buckets.values())
    assert values == sorted(values), buckets
    assert buckets["100"] <= 4, "the slow request's first response came after 150 ms"
    assert total >= 150 and total == int(total), total


SUMMARIES = [name for name, (kind, _) in TRITON_2_51.items() if kind == "summary"]


def test_latency_summaries(start_tritium):
    server = start_tritium(
        "--metrics-config", "summary_latencies=true", "--metrics-config", "summary_quantiles=0.5:0.05,0.9:0.01,0.99:0.001"
    )
    client = grpcclient.InferenceServerClient(server.url)
    try:
        a, b = add_sub_data()
        inputs = [tensor("INPUT0", a, "INT32", module=grpcclient), tensor("INPUT1", b, "INT32", module=grpcclient)]
        for _ in range(20):
            client.infer("add_sub", inputs)
        families = scrape(server)
        stats = model_stats(client, "add_sub")
    finally:
        client.close()
    inference = stats.inference_stats
    phase_ns = {
        "nv_inference_request_summary_us": inference.success.ns,
        "nv_inference_queue_summary_us": inference.queue.ns,
        "nv_inference_compute_input_summary_us": inference.compute_input.ns,
        "nv_inference_compute_infer_summary_us": inference.compute_infer.ns,
        "nv_inference_compute_output_summary_us": inference.compute_output.ns,
    }
    assert sorted(SUMMARIES) == sorted(phase_ns)
    for name in SUMMARIES:
        family = families[name]
        assert family.type == "summary", name
        samples = [(sample, labels, value) for sample, labels, value in family.samples if labels.get("model") == "add_sub"]
        count = [v for sample, _, v in samples if sample == name + "_count"]
        total = [v for sample, _, v in samples if sample == name + "_sum"]
        quantiles = {float(labels["quantile"]): v for sample, labels, v in samples if sample == name}
        assert count == [20], (name, samples)
        assert total == [int(phase_ns[name]) // 1000], (name, total, phase_ns[name])
        assert sorted(quantiles) == [0.5, 0.9, 0.99], (name, quantiles)
        values = [quantiles[q] for q in sorted(quantiles)]
        assert values == sorted(values) and all(v >= 0 for v in values), (name, values)
    # The median end-to-end latency lies within the spread of the requests (sum / count is their mean).
    request = families["nv_inference_request_summary_us"]
    median = [v for s, lbl, v in request.samples if lbl.get("model") == "add_sub" and lbl.get("quantile") == "0.5"][0]
    assert 0 < median <= phase_ns["nv_inference_request_summary_us"] // 1000


def test_latency_settings_set_to_false_are_accepted(start_tritium):
    server = start_tritium(
        "--metrics-config", "summary_latencies=false", "--metrics-config", "histogram_latencies=false"
    )
    families = scrape(server)
    assert "nv_inference_count" in families
    assert not [name for name in families if "summary" in name or "histogram" in name]


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes in /proc/net/tcp{,6} in state LISTEN)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in pathlib.Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def test_allow_metrics_false_serves_no_metrics_port():
    listeners = [bound_listener() for _ in range(2)]
    grpc_fd, http_fd = (listener.fileno() for listener in listeners)
    argv = ["serve", "--grpc-listen-fd", str(grpc_fd), "--http-listen-fd", str(http_fd), "--allow-metrics=false"]
    server = launch(argv, listeners, READY_PREFIX, 60)
    try:
        assert not [w for w in server.ready_line.split() if w.startswith("metrics=")], server.ready_line
        assert listening_ports(server.proc.pid) == {server.port, server.http_port}
    finally:
        finish_server(server)


def test_the_default_server_listens_on_its_metrics_port(server):
    assert server.metrics_port in listening_ports(server.proc.pid)


def test_metric_tags_label_every_per_model_sample_as_triton_does(tmp_path):
    # Recorded from Triton 2.51 (a python model with these two tags, summary latencies on):
    # nv_inference_request_success{_Tier="gold \"1\"",_team="vision",model="ident",version="1"} 1
    # and the same labels, sorted by name, on every per-model family (failure reasons and quantiles included).
    tags = 'metric_tags { key: "team" value: "vision" }\nmetric_tags { key: "Tier" value: "gold \\"1\\"" }\n'
    write_model(tmp_path, "tagged", identity_config("tagged", "TYPE_FP32", "[ 4 ]") + tags)
    write_model(tmp_path, "plain", identity_config("plain", "TYPE_FP32", "[ 4 ]"))
    server = start_server("--model-repository", str(tmp_path), "--metrics-config", "summary_latencies=true")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        data = grpcclient.InferInput("INPUT0", [4], "FP32")
        data.set_data_from_numpy(np.ones(4, dtype=np.float32))
        client.infer("tagged", [data])
        _, raw = scrape_raw(server)
        tagged = '_Tier="gold \\"1\\"",_team="vision",model="tagged",version="1"'
        assert f"nv_inference_request_success{{{tagged}}} 1" in raw, raw
        assert f'nv_inference_request_failure{{{tagged[:-12]},reason="BACKEND",version="1"}} 0' in raw, raw
        assert f'nv_inference_request_summary_us{{{tagged},quantile="0.5"}}' in raw, raw
        assert 'nv_inference_request_success{model="plain",version="1"} 0' in raw, "an untagged model has no tags"
        family = scrape(server)["nv_inference_count"]
        assert any(labels.get("_Tier") == 'gold "1"' for _, labels, _ in family.samples), family
    finally:
        finish_server(server)
