"""Start the real `tritium` binary on a pre-bound ephemeral listener, and write model repositories.

The test process binds 127.0.0.1:0, hands the listening socket to `tritium serve --grpc-listen-fd FD`
and blocks on the child's stdout until it prints `tritium ready ...` (no fixed ports, no sleeps).
"""


from __future__ import annotations

import os
import pathlib
import queue
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import NoReturn

import pytest
from tritonclient.utils import InferenceServerException

# The suite's root (tests/python: helpers, fixtures/, recordings) and the repository above it. Test files live in
# subfolders by area; they reach both through these two names, never through their own __file__.
TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parents[1]
READY_PREFIX = "tritium ready"
WORKER_READY_PREFIX = "tritium worker ready"
DEFAULT_START_TIMEOUT = 60.0


NEEDS_ATTRIBUTE = "tritium_needs"


def needs(*markers: str):
    """Declares what a fixture needs beyond the venv and the binary (markers registered in pytest.ini): every test
    that uses the fixture, directly or through another fixture, gets those markers (conftest.py's
    pytest_collection_modifyitems), so `-m "not etcd"` leaves it out. Put it below `@pytest.fixture`."""

    def mark(function):
        if type(function).__name__ == "FixtureFunctionDefinition":
            raise TypeError(f"@needs{markers} goes below @pytest.fixture (on the function itself)")
        setattr(function, NEEDS_ATTRIBUTE, (*getattr(function, NEEDS_ATTRIBUTE, ()), *markers))
        return function

    return mark


def tritium_bin() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("TRITIUM_BIN", REPO / "target" / "debug" / "tritium"))
    if not path.is_file():
        pytest.fail(f"server binary {path} not found: run `cargo build -p tritium-server --bin tritium` (or set TRITIUM_BIN)")
    return path


