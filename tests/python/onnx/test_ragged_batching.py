"""Ragged batching with real tritonclient clients and a real ONNX model.

What is proven (Triton's docs/user_guide/ragged_batching.md and model_config.proto's `allow_ragged_batch` and
`batch_input`):
- an input with `allow_ragged_batch: true` lets requests of other lengths share a batch: the ONNX model `segments`
  (onnx_models.py) takes the ragged INPUT as one [elements] tensor, the requests' elements one after another, plus
  the batch inputs the server makes: INDEX (BATCH_ACCUMULATED_ELEMENT_COUNT, INT32), COUNT (BATCH_ELEMENT_COUNT,
  FP32) and LONGEST_SHAPE (BATCH_MAX_ELEMENT_COUNT_AS_SHAPE). Many concurrent clients with random lengths each get
  the sum and length of their own values (checked against numpy), the statistics show batches of more than one
  request, and some request saw a longer request of its batch (LONGEST > its own length);
- a request that runs alone gets the same layout (a batch of one);
- a ragged output (`batch_output` BATCH_SCATTER_WITH_INPUT_SHAPE, the ONNX model `ragged_double`) goes back to
  each request in the shape of its own input, alone and from shared batches;
- without `allow_ragged_batch` (the ordinary `row_sums` model), requests of other lengths never share a batch and
  still come back right, while requests of one length do share batches;
- batch inputs that cannot be made fail the load with Triton's words (unknown source input, a data type other than
  INT32 and FP32), and so does a ragged input the ONNX model does not take as [-1]; the rest of the repository loads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the onnx package is missing: run scripts/setup-python.sh")

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

import onnx_models  # noqa: E402
from helpers import finish_server, start_server  # noqa: E402
from test_onnxruntime import index_entry, ort_args  # noqa: E402

pytestmark = pytest.mark.onnx

CLIENTS = 24
REQUESTS_PER_CLIENT = 3
MAX_LENGTH = 40
# Long enough for concurrent clients to fill batches; a batch goes as soon as it is full or blocked.
BATCHING = "dynamic_batching { max_queue_delay_microseconds: 500000 }\ninstance_group [ { count: 1 kind: KIND_CPU } ]"
ROW_SUMS = f"""
name: "row_sums"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "INPUT" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "SUM" data_type: TYPE_FP32 dims: [ 1 ] }} ]
{BATCHING}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("ragged")
    onnx_models.segments(repo, "segments", extra=BATCHING)
    onnx_models.row_sums(repo, "row_sums", config=ROW_SUMS)
    onnx_models.ragged_double(repo, "ragged_double", extra=BATCHING)
    served = start_server("--model-repository", str(repo), *ort_args())
    yield served
    finish_server(served)


@pytest.fixture
def client(server):
    c = grpcclient.InferenceServerClient(url=server.url)
    yield c
    c.close()


def values(length: int, seed: int) -> np.ndarray:
    """One request's row of small integers: float32 sums of them are exact in any order."""
    return np.random.default_rng(seed).integers(-8, 9, (1, length)).astype(np.float32)


def infer(client, model: str, row: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    data = grpcclient.InferInput("INPUT", list(row.shape), "FP32")
    data.set_data_from_numpy(row)
    result = client.infer(model, [data])
    return {name: result.as_numpy(name) for name in outputs}


def batch_sizes(client, model: str) -> tuple[dict[int, int], object]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}, stats


def test_the_config_keeps_allow_ragged_batch_and_batch_inputs(client):
    config = client.get_model_config("segments").config
    assert config.input[0].allow_ragged_batch is True
    kinds = [(b.kind, b.target_name[0], b.data_type, b.source_input[0]) for b in config.batch_input]
    assert kinds == [
        (mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT, "INDEX", mc.TYPE_INT32, "INPUT"),
        (mc.BatchInput.BATCH_ELEMENT_COUNT, "COUNT", mc.TYPE_FP32, "INPUT"),
        (mc.BatchInput.BATCH_MAX_ELEMENT_COUNT_AS_SHAPE, "LONGEST_SHAPE", mc.TYPE_INT32, "INPUT"),
    ]
    # Batch inputs are the server's to make, not the client's to send.
    assert [i.name for i in client.get_model_metadata("segments").inputs] == ["INPUT"]


def test_a_request_alone_is_a_batch_of_one(client):
    row = values(7, seed=1)
    got = infer(client, "segments", row, ("SUM", "LENGTH", "LONGEST"))
    assert got["SUM"].shape == (1, 1)
    np.testing.assert_array_equal(got["SUM"], [[row.sum()]])
    np.testing.assert_array_equal(got["LENGTH"], [[7.0]])
    np.testing.assert_array_equal(got["LONGEST"], [[7]])


