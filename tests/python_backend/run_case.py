"""How to run one python-backend differential case (cases.py) against a server: `run_case(grpc_url, case)` sends
it and returns a JSON-able observation (no timings in it).

Request spec (kinds infer, stream, concurrent, overlap):
    {"model": str, "inputs": [(name, datatype, shape, flat values)], "outputs": [names] (requested),
     "request_id": str, "sequence_id": int | str, "sequence_start": bool, "sequence_end": bool,
     "timeout_us": int (the request's own timeout), "parameters": {name: bool | int | str | float},
     "client_timeout": seconds (default 30), "json": [output names whose BYTES elements are JSON, parsed],
     "mask": [output names whose values vary from run to run (a pid), replaced by "<masked>"]}
BYTES values are str (sent as UTF-8) or bytes.

Kinds:
- infer: one ModelInfer through tritonclient.grpc. Observation: a response or {"error": {"code", "message"}}.
- http_infer: the same request through tritonclient.http on the server's HTTP port (`binary_inputs`,
  `binary_outputs`: the client's binary_data flags, default true; `priority`). Observation: the response JSON.
- stream: `requests` sent on one ModelStreamInfer stream (raw stub: error messages and parameters of every stream
  message are visible). Each request carries triton_enable_empty_final_response unless `empty_final` is false. The
  stream is read until every request saw triton_final_response=true (then `settle_s` more), or nothing came for
  `idle_s`. Observation: {"responses": {request id: [messages]}, "complete": {request id: bool}, "ended": how}.
- raw_infer: one ModelInfer through the raw stub with `raw_parameters` set as given (tritonclient refuses Triton's
  reserved keys before sending). Observation: as infer.
- raw_http_infer: the same request as JSON to the HTTP port, `raw_parameters` as its parameters. Observation: the
  status and the outputs' data (JSON-parsed for the names in `json`), or the error body.
- concurrent: `requests` sent at once from threads; the list of their observations.
- overlap: `first` runs in the background; after `after_s`, the `during` requests run one by one; then, once
  `first` has answered, the `then` requests. With `check_order`, also whether every `during` answer came before
  `first`'s.
- load / unload (`model`), ready (`model`), config (`model`), metadata (`model`), index (`models`: the entries of
  the repository index for those names), stats (`model`: its ModelStatistics, counts only, see _counts).
- metrics: the lines of the server's metrics page for the families whose names start with `prefix`.

Messages are normalized: the repository's absolute path becomes <REPO>, object addresses `0x...` become 0x?.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import urllib.error
import urllib.request
import os
import queue
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf.json_format import MessageToDict
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, triton_to_np_dtype

from cases import REPO, mode

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def clean_pycache() -> None:
    """Remove the __pycache__ folders the stubs wrote into the repository: a model whose folder changed after its
    load is loaded again by a load request (crash_load_again), one that did not is left as it is."""
    for cache in REPO.rglob("__pycache__"):
        shutil.rmtree(cache)


def normalize(text: str) -> str:
    return _ADDRESS.sub("0x?", text.replace(str(REPO), "<REPO>"))


def _normalize_json(value):
    if isinstance(value, str):
        return normalize(value)
    if isinstance(value, list):
        return [_normalize_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize_json(v) for k, v in value.items()}
    return value


def _array(datatype: str, shape: list[int], values: list) -> np.ndarray:
    if datatype == "BYTES":
        items = [v.encode() if isinstance(v, str) else bytes(v) for v in values]
        return np.array(items, dtype=np.object_).reshape(shape)
    return np.array(values, dtype=triton_to_np_dtype(datatype)).reshape(shape)


def _bytes_value(item: bytes):
    try:
        return item.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(item).decode()}


def _decode(datatype: str, shape: list[int], raw: bytes) -> list:
    """A tensor's raw contents as a flat list (BYTES elements as str, or {"base64"} when not UTF-8)."""
    if datatype == "BYTES":
        items, pos = [], 0
        while pos + 4 <= len(raw):
            size = int.from_bytes(raw[pos : pos + 4], "little")
            items.append(_bytes_value(raw[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        return items
    if datatype == "BF16":
        # Each BF16 value as the float32 it is the top half of (exact).
        return (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).tolist()
    dtype = triton_to_np_dtype(datatype)
    if dtype is None:
        return {"base64": base64.b64encode(raw).decode()}
    return np.frombuffer(raw, dtype=dtype).tolist()


def _param_value(param) -> dict:
    kind = param.WhichOneof("parameter_choice")
    return {kind: getattr(param, kind)} if kind else {}


def response_observation(resp, spec: dict | None = None) -> dict:
    """A ModelInferResponse as JSON: outputs sorted by name, response parameters with their protobuf kind."""
    spec = spec or {}
    outputs = []
    for i, out in enumerate(resp.outputs):
        raw = resp.raw_output_contents[i] if i < len(resp.raw_output_contents) else b""
        data = _decode(out.datatype, list(out.shape), raw)
        if out.name in spec.get("json", ()) and out.datatype == "BYTES":
            data = [json.loads(v) if isinstance(v, str) else v for v in data]
        if out.name in spec.get("mask", ()):
            data = "<masked>"
        entry = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape), "data": _normalize_json(data)}
        if out.parameters:
            entry["parameters"] = {k: _param_value(v) for k, v in sorted(out.parameters.items())}
        outputs.append(entry)
    outputs.sort(key=lambda o: o["name"])
    return {
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "id": resp.id,
        "parameters": {k: _param_value(v) for k, v in sorted(resp.parameters.items())},
        "outputs": outputs,
    }


def _error(code_name: str, message: str) -> dict:
    return {"error": {"code": code_name, "message": normalize(message)}}


def _exception(e: InferenceServerException) -> dict:
    status = e.status() or ""
    return _error(status.removeprefix("StatusCode."), e.message() or "")


def run_infer(url: str, spec: dict, before_sending=None) -> dict:
    """`before_sending` (a barrier's wait) is called once the client is connected and the request
    built, so that concurrent requests leave together: connecting a channel on a loaded machine can
    take longer than a dynamic batcher's queue delay."""
    client = grpcclient.InferenceServerClient(url)
    try:
        inputs = []
        for name, datatype, shape, values in spec["inputs"]:
            tensor = grpcclient.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(_array(datatype, shape, values))
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(n) for n in spec["outputs"]] if "outputs" in spec else None
        if before_sending is not None:
            client.is_server_live()
            before_sending()
        result = client.infer(
            spec["model"], inputs, outputs=outputs, request_id=spec.get("request_id", ""),
            sequence_id=spec.get("sequence_id", 0), sequence_start=spec.get("sequence_start", False),
            sequence_end=spec.get("sequence_end", False), timeout=spec.get("timeout_us"),
            client_timeout=spec.get("client_timeout", 30), parameters=spec.get("parameters"),
        )  # fmt: skip
        return response_observation(result.get_response(), spec)
    except InferenceServerException as e:
        return _exception(e)
    finally:
        client.close()


