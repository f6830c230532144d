"""Triton's trace file (issue 42), against what the real Triton 2.51 wrote for the same requests
(`fixtures/triton_trace/`, recorded by `fixtures/triton_trace/record.py`; its NOTES.md lists the rules):
the objects and their keys, the stamps of each kind of trace, children before their root, the steady
clock, tensor records, rate and count, log-frequency files, and TraceSetting's answers replayed
step by step over gRPC and HTTP."""

import json
import pathlib
import re
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from helpers import TESTS, identity_config, start_server, wait_for, write_model

FIXTURES = TESTS / "fixtures" / "triton_trace"
TRITON_FILE = "/tmp/triton_trace_work/traces/runtime_updates/trace.json"


def triton_objects(name: str) -> list:
    """A trace file Triton wrote; its BYTES tensors are not escaped, so read leniently."""
    raw = (FIXTURES / name).read_bytes().decode("utf-8", "replace")
    return json.loads(raw) if name.startswith("timestamps.") else raw


def stop(server) -> None:
    server.proc.terminate()
    server.proc.wait(timeout=30)


def serve_traced(tmp_path, *extra: str, level: str = "TIMESTAMPS"):
    file = tmp_path / "trace.json"
    args = ["--trace-config", f"triton,file={file}", "--trace-config", "rate=1", "--trace-config", f"level={level}", *extra]
    return start_server(*args), file


def identity(client, module, values=(1.0, 2.5, -3.0), request_id=""):
    data = np.array(values, dtype=np.float32)
    tensor = module.InferInput("INPUT0", [len(data)], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("identity", [tensor], request_id=request_id)
    assert np.array_equal(result.as_numpy("OUTPUT0"), data, equal_nan=True)


def ensemble(client, request_id):
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        tensor = grpcclient.InferInput(name, [16], "INT32")
        tensor.set_data_from_numpy(np.arange(16, dtype=np.int32))
        inputs.append(tensor)
    client.infer("add_sub_twice", inputs, request_id=request_id)


def by_trace(objects: list) -> dict:
    """id -> {"header": ..., "stamps": [(name, ns)], "tensors": [...], "order": [kinds in file order]}."""
    traces: dict = {}
    for position, obj in enumerate(objects):
        entry = traces.setdefault(obj["id"], {"header": None, "stamps": [], "tensors": [], "first": position})
        if "model_name" in obj:
            entry["header"] = obj
        elif "timestamps" in obj:
            entry["stamps"].extend((t["name"], t["ns"]) for t in obj["timestamps"])
        else:
            entry["tensors"].append(obj)
    return traces


def kind(header: dict, stamps: list) -> str:
    names = {n for n, _ in stamps}
    if "parent_id" in header:
        return "child"
    protocol = "grpc" if "GRPC_WAITREAD_END" in names else "http"
    return f"{protocol} ensemble" if header["model_name"] in ("ens", "add_sub_twice") else f"{protocol} root"


def shapes(objects: list) -> dict:
    """For each kind of trace: its header's keys in order and the set of its stamp names."""
    out = {}
    for trace in by_trace(objects).values():
        header = trace["header"]
        with_id = "request_id" in header
        out[(kind(header, trace["stamps"]), with_id)] = (list(header), sorted({n for n, _ in trace["stamps"]}))
    return out


def test_the_file_has_triton_s_objects_keys_and_stamps(tmp_path):
    server, file = serve_traced(tmp_path)
    before = time.monotonic_ns()
    try:
        grpc = grpcclient.InferenceServerClient(server.url)
        identity(grpc, grpcclient, request_id="grpc-identity-1")
        identity(httpclient.InferenceServerClient(server.http_url.removeprefix("http://")), httpclient, request_id="http-identity-1")
        identity(grpc, grpcclient)
        ensemble(grpc, "grpc-ens-1")
        assert not file.exists(), "as Triton, the file is written at shutdown"
    finally:
        stop(server)
    after = time.monotonic_ns()
    raw = file.read_text()
    assert raw.startswith("[{") and raw.endswith("}]") and "\n" not in raw and ": " not in raw, "one compact JSON array"
    ours = json.loads(raw)
    theirs = triton_objects("timestamps.trace.json")
    for obj in ours:
        assert list(obj)[0] == "id"
        if "timestamps" in obj:
            assert list(obj) == ["id", "timestamps"] and [list(t) for t in obj["timestamps"]] == [["name", "ns"]]
            assert before <= obj["timestamps"][0]["ns"] <= after, "CLOCK_MONOTONIC, as time.monotonic_ns()"
    expected = {k: v for k, v in shapes(theirs).items() if k[0] in ("grpc root", "http root", "grpc ensemble", "child")}
    got = shapes(ours)
    for key, (header_keys, stamp_names) in expected.items():
        if key not in got:
            continue
        assert got[key] == (header_keys, stamp_names), key
    assert {("grpc root", True), ("grpc root", False), ("http root", True), ("grpc ensemble", True), ("child", True)} <= set(got)
    traces = by_trace(ours)
    root = next(t for t in traces.values() if t["header"]["model_name"] == "add_sub_twice")
    steps = [t for t in traces.values() if t["header"].get("parent_id") == root["header"]["id"]]
    assert len(steps) == 2
    for step in steps:
        assert step["header"]["request_id"] == "grpc-ens-1" and step["header"]["model_name"] == "add_sub"
        assert step["first"] < root["first"], "children come before their root, as Triton writes them"
        assert step["header"]["id"] > root["header"]["id"]
    core = ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]
    for trace in traces.values():
        stamps = dict(trace["stamps"])
        ordered = [stamps[n] for n in core if n in stamps]
        assert ordered == sorted(ordered), trace
        for first, then in (("HTTP_RECV_END", "REQUEST_START"), ("GRPC_WAITREAD_END", "REQUEST_START"), ("REQUEST_END", "HTTP_SEND_END"), ("REQUEST_END", "GRPC_SEND_END")):
            if first in stamps and then in stamps:
                assert stamps[first] <= stamps[then], (first, then, trace)


