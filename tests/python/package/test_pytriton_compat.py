"""PyTriton compatibility (`tritium.pytriton`): PyTriton's own examples (tests/pytriton_examples/, only their
import prefix changed) run in the package's fresh virtual environment (package_env.py's `venv`, with
tritonclient added) and must log the answers PyTriton 0.7 gave them; and the decorators, clients and
config checks the examples do not reach, driven by one script.
"""

from __future__ import annotations

import json
import pathlib
import queue
import re
import signal
import subprocess
import threading

import pytest

from helpers import REPO
from package_env import PACKAGE_TEST_TIMEOUT, build_env, clean_env, pin, python, run

pytestmark = PACKAGE_TEST_TIMEOUT


# PyTriton's own examples (tests/pytriton_examples/, only their import prefix changed) against the
# answers PyTriton 0.7 gave them (pytriton_outputs.json, recorded by record_pytriton_outputs.py).
PYTRITON_EXAMPLES = REPO / "tests/pytriton_examples"
PYTRITON_RECORDED = json.loads((PYTRITON_EXAMPLES / "pytriton_outputs.json").read_text())["outputs"]
_LOGGED = re.compile(r" - INFO - examples\.[\w.]+\.client: (\S+): (\[.*\])$")
_SERVING = re.compile(r"Tritium serving: grpc port (\d+), http port (\d+)")


@pytest.fixture(scope="module")
def client_venv(venv, tmp_path_factory) -> pathlib.Path:
    """The fresh environment with tritonclient too (the examples' clients need it), at the suite's pins."""
    text = (REPO / "tests/python/requirements.txt").read_text()
    tritonclient_pin = pin(text, "tritonclient[grpc,http]")
    # pip's constraints take no extras: the pins alone.
    constraints = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    constraints.write_text(re.sub(r"^([\w.-]+)\[[^\]]*\]==", r"\1==", text, flags=re.MULTILINE))
    pip = [python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", str(constraints)]
    run([*pip, f"tritonclient[grpc,http]=={tritonclient_pin}"], build_env(venv), 600)
    return venv


def _example_server(venv, example):
    """Starts the example's server.py on ports 0 and 127.0.0.1 (PyTriton's PYTRITON_TRITON_CONFIG_*
    variables); returns the process and its (grpc, http) ports, read from its log."""
    env = clean_env()
    for name in ("GRPC", "HTTP", "METRICS"):
        env[f"PYTRITON_TRITON_CONFIG_{name}_PORT"] = "0"
        env[f"PYTRITON_TRITON_CONFIG_{name}_ADDRESS"] = "127.0.0.1"
    proc = subprocess.Popen([python(venv), str(PYTRITON_EXAMPLES / example / "server.py")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=venv)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr] + [lines.put(None)], daemon=True).start()
    seen = []
    while True:
        line = lines.get(timeout=120)
        if line is None:
            proc.wait(timeout=30)
            pytest.fail(f"{example}/server.py ended ({proc.returncode}):\n{''.join(seen)[-6000:]}")
        seen.append(line)
        match = _SERVING.search(line)
        if match:
            return proc, int(match.group(1)), int(match.group(2))


@pytest.mark.parametrize("example", sorted(PYTRITON_RECORDED))
def test_pytriton_examples_give_pytritons_outputs(client_venv, example):
    proc, grpc_port, http_port = _example_server(client_venv, example)
    try:
        # The client connects to "localhost" (HTTP 8000): run_client.py points it at this server.
        client = subprocess.run(
            [python(client_venv), str(PYTRITON_EXAMPLES / "run_client.py"), "tritium.pytriton.client", str(http_port),
             str(grpc_port), str(PYTRITON_EXAMPLES / example / "client.py")],
            capture_output=True, text=True, timeout=300, env=clean_env(), cwd=client_venv,
        )
        assert client.returncode == 0, client.stderr[-6000:]
        logged = [[m.group(1), m.group(2)] for m in map(_LOGGED.search, client.stderr.splitlines()) if m]
        recorded = PYTRITON_RECORDED[example]
        # identity_python sends random numbers: what PyTriton answered with its inputs, this run
        # must answer with this run's.
        inputs = {value: now for (name, value), (_, now) in zip(recorded, logged) if name.startswith("INPUT_")}
        expected = [[name, inputs.get(value, value)] for name, value in recorded]
        assert logged == expected
        # Ctrl-C ends serve(); the `with Triton()` block stops the server and the script exits cleanly.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