def _set_parameters(parameters, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            parameters[key].bool_param = value
        elif isinstance(value, int):
            parameters[key].int64_param = value
        else:
            parameters[key].string_param = value


def run_raw_infer(url: str, spec: dict) -> dict:
    request = _stream_request({**spec, "empty_final": False}, spec.get("request_id", ""))
    _set_parameters(request.parameters, spec.get("raw_parameters", {}))
    channel = grpc.insecure_channel(url)
    try:
        return response_observation(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30), spec)
    except grpc.RpcError as e:
        return _error(e.code().name, e.details() or "")
    finally:
        channel.close()


def run_raw_http_infer(http_url: str, spec: dict) -> dict:
    inputs = [{"name": name, "datatype": datatype, "shape": shape, "data": values}
              for name, datatype, shape, values in spec["inputs"]]  # fmt: skip
    body = json.dumps({"inputs": inputs, "parameters": spec.get("raw_parameters", {})}).encode()
    url = f"{http_url}/v2/models/{spec['model']}/infer"
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
            status = response.status
    except urllib.error.HTTPError as e:
        return {"status": e.code, "error": normalize(json.loads(e.read() or b"{}").get("error", ""))}
    outputs = {}
    for out in answer.get("outputs", []):
        values = out.get("data")
        if out["name"] in spec.get("json", ()) and values is not None:
            values = [json.loads(v) for v in values]
        outputs[out["name"]] = _normalize_json(values)
    return {"status": status, "outputs": outputs}