def test_tensors_are_recorded_as_triton_prints_them(tmp_path):
    server, file = serve_traced(tmp_path, level="TENSORS")
    special = (0.1, 1e-7, 123456789.0, 1.0 / 3.0, 1e20, -0.0, float("inf"), float("nan"))
    try:
        client = grpcclient.InferenceServerClient(server.url)
        identity(client, grpcclient)
        identity(client, grpcclient, values=special)
    finally:
        stop(server)
    ours = json.loads(file.read_text())
    theirs = triton_objects("tensors.trace.json")
    assert all("model_name" not in o and "timestamps" not in o for o in ours), "TENSORS alone: no header, no stamps"
    assert all(list(o) == ["id", "activity", "tensor"] and list(o["tensor"]) == ["name", "data", "shape", "dtype"] for o in ours)
    records = [(o["activity"], o["tensor"]["name"], o["tensor"]["data"], o["tensor"]["shape"], o["tensor"]["dtype"]) for o in ours]
    for record in records:
        activity, name, data, shape, dtype = record
        text = f'"activity":"{activity}","tensor":{{"name":"{name}","data":"{data}","shape":"{shape}","dtype":"{dtype}"}}'
        assert text in theirs, f"Triton wrote no such record: {text}"
    assert ("TENSOR_QUEUE_INPUT", "INPUT0", "0.1,1e-07,1.23457e+08,0.333333,1e+20,-0,inf,nan", "8", "FP32") in records


def test_rate_and_count_pick_the_requests_triton_picks(tmp_path):
    server, file = serve_traced(tmp_path, "--trace-config", "rate=2", "--trace-config", "count=3")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        counts = []
        for i in range(8):
            identity(client, grpcclient, request_id=f"req-{i}")
            counts.append(client.get_trace_settings(as_json=True)["settings"]["trace_count"]["value"][0])
    finally:
        stop(server)
    traced = [t["header"]["request_id"] for t in by_trace(json.loads(file.read_text())).values()]
    assert traced == ["req-1", "req-3", "req-5"], "the 2nd, 4th and 6th request, then the count is spent"
    assert counts == ["3", "2", "2", "1", "1", "0", "0", "0"]


