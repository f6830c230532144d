"""A Dynamo 1.6.1 deployment for the interoperability tests: real Dynamo workers (`dynamo.mocker`,
the echo worker written on Dynamo's Python API), Dynamo's own frontend and `tritium serve`, all
started with Dynamo's own flags and variables, sharing one file store and namespace.

Dynamo's processes bind 0.0.0.0, so these tests run inside a private, loopback-only network
namespace (scripts/test.sh: `scripts/in-netns.sh`); `check_private_network()` refuses to run
them anywhere else. Dynamo comes from its own venv (.tools/dynamo-venv, scripts/setup-dynamo.sh).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from helpers import READY_PREFIX, REPO, TritiumServer, finish_server, launch, start_server, start_worker

DYNAMO_PYTHON = REPO / ".tools" / "dynamo-venv" / "bin" / "python"
HERE = pathlib.Path(__file__).resolve().parent


def check_private_network() -> None:
    """Fails unless this process is in a network namespace of its own, with only the loopback
    interface (Dynamo binds 0.0.0.0)."""
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        pytest.fail(
            "the Dynamo interoperability tests bind 0.0.0.0: run them in a private network namespace, "
            "`bash scripts/in-netns.sh .venv/bin/python -m pytest tests/python/dynamo_interop` (scripts/test.sh does)"
        )
    if not DYNAMO_PYTHON.is_file():
        pytest.fail(f"Dynamo is not installed at {DYNAMO_PYTHON}: run `bash scripts/setup-dynamo.sh`")


def free_port() -> int:
    """A port for Dynamo's frontend, which takes no listening socket from its parent (the namespace
    is private to this test run, so nothing else takes it in between)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_i16_port() -> int:
    """A free port below 32768: Dynamo 1.6.1 reads DYN_SYSTEM_PORT as a signed 16-bit number."""
    for port in range(20000, 32768, 97):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text, status = error.read().decode(), error.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def completion(body: dict) -> tuple[str, str, dict]:
    choice = body["choices"][0]
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    usage = body["usage"]
    return text, choice["finish_reason"], {"prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"]}


def streamed(base: str, path: str, body: dict) -> tuple[str, str | None, dict | None]:
    request = urllib.request.Request(
        base + path, data=json.dumps(body | {"stream": True}).encode(), headers={"content-type": "application/json"}
    )
    text, finish, usage = "", None, None
    with urllib.request.urlopen(request, timeout=30) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = {"prompt": chunk["usage"]["prompt_tokens"], "completion": chunk["usage"]["completion_tokens"]}
            for choice in chunk["choices"]:
                delta = choice.get("delta") or {}
                text += delta.get("content") or choice.get("text") or ""
                finish = choice.get("finish_reason") or finish
    return text, finish, usage


def stream_killing_its_worker(base: str, body: dict, workers: list) -> tuple[str | None, dict | None]:
    """Streams a completion from `base` and kills, after its fifth chunk, the one of `workers` that took
    it (the one whose log shows a request); the finish reason and usage the client got in the end."""
    request = urllib.request.Request(
        base + "/v1/completions", data=json.dumps(body | {"stream": True, "stream_options": {"include_usage": True}}).encode(),
        headers={"content-type": "application/json"},
    )
    chunks, finish, usage = 0, None, None
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            chunks += 1
            if chunks == 5:
                busy = [w for w in workers if "request received" in w.log()]
                assert len(busy) == 1, [w.log_path for w in workers]
                busy[0].kill()
            for choice in chunk["choices"]:
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage") or usage
    return finish, usage


def assert_same_answers(ours: str, theirs: str, path: str, body: dict) -> None:
    """The same request to both frontends gets the same text, finish reason and usage, streamed and not."""
    status, mine = http("POST", ours + path, body)
    assert status == 200, mine
    status, other = http("POST", theirs + path, body)
    assert status == 200, other
    assert completion(mine) == completion(other)
    options = {"stream_options": {"include_usage": True}}
    assert streamed(ours, path, body | options) == streamed(theirs, path, body | options)


def models_at(base: str) -> list[str]:
    try:
        status, body = http("GET", f"{base}/v1/models", timeout=5)
    except OSError:
        return []
    return [m["id"] for m in body.get("data", [])] if status == 200 and isinstance(body, dict) else []


def model_ready_at(url: str, model: str) -> bool:
    """Whether the KServe gRPC server at `url` says `model` is ready (False while it is not listening)."""
    import tritonclient.grpc as grpcclient

    try:
        with grpcclient.InferenceServerClient(url) as client:
            return client.is_model_ready(model)
    except Exception:  # not listening yet, or the model not found yet
        return False


