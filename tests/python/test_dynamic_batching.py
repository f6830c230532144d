"""The dynamic batcher with real tritonclient clients.

What is proven:
- batching: a built-in identity model with `dynamic_batching` gets many concurrent requests, and every client gets
  exactly its own rows back while the statistics show fewer executions than inferences (Triton's execution_count
  vs inference_count); requests whose rows have other shapes are not stacked together and still come back right;
  `batch_stats` has one entry per executed batch size, and its counts add up to execution_count and, weighted by
  the batch size, to inference_count;
- the built-in `dense` (2048 x 2048, fixed weights) answers 32 concurrent clients exactly what numpy computes, in
  shared batches;
- priority levels and queue policies, on written `dense` models with one instance, where the requests a test
  watches queue up behind "fillers" (requests sent before and after them at the first level, each in a batch of
  its own): queued high-priority requests run before queued low-priority ones, priority 0 and priorities beyond
  the last level go to the default level, a full level answers UNAVAILABLE `[request id: <id>] Exceeds maximum
  queue size` while other levels still take requests, a REJECT timeout answers UNAVAILABLE `Request timeout
  expired`, the request's `timeout` can shorten the level's default but not lengthen it, and a DELAY timeout moves
  a request behind the punctual ones (also those that came after it).

The priority tests check the order in which responses come back, never how long anything took. They rely on one
thing only: that a test's requests reach the server before the ten fillers ahead of them have run (and, for the
timeouts, that ten more fillers take longer than 2 ms). They need nothing about the order in which requests sent
one after another are admitted, which the server does not promise (it handles each call on its own task).

The batcher executes a batch as soon as it holds max_batch_size rows, so the long max_queue_delay only matters to
requests that find no partners: the test does not wait for it unless the clients are very slow.
"""

from __future__ import annotations

import functools
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
# The priority models: as much work per row as the built-in dense (4 M multiply-adds), with small requests.
PRIO_K, PRIO_N = 256, 16384
# Fillers sent before and after the requests a priority test watches (see Completions).
FILLERS = 10
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
    """A PRIO_K x PRIO_N `dense` model with one instance and the given `dynamic_batching` body."""
    return f"""
name: "{name}"
backend: "dense"
max_batch_size: 16
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ {PRIO_K} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ {PRIO_N} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ {batching} }}
"""


PRIORITY_MODELS = {
    # Levels 1 (first) to 3; 2 is the default.
    "prio": "priority_levels: 3 default_priority_level: 2",
    # Level 2 (the default) holds at most 2 waiting requests; level 1 is bounded only by the server's default.
    "prio_full": """priority_levels: 2 default_priority_level: 2
        priority_queue_policy { key: 2 value: { max_queue_size: 2 } }""",
    # Level 1 has no timeout; level 2 rejects after 60 s, level 3 after 2 ms; both let a request shorten that.
    "prio_timeout": """priority_levels: 3 default_priority_level: 2
        priority_queue_policy { key: 2 value: {
            timeout_action: REJECT default_timeout_microseconds: 60000000 allow_timeout_override: true } }
        priority_queue_policy { key: 3 value: {
            timeout_action: REJECT default_timeout_microseconds: 2000 allow_timeout_override: true } }""",
    # No levels: one queue whose late requests are delayed, not rejected.
    "prio_delay": """default_queue_policy {
        timeout_action: DELAY default_timeout_microseconds: 60000000 allow_timeout_override: true }""",
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


@functools.cache
def dense_weights(k: int = DENSE_K, n: int = DENSE_K) -> np.ndarray:
    """The dense backend's W[i][j] = ((7i + 13j) mod 17) / 64 - 8/64."""
    i = np.arange(k)[:, None]
    j = np.arange(n)[None, :]
    return ((7 * i + 13 * j) % 17) / 64.0 - 8.0 / 64.0


def dense_rows(seed: int, rows: int, k: int = DENSE_K) -> np.ndarray:
    """Rows of multiples of 1/8 in [-1, 1]: every product with a weight is a multiple of 1/512 and every sum stays
    below 2^8, so float32 computes x @ W exactly, in any order of summation."""
    return (np.random.default_rng(seed).integers(-8, 9, (rows, k)) / 8).astype(np.float32)


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
    """Requests sent with async_infer; their labels in the order their responses (or errors) came back.

    Fillers keep the one instance busy: they are sent first, at the first priority level, so every request a test
    sends after them waits in the queue until they have run, and the batcher then picks among all of them at once.
    """

    def __init__(self, client):
        self.client = client
        self.order: list[str] = []
        self.results: dict[str, object] = {}
        self.errors: dict[str, InferenceServerException] = {}
        self.inputs: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)

    def send(self, model: str, label: str, request_id: str = "", **kwargs) -> None:
        """Each request carries its own `tag` parameter, so no two share a batch: every response is a batch's end."""
        values = dense_rows(len(self.inputs), 1, PRIO_K)
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

    def fill(self, model: str, count: int, **kwargs) -> None:
        start = sum(label.startswith("filler") for label in self.inputs)
        for i in range(start, start + count):
            self.send(model, f"filler{i}", **kwargs)

    def wait_for_an_error(self) -> None:
        with self.lock:
            assert self.done.wait_for(lambda: self.errors, timeout=WAIT_S), self.order

    def wait(self) -> list[str]:
        """Waits for every answer, checks the outputs, and returns the order of the requests other than fillers."""
        with self.lock:
            assert self.done.wait_for(lambda: len(self.order) == len(self.inputs), timeout=WAIT_S), self.order
        weights = dense_weights(PRIO_K, PRIO_N)
        for label, result in self.results.items():
            expected = self.inputs[label].astype(np.float64) @ weights
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-4)
        assert not [label for label in self.errors if label.startswith("filler")], self.errors
        return [label for label in self.order if not label.startswith("filler")]

    def unavailable(self, label: str) -> str:
        err = self.errors[label]
        assert err.status() == "StatusCode.UNAVAILABLE", (label, err.status(), err.message())
        return err.message()