PYTRITON_API_SCRIPT = """
import asyncio, json, sys
import numpy as np
from tritium.pytriton.decorators import batch, sample, group_by_keys, group_by_values, first_value
from tritium.pytriton.model_config import ModelConfig, Tensor
from tritium.pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
from tritium.pytriton.client import ModelClient, AsyncioModelClient, DecoupledModelClient
from tritium.pytriton.exceptions import PyTritonBadParameterError

out = {}
try:
    Triton(config=TritonConfig(http_header_forward_pattern="x.*"))
except PyTritonBadParameterError as e:
    out["refused"] = str(e)
try:
    Triton(security_config=TritonSecurityConfig(restricted_endpoints=["model-repository"]))
except PyTritonBadParameterError as e:
    out["token"] = str(e)

@batch
def stream(x):
    for i in range(3):
        yield {"y": x + i}

@sample
def one(x):
    return {"y": x * 3}

@batch
@first_value("k")
def scaled(x, k):
    return {"y": x * k}

@batch
@group_by_values("k")
def by_value(x, k):
    return {"y": x * 0 + len(x)}

@group_by_keys
@batch
def by_keys(x, **rest):
    return {"y": x + len(rest)}

x = [Tensor(name="x", dtype=np.float32, shape=(-1,))]
y = [Tensor(name="y", dtype=np.float32, shape=(-1,))]
cfg = TritonConfig(grpc_port=0, http_port=0, metrics_port=0, grpc_address="127.0.0.1", http_address="127.0.0.1", metrics_address="127.0.0.1", http_thread_count=4)
with Triton(config=cfg) as triton:
    triton.bind("stream", stream, x, y, config=ModelConfig(batching=False, decoupled=True))
    triton.bind("one", one, x, y, config=ModelConfig(batching=False))
    triton.bind("scaled", scaled, x + [Tensor(name="k", dtype=np.float32, shape=(1,))], y, config=ModelConfig(max_batch_size=8))
    triton.bind("by_value", by_value, x + [Tensor(name="k", dtype=np.int32, shape=(1,))], y, config=ModelConfig(max_batch_size=8))
    triton.bind("scaled_by_parameter", lambda requests: [{"y": r["x"] * r.parameters["factor"]} for r in requests], x, y,
                config=ModelConfig(batching=False))
    triton.bind("by_keys", by_keys, x + [Tensor(name="o", dtype=np.float32, shape=(-1,), optional=True)], y, config=ModelConfig(max_batch_size=8))
    g, h = triton.grpc_port, triton.http_port
    with DecoupledModelClient(f"grpc://127.0.0.1:{g}", "stream") as c:
        out["stream"] = [r["y"].tolist() for r in c.infer_sample(np.array([1.0], dtype=np.float32))]
    with ModelClient(f"127.0.0.1:{h}", "one") as c:
        out["one"] = c.infer_sample(np.array([2.0], dtype=np.float32))["y"].tolist()
    with ModelClient(f"grpc://127.0.0.1:{g}", "scaled") as c:
        out["scaled"] = c.infer_batch(np.ones((2, 1), np.float32), np.full((2, 1), 3, np.float32))["y"].tolist()
        try:
            c.infer_batch(np.ones((2, 1), np.float32), np.array([[1], [2]], np.float32))
        except Exception as e:
            out["unequal"] = type(e).__name__ + ": " + str(e)[:300]
    with ModelClient(f"127.0.0.1:{h}", "by_value") as c:
        out["by_value"] = c.infer_batch(x=np.ones((3, 1), np.float32), k=np.array([[1], [2], [1]], np.int32))["y"].tolist()
    with ModelClient(f"grpc://127.0.0.1:{g}", "scaled_by_parameter") as c:
        out["parameter"] = c.infer_sample(np.array([2.0], dtype=np.float32), parameters={"factor": 5})["y"].tolist()
    with ModelClient(f"127.0.0.1:{h}", "by_keys") as c:
        out["by_keys"] = c.infer_batch(x=np.ones((2, 1), np.float32))["y"].tolist()

    async def aio():
        async with AsyncioModelClient(f"grpc://127.0.0.1:{g}", "one") as c:
            return (await c.infer_sample(x=np.array([5.0], dtype=np.float32)))["y"].tolist()
    out["aio"] = asyncio.run(aio())
print(json.dumps(out))
"""


def test_pytriton_decorators_and_clients(client_venv, tmp_path):
    """The decorators and clients the vendored examples do not use: a decoupled model through
    DecoupledModelClient, @sample, @first_value (and its refusal of unequal values), @group_by_values,
    @group_by_keys with an optional input, AsyncioModelClient over gRPC, a request's parameters as
    request.parameters; a TritonConfig field Tritium
    has not is refused by name, one that only tunes Triton (http_thread_count) is accepted; endpoints
    restricted by a token are refused."""
    script = tmp_path / "pytriton_api.py"
    script.write_text(PYTRITON_API_SCRIPT)
    done = subprocess.run([python(client_venv), str(script)], capture_output=True, text=True, timeout=300, env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-6000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["refused"] == "TritonConfig.http_header_forward_pattern is not supported by Tritium"
    assert "endpoints restricted by an access token are not supported" in out["token"]
    assert out["stream"] == [[1.0], [2.0], [3.0]]
    assert out["one"] == [6.0]
    assert out["scaled"] == [[3.0], [3.0]]
    assert "PyTritonClientInferenceServerError" in out["unequal"] and "The values on the 'k' input are not equal" in out["unequal"]
    # Rows 0 and 2 share k=1: one call with two rows; row 1 alone.
    assert out["by_value"] == [[2.0], [1.0], [2.0]]
    assert out["by_keys"] == [[1.0], [1.0]]
    assert out["aio"] == [15.0]
    # A request's parameters reach the function as request.parameters.
    assert out["parameter"] == [10.0]
