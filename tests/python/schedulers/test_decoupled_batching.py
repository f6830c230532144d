"""The dynamic batcher in front of decoupled models, with the real tritonclient streaming over gRPC: a decoupled
model.py gets the batch as one execute() list and answers each request through its own response sender; a
built-in decoupled backend batched the same way; statistics count one execution per batch. (Decoupled models under
the sequence batcher: test_python_sequences.py.)
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import ResultStream, write_python_model

PYTHON = sys.executable


# Each request gets OUT = IN * 10 + k for k in 0..IN[1], then the final flag alone; BATCH says how many requests
# the execute() call held.
STREAMING = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            n = len(requests)
            for request in requests:
                sender = request.get_response_sender()
                value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                for k in range(int(value[0][1])):
                    sender.send(pb_utils.InferenceResponse([
                        pb_utils.Tensor("OUT", value[:, :1] * 10 + k),
                        pb_utils.Tensor("BATCH", np.full([1, 1], n, dtype=np.int32)),
                    ]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""

DECOUPLED_BATCHING = """
    max_batch_size: 8
    dynamic_batching { max_queue_delay_microseconds: 300000 }
    model_transaction_policy { decoupled: true }
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ 2 ] } ]
    output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "BATCH", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


class Stream(ResultStream):
    def send(self, model: str, inputs, request_id: str) -> None:
        self.client.async_stream_infer(model, inputs, request_id=request_id, enable_empty_final_response=True)


def int32(name: str, rows: list[list[int]]) -> grpcclient.InferInput:
    data = np.array(rows, dtype=np.int32)
    tensor = grpcclient.InferInput(name, list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return tensor


@pytest.mark.python_backend
def test_a_decoupled_python_model_gets_batches_and_answers_each_request_on_its_own(start_tritium, tmp_path):
    write_python_model(tmp_path, "fanout", DECOUPLED_BATCHING, STREAMING)
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    stream = Stream(server.url)
    try:
        for value in range(1, 7):
            stream.send("fanout", [int32("IN", [[value, value % 3]])], f"r{value}")
        by_id = stream.until_finals(6)
    finally:
        stream.close()
    outs = {rid: [int(r.as_numpy("OUT")[0][0]) for r in results] for rid, results in by_id.items()}
    expected = {f"r{v}": [v * 10 + k for k in range(v % 3)] for v in range(1, 7) if v % 3}
    assert outs == expected, "each request got its own responses, in order; IN[1] = 0 sends only the final flag"
    batches = [int(r.as_numpy("BATCH")[0][0]) for results in by_id.values() for r in results]
    assert max(batches) > 1, batches

    stats = grpcclient.InferenceServerClient(server.url).get_inference_statistics("fanout").model_stats[0]
    assert stats.inference_count == 6
    assert stats.execution_count < 6, "one execution per batch"
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == 6


def test_a_built_in_decoupled_backend_is_batched_too(start_tritium, tmp_path):
    (tmp_path / "repeat_batched" / "1").mkdir(parents=True)
    (tmp_path / "repeat_batched" / "config.pbtxt").write_text(textwrap.dedent("""
        name: "repeat_batched"
        backend: "tritium_repeat"
        max_batch_size: 4
        dynamic_batching { max_queue_delay_microseconds: 300000 }
        model_transaction_policy { decoupled: true }
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
    """))
    server = start_tritium("--model-repository", str(tmp_path))
    stream = Stream(server.url)
    try:
        for n in range(1, 5):
            stream.send("repeat_batched", [int32("IN", [[n]])], f"n{n}")
        by_id = stream.until_finals(4)
    finally:
        stream.close()
    assert {rid: [int(r.as_numpy("OUT").flat[0]) for r in results] for rid, results in by_id.items()} == {
        f"n{n}": list(range(n)) for n in range(1, 5)
    }
    stats = grpcclient.InferenceServerClient(server.url).get_inference_statistics("repeat_batched").model_stats[0]
    assert stats.inference_count == 4 and stats.execution_count < 4, stats



# The model sends OUT in the shape it computes ([4], or [n, 4] batched); the config's reshape names that shape and
# dims the one clients see ([2, 2]). Triton 2.51 reshapes every response of a decoupled model (checked by hand:
# a python model answered ((2, 2), [[0, 1], [2, 3]]) then ((2, 2), [[1, 2], [3, 4]])).
RESHAPED = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                sender = request.get_response_sender()
                for step in range(2):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", values + step)]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return None
"""


@pytest.mark.python_backend
def test_every_response_of_a_decoupled_model_gets_its_output_reshape(start_tritium, tmp_path):
    io = """
        model_transaction_policy { decoupled: true }
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ 4 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 2, 2 ], reshape: { shape: [ 4 ] } } ]
    """
    write_python_model(tmp_path, "plain", "max_batch_size: 0\n" + io, RESHAPED)
    batched = "max_batch_size: 4\ndynamic_batching { max_queue_delay_microseconds: 100000 }\n"
    write_python_model(tmp_path, "batched", batched + io, RESHAPED)
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    stream = Stream(server.url)
    try:
        plain = grpcclient.InferInput("IN", [4], "INT32")
        plain.set_data_from_numpy(np.arange(4, dtype=np.int32))
        stream.send("plain", [plain], "p")
        for n in range(3):
            stream.send("batched", [int32("IN", [[n, n + 1, n + 2, n + 3]])], f"b{n}")
        by_id = stream.until_finals(4)
    finally:
        stream.close()
    assert [r.as_numpy("OUT").tolist() for r in by_id["p"]] == [[[0, 1], [2, 3]], [[1, 2], [3, 4]]]
    for n in range(3):
        got = [r.as_numpy("OUT").tolist() for r in by_id[f"b{n}"]]
        assert got == [[[[n + s, n + 1 + s], [n + 2 + s, n + 3 + s]]] for s in range(2)], (n, got)