def test_high_priority_requests_overtake_queued_low_ones(prio_client):
    calls = Completions(prio_client)
    calls.fill("prio", FILLERS, priority=1)
    for i in range(4):
        calls.send("prio", f"low{i}", priority=3)
    for i in range(4):
        calls.send("prio", f"high{i}", priority=1)
    calls.fill("prio", FILLERS, priority=1)
    order = calls.wait()
    assert calls.errors == {}
    assert sorted(order[:4]) == [f"high{i}" for i in range(4)], order
    assert sorted(order[4:]) == [f"low{i}" for i in range(4)], order


def test_priority_zero_and_beyond_the_last_level_use_the_default_level(prio_client):
    """Levels 1..3, default 2: priorities 0 and 99 wait with level 2, after level 1 and before level 3."""
    calls = Completions(prio_client)
    calls.fill("prio", FILLERS, priority=1)
    level_of = {}
    for label, priority, level in [("p3a", 3, 3), ("p3b", 3, 3), ("p0", 0, 2), ("p99", 99, 2), ("p2", 2, 2), ("p1", 1, 1)]:
        calls.send("prio", label, priority=priority)
        level_of[label] = level
    calls.fill("prio", FILLERS, priority=1)
    order = calls.wait()
    assert calls.errors == {}
    levels = [level_of[label] for label in order]
    assert levels == [1, 2, 2, 2, 3, 3], order


def test_full_level_answers_unavailable_while_other_levels_take_requests(prio_client):
    calls = Completions(prio_client)
    calls.fill("prio_full", FILLERS, priority=1)
    for i in range(5):
        calls.send("prio_full", f"fill{i}", request_id=f"rid-{i}", priority=2)
    calls.fill("prio_full", FILLERS, priority=1)
    # Level 2 stays full while level 1 has fillers waiting: a third request there is refused at once, with or
    # without a request id (priority 0 is level 2, the default).
    calls.wait_for_an_error()
    no_id = dense_input(dense_rows(1, 1, PRIO_K))
    err = expect_error("UNAVAILABLE", "Exceeds maximum queue size", prio_client.infer, "prio_full", no_id)
    assert err.message() == "[request id: <id_unknown>] Exceeds maximum queue size"
    err = expect_error(
        "UNAVAILABLE", "Exceeds maximum queue size",
        prio_client.infer, "prio_full", dense_input(dense_rows(2, 1, PRIO_K)), request_id="rid-D", priority=2,
    )
    assert err.message() == "[request id: rid-D] Exceeds maximum queue size"
    # Level 1 is not full: a request there waits its turn and is answered.
    values = dense_rows(3, 1, PRIO_K)
    got = prio_client.infer("prio_full", dense_input(values), priority=1).as_numpy("OUTPUT0")
    np.testing.assert_allclose(got, values.astype(np.float64) @ dense_weights(PRIO_K, PRIO_N), rtol=1e-4)
    calls.wait()
    assert len(calls.errors) == 3 and len(calls.results) == 2 + 2 * FILLERS, calls.order
    for label in calls.errors:
        assert calls.unavailable(label) == f"[request id: rid-{label[4:]}] Exceeds maximum queue size"


def test_reject_timeout_answers_request_timeout_expired(prio_client):
    """Level 3 rejects a request that waited 2 ms. A request id does not change the message (Triton adds none)."""
    calls = Completions(prio_client)
    calls.fill("prio_timeout", FILLERS, priority=1)
    for i in range(3):
        calls.send("prio_timeout", f"late{i}", priority=3, request_id=f"id-{i}")
    calls.fill("prio_timeout", FILLERS, priority=1)
    calls.wait()
    assert sorted(calls.errors) == ["late0", "late1", "late2"]
    for label in calls.errors:
        assert calls.unavailable(label) == "Request timeout expired"


def test_timeout_override_shortens_but_does_not_lengthen(prio_client):
    calls = Completions(prio_client)
    calls.fill("prio_timeout", FILLERS, priority=1)
    # Level 2 (60 s): a 1 ms override expires while the fillers run; without one the request is answered.
    calls.send("prio_timeout", "short", priority=2, timeout=1000)
    calls.send("prio_timeout", "default", priority=2)
    # Level 3 (2 ms): a 10 s override does not extend the level's timeout.
    calls.send("prio_timeout", "long", priority=3, timeout=10_000_000)
    calls.fill("prio_timeout", FILLERS, priority=1)
    calls.wait()
    assert sorted(calls.errors) == ["long", "short"]
    assert calls.unavailable("short") == calls.unavailable("long") == "Request timeout expired"
    assert "default" in calls.results


def test_delay_timeout_moves_the_request_behind_punctual_ones(prio_client):
    """Without priority levels the queue is first come, first served; two requests whose 1 ms override expires
    while the fillers run are not rejected but wait behind every request still in time, also those that came
    after them."""
    calls = Completions(prio_client)
    calls.fill("prio_delay", FILLERS)
    calls.send("prio_delay", "late0", timeout=1000)
    calls.send("prio_delay", "late1", timeout=1000)
    calls.send("prio_delay", "punctual0")
    calls.send("prio_delay", "punctual1")
    calls.fill("prio_delay", FILLERS)
    calls.wait()
    assert calls.errors == {}
    assert sorted(calls.order[-2:]) == ["late0", "late1"], calls.order
    assert max(calls.order.index(f"filler{i}") for i in range(2 * FILLERS)) < calls.order.index("late0"), calls.order
