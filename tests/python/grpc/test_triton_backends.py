"""Built-in backends that share a name with one of Triton's behave as Triton's do with Triton's configs: `repeat`
(Triton's repeat_backend: IN, DELAY, WAIT -> OUT, IDX per element) and `square` (IN = n -> n responses of n), over
ModelStreamInfer with the real tritonclient, on the configs of Triton's own test models (`repeat_int32`,
`square_int32`). Our own stream-testing backend is `tritium_repeat`; a config written for it but naming `repeat`
fails its load with Triton's words instead of binding to different semantics.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import ResultStream, expect_error, write_model

REPEAT_INT32 = """
name: "repeat_int32"
backend: "repeat"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "IN" data_type: TYPE_INT32 dims: [ -1 ] },
  { name: "DELAY" data_type: TYPE_UINT32 dims: [ -1 ] },
  { name: "WAIT" data_type: TYPE_UINT32 dims: [ 1 ] }
]
output [
  { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] },
  { name: "IDX" data_type: TYPE_UINT32 dims: [ 1 ] }
]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

SQUARE_INT32 = """
name: "square_int32"
backend: "square"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

OURS_UNDER_TRITONS_NAME = """
name: "old_repeat"
backend: "repeat"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "DELAY_MS", data_type: TYPE_UINT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
"""


@pytest.fixture
def server(start_tritium, model_repo):
    write_model(model_repo, "repeat_int32", REPEAT_INT32)
    write_model(model_repo, "square_int32", SQUARE_INT32)
    write_model(model_repo, "old_repeat", OURS_UNDER_TRITONS_NAME)
    return start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit",
                         "--load-model", "repeat_int32", "--load-model", "square_int32")  # fmt: skip


def tensor(name: str, values, datatype: str) -> grpcclient.InferInput:
    data = np.array(values, dtype=np.int32 if datatype == "INT32" else np.uint32)
    t = grpcclient.InferInput(name, list(data.shape), datatype)
    t.set_data_from_numpy(data)
    return t


def repeat_request(values, delays, wait):
    return [tensor("IN", values, "INT32"), tensor("DELAY", delays, "UINT32"), tensor("WAIT", [wait], "UINT32")]


def test_repeat_sends_one_response_per_element_with_its_index(server):
    stream = ResultStream(server.url)
    try:
        stream.client.async_stream_infer("repeat_int32", repeat_request([4, 2, 0, 1], [1, 2, 3, 4], 5), request_id="r",
                                         enable_empty_final_response=True)  # fmt: skip
        results = stream.until_finals(1)["r"]
        assert [int(r.as_numpy("OUT")[0]) for r in results] == [4, 2, 0, 1]
        assert [int(r.as_numpy("IDX")[0]) for r in results] == [0, 1, 2, 3]
        assert results[0].as_numpy("IDX").dtype == np.uint32
        # An empty IN: no response, only the end of the request.
        stream.client.async_stream_infer("repeat_int32", repeat_request([], [], 0), request_id="e",
                                         enable_empty_final_response=True)  # fmt: skip
        assert stream.until_finals(1) == {}
    finally:
        stream.close()


def test_repeat_interleaves_requests_on_one_instance_after_their_wait(server):
    stream = ResultStream(server.url)
    try:
        # The first request frees the only instance at once (WAIT 0) and answers slowly; the second starts at once.
        stream.client.async_stream_infer("repeat_int32", repeat_request([1, 2], [600, 600], 0), request_id="slow",
                                         enable_empty_final_response=True)  # fmt: skip
        stream.client.async_stream_infer("repeat_int32", repeat_request([9], [0], 0), request_id="fast",
                                         enable_empty_final_response=True)  # fmt: skip
        order = []
        finals = 0
        while finals < 2:
            result, error = stream.events.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            finals += response.parameters["triton_final_response"].bool_param
            if response.outputs:
                order.append(response.id)
        assert order == ["fast", "slow", "slow"], order
    finally:
        stream.close()


def test_repeat_refuses_in_and_delay_of_different_shapes(server):
    stream = ResultStream(server.url)
    try:
        stream.client.async_stream_infer("repeat_int32", repeat_request([1, 2, 3], [1, 2], 0))
        result, error = stream.events.get(timeout=30)
        assert result is None
        assert "expected IN and DELAY shape to match, got [3] and [2]" in error.message()
    finally:
        stream.close()


def test_square_sends_n_responses_of_n(server):
    stream = ResultStream(server.url)
    try:
        stream.client.async_stream_infer("square_int32", [tensor("IN", [3], "INT32")], request_id="s",
                                         enable_empty_final_response=True)  # fmt: skip
        assert [int(r.as_numpy("OUT")[0]) for r in stream.until_finals(1)["s"]] == [3, 3, 3]
    finally:
        stream.close()


def test_a_config_for_another_repeat_fails_its_load_with_tritons_words(server):
    client = grpcclient.InferenceServerClient(server.url)
    expect_error("INTERNAL", "expected 3 inputs, got 2", client.load_model, "old_repeat")