def outputs_of(response) -> dict:
    """A ModelInferResponse's outputs by name, as lists, read from raw contents (Tritium) or typed contents
    (Dynamo's KServe door, which tritonclient's as_numpy cannot read under numpy 2)."""
    import numpy as np
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    typed = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents", "BOOL": "bool_contents"}  # fmt: skip
    outputs = {}
    for index, output in enumerate(response.outputs):
        if response.raw_output_contents:
            raw = response.raw_output_contents[index]
            dtype = triton_to_np_dtype(output.datatype)
            value = deserialize_bytes_tensor(raw) if output.datatype == "BYTES" else np.frombuffer(raw, dtype=dtype)
            outputs[output.name] = value.reshape(-1).tolist()
        else:
            outputs[output.name] = list(getattr(output.contents, typed[output.datatype]))
    return outputs


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for: {what}")
        time.sleep(0.1)


class DynamoProcess:
    """A Dynamo child process and its log."""

    def __init__(self, argv: list[str], env: dict[str, str], log: pathlib.Path) -> None:
        self.log_path = log
        self.handle = log.open("w")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=self.handle, stderr=subprocess.STDOUT, cwd=HERE)

    def log(self) -> str:
        """The log without its colour codes."""
        return re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()


class Deployment:
    """Processes sharing a namespace in one of the two setups Dynamo's users run: a file store with
    the TCP request plane and ZeroMQ events (the default), or, given `etcd` and `nats` addresses,
    etcd discovery with the NATS request plane and NATS events, every option a variable."""

    def __init__(
        self, folder: pathlib.Path, model_dir: pathlib.Path, namespace: str = "interop", etcd: str = "", nats: str = ""
    ) -> None:
        self.folder = folder
        self.store = folder / "store"
        self.model_dir = model_dir
        self.namespace = namespace
        self.etcd, self.nats = etcd, nats
        self.dynamo: list[DynamoProcess] = []
        self.tritium: list[TritiumServer] = []
        # Variables every process of this deployment gets, Dynamo's and Tritium's alike (DYN_TCP_TLS_*).
        self.shared_env: dict[str, str] = {}

    def dynamo_env(self) -> dict[str, str]:
        """Dynamo's own variables for this deployment, as its users set them."""
        hosts = {
            "DYN_NAMESPACE": self.namespace,
            "DYN_TCP_RPC_HOST": "127.0.0.1",
            "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
            "DYN_EVENT_PLANE_HOST": "127.0.0.1",
            "DYN_SYSTEM_HOST": "127.0.0.1",
        }
        hosts |= self.shared_env
        if self.etcd:
            return hosts | {
                "ETCD_ENDPOINTS": self.etcd,
                "NATS_SERVER": self.nats,
                "DYN_DISCOVERY_BACKEND": "etcd",
                "DYN_REQUEST_PLANE": "nats",
                "DYN_EVENT_PLANE": "nats",
            }
        return hosts | {"DYN_FILE_KV": str(self.store), "DYN_DISCOVERY_BACKEND": "file", "DYN_REQUEST_PLANE": "tcp"}

    def plane_flags(self) -> list[str]:
        if self.etcd:
            return ["--discovery-backend", "etcd", "--request-plane", "nats"]
        return ["--discovery-backend", "file", "--request-plane", "tcp"]

    def _spawn(self, name: str, argv: list[str], extra: dict[str, str] | None = None) -> DynamoProcess:
        env = dict(os.environ) | self.dynamo_env() | (extra or {}) | {
            # Dynamo 1.6.1's frontend deadlocks in about 1 start of 4 on 2 cores without these.
            "DYN_RUNTIME_NUM_WORKER_THREADS": "8",
            "DYN_RUNTIME_MAX_BLOCKING_THREADS": "64",
            "HF_HUB_OFFLINE": "1",
        }  # fmt: skip
        process = DynamoProcess([str(DYNAMO_PYTHON), *argv], env, self.folder / f"{name}-{len(self.dynamo)}.log")
        self.dynamo.append(process)
        return process

    def echo(self, model: str, *args: str, env: dict[str, str] | None = None) -> DynamoProcess:
        """The echo worker (Dynamo's Python API) serving `model`; `env` adds Dynamo variables."""
        return self._spawn(f"echo-{model}", [str(HERE / "echo_worker.py"), str(self.model_dir), model, *args], env)

    def tensor(self, model: str, config_hex: str) -> DynamoProcess:
        """The tensor worker (Dynamo's Python API, registered as `dynamo.triton` registers Triton's models)."""
        return self._spawn(f"tensor-{model}", [str(HERE / "tensor_worker.py"), model, config_hex])

    def mocker(self, model: str, *args: str) -> DynamoProcess:
        """`python -m dynamo.mocker`, instant (a huge speed-up: at 0 the 1.6.1 mocker still simulates)."""
        argv = ["-m", "dynamo.mocker", "--model-path", str(self.model_dir), "--model-name", model,
                *self.plane_flags(), "--speedup-ratio", "1000000", *args]  # fmt: skip
        return self._spawn(f"mocker-{model}", argv)

    def frontend_options(self) -> tuple[list[str], dict[str, str]]:
        """How a frontend is started in this setup, exactly as Dynamo's is: flags with the file store,
        variables with etcd (only the ports are flags then)."""
        if self.etcd:
            env = self.dynamo_env() | {"DYN_ROUTER_MODE": "kv", "DYN_MIGRATION_LIMIT": "2"}
            return [], env
        flags = [*self.plane_flags(), "--event-plane", "zmq", "--namespace", self.namespace,
                 "--router-mode", "kv", "--migration-limit", "2"]  # fmt: skip
        return flags, {"DYN_FILE_KV": str(self.store), "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1"} | self.shared_env

    def dynamo_frontend(self, *args: str) -> str:
        """Dynamo's own frontend; returns its HTTP base URL."""
        port = free_port()
        flags, _ = self.frontend_options()
        self._spawn("frontend", ["-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port), *flags, *args])
        return f"http://127.0.0.1:{port}"

    def tritium_worker(self, *args: str, env: dict[str, str] | None = None) -> TritiumServer:
        """`tritium worker --worker-protocol dynamo`, registered in this deployment's Dynamo layout (`env`
        overrides its Dynamo variables)."""
        variables = {k: v for k, v in self.dynamo_env().items() if k.startswith(("DYN_", "ETCD_", "NATS_"))}
        worker = start_worker("--worker-protocol", "dynamo", *args, env=variables | (env or {}))
        self.tritium.append(worker)
        return worker

    def tritium_frontend(self, *args: str) -> TritiumServer:
        """`tritium serve` started as Dynamo's frontend is (its flags and variables)."""
        flags, env = self.frontend_options()
        server = start_server(*flags, *args, env=env)
        self.tritium.append(server)
        return server

    def kserve_frontend(self, which: str, *args: str) -> tuple[str, str]:
        """Dynamo's frontend (`which` "dynamo") or `tritium serve` ("tritium") started for the KServe door
        exactly as Dynamo's users start it: `--kserve-grpc-server --http-port G --grpc-metrics-port M`, with
        this setup's planes (and `args` after them); returns the gRPC address (G) and the metrics URL (M)."""
        port, metrics = free_port(), free_port()
        flags, env = self.frontend_options()
        kserve = ["--kserve-grpc-server", "--http-host", "127.0.0.1", "--http-port", str(port), "--grpc-metrics-port", str(metrics)]
        if which == "dynamo":
            self._spawn("kserve-frontend", ["-m", "dynamo.frontend", *kserve, *flags, *args])
        else:
            server = launch(["serve", *kserve, *flags, *args], [], READY_PREFIX, 60, env=env, ports=(port, port, metrics))
            self.tritium.append(server)
        return f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics}/metrics"

    def echo_and_mock(self, timeout: float = 90) -> tuple[TritiumServer, str]:
        """An echo worker ("echo") and a mocker ("mock") behind both frontends, once both list them."""
        self.echo("echo")
        self.mocker("mock")
        tritium = self.tritium_frontend()
        dynamo = self.dynamo_frontend()
        for base in (tritium.http_url, dynamo):
            wait_until(lambda: {"echo", "mock"} <= set(models_at(base)), timeout, f"echo and mock listed at {base}")
        return tritium, dynamo

    def stop_frontends_after(self, count: int) -> None:
        """Stops Dynamo's frontends started after the first `count` Dynamo processes: each holds dozens of
        inotify instances watching the file store, and the user's 128 run out when a module keeps every
        frontend its tests started."""
        for process in self.dynamo[count:]:
            if process.log_path.name.startswith(("frontend-", "kserve-frontend-")):
                process.stop()

    def stop(self) -> None:
        for server in reversed(self.tritium):
            finish_server(server)
        for process in reversed(self.dynamo):
            process.stop()
        self.tritium, self.dynamo = [], []


# Fixtures of the tests in this folder (imported by each test file: a conftest.py here would shadow the suite's
# root conftest, which other folders import by that name).
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A Hugging Face folder Dynamo's workers load (tokenizer, template, config; no weights)."""
    check_private_network()
    folder = tmp_path_factory.mktemp("tiny-model")
    subprocess.run([str(DYNAMO_PYTHON), str(HERE / "tiny_model.py"), str(folder)], check=True, timeout=120)
    return folder


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model):
    deployment = Deployment(tmp_path_factory.mktemp("dynamo"), tiny_model)
    yield deployment
    deployment.stop()


@pytest.fixture
def transient_frontends(deployment):
    """Dynamo frontends a test starts in the module's deployment stop when the test ends (the module's own,
    started by its fixtures before, stay)."""
    before = len(deployment.dynamo)
    yield
    deployment.stop_frontends_after(before)
