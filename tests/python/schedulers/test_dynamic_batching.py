"""The dynamic batcher with real tritonclient clients.

What is proven:
- batching: a built-in identity model with `dynamic_batching` gets many concurrent requests, and every client gets
  exactly its own rows back while the statistics show fewer executions than inferences (Triton's execution_count
  vs inference_count); requests whose rows have other shapes are not stacked together and still come back right;
  `batch_stats` has one entry per executed batch size, and its counts add up to execution_count and, weighted by
  the batch size, to inference_count;
- the built-in `dense` (4096 x 4096, fixed weights) answers 32 concurrent clients exactly what numpy computes, in
  shared batches;
- priority levels and queue policies, on written `dense` models with one instance, where the requests a test
  watches queue up behind "fillers" (requests at level 1, each in a batch of its own):
  queued high-priority requests run before queued low-priority ones, priority 0 and priorities beyond the last
  level go to the default level, a full level answers UNAVAILABLE `[request id: <id>] Exceeds maximum queue size`
  while other levels still take requests, a REJECT timeout answers UNAVAILABLE `Request timeout expired`, the
  request's `timeout` can shorten the level's default but not lengthen it, and a DELAY timeout moves a request
  behind its level's punctual ones (also those that came after it).

The priority tests check the order in which responses come back, never how long anything took. They rely on one
thing only: that their requests reach the server before the fillers ahead of them (about 2.5 s of work, so that a
loaded CI machine still sends them in time) have run (and, for the timeouts, that those take longer than 2 ms).
They need nothing about the order in which requests sent one after another are admitted, which the server does not promise (it runs each call on its own task, and requests
read together from the connection can reach the batcher in any order).

The batcher executes a batch as soon as it holds max_batch_size rows, so the long max_queue_delay only matters to
requests that find no partners: the test does not wait for it unless the clients are very slow.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import finish_server, start_server, write_model

CLIENTS = 16
MAX_BATCH = 8
DENSE_K = 4096
# The priority models: 4 M multiply-adds per row (a quarter of the built-in dense's), with small requests.
PRIO_K, PRIO_N = 256, 16384
# Fillers are sized to queue about this much work for the one instance (see filler_count), within these bounds.
FILLER_QUEUE_S = 2.5
FILLERS_MIN, FILLERS_MAX = 8, 1000
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


# Every priority model keeps level 1 (no policy) for fillers (see Completions).
PRIORITY_MODELS = {
    # Levels 2 to 4 for the tests; 3 is the default.
    "prio": "priority_levels: 4 default_priority_level: 3",
    # Level 3 (the default) holds at most 2 waiting requests; the other levels only the server's default.
    "prio_full": """priority_levels: 3 default_priority_level: 3
        priority_queue_policy { key: 3 value: { max_queue_size: 2 } }""",
    # Level 2 (the default) rejects after 60 s, level 3 after 2 ms; both let a request shorten that.
    "prio_timeout": """priority_levels: 3 default_priority_level: 2
        priority_queue_policy { key: 2 value: {
            timeout_action: REJECT default_timeout_microseconds: 60000000 allow_timeout_override: true } }
        priority_queue_policy { key: 3 value: {
            timeout_action: REJECT default_timeout_microseconds: 2000 allow_timeout_override: true } }""",
    # Level 2 (the default) delays its late requests instead of rejecting them.
    "prio_delay": """priority_levels: 2 default_priority_level: 2
        priority_queue_policy { key: 2 value: {
            timeout_action: DELAY default_timeout_microseconds: 60000000 allow_timeout_override: true } }""",
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


@pytest.fixture(scope="module")
def filler_count(prio_server) -> int:
    """How many fillers queue about FILLER_QUEUE_S of work. A call of the priority models takes from about 1 ms to
    80 ms depending on the build and the dense kernel, so the count is sized from the fastest of three calls. This
    only sizes the test; nothing is asserted on time."""
    c = grpcclient.InferenceServerClient(url=prio_server.url)
    try:
        fastest = float("inf")
        for seed in range(3):
            started = time.perf_counter()
            c.infer("prio", dense_input(dense_rows(seed, 1, PRIO_K)), priority=1)
            fastest = min(fastest, time.perf_counter() - started)
    finally:
        c.close()
    return max(FILLERS_MIN, min(FILLERS_MAX, math.ceil(FILLER_QUEUE_S / fastest)))


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
    below 2^10 (4096 terms of at most 1/8), so float32 computes x @ W exactly, in any order of summation."""
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

    `occupy` keeps the one instance busy: it sends `filler_count` requests at level 1 (about 2.5 s of work), waits
    for the first answer, so the server has them. Every request the test sends next waits behind them (a
    batch takes level 1 first), and once they have run the batcher picks among all of the test's requests at once.
    """

    def __init__(self, client, fillers: int):
        self.client = client
        self.filler_count = fillers
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

    def fillers(self) -> list[str]:
        return [label for label in self.inputs if label.startswith("filler")]

    def occupy(self, model: str) -> None:
        for i in range(self.filler_count):
            self.send(model, f"filler{i}", priority=1)
        with self.lock:
            assert self.done.wait_for(lambda: self.order, timeout=WAIT_S)

    def wait(self) -> list[str]:
        """Waits for every answer and checks them; returns the order of the answers other than fillers'."""
        with self.lock:
            assert self.done.wait_for(lambda: len(self.order) == len(self.inputs), timeout=WAIT_S), self.order
        assert not [label for label in self.fillers() if label in self.errors], self.errors
        weights = dense_weights(PRIO_K, PRIO_N)
        for label, result in self.results.items():
            if not label.startswith("filler"):
                expected = self.inputs[label].astype(np.float64) @ weights
                np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-4)
        return [label for label in self.order if not label.startswith("filler")]

    def refused(self) -> list[str]:
        """The requests other than fillers that got an error, sorted."""
        return sorted(label for label in self.errors if not label.startswith("filler"))

    def unavailable(self, label: str) -> str:
        err = self.errors[label]
        assert err.status() == "StatusCode.UNAVAILABLE", (label, err.status(), err.message())
        return err.message()