def test_requests_of_other_lengths_share_batches_and_each_gets_its_own_sum(server, client):
    rng = np.random.default_rng(20)
    lengths = rng.integers(1, MAX_LENGTH + 1, (CLIENTS, REQUESTS_PER_CLIENT))
    before, _ = batch_sizes(client, "segments")

    def run(k: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        c = grpcclient.InferenceServerClient(url=server.url)
        try:
            rows = [values(int(n), seed=1000 * k + j) for j, n in enumerate(lengths[k])]
            return [(row, infer(c, "segments", row, ("SUM", "LENGTH", "LONGEST"))) for row in rows]
        finally:
            c.close()

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = [answer for client_answers in pool.map(run, range(CLIENTS)) for answer in client_answers]
    saw_longer = 0
    for row, got in answers:
        length = row.shape[1]
        np.testing.assert_array_equal(got["SUM"], [[row.sum()]])
        np.testing.assert_array_equal(got["LENGTH"], [[float(length)]])
        longest = int(got["LONGEST"][0, 0])
        assert length <= longest <= lengths.max(), (length, longest)
        saw_longer += longest > length
    after, stats = batch_sizes(client, "segments")
    new = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert sum(size * count for size, count in new.items()) == CLIENTS * REQUESTS_PER_CLIENT, new
    assert max(new) > 1, f"no batch of more than one request: {new}"
    assert saw_longer > 0, "no request shared a batch with a longer one"
    assert stats.execution_count < stats.inference_count, stats


def test_a_scattered_output_goes_back_in_each_requests_shape(client):
    alone = values(6, seed=3)
    got = infer(client, "ragged_double", alone, ("OUT",))["OUT"]
    assert got.shape == (1, 6)
    np.testing.assert_array_equal(got, 2 * alone)
    lengths = np.random.default_rng(8).integers(1, MAX_LENGTH + 1, 32)
    rows = [values(int(length), seed=50 + i) for i, length in enumerate(lengths)]
    with ThreadPoolExecutor(len(rows)) as pool:
        answers = list(pool.map(lambda row: infer(client, "ragged_double", row, ("OUT",))["OUT"], rows))
    for row, got in zip(rows, answers):
        assert got.shape == row.shape
        np.testing.assert_array_equal(got, 2 * row)
    sizes, _ = batch_sizes(client, "ragged_double")
    assert max(sizes) > 1, sizes


def test_without_allow_ragged_batch_other_lengths_never_share_a_batch(server, client):
    rows = [values(length, seed=length) for length in range(1, 17)]
    with ThreadPoolExecutor(len(rows)) as pool:
        answers = list(pool.map(lambda row: infer(client, "row_sums", row, ("SUM",))["SUM"], rows))
    for row, got in zip(rows, answers):
        np.testing.assert_array_equal(got, [[row.sum()]])
    sizes, stats = batch_sizes(client, "row_sums")
    assert list(sizes) == [1], sizes
    assert stats.execution_count == stats.inference_count == len(rows)

    # Requests of one length still share batches.
    same = [values(5, seed=100 + i) for i in range(16)]
    with ThreadPoolExecutor(len(same)) as pool:
        answers = list(pool.map(lambda row: infer(client, "row_sums", row, ("SUM",))["SUM"], same))
    for row, got in zip(same, answers):
        np.testing.assert_array_equal(got, [[row.sum()]])
    sizes, _ = batch_sizes(client, "row_sums")
    assert max(sizes) > 1, sizes


def broken_segments(repo, name: str, old: str, new: str) -> None:
    path = onnx_models.segments(repo, name)
    config = path.parent.parent / "config.pbtxt"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new, 1))


def test_batch_inputs_that_cannot_be_made_fail_the_load(start_tritium, tmp_path):
    broken_segments(tmp_path, "unknown_source", 'source_input: "INPUT" }', 'source_input: "NOPE" }')
    broken_segments(tmp_path, "int64_index", "data_type: TYPE_INT32", "data_type: TYPE_INT64")
    onnx_models.segments(tmp_path, "good")
    # A ragged input must be [-1] in the ONNX model: row_sums takes [batch, n].
    onnx_models.row_sums(
        tmp_path, "ragged_matrix", config=ROW_SUMS.replace('"row_sums"', '"ragged_matrix"').replace(
            "dims: [ -1 ] }", "dims: [ -1 ] allow_ragged_batch: true }", 1
        )
    )
    server = start_tritium("--model-repository", str(tmp_path), *ort_args())
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        reasons = {
            "unknown_source": "unknown source input name 'NOPE'",
            "int64_index": "batch input data type must be TYPE_INT32 or TYPE_FP32",
            "ragged_matrix": "configuration expects model provides input with shape [-1]  for ragged input 'INPUT', "
            "model provides [-1,-1]",
        }
        for name, reason in reasons.items():
            entry = index_entry(c, name)
            assert entry.state == "UNAVAILABLE", entry
            assert reason in entry.reason, entry.reason
        assert c.is_model_ready("good") is True
        row = values(3, seed=5)
        np.testing.assert_array_equal(infer(c, "good", row, ("SUM",))["SUM"], [[row.sum()]])
    finally:
        c.close()
