"""ModelStreamInfer through tritonclient.grpc's start_stream / async_stream_infer.

Every test closes its stream with stop_stream(), which half-closes the request side and blocks until the
server has finished the RPC, so "nothing more arrived" is an exact assertion, not a timing guess.
"""

from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as grpcclient

STREAM_TIMEOUT_S = 30


class Stream:
    """A started stream whose callback results land in a queue, in arrival order."""

    def __init__(self, client: grpcclient.InferenceServerClient):
        self.client = client
        self.events: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: self.events.put((result, error)), stream_timeout=STREAM_TIMEOUT_S)

    def next(self):
        return self.events.get(timeout=STREAM_TIMEOUT_S)

    def close(self) -> list:
        """Stop the stream (waiting for the server to finish it) and return whatever is still queued."""
        self.client.stop_stream()
        rest = []
        while not self.events.empty():
            rest.append(self.events.get_nowait())
        return rest


def repeat_inputs(n: int, delay_ms: int | None = None) -> list[grpcclient.InferInput]:
    count = grpcclient.InferInput("IN", [1], "INT32")
    count.set_data_from_numpy(np.array([n], dtype=np.int32))
    inputs = [count]
    if delay_ms is not None:
        delay = grpcclient.InferInput("DELAY_MS", [1], "UINT32")
        delay.set_data_from_numpy(np.array([delay_ms], dtype=np.uint32))
        inputs.append(delay)
    return inputs


def identity_input(data: np.ndarray) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor]


def final_flag(result) -> bool | None:
    params = result.get_response().parameters
    return params["triton_final_response"].bool_param if "triton_final_response" in params else None


def ok(events: list) -> list:
    errors = [f"{error.status()}: {error.message()}" for _, error in events if error is not None]
    assert errors == [], errors
    return [result for result, _ in events]


def test_repeat_without_empty_final(client):
    stream = Stream(client)
    client.async_stream_infer("repeat", repeat_inputs(3), request_id="r1")
    results = ok(stream.close())
    assert [int(r.as_numpy("OUT")[0]) for r in results] == [0, 1, 2]
    assert [r.get_response().id for r in results] == ["r1"] * 3
    assert [r.as_numpy("OUT").dtype for r in results] == [np.int32] * 3
    # The model signals completion with a bare flag, so no data response is marked final.
    assert [final_flag(r) for r in results] == [False, False, False]


def test_repeat_with_empty_final(client):
    stream = Stream(client)
    client.async_stream_infer("repeat", repeat_inputs(3), request_id="r2", enable_empty_final_response=True)
    results = ok(stream.close())
    assert len(results) == 4, [r.get_response() for r in results]
    assert [int(r.as_numpy("OUT")[0]) for r in results[:3]] == [0, 1, 2]
    assert [final_flag(r) for r in results] == [False, False, False, True]
    last = results[3].get_response()
    assert len(last.outputs) == 0 and len(last.raw_output_contents) == 0
    assert last.id == "r2"
    assert last.model_name == "repeat"


def test_repeat_zero_with_empty_final_sends_only_the_final(client):
    stream = Stream(client)
    client.async_stream_infer("repeat", repeat_inputs(0), request_id="r3", enable_empty_final_response=True)
    results = ok(stream.close())
    assert len(results) == 1
    response = results[0].get_response()
    assert final_flag(results[0]) is True
    assert len(response.outputs) == 0
    assert response.id == "r3"


def test_repeat_zero_without_empty_final_sends_nothing(client):
    stream = Stream(client)
    client.async_stream_infer("repeat", repeat_inputs(0), request_id="r4")
    assert stream.close() == []


def test_repeat_with_delay_input(client):
    stream = Stream(client)
    client.async_stream_infer("repeat", repeat_inputs(2, delay_ms=5), request_id="r5", enable_empty_final_response=True)
    results = ok(stream.close())
    assert [int(r.as_numpy("OUT")[0]) for r in results[:2]] == [0, 1]
    assert [final_flag(r) for r in results] == [False, False, True]


def test_repeat_interleaved_requests_keep_per_request_order(client):
    stream = Stream(client)
    client.async_stream_infer("repeat", repeat_inputs(4, delay_ms=1), request_id="a", enable_empty_final_response=True)
    client.async_stream_infer("repeat", repeat_inputs(3, delay_ms=1), request_id="b", enable_empty_final_response=True)
    results = ok(stream.close())
    by_id: dict[str, list] = {"a": [], "b": []}
    for r in results:
        by_id[r.get_response().id].append(r)
    for rid, n in (("a", 4), ("b", 3)):
        got = by_id[rid]
        assert [int(r.as_numpy("OUT")[0]) for r in got[:-1]] == list(range(n)), rid
        assert [final_flag(r) for r in got] == [False] * n + [True], rid


def test_identity_stream_responses_in_request_order(client):
    stream = Stream(client)
    sizes = [1, 64, 3, 1024, 0, 7]
    for i, size in enumerate(sizes):
        client.async_stream_infer("identity", identity_input(np.full(size, i, dtype=np.float32)), request_id=f"id-{i}")
    results = ok(stream.close())
    assert [r.get_response().id for r in results] == [f"id-{i}" for i in range(len(sizes))]
    for i, (size, r) in enumerate(zip(sizes, results)):
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), np.full(size, i, dtype=np.float32))
        # Non-decoupled responses on a stream are each complete.
        assert final_flag(r) is True


def test_stream_error_is_in_band_and_stream_survives(client):
    stream = Stream(client)
    client.async_stream_infer("no_such_model", identity_input(np.ones(2, dtype=np.float32)), request_id="bad")
    result, error = stream.next()
    assert result is None
    assert error is not None
    assert "Request for unknown model" in error.message(), error.message()
    assert error.status() is None, "in-band stream errors carry no gRPC status"
    data = np.arange(5, dtype=np.float32)
    client.async_stream_infer("identity", identity_input(data), request_id="good")
    results = ok(stream.close())
    assert len(results) == 1
    assert results[0].get_response().id == "good"
    np.testing.assert_array_equal(results[0].as_numpy("OUTPUT0"), data)


def test_stream_validation_error_in_band(client):
    stream = Stream(client)
    wrong = grpcclient.InferInput("INPUT0", [2], "INT32")
    wrong.set_data_from_numpy(np.zeros(2, dtype=np.int32))
    client.async_stream_infer("identity", [wrong], request_id="bad-dtype")
    result, error = stream.next()
    assert result is None and error is not None
    assert "data-type is 'INT32', but model 'identity' expects 'FP32'" in error.message(), error.message()
    client.async_stream_infer("repeat", repeat_inputs(1), request_id="after", enable_empty_final_response=True)
    results = ok(stream.close())
    assert [int(r.as_numpy("OUT")[0]) for r in results[:1]] == [0]
    assert [final_flag(r) for r in results] == [False, True]


def test_stream_add_sub_with_requested_output(client):
    stream = Stream(client)
    a = np.arange(16, dtype=np.int32)
    b = np.full(16, 2, dtype=np.int32)
    inputs = []
    for name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(name, [16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    client.async_stream_infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0")], request_id="as")
    results = ok(stream.close())
    assert len(results) == 1
    assert [o.name for o in results[0].get_response().outputs] == ["OUTPUT0"]
    np.testing.assert_array_equal(results[0].as_numpy("OUTPUT0"), a + b)
