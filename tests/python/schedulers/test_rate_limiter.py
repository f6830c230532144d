"""Triton's rate limiter (`--rate-limit execution_count`, `--rate-limit-resource`, an instance group's
`rate_limiter { resources [...] priority }`) and an ensemble's `max_inflight_requests`, with the real tritonclient
and Python models that record every execute.

Every model here runs the same model.py: IN is [mode, arg, tag] and each execute appends "model tag start end"
(time.monotonic, one clock for every process) to the log the LOG parameter names. Modes: 0 sleeps `arg` ms;
1 meets another execution (writes started-<tag>, waits for started-<arg>: OUT[0] is 1 when they met, which needs
both to run at once); 2 holds its instance (writes holding-<tag>, waits for the file release).
"""

from __future__ import annotations

import pathlib
import sys
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import expect_error, start_failure, wait_for, write_python_model

pytestmark = pytest.mark.python_backend  # every model here is a model.py

PYTHON = sys.executable

RECORDER = """
    import json
    import os
    import time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    def wait_for_file(path, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if os.path.exists(path):
                return True
            time.sleep(0.01)
        return False

    class TritonPythonModel:
        def initialize(self, args):
            self.log = json.loads(args["model_config"])["parameters"]["LOG"]["string_value"]
            self.dir = os.path.dirname(self.log)
            self.name = args["model_name"]

        def execute(self, requests):
            responses = []
            for request in requests:
                start = time.monotonic()
                mode, arg, tag = (int(v) for v in pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().flatten()[:3])
                met = 0
                if mode == 0:
                    time.sleep(arg / 1000)
                elif mode == 1:
                    open(os.path.join(self.dir, f"started-{tag}"), "w").close()
                    met = int(wait_for_file(os.path.join(self.dir, f"started-{arg}"), 30))
                elif mode == 2:
                    open(os.path.join(self.dir, f"holding-{tag}"), "w").close()
                    wait_for_file(os.path.join(self.dir, "release"), 60)
                end = time.monotonic()
                fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, f"{self.name} {tag} {start} {end}\\n".encode())
                os.close(fd)
                out = np.array([met, tag, 0], dtype=np.int32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", out.reshape(
                    pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().shape))]))
            return responses
"""


def config(log: pathlib.Path, instances: int = 1, resources: str = "", priority: int = 0, batching: str = "") -> str:
    """A recorder's config: `resources` is the text inside `rate_limiter { resources [ ] }` (none: no limiter);
    `batching` a scheduler section (needs max_batch_size 4, which it then gets)."""
    limiter = f"rate_limiter {{ resources [ {resources} ] priority: {priority} }}" if resources else ""
    return f"""
    max_batch_size: {4 if batching else 0}
    input [ {{ name: "IN", data_type: TYPE_INT32, dims: [ 3 ] }} ]
    output [ {{ name: "OUT", data_type: TYPE_INT32, dims: [ 3 ] }} ]
    instance_group [ {{ count: {instances}, kind: KIND_CPU {limiter} }} ]
    {batching}
    parameters {{ key: "LOG" value: {{ string_value: "{log}" }} }}
"""


def one_r(count: int = 1) -> str:
    return f'{{ name: "R" count: {count} }}'


def serve(start_tritium, repo: pathlib.Path, *flags: str):
    return start_tritium("--model-repository", str(repo), "--python-interpreter", PYTHON, *flags)


def infer(client, model: str, mode: int, arg: int, tag: int, batched: bool = False, **kwargs) -> np.ndarray:
    values = np.array([mode, arg, tag], dtype=np.int32)
    if batched:
        values = values.reshape(1, 3)
    tensor = grpcclient.InferInput("IN", list(values.shape), "INT32")
    tensor.set_data_from_numpy(values)
    return client.infer(model, [tensor], **kwargs).as_numpy("OUT").flatten()


def executions(log: pathlib.Path) -> list[tuple[str, int, float, float]]:
    """The log's executions by start time: (model, tag, start, end)."""
    rows = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return sorted(((m, int(t), float(s), float(e)) for m, t, s, e in rows), key=lambda r: r[2])


def most_at_once(runs: list[tuple[str, int, float, float]]) -> int:
    """The most executions running at one moment (one ending as another starts do not overlap)."""
    events = sorted([(s, 1) for _, _, s, _ in runs] + [(e, -1) for _, _, _, e in runs], key=lambda x: (x[0], x[1]))
    running = most = 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    return most


