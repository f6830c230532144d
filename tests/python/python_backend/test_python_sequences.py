"""Python models (`backend: "python"`, a real interpreter running model.py) under the sequence batcher, with the
real tritonclient over gRPC: unary calls from threads and streams carrying interleaved sequences.

What is proven:
- a plain model gets a batch as one execute() list, one request per sequence, each of batch 1 with its own
  control inputs (START, READY, CORRID equal to `request.correlation_id()`), as Triton's python backend does; the
  running sums it keeps per CORRID come out right for every sequence while their requests share executions;
- a decoupled model under the sequence batcher (it used to be refused at load) streams each request's responses
  to its own client, the next request of a sequence runs only after the previous one's stream has ended, and the
  implicit state comes from the responses (the last one carrying the state output wins) and never reaches the
  client;
- with the `direct` strategy a not-READY row reaches a decoupled model as a request of its own (READY = 0), its
  responses go nowhere, and the live sequences' answers are unaffected.
"""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import ResultStream, write_python_model

pytestmark = pytest.mark.python_backend

PYTHON = sys.executable
_ids = itertools.count(7000)

CONTROLS = """
    control_input [
      { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
      { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] },
      { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
    ]
"""

# OUT: the running sum of IN for the request's CORRID (kept by the model), CORR: the CORRID control, BATCH: how
# many requests the execute() call held.
SUMMING = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    def scalar(request, name):
        return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

    class TritonPythonModel:
        def initialize(self, args):
            self.sums = {}

        def execute(self, requests):
            responses = []
            for request in requests:
                value = scalar(request, "IN")
                if value.shape != (1, 1):
                    raise pb_utils.TritonModelException(f"a row of its own expected, got {value.shape}")
                corrid = int(scalar(request, "CORRID")[0][0])
                if corrid != request.correlation_id():
                    raise pb_utils.TritonModelException(f"CORRID {corrid} != {request.correlation_id()}")
                if scalar(request, "START")[0][0]:
                    self.sums[corrid] = 0
                self.sums[corrid] = self.sums.get(corrid, 0) + int(value[0][0])
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", np.array([[self.sums[corrid]]], dtype=np.int32)),
                    pb_utils.Tensor("CORR", np.array([[corrid]], dtype=np.uint64)),
                    pb_utils.Tensor("BATCH", np.array([[len(requests)]], dtype=np.int32)),
                ]))
            return responses
"""

PLAIN_CONFIG = (
    """
    max_batch_size: 4
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
    output [
      { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] },
      { name: "CORR", data_type: TYPE_UINT64, dims: [ 1 ] },
      { name: "BATCH", data_type: TYPE_INT32, dims: [ 1 ] }
    ]
    sequence_batching {
      oldest { max_candidate_sequences: 8, max_queue_delay_microseconds: 200000 }
"""
    + CONTROLS
    + """
    }
"""
)

# Each READY request: ACC = ACC_IN + IN (ACC_IN the implicit state), two responses OUT = ACC * 10 + k carrying
# ACC_OUT = ACC (the second one's value is the state the next request reads), then the final flag alone. A
# not-READY request gets only the final flag, and NULLS counts them.
STREAMING_STATE = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    def scalar(request, name):
        return int(pb_utils.get_input_tensor_by_name(request, name).as_numpy()[0][0])

    class TritonPythonModel:
        def initialize(self, args):
            self.nulls = 0

        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                if not scalar(request, "READY"):
                    self.nulls += 1
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                acc = scalar(request, "ACC_IN") + scalar(request, "IN")
                for k in range(2):
                    sender.send(pb_utils.InferenceResponse([
                        pb_utils.Tensor("OUT", np.array([[acc * 10 + k]], dtype=np.int32)),
                        pb_utils.Tensor("BATCH", np.array([[len(requests)]], dtype=np.int32)),
                        pb_utils.Tensor("NULLS", np.array([[self.nulls]], dtype=np.int32)),
                        pb_utils.Tensor("ACC_OUT", np.array([[acc - 1 + k]], dtype=np.int32)),
                    ]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""


def streaming_config(strategy: str) -> str:
    return (
        """
    max_batch_size: 4
    model_transaction_policy { decoupled: true }
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
    output [
      { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] },
      { name: "BATCH", data_type: TYPE_INT32, dims: [ 1 ] },
      { name: "NULLS", data_type: TYPE_INT32, dims: [ 1 ] }
    ]
    instance_group [ { count: 1, kind: KIND_CPU } ]
    sequence_batching {
"""
        + strategy
        + CONTROLS
        + """
      state [ {
        input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_INT32 dims: [ 1 ]
        initial_state { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }
      } ]
    }
