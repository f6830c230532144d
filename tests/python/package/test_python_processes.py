"""Process instances of bound functions (`tritium.ModelConfig(instance_kind="process")`), in the package's
fresh virtual environment (the session's `venv` fixture, package_env.py): a pure-Python function on two
process instances runs two calls at once in two processes other than the server's (their pids and
rendezvous prove it, no timing is asserted); a `__main__` script's function under `@tritium.batch` with
the dynamic batcher; generator and async functions; errors raised in the child reach the client; a child
that exits or is SIGKILLed mid-call gives UNAVAILABLE and is replaced; `timeout_s` kills a spinning child;
lambdas and closures are refused at bind time; `Server.stop` leaves no child (not even a zombie) and a
server killed with SIGKILL takes its children with it.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import subprocess
import textwrap
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from package_env import PACKAGE_TEST_TIMEOUT, clean_env, python

pytestmark = PACKAGE_TEST_TIMEOUT

FUNCTIONS = textwrap.dedent(
    """
    import os, pathlib, time
    import numpy as np

    def meet(requests):
        # Pure Python, holding the GIL: marks itself in the round's folder and spins until another
        # call has marked itself too (or gives up), then says who it was and when it ran.
        start = time.monotonic()
        folder = pathlib.Path(os.environ["PROC_TEST_DIR"]) / str(int(requests[0]["x"][0]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(os.getpid())).touch()
        met, spins = 0.0, 0
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            spins += 1
            if spins % 10000 == 0 and len(list(folder.iterdir())) >= 2:
                met = 1.0
                break
        return [{"out": np.array([os.getpid(), start, time.monotonic(), met], dtype=np.float64)}]

    def pid(requests):
        # x > 0: marks that it started, then sleeps x seconds; x < 0: the process exits at once.
        x = float(requests[0]["x"].reshape(-1)[0])
        if x < 0:
            os._exit(3)
        if x > 0:
            (pathlib.Path(os.environ["PROC_TEST_DIR"]) / f"sleeping-{os.getpid()}").touch()
            time.sleep(x)
        return [{"out": np.array([os.getpid(), 0, 0, 0], dtype=np.float64)}]

    def spin(requests):
        if requests[0]["x"].reshape(-1)[0] > 0:
            while True:
                pass
        return [{"out": np.array([os.getpid(), 0, 0, 0], dtype=np.float64)}]

    def plus_one(requests):
        return [{"y": r["x"] + 1, "pid": np.array([os.getpid()], dtype=np.int64)} for r in requests]

    def upper(requests):
        return [{"text": np.array([t.upper() for t in r["text"]], dtype=object)} for r in requests]

    def fail(requests):
        raise ValueError("the function says no")

    def wrong_dtype(requests):
        return [{"out": np.zeros(4, dtype=np.int32)}]
    """
)

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import numpy as np
    import tritium
    import procfuncs

    def pid_like(x):
        # The process's pid, one per row of a batched model (x is [rows, n]) or once (x is [n]).
        return np.full(x.shape[:-1] + (1,), os.getpid(), dtype=np.int64)

    @tritium.batch
    def double(x):
        return {"y": x * 2, "pid": pid_like(x)}

    @tritium.batch
    def count(x):
        for i in range(3):
            yield {"y": x + i, "pid": pid_like(x)}

    async def async_double(requests):
        await asyncio.sleep(0)
        return [{"y": r["x"] * 2, "pid": pid_like(r["x"])} for r in requests]

    def main():
        x = [tritium.Tensor(name="x", dtype=np.float32, shape=(-1,))]
        out = [tritium.Tensor(name="out", dtype=np.float64, shape=(4,))]
        y = [tritium.Tensor(name="y", dtype=np.float32, shape=(-1,)), tritium.Tensor(name="pid", dtype=np.int64, shape=(1,))]
        server = tritium.Server(grpc_port=0, http_port=0, metrics_port=0, grpc_address="127.0.0.1",
                                http_address="127.0.0.1", metrics_address="127.0.0.1")
        def process(count=1, **options):
            return tritium.ModelConfig(batching=False, instance_count=count, instance_kind="process", **options)
        server.bind("meet", procfuncs.meet, inputs=x, outputs=out, config=process(2))
        server.bind("pid", procfuncs.pid, inputs=x, outputs=out, config=process(1))
        server.bind("spin", procfuncs.spin, inputs=x, outputs=out, config=process(1, timeout_s=0.5))
        server.bind("fail", procfuncs.fail, inputs=x, outputs=out, config=process(1))
        server.bind("wrong_dtype", procfuncs.wrong_dtype, inputs=x, outputs=out, config=process(1))
        batcher = tritium.DynamicBatcher(max_queue_delay_microseconds=2_000_000, preferred_batch_size=[4])
        server.bind("double", double, inputs=x, outputs=y,
                    config=tritium.ModelConfig(max_batch_size=4, batcher=batcher, instance_count=2, instance_kind="process"))
        server.bind("count", count, inputs=x, outputs=y, config=process(1, decoupled=True))
        server.bind("async_double", async_double, inputs=x, outputs=y, config=process(1))
        server.bind("plus_one", procfuncs.plus_one, inputs=x, outputs=y, config=process(1))
        text = [tritium.Tensor(name="text", dtype=bytes, shape=(-1,))]
        server.bind("upper", procfuncs.upper, inputs=text, outputs=text, config=process(1))
        refused = {}
        factor = 3
        for name, func in [("lambda", lambda requests: requests), ("closure", lambda requests: factor)]:
            try:
                server.bind(name, func, inputs=x, outputs=out, config=process(1))
            except ValueError as e:
                refused[name] = str(e)
        try:
            tritium.ModelConfig(instance_kind="fiber")
            server.bind("fiber", procfuncs.pid, inputs=x, outputs=out, config=tritium.ModelConfig(instance_kind="fiber"))
        except ValueError as e:
            refused["kind"] = str(e)
        with server:
            print(json.dumps({"grpc": server.grpc_port, "http": server.http_port, "pid": os.getpid(), "refused": refused}), flush=True)
            sys.stdin.readline()
        print(json.dumps({"stopped": not server.running}), flush=True)
        sys.stdin.readline()

    if __name__ == "__main__":
        main()
    """
)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (zombies included)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Script:
    """The serving script in the fresh environment, its JSON lines read on a thread."""

    def __init__(self, venv: pathlib.Path, folder: pathlib.Path, source: str):
        (folder / "procfuncs.py").write_text(FUNCTIONS)
        script = folder / "serve_processes.py"
        script.write_text(source)
        self.rendezvous = folder / "rendezvous"
        self.rendezvous.mkdir()
        env = {**clean_env(), "PROC_TEST_DIR": str(self.rendezvous)}
        self.proc = subprocess.Popen([python(venv), str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=folder)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_json(self) -> dict:
        line = self.lines.get(timeout=180)
        if line is None:
            self.proc.wait(timeout=30)
            pytest.fail(f"the script ended ({self.proc.returncode}):\n{''.join(self.stderr)[-6000:]}")
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def served(venv, tmp_path_factory):
    script = Script(venv, tmp_path_factory.mktemp("processes"), SCRIPT)
    info = script.next_json()
    info["script"] = script
    yield info
    script.close()


def _x(module, value: float, rows=None):
    """x for a model without batching ([1]), or `rows` rows of a batched one ([rows, 1])."""
    shape = [1] if rows is None else [rows, 1]
    tensor = module.InferInput("x", shape, "FP32")
    tensor.set_data_from_numpy(np.full(shape, value, dtype=np.float32))
    return tensor


def _out(client, model: str, value: float) -> np.ndarray:
    return client.infer(model, [_x(grpcclient, value)]).as_numpy("out")


def _refused(client, model: str, value: float) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        client.infer(model, [_x(grpcclient, value)])
    return raised.value


def test_two_process_instances_run_a_pure_python_function_at_once(served):
    answers: list = []

    def call():
        answers.append(_out(grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}"), "meet", 1))

    with_threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in with_threads:
        thread.start()
    for thread in with_threads:
        thread.join(timeout=120)
    assert len(answers) == 2, served["script"].stderr
    (pid_a, start_a, end_a, met_a), (pid_b, start_b, end_b, met_b) = answers
    # Each call saw the other in the function at the same time, in two processes that are not the server.
    assert met_a == 1.0 and met_b == 1.0
    assert int(pid_a) != int(pid_b)
    assert served["pid"] not in (int(pid_a), int(pid_b))
    assert {int(pid_a), int(pid_b)} <= set(_children(served["pid"]))
    assert start_a < end_b and start_b < end_a


def test_a_main_script_function_with_the_dynamic_batcher(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    results: queue.Queue = queue.Queue()

    def callback(result, error):
        results.put((result, error))

    for i in range(8):
        client.async_infer("double", [_x(grpcclient, float(i), rows=1)], callback)
    pids, sizes = set(), []
    for _ in range(8):
        result, error = results.get(timeout=60)
        assert error is None, error
        pids.add(int(result.as_numpy("pid")[0][0]))
    assert served["pid"] not in pids
    stats = client.get_inference_statistics("double").model_stats[0]
    sizes = [b.batch_size for b in stats.batch_stats]
    assert max(sizes) > 1, sizes
    http = httpclient.InferenceServerClient(f"127.0.0.1:{served['http']}")
    y = http.infer("double", [_x(httpclient, 2.5, rows=3)]).as_numpy("y")
    np.testing.assert_array_equal(y, np.full((3, 1), 5.0, dtype=np.float32))
    http.close()
    client.close()


def test_generator_and_async_functions_in_a_process(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    y = client.infer("async_double", [_x(grpcclient, 4.0)])
    assert y.as_numpy("y")[0] == 8.0 and int(y.as_numpy("pid")[0]) != served["pid"]
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer("count", [_x(grpcclient, 10.0)], request_id="one")
    got = []
    for _ in range(3):
        result, error = responses.get(timeout=60)
        assert error is None, error
        got.append(float(result.as_numpy("y")[0]))
        assert int(result.as_numpy("pid")[0]) != served["pid"]
    client.stop_stream()
    assert got == [10.0, 11.0, 12.0]
    client.close()


@pytest.mark.parametrize("size", [16, 300_000])
def test_tensors_small_and_large_cross_both_ways(served, size):
    # 16 values travel on the pipe, 300,000 (1.2 MB) through the instance's shared memory.
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    values = np.random.default_rng(size).standard_normal(size).astype(np.float32)
    tensor = grpcclient.InferInput("x", [size], "FP32")
    tensor.set_data_from_numpy(values)
    for _ in range(2):  # the shared memory is reused by the next call
        result = client.infer("plus_one", [tensor])
        np.testing.assert_array_equal(result.as_numpy("y"), values + 1)
        assert int(result.as_numpy("pid")[0]) != served["pid"]
    text = grpcclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"abc", b"d\xc3\xa9f\x00"], dtype=object))
    assert list(client.infer("upper", [text]).as_numpy("text")) == [b"ABC", b"D\xc3\xa9F\x00"]
    client.close()


def test_errors_raised_in_the_child_reach_the_client(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    error = _refused(client, "fail", 1)
    assert "StatusCode.INTERNAL" in str(error.status())
    assert "the Python function raised ValueError: the function says no" in error.message()
    error = _refused(client, "wrong_dtype", 1)
    assert "output 'out' is INT32; the model declares FP64" in error.message()
    # The instance that raised serves on.
    assert "raised ValueError: the function says no" in _refused(client, "fail", 2).message()
    client.close()


def test_a_child_that_exits_mid_call_gives_unavailable_and_is_replaced(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    first = int(_out(client, "pid", 0)[0])
    error = _refused(client, "pid", -1)
    assert "StatusCode.UNAVAILABLE" in str(error.status())
    assert "died (exit status 3) during the call" in error.message(), error.message()
    second = int(_out(client, "pid", 0)[0])
    assert second != first and not _running(first)
    assert first not in _children(served["pid"])
    client.close()


def test_a_child_killed_mid_call_gives_unavailable_and_is_replaced(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    victim = int(_out(client, "pid", 0)[0])
    failed: queue.Queue = queue.Queue()

    def call():
        try:
            _out(grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}"), "pid", 120)
            failed.put(None)
        except InferenceServerException as e:
            failed.put(e)

    threading.Thread(target=call, daemon=True).start()
    marker = served["script"].rendezvous / f"sleeping-{victim}"
    give_up = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < give_up, "the call never reached the function"
        time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    error = failed.get(timeout=60)
    assert error is not None and "StatusCode.UNAVAILABLE" in str(error.status())
    assert f"(pid {victim}) died (killed by signal 9)" in error.message(), error.message()
    assert int(_out(client, "pid", 0)[0]) != victim
    assert victim not in _children(served["pid"])
    client.close()


def test_timeout_kills_a_spinning_child_and_the_model_serves_on(served):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    before = int(_out(client, "spin", 0)[0])
    error = _refused(client, "spin", 1)
    assert "StatusCode.UNAVAILABLE" in str(error.status())
    assert "did not return from its Python function within 0.5 s" in error.message(), error.message()
    # The killed child is started again beside the calls; a call that comes before it is up waits for
    # it, within the same 0.5 s, which a loaded machine's interpreter start-up can exceed.
    give_up = time.monotonic() + 60
    while True:
        try:
            after = int(_out(client, "spin", 0)[0])
            break
        except InferenceServerException as late:
            assert "within 0.5 s" in late.message() and time.monotonic() < give_up, late.message()
            time.sleep(0.1)
    assert after != before
    give_up = time.monotonic() + 30
    while _running(before):
        assert time.monotonic() < give_up, "the spinning child was not ended"
        time.sleep(0.05)
    client.close()


def test_functions_another_interpreter_cannot_import_are_refused_at_bind(served):
    refused = served["refused"]
    for name in ("lambda", "closure"):
        assert "cannot run in a process instance, which imports it by reference" in refused[name], refused
        assert "lambdas, closures" in refused[name]
    assert "instance_kind must be 'thread' or 'process', not 'fiber'" in refused["kind"]


def test_stop_leaves_no_child_process(served):
    """Last in this module: it stops the fixture's server."""
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{served['grpc']}")
    before = set(_children(served["pid"]))
    assert len(before) >= 10, before  # every bound model's instances
    client.close()
    script = served["script"]
    script.proc.stdin.write("\n")
    script.proc.stdin.flush()
    assert script.next_json() == {"stopped": True}
    # Stopped and reaped (no zombie either) while the script lives on.
    assert _children(served["pid"]) == []
    assert not any(_running(pid) for pid in before)


def test_children_end_with_a_server_killed_by_sigkill(venv, tmp_path):
    script = Script(venv, tmp_path, SCRIPT)
    try:
        info = script.next_json()
        children = _children(info["pid"])
        assert children
        script.proc.kill()
        script.proc.wait()
        give_up = time.monotonic() + 60
        while any(_running(pid) for pid in children):
            assert time.monotonic() < give_up, [pid for pid in children if _running(pid)]
            time.sleep(0.05)
    finally:
        script.close()


def test_a_script_without_the_main_guard_is_refused_clearly(venv, tmp_path):
    unguarded = SCRIPT.replace('if __name__ == "__main__":\n    main()', "main()")
    script = Script(venv, tmp_path, unguarded)
    script.proc.wait(timeout=180)
    assert script.proc.returncode != 0
    give_up = time.monotonic() + 30
    while "Traceback" not in "".join(script.stderr) and time.monotonic() < give_up:
        time.sleep(0.05)
    stderr = "".join(script.stderr)
    assert 'put its serving code under `if __name__ == "__main__":`' in stderr, stderr[-3000:]
