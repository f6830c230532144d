"""The dynamic batcher with real tritonclient clients: a built-in identity model with `dynamic_batching` gets many
concurrent requests, and every client gets exactly its own rows back while the statistics show fewer executions than
inferences (Triton's execution_count vs inference_count); requests whose rows have other shapes are not stacked
together and still come back right.

The batcher executes a batch as soon as it holds max_batch_size rows, so the long max_queue_delay only matters to
requests that find no partners: the test does not wait for it unless the clients are very slow.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import write_model

CLIENTS = 16
MAX_BATCH = 8

BATCHED = f"""
name: "batched"
backend: "identity"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 3000000 }}
"""


@pytest.fixture
def batched(start_tritium, model_repo):
    write_model(model_repo, "batched", BATCHED)
    server = start_tritium("--model-repository", str(model_repo))
    client = grpcclient.InferenceServerClient(url=server.url)
    yield client
    client.close()


def infer(client, values: np.ndarray) -> np.ndarray:
    data = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    data.set_data_from_numpy(values)
    return client.infer("batched", [data]).as_numpy("OUTPUT0")


def test_concurrent_clients_each_get_their_own_rows_from_shared_batches(batched):
    rows = [np.arange(4, dtype=np.float32).reshape(1, 4) + 100 * i for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda values: infer(batched, values), rows))
    for sent, got in zip(rows, answers):
        np.testing.assert_array_equal(got, sent)
    stats = batched.get_inference_statistics("batched").model_stats[0]
    assert stats.inference_count == CLIENTS
    assert stats.inference_stats.success.count == CLIENTS
    assert 1 <= stats.execution_count < CLIENTS, stats


def test_rows_of_other_shapes_are_not_stacked_together(batched):
    shapes = [(1, 3), (2, 5), (1, 3), (3, 5), (2, 2)] * 3
    inputs = [np.random.default_rng(i).standard_normal(shape).astype(np.float32) for i, shape in enumerate(shapes)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        answers = list(pool.map(lambda values: infer(batched, values), inputs))
    for sent, got in zip(inputs, answers):
        assert got.shape == sent.shape
        np.testing.assert_array_equal(got, sent)
    assert batched.get_inference_statistics("batched").model_stats[0].inference_count == sum(s[0] for s in shapes)