"""
    )


def int32(name: str, value: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    return tensor


def test_a_plain_model_gets_one_request_per_sequence_and_keeps_each_sum(start_tritium, tmp_path):
    write_python_model(tmp_path, "summing", PLAIN_CONFIG, SUMMING)
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    ids = [next(_ids) for _ in range(4)]
    values = {sid: [sid % 7 + step for step in range(5)] for sid in ids}

    def run_sequence(sid: int) -> list[tuple[int, int, int]]:
        client = grpcclient.InferenceServerClient(server.url)
        seen = []
        for step, value in enumerate(values[sid]):
            result = client.infer(
                "summing", [int32("IN", value)], sequence_id=sid, sequence_start=step == 0, sequence_end=step == 4
            )
            seen.append(tuple(int(result.as_numpy(name)[0][0]) for name in ("OUT", "CORR", "BATCH")))
        client.close()
        return seen

    with ThreadPoolExecutor(len(ids)) as pool:
        answers = dict(zip(ids, pool.map(run_sequence, ids)))
    for sid, seen in answers.items():
        assert [out for out, _, _ in seen] == list(itertools.accumulate(values[sid])), sid
        assert {corr for _, corr, _ in seen} == {sid}
    assert max(batch for seen in answers.values() for _, _, batch in seen) > 1, "sequences shared executions"


class Stream(ResultStream):
    def send(self, model: str, value: int, sid: int, step: int, last: int) -> None:
        self.client.async_stream_infer(
            model,
            [int32("IN", value)],
            request_id=f"{sid}-{step}",
            sequence_id=sid,
            sequence_start=step == 0,
            sequence_end=step == last,
            enable_empty_final_response=True,
        )


def expected_outs(values: list[int]) -> list[list[int]]:
    """Per request, the two OUTs of the streaming model when the state each request leaves is its last response's
    ACC_OUT (the running sum); were it the first response's (one less), every later sum would be short."""
    outs, acc = [], 0
    for value in values:
        acc += value
        outs.append([acc * 10, acc * 10 + 1])
    return outs


def test_a_decoupled_model_streams_each_sequence_with_state_from_its_responses(start_tritium, tmp_path):
    oldest = "oldest { max_candidate_sequences: 8, max_queue_delay_microseconds: 100000 }"
    write_python_model(tmp_path, "streaming", streaming_config(oldest), STREAMING_STATE)
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    ids = [next(_ids) for _ in range(3)]
    values = {sid: [index + 1 + step * 3 for step in range(4)] for index, sid in enumerate(ids)}
    stream = Stream(server.url)
    try:
        for step in range(4):
            for sid in ids:
                stream.send("streaming", values[sid][step], sid, step, last=3)
        by_id = stream.until_finals(12)
    finally:
        stream.close()
    for sid in ids:
        got = [[int(r.as_numpy("OUT")[0][0]) for r in by_id[f"{sid}-{step}"]] for step in range(4)]
        assert got == expected_outs(values[sid]), sid
    every = [r for results in by_id.values() for r in results]
    assert all(r.as_numpy("ACC_OUT") is None for r in every), "the state output never reaches the client"
    assert max(int(r.as_numpy("BATCH")[0][0]) for r in every) > 1, "sequences shared executions"

    stats = grpcclient.InferenceServerClient(server.url).get_inference_statistics("streaming").model_stats[0]
    assert stats.inference_count == 12 and stats.execution_count < 12, stats


def test_direct_strategy_hands_a_decoupled_model_its_not_ready_rows(start_tritium, tmp_path):
    write_python_model(tmp_path, "streaming_direct", streaming_config("direct { }"), STREAMING_STATE)
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    idle, busy = next(_ids), next(_ids)
    stream = Stream(server.url)
    try:
        # `idle` takes slot 0 and sends nothing more for a while; `busy` holds slot 1, so each of its batches carries
        # a not-READY row 0.
        stream.send("streaming_direct", 5, idle, 0, last=1)
        by_id = stream.until_finals(1)
        for step, value in enumerate([1, 2, 3]):
            stream.send("streaming_direct", value, busy, step, last=2)
        by_id |= stream.until_finals(3)
        stream.send("streaming_direct", 7, idle, 1, last=1)
        by_id |= stream.until_finals(1)
    finally:
        stream.close()
    outs = lambda sid, steps: [[int(r.as_numpy("OUT")[0][0]) for r in by_id[f"{sid}-{step}"]] for step in range(steps)]  # noqa: E731
    assert outs(idle, 2) == expected_outs([5, 7])
    assert outs(busy, 3) == expected_outs([1, 2, 3])
    busy_responses = [r for step in range(3) for r in by_id[f"{busy}-{step}"]]
    assert {int(r.as_numpy("BATCH")[0][0]) for r in busy_responses} == {2}, "the not-READY row and busy's own"
    assert [int(r.as_numpy("NULLS")[0][0]) for r in busy_responses[::2]] == [1, 2, 3], "one not-READY request each time"