def test_log_frequency_writes_indexed_files_as_it_goes(tmp_path):
    server, file = serve_traced(tmp_path, "--trace-config", "triton,log-frequency=2")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        for i in range(3):
            identity(client, grpcclient, request_id=f"req-{i}")
        assert wait_for(lambda: pathlib.Path(f"{file}.0").exists(), timeout=10), "written after the 2nd trace"
        ensemble(client, "ens-1")
        assert wait_for(lambda: pathlib.Path(f"{file}.1").exists(), timeout=10), "an ensemble counts once, with its steps"
        identity(client, grpcclient, request_id="req-4")
    finally:
        stop(server)
    files = [json.loads(pathlib.Path(f"{file}.{i}").read_text()) for i in range(3)]
    roots = [[t["header"]["request_id"] for t in by_trace(f).values() if "parent_id" not in t["header"]] for f in files]
    assert roots == [["req-0", "req-1"], ["req-2", "ens-1"], ["req-4"]]
    assert not file.exists(), "with a log frequency the plain file is never written"


def grpc_setting(client, model: str, settings):
    request = service_pb2.TraceSettingRequest(model_name=model)
    for key, value in (settings or {}).items():
        entry = request.settings[key]
        if value is not None:
            entry.value.extend(value if isinstance(value, list) else [value])
    try:
        answer = client._client_stub.TraceSetting(request)
    except Exception as error:  # grpc.RpcError
        return {"error": {"code": error.code().name, "details": error.details()}}
    return {"ok": {k: list(v.value) for k, v in answer.settings.items()}}


def http_setting(base: str, model: str, body):
    url = f"{base}/v2/models/{model}/trace/setting" if model else f"{base}/v2/trace/setting"
    data = None if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET"), timeout=10) as r:
            return {"status": r.status, "body": json.loads(r.read())}
    except urllib.error.HTTPError as error:
        return {"status": error.code, "body": json.loads(error.read())}


def test_trace_setting_answers_replay_triton_2_51(tmp_path):
    """Every TraceSetting step Triton answered (global and per model, good and bad values), in order, over
    gRPC then HTTP as they were sent to Triton; the answers must be Triton's, with our file's path."""
    server, file = serve_traced(tmp_path)
    steps = json.loads((FIXTURES / "runtime_updates.json").read_text())["steps"]
    # Triton's repository had identity and identity_a; ours has identity and add_sub.
    names = {"identity": "identity", "identity_a": "add_sub", "nope": "nope", "": ""}

    def ours(value):
        return json.loads(json.dumps(value).replace(TRITON_FILE, str(file)))

    try:
        client = grpcclient.InferenceServerClient(server.url)
        replayed = 0
        for step in steps:
            what = step["what"]
            if what == "before inferences":
                break  # the recording sent inferences from here on; test_settings_changed_... covers that part
            if "grpc" not in step and "http" not in step:
                continue
            model = step.get("model_name")
            if model is None:
                match = re.match(r"get model (\S+)", what)
                model = match.group(1) if match else ""
            model = names[model]
            if "grpc" in step:
                got = grpc_setting(client, model, ours(step.get("grpc_request_settings")))
                assert got == ours(step["grpc"]), f"gRPC, step {what!r}"
            if "http" in step:
                body = step.get("http_request_body")
                got = http_setting(server.http_url, model, ours(body) if body is not None else None)
                want = ours(step["http"])
                assert got["status"] == want["status"], f"HTTP, step {what!r}: {got}"
                if not (want["status"] == 500 and "JSON" in json.dumps(want["body"])):
                    assert got["body"] == want["body"], f"HTTP, step {what!r}"
            replayed += 1
        assert replayed > 60
    finally:
        stop(server)


def test_settings_changed_at_run_time_change_what_is_traced(tmp_path):
    server, file = serve_traced(tmp_path, level="OFF")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        identity(client, grpcclient, request_id="untraced")
        client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
        identity(client, grpcclient, request_id="traced-1")
        client.update_trace_settings(model_name="identity", settings={"trace_level": ["OFF"]})
        identity(client, grpcclient, request_id="identity-off")
        ensemble(client, "ens-on")
        client.update_trace_settings(model_name="identity", settings={"trace_level": None})
        identity(client, grpcclient, request_id="traced-2")
        assert wait_for(file.exists, timeout=10), "an update writes what the replaced settings traced, as Triton"
    finally:
        stop(server)
    roots = [t["header"]["request_id"] for t in by_trace(json.loads(file.read_text())).values() if "parent_id" not in t["header"]]
    assert roots == ["traced-1", "ens-on", "traced-2"]