def run_http_infer(http_url: str, spec: dict) -> dict:
    """One inference through tritonclient.http (it adds request parameters of its own, e.g. binary_data_output when
    no outputs are named). Observation: the response's JSON with each output's values (BYTES as text, JSON-parsed
    for the names in `json`), or {"error": {"status": None, "message"}}."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    try:
        inputs = []
        for name, datatype, shape, values in spec["inputs"]:
            tensor = httpclient.InferInput(name, shape, datatype)
            tensor.set_data_from_numpy(_array(datatype, shape, values), binary_data=spec.get("binary_inputs", True))
            inputs.append(tensor)
        binary = spec.get("binary_outputs", True)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in spec["outputs"]] if "outputs" in spec else None
        result = client.infer(
            spec["model"], inputs, outputs=outputs, request_id=spec.get("request_id", ""),
            sequence_id=spec.get("sequence_id", 0), sequence_start=spec.get("sequence_start", False),
            sequence_end=spec.get("sequence_end", False), priority=spec.get("priority", 0),
            timeout=spec.get("timeout_us"), parameters=spec.get("parameters"),
        )  # fmt: skip
    except InferenceServerException as e:
        return {"error": {"status": e.status(), "message": normalize(e.message() or "")}}
    finally:
        client.close()
    response = result.get_response()
    outputs = []
    for out in sorted(response.get("outputs", []), key=lambda o: o["name"]):
        data = result.as_numpy(out["name"])
        values = [v.decode() if isinstance(v, bytes) else v for v in data.reshape(-1).tolist()]
        if out["name"] in spec.get("json", ()):
            values = [json.loads(v) for v in values]
        outputs.append({**out, "data": _normalize_json(values)})
    return {**{k: v for k, v in response.items() if k != "outputs"}, "outputs": outputs}


def _stream_request(spec: dict, default_id: str) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name=spec["model"], id=spec.get("request_id", default_id))
    for name, datatype, shape, values in spec["inputs"]:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        array = _array(datatype, shape, values)
        req.raw_input_contents.append(serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes())
    for name in spec.get("outputs", ()):
        req.outputs.add(name=name)
    if spec.get("empty_final", True):
        req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def run_stream(url: str, case: dict) -> dict:
    specs = case["requests"]
    requests = [_stream_request(spec, f"r{i}") for i, spec in enumerate(specs)]
    ids = [r.id for r in requests]
    release = threading.Event()
    messages: queue.Queue = queue.Queue()

    def send():
        yield from requests
        release.wait()  # keep our side open: closing it could end the stream before the server is done

    channel = grpc.insecure_channel(url)
    call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(send())

    def read():
        try:
            for message in call:
                messages.put(message)
            messages.put(("closed", None))
        except grpc.RpcError as e:
            messages.put(("rpc_error", e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    responses: dict[str, list] = {i: [] for i in ids}
    complete = {i: False for i in ids}
    ended, wait = "idle", case.get("idle_s", 3.0)
    spec_of = dict(zip(ids, specs))
    while True:
        try:
            message = messages.get(timeout=wait)
        except queue.Empty:
            break
        if isinstance(message, tuple):
            how, err = message
            ended = "closed" if err is None else f"rpc_error {err.code().name}: {normalize(err.details() or '')}"
            break
        rid = message.infer_response.id
        entry = response_observation(message.infer_response, spec_of.get(rid))
        if message.error_message:
            entry["error"] = normalize(message.error_message)
        responses.setdefault(rid, []).append(entry)
        if entry["parameters"].get("triton_final_response") == {"bool_param": True}:
            complete[rid] = True
        if all(complete.values()):
            ended, wait = "complete", case.get("settle_s", 0.5)
    release.set()
    call.cancel()
    channel.close()
    return {"responses": responses, "complete": complete, "ended": ended}


def run_concurrent(url: str, specs: list[dict]) -> list[dict]:
    barrier = threading.Barrier(len(specs))

    def one(spec):
        return run_infer(url, spec, barrier.wait)

    with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
        return list(pool.map(one, specs))


def run_overlap(url: str, case: dict) -> dict:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(run_infer, url, case["first"])
        time.sleep(case.get("after_s", 0.3))
        during = [run_infer(url, spec) for spec in case["during"]]
        during_first = not first.done()
        first_obs = first.result()
    then = [run_infer(url, spec) for spec in case["then"]]
    obs = {"first": first_obs, "during": during, "then": then}
    if case.get("check_order"):
        obs["during_answered_before_first"] = during_first
    return obs


def _admin(url: str, call) -> dict:
    client = grpcclient.InferenceServerClient(url)
    try:
        return call(client)
    except InferenceServerException as e:
        return _exception(e)
    finally:
        client.close()


def _as_dict(message) -> dict:
    return _normalize_json(MessageToDict(message, preserving_proto_field_name=True))


def _counts(value):
    """A statistics message without its durations (`ns`); a timestamp only as whether it is set."""
    if isinstance(value, dict):
        return {k: (bool(int(v)) if k == "last_inference" else _counts(v)) for k, v in value.items() if k != "ns"}
    if isinstance(value, list):
        return [_counts(v) for v in value]
    return value


def _index(client, names: list[str]) -> dict:
    entries = client.get_model_repository_index().models
    return {"models": [_as_dict(m) for m in entries if m.name in names]}


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def run_kill_stub(url: str, case: dict) -> dict:
    """SIGKILL the process that runs `model` (it answers MODE pid with its own pid) and wait until it is gone."""
    spec = mode(case["model"], "pid")
    obs = run_infer(url, spec)
    if "error" in obs:
        return {"pid_request": obs}
    pid = obs["outputs"][0]["data"][0]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"killed": not _pid_alive(pid)}


def run_metrics(metrics_url: str, case: dict) -> dict:
    """The families of the metrics page whose names start with `prefix`: each one's HELP and TYPE text and its
    sample lines, sorted (the exposition's order of samples within a family is the registry's own)."""
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    prefix, families = case["prefix"], {}
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            _, kind, name, *rest = line.split(" ", 3)
            if name.startswith(prefix):
                families.setdefault(name, {"samples": []})[kind.lower()] = rest[0] if rest else ""
        elif line.startswith(prefix):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            family = next((f for f in families if name == f or name.startswith(f + "_")), name)
            families.setdefault(family, {"samples": []})["samples"].append(line)
    for family in families.values():
        family["samples"].sort()
    return {"families": families}


def run_case(url: str, case: dict, http_url: str | None = None, metrics_url: str | None = None) -> dict:
    """Send one case to the gRPC endpoint `url` (host:port; `http_url` the same server's HTTP port, for the
    http_infer cases, `metrics_url` its metrics page) and return its observation."""
    kind = case["kind"]
    if kind == "metrics":
        if metrics_url is None:
            return {"runner_exception": "no metrics endpoint given for a metrics case"}
        return run_metrics(metrics_url, case)
    if kind == "infer":
        return run_infer(url, case)
    if kind == "http_infer":
        if http_url is None:
            return {"runner_exception": "no HTTP endpoint given for an http_infer case"}
        return run_http_infer(http_url, case)
    if kind == "raw_infer":
        return run_raw_infer(url, case)
    if kind == "raw_http_infer":
        if http_url is None:
            return {"runner_exception": "no HTTP endpoint given for a raw_http_infer case"}
        return run_raw_http_infer(http_url, case)
    if kind == "stream":
        return run_stream(url, case)
    if kind == "concurrent":
        return {"answers": run_concurrent(url, case["requests"])}
    if kind == "overlap":
        return run_overlap(url, case)
    if kind == "kill_stub":
        return run_kill_stub(url, case)
    model = case.get("model", "")
    calls = {
        "load": lambda c: (c.load_model(model), {"ok": True})[1],
        "unload": lambda c: (c.unload_model(model, unload_dependents=case.get("unload_dependents", False)),
                             {"ok": True})[1],  # fmt: skip
        "ready": lambda c: {"ready": c.is_model_ready(model)},
        "config": lambda c: _as_dict(c.get_model_config(model)),
        "metadata": lambda c: _as_dict(c.get_model_metadata(model)),
        "index": lambda c: _index(c, case["models"]),
        "stats": lambda c: _counts(_as_dict(c.get_inference_statistics(model))),
    }
    return _admin(url, calls[kind])
