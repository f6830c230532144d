"""Records what PyTriton 0.7's own examples print, into pytriton_outputs.json, for
tests/python/package/test_python_package.py to compare Tritium's answers with. Run it with PyTriton
installed (bench/lib/install-triton.sh puts nvidia-pytriton in .tools/triton-venv):

    .tools/triton-venv/bin/python tests/pytriton_examples/record_pytriton_outputs.py

Each example here is run as PyTriton ships it (the import prefix turned back to ``pytriton.``):
its server.py with ports from PYTRITON_TRITON_CONFIG_*, then its client.py through run_client.py;
what the client logs as ``NAME: [values]`` is recorded, in order."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = ["add_sub_python", "add_sub_python_with_optional", "identity_python", "multiple_models_python"]
LINE = re.compile(r" - INFO - examples\.[\w.]+\.client: (\S+): (\[.*\])$")


def logged_values(text: str) -> list:
    """The ``NAME: [values]`` lines a client logged, as [name, values-repr] pairs in order."""
    return [[m.group(1), m.group(2)] for m in map(LINE.search, text.splitlines()) if m]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_live(port: int, server: subprocess.Popen) -> None:
    """Until the server answers /v2/health/live (PyTriton's client does not wait for a server
    that is not listening yet)."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server on port {port} did not come up")


def record(example: str, work: pathlib.Path) -> list:
    folder = work / example
    folder.mkdir()
    for name in ("server.py", "client.py"):
        text = (HERE / example / name).read_text()
        (folder / name).write_text(text.replace("from tritium.pytriton.", "from pytriton."))
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = dict(os.environ, PYTRITON_TRITON_CONFIG_HTTP_PORT=str(http), PYTRITON_TRITON_CONFIG_GRPC_PORT=str(grpc), PYTRITON_TRITON_CONFIG_METRICS_PORT=str(metrics))
    # The python backend's stub must load the libpython of this interpreter (a system libpython
    # of another patch release fails the model's load).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    server = subprocess.Popen([sys.executable, str(folder / "server.py")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_live(http, server)
        # The client waits for the model to be ready.
        client = subprocess.run(
            [sys.executable, str(HERE / "run_client.py"), "pytriton.client.utils", str(http), str(grpc), str(folder / "client.py")],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
    if client.returncode != 0:
        raise SystemExit(f"{example}: the client failed ({client.returncode}):\n{client.stderr[-4000:]}")
    return logged_values(client.stderr)


def main() -> None:
    with tempfile.TemporaryDirectory() as work:
        outputs = {example: record(example, pathlib.Path(work)) for example in EXAMPLES}
    import pytriton

    version = getattr(pytriton, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("nvidia-pytriton")
    document = {"recorded_with": f"nvidia-pytriton {version}", "command": ".tools/triton-venv/bin/python tests/pytriton_examples/record_pytriton_outputs.py", "outputs": outputs}
    lines = [f'  "{k}": {json.dumps(v)},' for k, v in document.items() if k != "outputs"]
    lines += ['  "outputs": {', ",\n".join(f"    {json.dumps(name)}: {json.dumps(pairs)}" for name, pairs in outputs.items()), "  }"]
    (HERE / "pytriton_outputs.json").write_text("{\n" + "\n".join(lines) + "\n}\n")


if __name__ == "__main__":
    main()