def test_a_level_without_a_file_starts_and_traces_nowhere(tmp_path):
    server = start_server("--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        identity(client, grpcclient)
        settings = client.get_trace_settings(as_json=True)["settings"]
        assert settings["trace_file"]["value"] == [""] and settings["trace_level"]["value"] == ["TIMESTAMPS"]
        with pytest.raises(Exception, match="trace file name is not given"):
            client.update_trace_settings(settings={"trace_level": ["TENSORS"]})
    finally:
        stop(server)


BLS_MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            traced = pb_utils.InferenceRequest(model_name="identity", requested_output_names=["OUTPUT0"], inputs=[x],
                                               trace=request.trace())
            untraced = pb_utils.InferenceRequest(model_name="identity", requested_output_names=["OUTPUT0"], inputs=[x])
            y = pb_utils.get_output_tensor_by_name(traced.exec(), "OUTPUT0")
            untraced.exec()
            context = request.trace().get_context()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y.as_numpy()),
                                                         pb_utils.Tensor("CONTEXT", __import__("numpy").array([context or ""], dtype=object))]))
        return responses
"""

BLS_CONFIG = """
name: "bls_traced"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] }, { name: "CONTEXT", data_type: TYPE_STRING, dims: [ 1 ] } ]
"""


@pytest.mark.python_backend
def test_a_bls_call_made_with_the_request_s_trace_is_its_child(tmp_path):
    """As in Triton: `InferenceRequest(..., trace=request.trace())` makes the call a child trace (no request id of
    its own); a call made without it is not traced. `get_context()` gives the request's W3C context."""
    repo = tmp_path / "models"
    write_model(repo, "identity", identity_config("identity", "TYPE_FP32"))
    write_model(repo, "bls_traced", BLS_CONFIG)
    (repo / "bls_traced" / "1" / "model.py").write_text(BLS_MODEL)
    file = tmp_path / "trace.json"
    server = start_server("--model-repository", str(repo), "--python-interpreter", sys.executable,
                          "--trace-config", f"triton,file={file}", "--trace-config", "rate=1", "--trace-config", "level=TIMESTAMPS")  # fmt: skip
    try:
        client = grpcclient.InferenceServerClient(server.url)
        tensor = grpcclient.InferInput("INPUT0", [3], "FP32")
        tensor.set_data_from_numpy(np.array([1.0, 2.0, 3.0], dtype=np.float32))
        result = client.infer("bls_traced", [tensor], request_id="grpc-bls-1")
        context = json.loads(result.as_numpy("CONTEXT")[0])
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", context["traceparent"])
    finally:
        stop(server)
    traces = by_trace(json.loads(file.read_text()))
    root = next(t for t in traces.values() if t["header"]["model_name"] == "bls_traced")
    children = [t for t in traces.values() if t["header"].get("parent_id") == root["header"]["id"]]
    assert len(children) == 1, "the untraced call is not in the file"
    (child,) = children
    assert list(child["header"]) == ["id", "model_name", "model_version", "parent_id"], "a BLS child has no request id"
    assert child["first"] < root["first"]
    theirs = shapes(triton_objects("timestamps.trace.json"))
    assert sorted({n for n, _ in child["stamps"]}) == theirs[("child", False)][1]
    stamps = dict(root["stamps"])
    child_stamps = dict(child["stamps"])
    assert stamps["COMPUTE_START"] <= child_stamps["REQUEST_START"] <= child_stamps["REQUEST_END"] <= stamps["COMPUTE_END"]


def test_the_file_s_buffer_is_bounded_and_drops_are_counted(tmp_path):
    """--trace-file-buffer-bytes bounds what a trace file holds before it is written (and the tensors queued
    traces keep alive): past it traces are dropped and counted, requests are served as before."""
    server, file = serve_traced(tmp_path, "--trace-file-buffer-bytes", "3000", level="TENSORS")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        for _ in range(10):
            identity(client, grpcclient)
        identity(client, grpcclient, values=np.zeros(4096, dtype=np.float32))  # 16 KiB of input alone
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        dropped = int(re.search(r"^tritium_trace_dropped_total (\d+)$", text, re.M).group(1))
        assert dropped >= 1, text[-800:]
    finally:
        stop(server)
    kept = {o["id"] for o in json.loads(file.read_text())}
    assert 1 <= len(kept) < 11
    assert sum(len(json.dumps(o)) for o in json.loads(file.read_text())) <= 3000 + 200
