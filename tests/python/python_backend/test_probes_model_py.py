"""Hostile and careless model.py files (issue 46's probe suite, the python backend's part): a model that execs
another program, kills or stops itself, scribbles over its shared-memory region, closes or writes garbage into its
socket to the server, ignores SIGTERM, or prints megabytes. One server holds them all beside a healthy model. After
each probe: the server is alive, the healthy model answers, the hostile model answers its next request (a new stub
where the old one is gone), nothing hung (every call has a deadline). At the end the server's memory is within a
margin of where it was before the probes, SIGTERM ends it with status 0, and no process of its own is left.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import start_server, write_python_model
from test_python_supervision import config, end_leftovers, int32_input, leftovers, noted, running, wait_for

pytestmark = pytest.mark.python_backend

PYTHON = sys.executable

# Every model notes each stub's pid in its PIDS file; IN[0] == 1 sets the probe off, anything else echoes.
HOSTILE = textwrap.dedent("""
    import json
    import mmap
    import os
    import signal
    import sys
    import time
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            with open(json.loads(args["model_config"])["parameters"]["PIDS"]["string_value"], "a") as f:
                f.write(f"{os.getpid()}\\n")
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        def execute(self, requests):
            values = pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy()
            if values[0] == 1:
                probe()
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                    .as_numpy().copy())]) for r in requests]
""")

PROBES = {
    # The process image is replaced: same pid, socket still open, nothing ever answers (the execute timeout ends it).
    "execs": "def probe():\n    os.execv('/bin/sleep', ['sleep', '3600'])\n",
    "segfaults": "def probe():\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
    "stops": "def probe():\n    os.kill(os.getpid(), signal.SIGSTOP)\n",
    # Every byte of the region (fd 4) overwritten, then a normal answer: the server trusts no offset it did not check.
    "scribbles": ("def probe():\n    region = mmap.mmap(4, 0)\n    region[:] = b'\\xff' * len(region)\n"),
    "closes_socket": "def probe():\n    os.close(3)\n",
    "garbage_frames": "def probe():\n    os.write(3, b'\\xff' * 4096 + os.urandom(65536))\n    time.sleep(5)\n",
    "prints": ("def probe():\n    chunk = 'x' * 1023 + '\\n'\n"
               "    for _ in range(8 * 1024):\n        sys.stdout.write(chunk)\n        sys.stderr.write(chunk)\n"),
}

TIMEOUT = 'parameters { key: "execute_timeout_seconds" value { string_value: "2" } }\n'


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def call(client, model: str, values) -> tuple[str, object]:
    try:
        return "ok", client.infer(model, [int32_input(values)], client_timeout=30).as_numpy("OUT")
    except InferenceServerException as error:
        return str(error.status()), error.message()


@pytest.fixture
def hostile_server(tmp_path):
    repo = tmp_path / "models"
    for name, probe in PROBES.items():
        write_python_model(repo, name, config(tmp_path / f"{name}.pids", TIMEOUT), HOSTILE + "\n" + probe)
    write_python_model(repo, "healthy", config(tmp_path / "healthy.pids"), HOSTILE + "\ndef probe():\n    pass\n")
    server = start_server("--model-repository", str(repo), "--python-interpreter", PYTHON,
                          "--backend-config", "python,stub-timeout-seconds=5", "--exit-timeout-secs", "2")  # fmt: skip
    sid = os.getsid(server.proc.pid)
    yield server, tmp_path
    end_leftovers(server, sid, [pid for name in [*PROBES, "healthy"] for pid in noted(tmp_path / f"{name}.pids")])
    server.stop()
    server.stderr_path.unlink(missing_ok=True)


def test_hostile_model_py_files_hurt_only_themselves(hostile_server):
    server, folder = hostile_server
    client = grpcclient.InferenceServerClient(server.url)
    for _ in range(20):
        assert call(client, "healthy", [2, 3])[0] == "ok"
    before = rss_kib(server.proc.pid)
    outcomes = {}
    for name in PROBES:
        outcomes[name] = call(client, name, [1])
        assert server.proc.poll() is None, f"{name}: the server exited"
        np.testing.assert_array_equal(call(client, "healthy", [4, 5])[1], [4, 5])
        # The next request is answered: by the same stub where it survived, by a new one where it did not.
        assert wait_for(lambda: client.is_model_ready(name), 30), f"{name}: not ready again"
        status, answer = call(client, name, [6, 7])
        assert status == "ok", f"{name}: {status} {answer}"
        np.testing.assert_array_equal(answer, [6, 7])
    # What each probe's own request got: an answer where the stub survived, else the reason, never a hang.
    assert outcomes["scribbles"][0] == "ok" and outcomes["prints"][0] == "ok", outcomes
    for name in ("segfaults", "closes_socket", "garbage_frames"):
        assert outcomes[name] == ("StatusCode.INTERNAL", f"Stub process '{name}_0' is not healthy."), outcomes[name]
    for name in ("execs", "stops"):
        assert outcomes[name][0] == "StatusCode.UNAVAILABLE" and "did not return from execute" in outcomes[name][1]
    for name in ("execs", "segfaults", "stops", "closes_socket", "garbage_frames"):
        first = noted(folder / f"{name}.pids")[0]
        assert wait_for(lambda: not running(first), 10), f"{name}: the old stub {first} is still running"
    for _ in range(20):
        assert call(client, "healthy", [2, 3])[0] == "ok"
    after = rss_kib(server.proc.pid)
    assert after < before + 64 * 1024, f"the server's RSS grew from {before} KiB to {after} KiB"
    sid = os.getsid(server.proc.pid)
    pids = [pid for name in [*PROBES, "healthy"] for pid in noted(folder / f"{name}.pids")]
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert wait_for(lambda: not leftovers(server.proc.pid, sid, pids), 10), leftovers(server.proc.pid, sid, pids)


def test_shutdown_with_every_hostile_model_busy_leaves_nothing_behind(hostile_server):
    server, folder = hostile_server
    client = grpcclient.InferenceServerClient(server.url)
    sid = os.getsid(server.proc.pid)
    futures = [client.async_infer(name, [int32_input([1])], callback=lambda *_: None, client_timeout=30)
               for name in ("execs", "stops", "prints", "garbage_frames")]  # fmt: skip
    time.sleep(0.2)  # the requests reach their stubs (either order is fine: shutdown must end them all)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    del futures
    pids = [pid for name in [*PROBES, "healthy"] for pid in noted(folder / f"{name}.pids")]
    assert wait_for(lambda: not leftovers(server.proc.pid, sid, pids), 10), leftovers(server.proc.pid, sid, pids)
