"""The dynamic batcher with real tritonclient clients.

What is proven:
- batching: a built-in identity model with `dynamic_batching` gets many concurrent requests, and every client gets
  exactly its own rows back while the statistics show fewer executions than inferences (Triton's execution_count
  vs inference_count); requests whose rows have other shapes are not stacked together and still come back right;
  `batch_stats` has one entry per executed batch size, and its counts add up to execution_count and, weighted by
  the batch size, to inference_count;
- the built-in `dense` (2048 x 2048, fixed weights) answers 32 concurrent clients exactly what numpy computes, in
  shared batches;
- priority levels and queue policies, on `dense` models slow enough (tens of ms a row in the debug build, one
  instance) that requests queue up behind a 16-row "blocker": queued high-priority requests run before queued
  low-priority ones, priority 0 and priorities beyond the last level go to the default level, a full level answers
  UNAVAILABLE `[request id: <id>] Exceeds maximum queue size` while other levels still take requests, a REJECT
  timeout answers UNAVAILABLE `Request timeout expired`, the request's `timeout` can shorten the level's default
  but not lengthen it, and a DELAY timeout moves the request behind its level's punctual ones.

The priority tests check the order in which responses come back, never how long anything took. The one thing
they cannot know is which request reaches the server first when several are sent at once: whichever it is runs
at once, so each test allows for exactly that one request (it completes first) and nothing more.

The batcher executes a batch as soon as it holds max_batch_size rows, so the long max_queue_delay only matters to
requests that find no partners: the test does not wait for it unless the clients are very slow.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import expect_error, finish_server, start_server, write_model

CLIENTS = 16
MAX_BATCH = 8
DENSE_K = 2048
WAIT_S = 120

BATCHED = f"""
name: "batched"
backend: "identity"
max_batch_size: {MAX_BATCH}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 3000000 }}
"""


def dense_config(name: str, batching: str) -> str:
    """A 2048 x 2048 `dense` model with one instance and the given `dynamic_batching` body."""
    return f"""