@dataclass
class TritiumServer:
    """A running `tritium serve` child process."""

    proc: subprocess.Popen
    port: int
    http_port: int
    ready_line: str
    stderr_path: pathlib.Path
    stdout_lines: list[str] = field(default_factory=list)
    metrics_port: int = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int:
        """Terminate (then kill if needed) and return the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def bound_listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    return listener


def start_server(
    *args: str, timeout: float = DEFAULT_START_TIMEOUT, stdin: int = subprocess.DEVNULL, env: dict[str, str] | None = None
) -> TritiumServer:
    """Start `tritium serve` on gRPC, HTTP and metrics sockets bound here and wait for its ready line
    (`stdin=subprocess.PIPE` gives the test the server's stdin, for `-i`; `env` adds variables, such
    as Dynamo's)."""
    listeners = [bound_listener() for _ in range(3)]
    grpc_fd, http_fd, metrics_fd = (listener.fileno() for listener in listeners)
    argv = ["serve", "--grpc-listen-fd", str(grpc_fd), "--http-listen-fd", str(http_fd), "--metrics-listen-fd", str(metrics_fd), *args]
    return launch(argv, listeners, READY_PREFIX, timeout, stdin=stdin, env=env)


def start_worker(*args: str, timeout: float = DEFAULT_START_TIMEOUT, env: dict[str, str] | None = None) -> TritiumServer:
    """Start `tritium worker` on a worker-plane socket bound here and wait for its ready line
    (`env` adds variables, such as Dynamo's)."""
    listener = bound_listener()
    argv = ["worker", "--worker-listen-fd", str(listener.fileno()), *args]
    return launch(argv, [listener], WORKER_READY_PREFIX, timeout, env=env)


def launch(
    argv: list[str],
    listeners: list[socket.socket],
    ready_prefix: str,
    timeout: float,
    stdin: int = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    ports: tuple[int, int, int] = (0, 0, 0),
) -> TritiumServer:
    """Run `tritium ARGV` holding `listeners` (the first is the gRPC one; a second is HTTP, a third
    metrics) and wait until it prints `ready_prefix` announcing the first listener's address. With no
    listeners, ARGV names the ports, and `ports` says which they are (gRPC, HTTP, metrics)."""
    binary = tritium_bin()
    named = [listener.getsockname()[1] for listener in listeners]
    port, http_port, metrics_port = (named[i] if len(named) > i else ports[i] for i in range(3))
    fds = [listener.fileno() for listener in listeners]
    err = tempfile.NamedTemporaryFile(prefix="tritium-stderr-", suffix=".log", delete=False)
    stderr_path = pathlib.Path(err.name)
    cmd = [str(binary), *argv]
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=err,
            pass_fds=fds,
            text=True,
            bufsize=1,
            cwd=REPO,
            # Settings come only from the arguments: TRITIUM_* (and Dynamo's DYN_GRPC_*) env vars would change them.
            env={k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_GRPC_"))} | (env or {}),
        )
    finally:
        # The child holds its own copies of the listeners; ours would only keep the ports alive after it exits.
        for listener in listeners:
            listener.close()
        err.close()

    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        # Keeps draining stdout for the server's whole life so it can never block on a full pipe.
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                seen.append(line.rstrip("\n"))
                lines.put(line.rstrip("\n"))
        except ValueError:  # stdout closed during teardown
            pass
        lines.put(None)

    threading.Thread(target=pump, name=f"tritium-stdout-{port}", daemon=True).start()

    server = TritiumServer(
        proc=proc, port=port, http_port=http_port, ready_line="", stderr_path=stderr_path, stdout_lines=seen, metrics_port=metrics_port
    )
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise queue.Empty
            line = lines.get(timeout=remaining)
        except queue.Empty:
            _abandon(server, f"`{' '.join(cmd)}` printed no '{ready_prefix}' line within {timeout:.0f}s")
        if line is None:
            rc = proc.wait(timeout=15)
            _abandon(server, f"`{' '.join(cmd)}` exited with status {rc} before it was ready")
        if line.startswith(ready_prefix):
            server.ready_line = line
            announced = line.split("grpc=", 1)[1].split()[0] if "grpc=" in line else server.url
            if announced != server.url:
                _abandon(server, f"server announced {announced!r} but was handed the listener on {server.url}")
            return server


def _abandon(server: TritiumServer, why: str) -> NoReturn:
    server.stop()
    text = server.stderr()
    server.stderr_path.unlink(missing_ok=True)
    pytest.fail(f"{why}\nstdout:\n{tail(chr(10).join(server.stdout_lines))}\nstderr:\n{tail(text)}")


def finish_server(server: TritiumServer) -> None:
    """Stop a server; fail the test if it had already exited on its own."""
    died = server.proc.poll()
    server.stop()
    text = server.stderr()
    server.stderr_path.unlink(missing_ok=True)
    if died is not None:
        pytest.fail(f"tritium exited on its own during the tests (status {died})\nstderr:\n{tail(text)}")


def wait_for(condition, timeout: float = 30.0) -> bool:
    """Polls `condition` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def write_model(repo: pathlib.Path, name: str, config: str, versions: tuple[int, ...] = (1,)) -> pathlib.Path:
    """Write `<repo>/<name>/config.pbtxt` and an empty folder per version (enough for built-in backends)."""
    model_dir = repo / name
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / str(version)).mkdir(exist_ok=True)
    return model_dir


def identity_config(name: str, data_type: str, dims: str = "[ -1 ]", max_batch_size: int = 0) -> str:
    """config.pbtxt of a built-in identity model with one input and one output."""
    return f"""
name: "{name}"
backend: "identity"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT0" data_type: {data_type} dims: {dims} }} ]
output [ {{ name: "OUTPUT0" data_type: {data_type} dims: {dims} }} ]
"""


def add_sub_config(name: str, data_type: str = "TYPE_INT32", dims: str = "[ 16 ]") -> str:
    """config.pbtxt of a built-in add_sub model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    return f"""
name: "{name}"
backend: "add_sub"
max_batch_size: 0
input [
  {{ name: "INPUT0" data_type: {data_type} dims: {dims} }},
  {{ name: "INPUT1" data_type: {data_type} dims: {dims} }}
]
output [
  {{ name: "OUTPUT0" data_type: {data_type} dims: {dims} }},
  {{ name: "OUTPUT1" data_type: {data_type} dims: {dims} }}
]
"""


def expect_error(status: str, fragment: str, fn, *args, **kwargs) -> InferenceServerException:
    """Call fn and assert it raises InferenceServerException with gRPC `status` (e.g. "NOT_FOUND", or None
    for an in-band error without a status) and a message containing `fragment`."""
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)
    err = info.value
    want = None if status is None else f"StatusCode.{status}"
    assert err.status() == want, f"expected status {want}, got {err.status()} ({err.message()!r})"
    assert fragment in err.message(), f"expected {fragment!r} in {err.message()!r}"
    return err


class ResultStream:
    """A tritonclient gRPC stream (`ModelStreamInfer`) whose results queue up for `until_finals`; subclasses send."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        import tritonclient.grpc as grpcclient

        self.timeout = timeout
        self.client = grpcclient.InferenceServerClient(url)
        self.events: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.events.put((result, error)))

    def until_finals(self, count: int) -> dict[str, list]:
        """Responses that carry outputs, by request id in arrival order, until `count` requests have sent their
        final flag (requests must ask for empty final responses)."""
        by_id: dict[str, list] = {}
        finals = 0
        while finals < count:
            result, error = self.events.get(timeout=self.timeout)
            assert error is None, f"{error.status()}: {error.message()}"
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                finals += 1
            if response.outputs:
                by_id.setdefault(response.id, []).append(result)
        return by_id

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def write_python_model(repo: pathlib.Path, name: str, config: str, source: str) -> pathlib.Path:
    """`repo/name` as a Python model: config.pbtxt (`backend: "python"` plus `config`, dedented) and 1/model.py."""
    import textwrap

    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(source))
    return model_dir


def start_failure(*args: str, env: dict[str, str] | None = None) -> str:
    """Starts a server that must exit before it is ready; returns helpers' failure text (with its stderr)."""
    try:
        server = start_server(*args, timeout=60, env=env)
    except pytest.fail.Exception as failed:
        return str(failed)
    finish_server(server)
    pytest.fail(f"the server started with {args}: {server.ready_line}")