def test_high_priority_requests_overtake_queued_low_ones(prio_client, filler_count):
    calls = Completions(prio_client, filler_count)
    calls.occupy("prio")
    for i in range(4):
        calls.send("prio", f"low{i}", priority=4)
    for i in range(4):
        calls.send("prio", f"high{i}", priority=2)
    order = calls.wait()
    assert calls.refused() == []
    assert sorted(order[:4]) == [f"high{i}" for i in range(4)], order
    assert sorted(order[4:]) == [f"low{i}" for i in range(4)], order


def test_priority_zero_and_beyond_the_last_level_use_the_default_level(prio_client, filler_count):
    """Levels 1..4, default 3: priorities 0 and 99 wait with level 3, after level 2 and before level 4."""
    calls = Completions(prio_client, filler_count)
    calls.occupy("prio")
    level_of = {}
    for label, priority, level in [("p4a", 4, 4), ("p4b", 4, 4), ("p0", 0, 3), ("p99", 99, 3), ("p3", 3, 3), ("p2", 2, 2)]:
        calls.send("prio", label, priority=priority)
        level_of[label] = level
    order = calls.wait()
    assert calls.refused() == []
    assert [level_of[label] for label in order] == [2, 3, 3, 3, 4, 4], order


def test_full_level_answers_unavailable_while_other_levels_take_requests(prio_client, filler_count):
    """Level 3 holds at most 2 waiting requests, whatever waits at the other levels: of 6 requests at level 3,
    exactly 2 are answered and 4 refused at once, each naming its own request id or <id_unknown> (priority 0 is
    level 3, the default); a request at level 2 sent meanwhile is answered."""
    calls = Completions(prio_client, filler_count)
    calls.occupy("prio_full")
    for i in range(3):
        calls.send("prio_full", f"fill{i}", request_id=f"rid-{i}", priority=3)
    for i in range(3, 6):
        calls.send("prio_full", f"fill{i}")
    calls.send("prio_full", "level2", priority=2)
    calls.wait()
    refused = calls.refused()
    assert len(refused) == 4 and "level2" in calls.results, (calls.order, refused)
    messages = {label: calls.unavailable(label) for label in refused}
    for label, message in messages.items():
        request_id = f"rid-{label[4:]}" if int(label[4:]) < 3 else "<id_unknown>"
        assert message == f"[request id: {request_id}] Exceeds maximum queue size"
    # With 3 requests of each kind and 4 refusals, both kinds were refused.
    assert {"<id_unknown>" in message for message in messages.values()} == {True, False}


def test_reject_timeout_answers_request_timeout_expired(prio_client, filler_count):
    """Level 3 rejects a request that waited 2 ms. A request id does not change the message (Triton adds none)."""
    calls = Completions(prio_client, filler_count)
    calls.occupy("prio_timeout")
    for i in range(3):
        calls.send("prio_timeout", f"late{i}", priority=3, request_id=f"id-{i}")
    calls.wait()
    assert calls.refused() == ["late0", "late1", "late2"], calls.order
    for label in calls.refused():
        assert calls.unavailable(label) == "Request timeout expired"


def test_timeout_override_shortens_but_does_not_lengthen(prio_client, filler_count):
    calls = Completions(prio_client, filler_count)
    calls.occupy("prio_timeout")
    # Level 2 (60 s): a 1 ms override expires while the fillers run; without one the request is answered.
    calls.send("prio_timeout", "short", priority=2, timeout=1000)
    calls.send("prio_timeout", "default", priority=2)
    # Level 3 (2 ms): a 10 s override does not extend the level's timeout.
    calls.send("prio_timeout", "long", priority=3, timeout=10_000_000)
    calls.wait()
    assert calls.refused() == ["long", "short"], calls.order
    assert calls.unavailable("short") == calls.unavailable("long") == "Request timeout expired"
    assert "default" in calls.results


def test_delay_timeout_moves_the_request_behind_punctual_ones(prio_client, filler_count):
    """Two requests whose 1 ms override expires while the fillers run are not rejected but wait behind every
    request of their level still in time, also those that came after them."""
    calls = Completions(prio_client, filler_count)
    calls.occupy("prio_delay")
    calls.send("prio_delay", "late0", timeout=1000)
    calls.send("prio_delay", "late1", timeout=1000)
    calls.send("prio_delay", "punctual0")
    calls.send("prio_delay", "punctual1")
    order = calls.wait()
    assert calls.refused() == []
    assert sorted(order[:2]) == ["punctual0", "punctual1"] and sorted(order[2:]) == ["late0", "late1"], order