name: "{name}"
backend: "dense"
max_batch_size: 16
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {DENSE_K} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {DENSE_K} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ {batching} }}
"""


PRIORITY_MODELS = {
    # Levels 1 (first) to 3; 2 is the default.
    "prio": "priority_levels: 3 default_priority_level: 2",
    # Level 2 (the default) holds at most 2 waiting requests; level 1 is bounded only by the server's default.
    "prio_full": """priority_levels: 2 default_priority_level: 2
        priority_queue_policy { key: 2 value: { max_queue_size: 2 } }""",
    # Level 1 has no timeout; level 2 rejects after 60 s, level 3 after 100 ms; both let a request shorten that.
    "prio_timeout": """priority_levels: 3 default_priority_level: 2
        priority_queue_policy { key: 2 value: { timeout_action: REJECT default_timeout_microseconds: 60000000 allow_timeout_override: true } }
        priority_queue_policy { key: 3 value: { timeout_action: REJECT default_timeout_microseconds: 100000 allow_timeout_override: true } }""",
    # No levels: one queue whose late requests are delayed, not rejected.
    "prio_delay": """default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 60000000 allow_timeout_override: true }""",
}


@pytest.fixture
def batched(start_tritium, model_repo):
    write_model(model_repo, "batched", BATCHED)
    server = start_tritium("--model-repository", str(model_repo))
    client = grpcclient.InferenceServerClient(url=server.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def prio_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("priority") / "models"
    repo.mkdir()
    for name, batching in PRIORITY_MODELS.items():
        write_model(repo, name, dense_config(name, batching))
    server = start_server("--model-repository", str(repo))
    yield server
    finish_server(server)


@pytest.fixture
def prio_client(prio_server):
    c = grpcclient.InferenceServerClient(url=prio_server.url)
    yield c
    c.close()


def infer(client, values: np.ndarray) -> np.ndarray:
    data = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    data.set_data_from_numpy(values)
    return client.infer("batched", [data]).as_numpy("OUTPUT0")


def dense_weights() -> np.ndarray:
    i = np.arange(DENSE_K)[:, None]
    j = np.arange(DENSE_K)[None, :]
    return ((7 * i + 13 * j) % 17) / 64.0 - 8.0 / 64.0


def dense_rows(seed: int, rows: int) -> np.ndarray:
    """Rows of multiples of 1/8 in [-1, 1]: every product with a weight is a multiple of 1/512 and every sum stays
    below 2^8, so float32 computes x @ W exactly, in any order of summation."""
    return (np.random.default_rng(seed).integers(-8, 9, (rows, DENSE_K)) / 8).astype(np.float32)


def dense_input(values: np.ndarray) -> list[grpcclient.InferInput]:
    data = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    data.set_data_from_numpy(values)
    return [data]


def check_batch_stats(stats) -> None:
    """batch_stats: one entry per batch size, in increasing order; three equal phase counts each; the counts add up
    to execution_count and, weighted by batch size, to inference_count."""
    sizes = [b.batch_size for b in stats.batch_stats]
    assert sizes == sorted(set(sizes)), sizes
    for b in stats.batch_stats:
        assert b.compute_input.count == b.compute_infer.count == b.compute_output.count > 0, b
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == stats.inference_count


# --- batching -----------------------------------------------------------------------------------------------


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


def test_batch_stats_add_up_to_the_model_counts(batched):
    """Requests of 1 to 3 rows from 24 clients: inference_count sums the rows, and batch_stats agrees with it."""
    inputs = [np.full((1 + i % 3, 4), i, dtype=np.float32) for i in range(24)]
    with ThreadPoolExecutor(len(inputs)) as pool:
        answers = list(pool.map(lambda values: infer(batched, values), inputs))
    for sent, got in zip(inputs, answers):
        np.testing.assert_array_equal(got, sent)
    stats = batched.get_inference_statistics("batched").model_stats[0]
    assert stats.inference_count == sum(x.shape[0] for x in inputs) == 48
    assert stats.inference_stats.success.count == 24
    assert stats.execution_count < 24
    assert max(b.batch_size for b in stats.batch_stats) <= MAX_BATCH
    check_batch_stats(stats)


def test_dense_answers_32_concurrent_clients_exactly(start_tritium):
    server = start_tritium()
    weights = dense_weights()
    inputs = [dense_rows(seed, 1 + seed % 2) for seed in range(32)]

    def call(values):
        own = grpcclient.InferenceServerClient(url=server.url)
        try:
            return own.infer("dense", dense_input(values)).as_numpy("OUTPUT0")
        finally:
            own.close()

    with ThreadPoolExecutor(len(inputs)) as pool:
        answers = list(pool.map(call, inputs))
    for sent, got in zip(inputs, answers):
        assert got.shape == sent.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, sent.astype(np.float64) @ weights, rtol=1e-4)
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        stats = c.get_inference_statistics("dense").model_stats[0]
    finally:
        c.close()
    assert stats.inference_count == sum(x.shape[0] for x in inputs)
    assert stats.inference_stats.success.count == 32
    assert stats.execution_count < 32, "32 concurrent clients of a slow model must share batches"
    assert max(b.batch_size for b in stats.batch_stats) <= 16
    check_batch_stats(stats)


# --- priority levels and queue policies ----------------------------------------------------------------------


class Completions:
    """Requests sent with async_infer; their labels in the order their responses (or errors) came back."""

    def __init__(self, client):
        self.client = client
        self.order: list[str] = []
        self.results: dict[str, object] = {}
        self.errors: dict[str, InferenceServerException] = {}
        self.inputs: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)

    def send(self, model: str, label: str, rows: int = 1, request_id: str = "", **kwargs) -> None:
        """Each request carries its own `tag` parameter, so no two share a batch: every response is a batch's end."""
        values = dense_rows(len(self.inputs), rows)
        self.inputs[label] = values

        def callback(result, error):
            with self.lock:
                self.order.append(label)
                if error is not None:
                    self.errors[label] = error
                else:
                    self.results[label] = result
                self.done.notify_all()

        self.client.async_infer(
            model, dense_input(values), callback, request_id=request_id, parameters={"tag": label}, **kwargs
        )

    def wait_for_an_error(self) -> None:
        with self.lock:
            assert self.done.wait_for(lambda: self.errors, timeout=WAIT_S), self.order

    def wait(self) -> list[str]:
        with self.lock:
            assert self.done.wait_for(lambda: len(self.order) == len(self.inputs), timeout=WAIT_S), self.order
        weights = dense_weights()
        for label, result in self.results.items():
            expected = self.inputs[label].astype(np.float64) @ weights
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-4)
        return list(self.order)

    def unavailable(self, label: str) -> str:
        err = self.errors[label]
        assert err.status() == "StatusCode.UNAVAILABLE", (label, err.status(), err.message())
        return err.message()


def test_high_priority_requests_overtake_queued_low_ones(prio_client):
    calls = Completions(prio_client)
    calls.send("prio", "blocker", rows=16, priority=3)
    for i in range(4):
        calls.send("prio", f"low{i}", priority=3)
    for i in range(4):
        calls.send("prio", f"high{i}", priority=1)
    order = calls.wait()
    assert calls.errors == {}
    # The first to arrive ran at once; of the rest, every high one ran before every low one.
    rest = [label.rstrip("0123456789") for label in order[1:]]
    highs = 4 - (order[0].startswith("high"))
    assert rest == ["high"] * highs + [label for label in rest if label != "high"], order
    assert set(rest[highs:]) <= {"low", "blocker"}, order