def hammer(server, calls: list[tuple[str, dict]], threads: int = 8) -> list[str]:
    """Runs every (model, infer kwargs) call from `threads` threads at once; the errors."""
    errors: list[str] = []
    lock = threading.Lock()
    work = list(enumerate(calls))

    def run() -> None:
        client = grpcclient.InferenceServerClient(server.url)
        while True:
            with lock:
                if not work:
                    break
                tag, (model, kwargs) = work.pop()
            try:
                infer(client, model, 0, 20, tag + 1000, **kwargs)
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                with lock:
                    errors.append(f"{model}: {error}")
        client.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return errors


def three_schedulers(repo: pathlib.Path, log: pathlib.Path, resources: str) -> list[tuple[str, dict]]:
    """Models a (dynamic batcher), b (no batcher) and c (sequence batcher), two instances each, every instance
    needing `resources`; twelve calls to each."""
    write_python_model(repo, "a", config(log, 2, resources, batching="dynamic_batching { }"), RECORDER)
    write_python_model(repo, "b", config(log, 2, resources), RECORDER)
    sequence = "sequence_batching { max_sequence_idle_microseconds: 5000000 }"
    write_python_model(repo, "c", config(log, 2, resources, batching=sequence), RECORDER)
    calls = []
    for i in range(12):
        calls.append(("a", {"batched": True}))
        calls.append(("b", {}))
        calls.append(("c", {"batched": True, "sequence_id": i + 1, "sequence_start": True, "sequence_end": True}))
    return calls


def test_executions_needing_one_resource_never_overlap(start_tritium, tmp_path):
    log = tmp_path / "log"
    calls = three_schedulers(tmp_path, log, one_r())
    server = serve(start_tritium, tmp_path, "--rate-limit", "execution_count")
    assert hammer(server, calls) == []
    runs = executions(log)
    assert len(runs) >= 24, runs  # the dynamic batcher may put a's requests together
    assert {m for m, *_ in runs} == {"a", "b", "c"}
    assert most_at_once(runs) == 1, runs


def test_with_the_limiter_off_executions_needing_one_resource_run_together(start_tritium, tmp_path):
    log = tmp_path / "log"
    write_python_model(tmp_path, "a", config(log, 1, one_r()), RECORDER)
    write_python_model(tmp_path, "b", config(log, 1, one_r()), RECORDER)
    server = serve(start_tritium, tmp_path)  # --rate-limit off, Triton's default, ignores the resources
    met = meet(server, ("a", 1), ("b", 2))
    assert met == [1, 1], "a and b ran at once"


