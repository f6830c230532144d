"""The `tritium` Python package's server lifecycle in scripts of their own, run in the fresh environment
(package_env.py): `run()` serving until SIGINT, and a started server beside a main thread busy in pure Python,
stopped at interpreter exit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import textwrap

import numpy as np
import tritonclient.grpc as grpcclient

from package_env import PACKAGE_TEST_TIMEOUT, clean_env, python

pytestmark = PACKAGE_TEST_TIMEOUT

# A server on free ports with one bound function, `echo` (INT32 rows in, the same out).
ECHO_SERVER = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np
    import tritium

    server = tritium.Server(grpc_port=0, http_port=0, metrics_port=0, grpc_address="127.0.0.1",
                            http_address="127.0.0.1", metrics_address="127.0.0.1")
    server.bind("echo", lambda requests: [{"y": r["x"]} for r in requests],
                inputs=[tritium.Tensor(name="x", dtype=np.int32, shape=(-1,))],
                outputs=[tritium.Tensor(name="y", dtype=np.int32, shape=(-1,))])
    """
)


RUN_SCRIPT = ECHO_SERVER + textwrap.dedent(
    """
    server.start()
    print(json.dumps({"grpc": server.grpc_port}), flush=True)
    server.run()
    print(json.dumps({"stopped": not server.running}), flush=True)
    """
)


def test_run_serves_until_sigint(venv, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    proc = subprocess.Popen([python(venv), str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-4000:]
        port = json.loads(line)["grpc"]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = grpcclient.InferInput("x", [1, 2], "INT32")
        x.set_data_from_numpy(np.array([[7, 8]], dtype=np.int32))
        assert client.infer("echo", [x]).as_numpy("y").tolist() == [[7, 8]]
        client.close()
        proc.send_signal(signal.SIGINT)
        assert json.loads(proc.stdout.readline()) == {"stopped": True}
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


AT_EXIT_SCRIPT = ECHO_SERVER + textwrap.dedent(
    """
    started = time.monotonic()
    server.start()
    print(json.dumps({"grpc": server.grpc_port, "start_s": time.monotonic() - started}), flush=True)
    # Pure Python on the main thread while the server serves: neither waits for the other.
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
    spins = 0
    while not done.is_set():
        spins += 1
    print(json.dumps({"spins": spins}), flush=True)
    # No stop(): the interpreter's exit stops the server.
    """
)


def test_a_server_serves_beside_busy_python_and_stops_at_interpreter_exit(venv, tmp_path):
    script = tmp_path / "at_exit.py"
    script.write_text(AT_EXIT_SCRIPT)
    proc = subprocess.Popen([python(venv), str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(), cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-4000:]
        port = json.loads(line)["grpc"]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        # The main thread spins in Python meanwhile; the bound function still gets its turns.
        for value in range(3):
            x = grpcclient.InferInput("x", [1, 1], "INT32")
            x.set_data_from_numpy(np.array([[value]], dtype=np.int32))
            assert client.infer("echo", [x]).as_numpy("y").tolist() == [[value]]
        client.close()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["spins"] > 0
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-4000:]
        errors = proc.stderr.read()
        assert "Traceback" not in errors and "panicked" not in errors, errors[-4000:]
        # The process is gone, so is its listener: nothing accepts on the port.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