def test_priority_zero_and_beyond_the_last_level_use_the_default_level(prio_client):
    """Levels 1..3, default 2: priorities 0 and 99 wait with level 2, after level 1 and before level 3."""
    calls = Completions(prio_client)
    calls.send("prio", "blocker", rows=16, priority=3)
    level_of = {"blocker": 3}
    for label, priority, level in [("p3a", 3, 3), ("p3b", 3, 3), ("p0", 0, 2), ("p99", 99, 2), ("p2", 2, 2), ("p1", 1, 1)]:
        calls.send("prio", label, priority=priority)
        level_of[label] = level
    order = calls.wait()
    assert calls.errors == {}
    levels = [level_of[label] for label in order[1:]]
    assert levels == sorted(levels), order


def test_full_level_answers_unavailable_while_other_levels_take_requests(prio_client):
    calls = Completions(prio_client)
    calls.send("prio_full", "blocker", rows=16, priority=1)
    for i in range(5):
        calls.send("prio_full", f"fill{i}", request_id=f"rid-{i}", priority=2)
    # A refused fill shows level 2 is full; it stays full while the blocker runs. More requests are refused at
    # once, with or without a request id.
    calls.wait_for_an_error()
    err = expect_error("UNAVAILABLE", "Exceeds maximum queue size", prio_client.infer, "prio_full", dense_input(dense_rows(1, 1)))
    assert err.message() == "[request id: <id_unknown>] Exceeds maximum queue size"
    err = expect_error(
        "UNAVAILABLE", "Exceeds maximum queue size",
        prio_client.infer, "prio_full", dense_input(dense_rows(2, 1)), request_id="rid-D", priority=2,
    )
    assert err.message() == "[request id: rid-D] Exceeds maximum queue size"
    # Level 1 is not full: a request there waits for the blocker and is answered.
    values = dense_rows(3, 1)
    got = prio_client.infer("prio_full", dense_input(values), priority=1).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, values.astype(np.float64) @ dense_weights(), rtol=1e-4)
    calls.wait()
    for label, error in calls.errors.items():
        assert calls.unavailable(label) == f"[request id: rid-{label[4:]}] Exceeds maximum queue size"
    # 2 fills waited at level 2, plus one more if it reached the server before the blocker (it then ran at once).
    accepted = [label for label in calls.results if label.startswith("fill")]
    assert 2 <= len(accepted) <= 3, calls.order
    assert calls.errors, "a full level must refuse"


def assert_rejected_unless_run_first(calls: Completions, labels: list[str], order: list[str]) -> None:
    """Each of `labels` was rejected with Triton's message, or reached the server first and ran at once."""
    for label in labels:
        if label in calls.errors:
            assert calls.unavailable(label) == "Request timeout expired"
        else:
            assert order.index(label) < order.index("blocker"), (label, order)
    assert sum(label in calls.errors for label in labels) >= len(labels) - 1, order


def test_reject_timeout_answers_request_timeout_expired(prio_client):
    """Level 3 rejects a request that waited 100 ms; the blocker runs far longer. A request id does not change the
    message (Triton adds none here)."""
    calls = Completions(prio_client)
    calls.send("prio_timeout", "blocker", rows=16, priority=1)
    late = [f"late{i}" for i in range(3)]
    for label in late:
        calls.send("prio_timeout", label, priority=3, request_id=f"id-{label}")
    order = calls.wait()
    assert "blocker" in calls.results
    assert_rejected_unless_run_first(calls, late, order)


def test_timeout_override_shortens_but_does_not_lengthen(prio_client):
    calls = Completions(prio_client)
    calls.send("prio_timeout", "blocker", rows=16, priority=1)
    # Level 2 (60 s): a 1 ms override expires while the blocker runs; without one the request is answered.
    calls.send("prio_timeout", "short", priority=2, timeout=1000)
    calls.send("prio_timeout", "default", priority=2)
    # Level 3 (100 ms): a 10 s override does not extend the level's timeout.
    calls.send("prio_timeout", "long", priority=3, timeout=10_000_000)
    order = calls.wait()
    assert "default" in calls.results and "blocker" in calls.results
    assert_rejected_unless_run_first(calls, ["short"], order)
    assert_rejected_unless_run_first(calls, ["long"], order)


def test_delay_timeout_moves_the_request_behind_punctual_ones(prio_client):
    """A 1 ms override expires while the blocker runs: the request is not rejected but waits behind the requests
    that came after it and are still in time."""
    calls = Completions(prio_client)
    calls.send("prio_delay", "blocker", rows=16)
    calls.send("prio_delay", "late", timeout=1000)
    calls.send("prio_delay", "punctual0")
    calls.send("prio_delay", "punctual1")
    order = calls.wait()
    assert calls.errors == {}
    if order[0] != "late":
        assert order[-1] == "late", order