def meet(server, first: tuple, second: tuple) -> list:
    """Two executions, each (model, tag[, infer kwargs]), that wait for each other (mode 1): OUT[0] of each, 1
    when they met, or the error."""
    results: list = [None, None]

    def run(index: int, call: tuple, peer: int) -> None:
        client = grpcclient.InferenceServerClient(server.url)
        try:
            results[index] = int(infer(client, call[0], 1, peer, call[1], **(call[2] if len(call) > 2 else {}))[0])
        except Exception as error:  # noqa: BLE001 - the assertion shows it
            results[index] = str(error)
        client.close()

    threads = [threading.Thread(target=run, args=(0, first, second[1])), threading.Thread(target=run, args=(1, second, first[1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    return results


def test_a_resource_of_count_two_lets_two_run_and_no_more(start_tritium, tmp_path):
    log = tmp_path / "log"
    calls = three_schedulers(tmp_path, log, one_r())
    server = serve(start_tritium, tmp_path, "--rate-limit", "execution_count", "--rate-limit-resource", "R:2")
    assert meet(server, ("a", 1, {"batched": True}), ("b", 2)) == [1, 1], "two copies of R: a and b run at once"
    log.unlink()
    assert hammer(server, calls) == []
    assert most_at_once(executions(log)) <= 2


def test_the_higher_priority_runs_first_of_those_waiting(start_tritium, tmp_path):
    log = tmp_path / "log"
    write_python_model(tmp_path, "high", config(log, 1, one_r(), priority=1), RECORDER)
    write_python_model(tmp_path, "low", config(log, 1, one_r(), priority=10), RECORDER)
    server = serve(start_tritium, tmp_path, "--rate-limit", "execution_count")
    client = grpcclient.InferenceServerClient(server.url)
    # One execution each: the next turns are high's 2nd (2 x 1) then low's 2nd (1 x 10)... whatever the arrival.
    infer(client, "high", 0, 0, 1)
    infer(client, "low", 0, 0, 2)
    results: dict[int, int] = {}

    def send(model: str, mode: int, tag: int) -> None:
        own = grpcclient.InferenceServerClient(server.url)
        results[tag] = int(infer(own, model, mode, 0, tag)[1])
        own.close()

    holder = threading.Thread(target=send, args=("high", 2, 3))
    holder.start()
    assert wait_for(lambda: (tmp_path / "holding-3").exists()), "high holds R"
    waiting = [threading.Thread(target=send, args=("low", 0, 4))]
    waiting[0].start()
    assert wait_for(lambda: pending(server, "low") == 1), "low waits for R"
    waiting.append(threading.Thread(target=send, args=("high", 0, 5)))
    waiting[1].start()
    assert wait_for(lambda: pending(server, "high") == 2), "high's second request waits behind its first"
    (tmp_path / "release").touch()
    for thread in [holder, *waiting]:
        thread.join(timeout=90)
    assert results == {3: 3, 4: 4, 5: 5}
    order = [tag for _, tag, _, _ in executions(log)]
    assert order == [1, 2, 3, 5, 4], "high came second but went first"
    client.close()


def pending(server, model: str) -> int:
    """nv_inference_pending_request_count of `model` (queued or running), from the metrics port."""
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("nv_inference_pending_request_count{") and f'model="{model}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_an_instance_needing_more_than_the_count_fails_to_load_and_the_rest_serve(start_tritium, tmp_path):
    log = tmp_path / "log"
    write_python_model(tmp_path, "fits", config(log, 1, one_r(1)), RECORDER)
    write_python_model(tmp_path, "greedy", config(log, 1, one_r(3)), RECORDER)
    write_python_model(tmp_path, "unnamed", config(log, 1, '{ name: "S" count: 1 }'), RECORDER)
    server = serve(start_tritium, tmp_path, "--rate-limit", "execution_count", "--rate-limit-resource", "R:2",
                   "--model-control-mode", "explicit")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    client.load_model("fits")
    # Triton 2.51's status and words (checked side by side).
    expect_error(
        "INVALID_ARGUMENT",
        "load failed for model 'greedy': version 1 is at UNAVAILABLE state: Invalid argument: Resource count for \"R\" "
        "is limited to 2 which will prevent scheduling of one or more model instances, the minimum required count is 3",
        client.load_model,
        "greedy",
    )
    # Once resources are given by flag, one they do not name has none.
    expect_error("INVALID_ARGUMENT", 'Resource count for "S" is limited to 0 ', client.load_model, "unnamed")
    assert infer(client, "fits", 0, 0, 1)[1] == 1
    assert not client.is_model_ready("greedy")
    client.close()


STREAMER = """
    import json
    import os
    import time
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.log = json.loads(args["model_config"])["parameters"]["LOG"]["string_value"]
            self.name = args["model_name"]

        def execute(self, requests):
            for request in requests:
                start = time.monotonic()
                values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, f"{self.name} {int(values.flatten()[2])} {start} {time.monotonic()}\\n".encode())
                os.close(fd)
                request.get_response_sender().send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", values.copy())]),
                                                   flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""


def test_a_stream_cancelled_while_it_waits_for_resources_never_runs(start_tritium, tmp_path):
    log = tmp_path / "log"
    write_python_model(tmp_path, "holder", config(log, 1, one_r()), RECORDER)
    decoupled = config(log, 1, one_r()) + "model_transaction_policy { decoupled: true }\n"
    write_python_model(tmp_path, "streamer", decoupled, STREAMER)
    server = serve(start_tritium, tmp_path, "--rate-limit", "execution_count")
    holder = threading.Thread(target=lambda: infer(grpcclient.InferenceServerClient(server.url), "holder", 2, 0, 1))
    holder.start()
    assert wait_for(lambda: (tmp_path / "holding-1").exists()), "holder holds R"

    def stream_request(tag: int) -> grpcclient.InferInput:
        tensor = grpcclient.InferInput("IN", [3], "INT32")
        tensor.set_data_from_numpy(np.array([0, 0, tag], dtype=np.int32))
        return tensor

    cancelled = grpcclient.InferenceServerClient(server.url)
    cancelled.start_stream(callback=lambda result, error: None)
    cancelled.async_stream_infer("streamer", [stream_request(2)])
    assert wait_for(lambda: pending(server, "streamer") == 1), "the stream waits for R"
    cancelled.stop_stream(cancel_requests=True)
    assert wait_for(lambda: pending(server, "streamer") == 0), "the cancelled stream left the queue"
    (tmp_path / "release").touch()
    holder.join(timeout=90)
    answers: list = []
    again = grpcclient.InferenceServerClient(server.url)
    again.start_stream(callback=lambda result, error: answers.append(error or result.as_numpy("OUT").tolist()))
    again.async_stream_infer("streamer", [stream_request(3)])
    assert wait_for(lambda: len(answers) == 1), answers
    again.stop_stream()
    assert answers == [[0, 0, 3]]
    assert [tag for model, tag, _, _ in executions(log) if model == "streamer"] == [3], "the cancelled request never ran"


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--rate-limit", "xyz"), "[possible values: off, execution_count]"),
        (("--rate-limit", "execution_count", "--rate-limit-resource", "R:abc"), "the count must be a whole number"),
        (("--rate-limit", "execution_count", "--rate-limit-resource", "R:1:gpu0"), "the device must be a device number"),
        (("--rate-limit", "execution_count", "--rate-limit-resource", "R"), "'<resource_name>:<count>'. Got R"),
        (("--rate-limit-resource", "R:1"), "the rate limiter is off"),
    ],
)
def test_bad_flags_are_refused_at_start(flags, says):
    failure = start_failure(*flags)
    assert says in failure, failure


PASS = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN")
                    .as_numpy().copy())]) for r in requests]
"""


def ensemble(tmp_path: pathlib.Path, log: pathlib.Path, max_inflight: int) -> None:
    """`pipe`: `first` (IN as it is, four instances) then `slow` (a recorder with four instances), bounded by
    `max_inflight`."""
    write_python_model(tmp_path, "first", config(log, 4), PASS)
    write_python_model(tmp_path, "slow", config(log, 4), RECORDER)
    (tmp_path / "pipe" / "1").mkdir(parents=True)
    (tmp_path / "pipe" / "config.pbtxt").write_text(f"""
name: "pipe"
platform: "ensemble"
max_batch_size: 0
input [ {{ name: "IN", data_type: TYPE_INT32, dims: [ 3 ] }} ]
output [ {{ name: "OUT", data_type: TYPE_INT32, dims: [ 3 ] }} ]
ensemble_scheduling {{
  max_inflight_requests: {max_inflight}
  step [
    {{ model_name: "first" model_version: -1 input_map {{ key: "IN" value: "IN" }} output_map {{ key: "OUT" value: "mid" }} }},
    {{ model_name: "slow" model_version: -1 input_map {{ key: "IN" value: "mid" }} output_map {{ key: "OUT" value: "OUT" }} }}
  ]
}}
""")


def test_ensemble_max_inflight_requests_bounds_each_step(start_tritium, tmp_path):
    log = tmp_path / "log"
    ensemble(tmp_path, log, 1)
    server = serve(start_tritium, tmp_path)
    assert hammer(server, [("pipe", {}) for _ in range(16)]) == []
    runs = executions(log)
    slow = [r for r in runs if r[0] == "slow"]
    assert len(slow) == 16
    assert most_at_once(slow) == 1, slow


def test_ensemble_without_max_inflight_requests_runs_steps_together(start_tritium, tmp_path):
    log = tmp_path / "log"
    ensemble(tmp_path, log, 0)
    server = serve(start_tritium, tmp_path)
    assert meet(server, ("pipe", 1), ("pipe", 2)) == [1, 1]


FAN = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                base = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().flatten()[2])
                # Two responses whose next steps must run at once to meet (mode 1 of the recorder).
                for tag, other in ((base, base + 1), (base + 1, base)):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1, other, tag], dtype=np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""


def test_an_ensemble_runs_a_decoupled_steps_responses_on_together(start_tritium, tmp_path):
    """As Triton: each response of a decoupled step flows on at once (bounded by `max_inflight_requests`), not after
    the previous one's steps ended; the answers keep the responses' order."""
    import queue

    log = tmp_path / "log"
    write_python_model(tmp_path, "fan", """
    max_batch_size: 0
    model_transaction_policy { decoupled: true }
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ 3 ] } ]
    output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 3 ] } ]
    """, FAN)  # fmt: skip
    write_python_model(tmp_path, "slow", config(log, 2), RECORDER)
    (tmp_path / "fanout" / "1").mkdir(parents=True)
    (tmp_path / "fanout" / "config.pbtxt").write_text("""
name: "fanout"
platform: "ensemble"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 3 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 3 ] } ]
ensemble_scheduling {
  max_inflight_requests: 2
  step [
    { model_name: "fan" model_version: -1 input_map { key: "IN" value: "IN" } output_map { key: "OUT" value: "mid" } },
    { model_name: "slow" model_version: -1 input_map { key: "IN" value: "mid" } output_map { key: "OUT" value: "OUT" } }
  ]
}
""")
    server = serve(start_tritium, tmp_path)
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    tensor = grpcclient.InferInput("IN", [3], "INT32")
    tensor.set_data_from_numpy(np.array([0, 0, 40], dtype=np.int32))
    client.async_stream_infer("fanout", [tensor])
    got = [answers.get(timeout=60) for _ in range(2)]
    client.stop_stream()
    assert [error for _, error in got] == [None, None], got
    outs = [result.as_numpy("OUT").tolist() for result, _ in got]
    assert outs == [[1, 40, 0], [1, 41, 0]], "both met (ran at once), answered in the responses' order"
