"""The python backend watches its stub processes, not only their sockets (issue 46), with the real tritonclient over
gRPC and raw HTTP:

- a model.py whose `initialize` forks a helper (multiprocessing, fork start method) and whose `execute` then exits:
  the request fails at once with Triton's "not healthy" error, the model is not ready while a new stub starts, the
  helper is gone, and the next request is served by the new stub;
- `execute_timeout_seconds` (a config parameter) and `--backend-config=python,execute-timeout-seconds` end a stuck
  `execute` by ending its stub: the request gets UNAVAILABLE / HTTP 503, the requests queued behind it run on a new
  stub;
- Triton's per-request `timeout` bounds the dynamic batcher's queue over HTTP as over gRPC;
- SIGTERM with fork helpers, a daemonised grandchild (double fork and setsid), a stub stuck in `initialize` (a load
  that timed out) and one stuck in `execute` leaves no process behind and exits 0;
- a server killed with SIGKILL takes its stubs with it (the lifeline pipe).

Every helper process the models start writes its pid to a file named by the config's PIDS parameter; "no process
left" means none of those pids, no stub of the server's session and no process carrying the server's stub tag runs.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import sys
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import expect_error, start_server, wait_for, write_python_model

pytestmark = pytest.mark.python_backend

PYTHON = sys.executable

INT32_IO = """
    max_batch_size: 0
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
    output [ { name: "OUT", data_type: TYPE_INT32, dims: [ -1 ] } ]
"""

# Shared by the models below: the PIDS parameter names the file each helper's pid goes to.
PREAMBLE = """
    import json
    import multiprocessing
    import os
    import signal
    import time
    import triton_python_backend_utils as pb_utils

    def pid_file(args):
        return json.loads(args["model_config"])["parameters"]["PIDS"]["string_value"]

    def note(path, pid):
        with open(path, "a") as f:
            f.write(f"{pid}\\n")

    def echo(requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                .as_numpy().copy())]) for r in requests]

    def first(requests):
        return int(pb_utils.get_input_tensor_by_name(requests[0], "IN").as_numpy().flatten()[0])
"""

# initialize starts a forked multiprocessing helper; IN[0] == 1 makes execute exit the stub; a stub started again
# (its PIDS file already exists) takes 2 s in initialize, so the test sees the model unready meanwhile.
FORKER = PREAMBLE + """
    class TritonPythonModel:
        def initialize(self, args):
            path = pid_file(args)
            again = os.path.exists(path)
            helper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(3600,), daemon=False)
            helper.start()
            note(path, helper.pid)
            note(path, os.getpid())
            if again:
                time.sleep(2)

        def execute(self, requests):
            if first(requests) == 1:
                os._exit(1)
            return echo(requests)
"""

# initialize leaves a daemon behind: a double fork with setsid, out of the stub's process group.
DAEMON = PREAMBLE + """
    class TritonPythonModel:
        def initialize(self, args):
            path = pid_file(args)
            child = os.fork()
            if child == 0:
                os.setsid()
                if os.fork() == 0:
                    note(path, os.getpid())
                    time.sleep(3600)
                os._exit(0)
            os.waitpid(child, 0)

        def execute(self, requests):
            return echo(requests)
"""

STUCK_INIT = PREAMBLE + """
    class TritonPythonModel:
        def initialize(self, args):
            note(pid_file(args), os.getpid())
            time.sleep(3600)

        def execute(self, requests):
            return echo(requests)
"""

# IN[0] == 2: execute never returns; IN[0] == 3: the stub stops itself (SIGSTOP).
STUCK_EXEC = PREAMBLE + """
    class TritonPythonModel:
        def initialize(self, args):
            note(pid_file(args), os.getpid())

        def execute(self, requests):
            if first(requests) == 2:
                time.sleep(3600)
            if first(requests) == 3:
                os.kill(os.getpid(), signal.SIGSTOP)
            return echo(requests)
