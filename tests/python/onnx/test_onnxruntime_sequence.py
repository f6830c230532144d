"""A stateful ONNX model under the sequence batcher: the graph reads the START control input and its accumulator
state (ACC_IN) and writes the next state (ACC_OUT); the server fills START and READY, keeps ACC between the requests
of each sequence, and hides all of it from the client. The config names only the scheduler: auto-complete takes the
client's INPUT and OUTPUT from the model and leaves the server's tensors out, as Triton's ONNX Runtime backend does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is missing: run scripts/setup-python.sh")

import tritonclient.grpc as grpcclient  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import onnx_models  # noqa: E402
from test_onnxruntime import serve  # noqa: E402

pytestmark = pytest.mark.onnx

SEQUENCE_CONFIG = """
name: "onnx_acc"
platform: "onnxruntime_onnx"
max_batch_size: 4
sequence_batching {
  oldest { max_candidate_sequences: 8 }
  control_input [
    { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "READY", control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] }
  ]
  state [ { input_name: "ACC_IN" output_name: "ACC_OUT" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } } ]
}
"""


def accumulator_proto() -> bytes:
    """OUTPUT = INPUT + ACC_IN * (1 - START) * READY; ACC_OUT = OUTPUT; every tensor INT32 [batch, 1]."""
    io = lambda name: helper.make_tensor_value_info(name, TensorProto.INT32, [onnx_models.BATCH_DIM, 1])  # noqa: E731
    one = helper.make_tensor("one", TensorProto.INT32, [], [1])
    nodes = [
        helper.make_node("Sub", ["one", "START"], ["not_start"]),
        helper.make_node("Mul", ["ACC_IN", "not_start"], ["carried"]),
        helper.make_node("Mul", ["carried", "READY"], ["kept"]),
        helper.make_node("Add", ["INPUT", "kept"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["ACC_OUT"]),
    ]
    graph = helper.make_graph(
        nodes,
        "accumulator",
        [io("INPUT"), io("START"), io("READY"), io("ACC_IN")],
        [io("OUTPUT"), io("ACC_OUT")],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", onnx_models.OPSET)])
    model.ir_version = onnx_models.IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.fixture
def acc_client(start_tritium, tmp_path):
    onnx_models.write(tmp_path, "onnx_acc", accumulator_proto(), SEQUENCE_CONFIG)
    client = serve(start_tritium, tmp_path)
    yield client
    client.close()


def step(client, sequence_id: int, value: int, start: bool = False, end: bool = False) -> int:
    data = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    data.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    result = client.infer("onnx_acc", [data], sequence_id=sequence_id, sequence_start=start, sequence_end=end)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT"], "the state output is the server's"
    return int(result.as_numpy("OUTPUT")[0][0])


def test_auto_complete_leaves_the_servers_tensors_out_of_the_config(acc_client):
    config = acc_client.get_model_config("onnx_acc").config
    assert [i.name for i in config.input] == ["INPUT"]
    assert [o.name for o in config.output] == ["OUTPUT"]
    metadata = acc_client.get_model_metadata("onnx_acc")
    assert [i.name for i in metadata.inputs] == ["INPUT"]


def test_each_sequence_accumulates_in_the_state_the_server_keeps(acc_client):
    values = {sequence: [sequence * 10 + k for k in range(5)] for sequence in range(1, 9)}

    def run(sequence: int) -> list[int]:
        steps = values[sequence]
        return [step(acc_client, sequence, v, start=k == 0, end=k == len(steps) - 1) for k, v in enumerate(steps)]

    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(values, pool.map(run, values)))
    for sequence, got in answers.items():
        assert got == list(np.cumsum(values[sequence])), sequence
    stats = acc_client.get_inference_statistics("onnx_acc").model_stats[0]
    assert stats.inference_count == 40
    assert 1 <= stats.execution_count <= 40


def test_a_new_start_resets_the_state(acc_client):
    assert step(acc_client, 77, 5, start=True) == 5
    assert step(acc_client, 77, 6) == 11
    assert step(acc_client, 77, 1, start=True) == 1