"""


def config(pids: pathlib.Path, extra: str = "") -> str:
    return INT32_IO + f'parameters {{ key: "PIDS" value {{ string_value: "{pids}" }} }}\n' + extra


def noted(path: pathlib.Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def leftovers(server_pid: int, sid: int, pids: list[int]) -> list[int]:
    """Processes that are still the server's after it exited: noted pids, stubs of its session, tagged descendants."""
    left = {pid for pid in pids if running(pid)}
    tag = f"TRITIUM_PYTHON_STUB_OF={server_pid}.".encode()
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or not running(int(entry.name)):
            continue
        try:
            if any(var.startswith(tag) for var in (entry / "environ").read_bytes().split(b"\0")):
                left.add(int(entry.name))
            elif b"tritium_python_stub.py" in (entry / "cmdline").read_bytes() and os.getsid(int(entry.name)) == sid:
                left.add(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return sorted(left)


def end_leftovers(server, sid: int, pids: list[int]) -> None:
    """Kills what a failed test left (before `server.stop()`, which would wait on a stdout pipe they hold)."""
    for pid in leftovers(server.proc.pid, sid, pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def int32_input(values) -> grpcclient.InferInput:
    data = np.array(values, dtype=np.int32)
    tensor = grpcclient.InferInput("IN", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return tensor


class Reply:
    def __init__(self, status_code: int, text: str) -> None:
        self.status_code, self.text = status_code, text

    def json(self):
        return json.loads(self.text)


def post(server, path: str, body: dict) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=60)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return Reply(response.status, response.read().decode())
    finally:
        connection.close()


def http_infer(server, model: str, values: list[int]) -> Reply:
    body = {"inputs": [{"name": "IN", "datatype": "INT32", "shape": [len(values)], "data": values}]}
    return post(server, f"/v2/models/{model}/infer", body)


def serve(repo: pathlib.Path, *extra: str):
    # Started by hand (not the fixture): these tests end the server themselves.
    return start_server("--model-repository", str(repo), "--python-interpreter", PYTHON,
                        "--backend-config", "python,stub-timeout-seconds=5", *extra)  # fmt: skip


def test_a_stub_that_exits_while_its_forked_helper_holds_its_socket_fails_at_once_and_is_replaced(tmp_path):
    pids = tmp_path / "forker.pids"
    write_python_model(tmp_path / "models", "forker", config(pids), FORKER)
    server = serve(tmp_path / "models")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        helper, stub = noted(pids)
        assert running(helper) and running(stub)
        # Before the stub was watched by its pid this hung until the helper exited (an hour here).
        error = expect_error("INTERNAL", "is not healthy", client.infer, "forker", [int32_input([1])], client_timeout=20)
        assert "forker" in str(error)
        assert not client.is_model_ready("forker"), "not ready while the new stub initializes"
        assert wait_for(lambda: not running(helper) and not running(stub)), "the old stub's group is gone"
        assert wait_for(lambda: client.is_model_ready("forker")), "ready once the new stub has started"
        result = client.infer("forker", [int32_input([5, 6])])
        np.testing.assert_array_equal(result.as_numpy("OUT"), [5, 6])
        assert len(noted(pids)) == 4 and noted(pids)[3] != stub, "a new stub (and helper) serves the model"
    finally:
        server.stop()


def test_the_execute_timeout_parameter_ends_a_stuck_execute_and_the_queue_behind_it_runs(tmp_path):
    pids = tmp_path / "stuck.pids"
    extra = 'parameters { key: "execute_timeout_seconds" value { string_value: "1.5" } }\n'
    write_python_model(tmp_path / "models", "stuck", config(pids, extra), STUCK_EXEC)
    server = serve(tmp_path / "models")
    try:
        answers: dict[str, Reply] = {}
        stuck = threading.Thread(target=lambda: answers.update(stuck=http_infer(server, "stuck", [2])))
        stuck.start()
        time.sleep(0.3)  # usually lets the stuck request reach the stub first; either order passes
        behind = http_infer(server, "stuck", [7, 8])
        stuck.join(timeout=60)
        reply = answers["stuck"]
        assert reply.status_code == 503, reply.text
        assert "did not return from execute within 1.5 s" in reply.json()["error"], reply.text
        assert behind.status_code == 200, behind.text
        assert behind.json()["outputs"][0]["data"] == [7, 8]
        first_stub = noted(pids)[0]
        assert wait_for(lambda: not running(first_stub)), "the stuck stub was ended"
        # A stub that stopped itself (SIGSTOP) is ended the same way.
        reply = http_infer(server, "stuck", [3])
        assert reply.status_code == 503 and "did not return from execute" in reply.text, reply.text
        assert http_infer(server, "stuck", [9]).json()["outputs"][0]["data"] == [9]
    finally:
        server.stop()


def test_the_backend_config_execute_timeout_applies_over_grpc(tmp_path):
    pids = tmp_path / "stuck.pids"
    write_python_model(tmp_path / "models", "stuck", config(pids), STUCK_EXEC)
    server = serve(tmp_path / "models", "--backend-config", "python,execute-timeout-seconds=1")
    try:
        client = grpcclient.InferenceServerClient(server.url)
        expect_error("UNAVAILABLE", "did not return from execute within 1 s", client.infer, "stuck", [int32_input([2])],
                     client_timeout=30)  # fmt: skip
        np.testing.assert_array_equal(client.infer("stuck", [int32_input([4])]).as_numpy("OUT"), [4])
    finally:
        server.stop()


def test_the_request_timeout_parameter_bounds_the_batcher_queue_over_http(tmp_path):
    pids = tmp_path / "sleepy.pids"
    batched = """
        max_batch_size: 1
        dynamic_batching { default_queue_policy { timeout_action: REJECT, allow_timeout_override: true,
                                                  default_timeout_microseconds: 20000000 } }
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
    """ + f'parameters {{ key: "PIDS" value {{ string_value: "{pids}" }} }}\n'
    source = PREAMBLE + """
    class TritonPythonModel:
        def execute(self, requests):
            time.sleep(first(requests) / 1000)
            return echo(requests)
    """
    write_python_model(tmp_path / "models", "sleepy", batched, source)
    server = serve(tmp_path / "models")
    try:
        path = "/v2/models/sleepy/infer"

        def body(ms: int, **parameters) -> dict:
            return {"inputs": [{"name": "IN", "datatype": "INT32", "shape": [1, 1], "data": [ms]}], "parameters": parameters}

        busy = threading.Thread(target=lambda: post(server, path, body(1500)))
        busy.start()
        time.sleep(0.3)  # the first request is executing; the next one waits in the batcher's queue
        reply = post(server, path, body(10, timeout=100_000))
        busy.join()
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "Request timeout expired"
        assert post(server, path, body(10, timeout=10_000_000)).status_code == 200
    finally:
        server.stop()


def test_sigterm_leaves_no_process_behind(tmp_path):
    repo = tmp_path / "models"
    files = {name: tmp_path / f"{name}.pids" for name in ("forker", "daemon", "stuck_init", "stuck_exec")}
    write_python_model(repo, "forker", config(files["forker"]), FORKER)
    write_python_model(repo, "daemon", config(files["daemon"]), DAEMON)
    write_python_model(repo, "stuck_init", config(files["stuck_init"]), STUCK_INIT)
    write_python_model(repo, "stuck_exec", config(files["stuck_exec"]), STUCK_EXEC)
    server = serve(repo, "--model-control-mode", "explicit", "--model-load-timeout-secs", "2", "--exit-timeout-secs", "2")
    sid = os.getsid(server.proc.pid)
    try:
        client = grpcclient.InferenceServerClient(server.url)
        for name in ("forker", "daemon", "stuck_exec"):
            client.load_model(name)
        expect_error("UNAVAILABLE", "goes on in the background", client.load_model, "stuck_init")
        assert wait_for(lambda: noted(files["stuck_init"])), "the stuck initialize is running"
        outcome: list[BaseException] = []

        def stuck_call() -> None:
            try:
                client.infer("stuck_exec", [int32_input([2])], client_timeout=60)
            except BaseException as error:  # noqa: BLE001 - any ending will do; it must only end
                outcome.append(error)

        in_flight = threading.Thread(target=stuck_call)
        in_flight.start()
        # The same over HTTP: at the end of the grace period it is answered 503, not cut off.
        http_answers: list[Reply] = []
        http_in_flight = threading.Thread(target=lambda: http_answers.append(http_infer(server, "stuck_exec", [2])))
        http_in_flight.start()
        all_pids = [pid for path in files.values() for pid in noted(path)]
        assert len(all_pids) == 5 and all(running(pid) for pid in all_pids), all_pids
        time.sleep(0.3)  # the stuck request reaches its stub
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        in_flight.join(timeout=30)
        http_in_flight.join(timeout=30)
        assert outcome, "the stuck call ended with an error"
        assert http_answers and http_answers[0].status_code == 503, http_answers and http_answers[0].text
        assert "grace period" in http_answers[0].json()["error"]
        assert wait_for(lambda: not leftovers(server.proc.pid, sid, all_pids), 10), leftovers(server.proc.pid, sid, all_pids)
    finally:
        end_leftovers(server, sid, [pid for path in files.values() for pid in noted(path)])
        server.stop()
        server.stderr_path.unlink(missing_ok=True)


def test_a_server_killed_outright_takes_its_stubs_with_it(tmp_path):
    pids = tmp_path / "forker.pids"
    write_python_model(tmp_path / "models", "forker", config(pids), FORKER)
    server = serve(tmp_path / "models")
    sid = os.getsid(server.proc.pid)
    try:
        helper, stub = noted(pids)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        # The stub's lifeline reads end-of-file; it ends its own process group (the helper with it).
        assert wait_for(lambda: not leftovers(server.proc.pid, sid, [helper, stub]), 20), leftovers(server.proc.pid, sid, [helper, stub])
    finally:
        end_leftovers(server, sid, noted(pids))
        server.stop()
        server.stderr_path.unlink(missing_ok=True)


def test_what_the_server_reports_about_a_dead_stub_does_not_echo_secrets(tmp_path):
    # The request's error is Triton's fixed sentence; the exit status and cause go to the log only.
    pids = tmp_path / "forker.pids"
    write_python_model(tmp_path / "models", "forker", config(pids), FORKER)
    server = serve(tmp_path / "models")
    try:
        reply = http_infer(server, "forker", [1])
        assert reply.status_code == 500
        assert json.loads(reply.text) == {"error": "Stub process 'forker_0' is not healthy."}
    finally:
        server.stop()
