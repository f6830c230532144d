"""The sequence batcher (`sequence_batching`) with real tritonclient clients: unary gRPC, asyncio
(`tritonclient.grpc.aio`) and `ModelStreamInfer` streams, all naming their sequence with `sequence_id`,
`sequence_start` and `sequence_end`.

What is proven, against the built-in stateful `accumulate` model (OUTPUT = running sum of the sequence's INPUTs,
the sum kept by the server as implicit state; oldest strategy, max_batch_size 8) and against sequence models a test
writes with `backend: "accumulate"` (direct strategy, a CORRID control of a chosen type, a short idle timeout):

- each sequence gets its own running sum, also when many sequences interleave on several streams, on asyncio
  tasks and on threads at once (so their requests share batches), and when there are more sequences than batch
  slots (the direct strategy's backlog);
- the state outputs never reach the client; a START on a live sequence restarts it from zero;
- Triton 2.51's refusals, status and message exactly: no correlation ID, no START on a sequence's first request
  (also after its END and after it was released for idling), a batch of two rows, a string id on a numeric CORRID
  (our refusal: Triton hands the model garbage there), in-band on a stream;
- string ids work where the CORRID control is TYPE_STRING or absent;
- statistics: inference_count counts the requests, execution_count the (fewer or equal) batches.

The one sleep in this file is the idle-release test's: the behaviour under test is the passage of time.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import expect_error, finish_server, start_server, write_model

STREAM_TIMEOUT_S = 60
# Idle timeout of `seq_idle`; the idle test waits IDLE_WAIT_S (longer) with nothing sent.
IDLE_US = 200_000
IDLE_WAIT_S = 0.6

# Sequence ids are unique across the module (the servers are shared by its tests).
_ids = itertools.count(1000)


def new_id() -> int:
    return next(_ids)


def needs_start(sequence_id, model: str = "accumulate") -> str:
    """Triton's refusal of a request that does not start its sequence when it must."""
    return (
        f"inference request for sequence {sequence_id} to model '{model}' must specify the START flag "
        "on the first request of the sequence"
    )


def sequence_config(
    name: str, strategy: str, corrid_type: str | None = "TYPE_UINT64", idle_us: int = 10_000_000, max_batch_size: int = 4
) -> str:
    """An `accumulate` model with START/END/READY controls, an optional CORRID control and one INT32 state."""
    corrid = (
        f'{{ name: "CORRID", control [ {{ kind: CONTROL_SEQUENCE_CORRID, data_type: {corrid_type} }} ] }},'
        if corrid_type
        else ""
    )
    return f"""
name: "{name}"
backend: "accumulate"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
sequence_batching {{
  max_sequence_idle_microseconds: {idle_us}
  {strategy}
  control_input [
    {corrid}
    {{ name: "START", control [ {{ kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "END", control [ {{ kind: CONTROL_SEQUENCE_END, int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "READY", control [ {{ kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] }} ] }}
  ]
  state [ {{
    input_name: "SUM_IN" output_name: "SUM_OUT" data_type: TYPE_INT32 dims: [ 1 ]
    initial_state {{ data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" }}
  }} ]
}}
"""


@pytest.fixture(scope="module")
def seq_server(tmp_path_factory):
    """A server over a repository of written sequence models."""
    repo = tmp_path_factory.mktemp("sequence") / "models"
    repo.mkdir()
    oldest = "oldest { max_candidate_sequences: 16 }"
    write_model(repo, "seq_direct", sequence_config("seq_direct", "direct { }"))
    write_model(repo, "seq_u64", sequence_config("seq_u64", oldest))
    write_model(repo, "seq_string", sequence_config("seq_string", oldest, corrid_type="TYPE_STRING"))
    write_model(repo, "seq_idle", sequence_config("seq_idle", "direct { }", corrid_type=None, idle_us=IDLE_US))
    server = start_server("--model-repository", str(repo))
    yield server
    finish_server(server)


@pytest.fixture
def seq_client(seq_server):
    c = grpcclient.InferenceServerClient(url=seq_server.url)
    yield c
    c.close()


def value_input(value: int, rows: int = 1) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput("INPUT", [rows, 1], "INT32")
    tensor.set_data_from_numpy(np.full((rows, 1), value, dtype=np.int32))
    return [tensor]


def step(client, model: str, sequence_id, value: int, start: bool = False, end: bool = False, **kwargs) -> int:
    result = client.infer(
        model, value_input(value), sequence_id=sequence_id, sequence_start=start, sequence_end=end, **kwargs
    )
    out = result.as_numpy("OUTPUT")
    assert out.shape == (1, 1) and out.dtype == np.int32, out
    return int(out[0, 0])


def run_sequence(client, model: str, sequence_id, values: list[int]) -> list[int]:
    """One whole sequence: START on the first value, END on the last; the running sums it answered."""
    last = len(values) - 1
    return [step(client, model, sequence_id, v, start=i == 0, end=i == last) for i, v in enumerate(values)]


def running_sums(values: list[int]) -> list[int]:
    return list(itertools.accumulate(values))


def counts(client, model: str) -> tuple[int, int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count, stats.inference_stats.success.count


class Stream:
    """A started stream on its own client; callback results land in a queue in arrival order."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url=url)
        self.events: queue.Queue = queue.Queue()
        self.client.start_stream(
            callback=lambda result, error: self.events.put((result, error)), stream_timeout=STREAM_TIMEOUT_S
        )

    def send(self, model: str, sequence_id, value: int, start=False, end=False, request_id: str = "") -> None:
        self.client.async_stream_infer(
            model, value_input(value), request_id=request_id, sequence_id=sequence_id, sequence_start=start, sequence_end=end
        )

    def close(self) -> list:
        """Stop the stream (blocks until the server has finished it) and return every event, in order."""
        self.client.stop_stream()
        self.client.close()
        events = []
        while not self.events.empty():
            events.append(self.events.get_nowait())
        return events


# --- one sequence -----------------------------------------------------------------------------------------


def test_unary_sequence_answers_its_running_sum(client):
    assert run_sequence(client, "accumulate", new_id(), [10, 3, 4]) == [10, 13, 17]


def test_state_outputs_never_reach_the_client(client):
    sequence_id = new_id()
    result = client.infer("accumulate", value_input(5), sequence_id=sequence_id, sequence_start=True)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT"]
    assert result.as_numpy("SUM_OUT") is None
    result = client.infer("accumulate", value_input(2), sequence_id=sequence_id, sequence_end=True)
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT"]
    assert int(result.as_numpy("OUTPUT")[0, 0]) == 7


def test_start_and_end_in_one_request_is_a_whole_sequence(client):
    sequence_id = new_id()
    assert step(client, "accumulate", sequence_id, 9, start=True, end=True) == 9
    expect_error("INVALID_ARGUMENT", needs_start(sequence_id), step, client, "accumulate", sequence_id, 1)


def test_start_on_a_live_sequence_restarts_it_from_zero(client):
    sequence_id = new_id()
    assert step(client, "accumulate", sequence_id, 100, start=True) == 100
    assert step(client, "accumulate", sequence_id, 1) == 101
    assert step(client, "accumulate", sequence_id, 7, start=True) == 7
    assert step(client, "accumulate", sequence_id, 1, end=True) == 8


def test_a_sequence_can_start_again_after_its_end(client):
    sequence_id = new_id()
    assert run_sequence(client, "accumulate", sequence_id, [4, 4]) == [4, 8]
    assert run_sequence(client, "accumulate", sequence_id, [1, 2]) == [1, 3]


def test_string_ids_are_sequences_of_their_own(client):
    a, b = f"user-{new_id()}", f"user-{new_id()}"
    assert step(client, "accumulate", a, 1, start=True) == 1
    assert step(client, "accumulate", b, 50, start=True) == 50
    assert step(client, "accumulate", a, 2) == 3
    assert step(client, "accumulate", b, 5, end=True) == 55
    assert step(client, "accumulate", a, 3, end=True) == 6


# --- refusals, with Triton 2.51's status and message --------------------------------------------------------


def test_no_sequence_id_is_refused(client):
    message = "inference request to model 'accumulate' must specify a non-zero or non-empty correlation ID"
    err = expect_error("INVALID_ARGUMENT", message, client.infer, "accumulate", value_input(1), sequence_start=True)
    assert err.message() == message


@pytest.mark.parametrize("sequence_id", [0, ""], ids=["zero", "empty-string"])
def test_zero_or_empty_sequence_id_counts_as_none(client, sequence_id):
    message = "inference request to model 'accumulate' must specify a non-zero or non-empty correlation ID"
    err = expect_error(
        "INVALID_ARGUMENT", message, client.infer, "accumulate", value_input(1), sequence_id=sequence_id, sequence_start=True
    )
    assert err.message() == message


def test_first_request_without_start_is_refused(client):
    message = needs_start(42)
    err = expect_error("INVALID_ARGUMENT", message, step, client, "accumulate", 42, 1)
    assert err.message() == message
    # END alone on an unknown sequence is refused the same way.
    err = expect_error("INVALID_ARGUMENT", message, step, client, "accumulate", 42, 1, end=True)
    assert err.message() == message


def test_request_after_the_end_is_refused(client):
    sequence_id = new_id()
    run_sequence(client, "accumulate", sequence_id, [1, 2, 3])
    message = needs_start(sequence_id)
    err = expect_error("INVALID_ARGUMENT", message, step, client, "accumulate", sequence_id, 1)
    assert err.message() == message


def test_a_batch_of_two_rows_is_refused(client):
    message = "inference request to model 'accumulate' must specify batch-size 1 due to requirements of sequence batcher"
    sequence_id = new_id()
    err = expect_error(
        "INVALID_ARGUMENT", message,
        client.infer, "accumulate", value_input(3, rows=2), sequence_id=sequence_id, sequence_start=True,
    )
    assert err.message() == message
    # The batch size is checked before the correlation ID, as in Triton.
    err = expect_error("INVALID_ARGUMENT", message, client.infer, "accumulate", value_input(3, rows=2))
    assert err.message() == message
    # The refused START did not open the sequence.
    expect_error("INVALID_ARGUMENT", "must specify the START flag", step, client, "accumulate", sequence_id, 1)


def test_a_refusal_leaves_the_sequence_running(client):
    sequence_id = new_id()
    assert step(client, "accumulate", sequence_id, 5, start=True) == 5
    expect_error(
        "INVALID_ARGUMENT", "must specify batch-size 1",
        client.infer, "accumulate", value_input(3, rows=2), sequence_id=sequence_id,
    )
    assert step(client, "accumulate", sequence_id, 1, end=True) == 6


# --- streams, asyncio, threads ---------------------------------------------------------------------------


def test_stream_sequence_accumulates(tritium):
    stream = Stream(tritium.url)
    sequence_id = new_id()
    for i, value in enumerate([1, 2, 3]):
        stream.send("accumulate", sequence_id, value, start=i == 0, end=i == 2, request_id=f"s{i}")
    events = stream.close()
    assert [error for _, error in events] == [None] * 3
    assert [int(r.as_numpy("OUTPUT")[0, 0]) for r, _ in events] == [1, 3, 6]
    assert [r.get_response().id for r, _ in events] == ["s0", "s1", "s2"]


def test_stream_refusal_is_in_band_and_the_stream_goes_on(tritium):
    stream = Stream(tritium.url)
    orphan, sequence_id = new_id(), new_id()
    stream.send("accumulate", orphan, 1, request_id="orphan")
    stream.send("accumulate", sequence_id, 4, start=True, request_id="a")
    stream.send("accumulate", sequence_id, 4, end=True, request_id="b")
    events = stream.close()
    errors = [error for _, error in events if error is not None]
    assert len(errors) == 1, [e.message() for e in errors]
    assert errors[0].status() is None, "in-band stream errors carry no gRPC status"
    assert errors[0].message() == needs_start(orphan)
    sums = [int(r.as_numpy("OUTPUT")[0, 0]) for r, error in events if error is None]
    assert sums == [4, 8]


def test_sequences_interleaved_on_several_streams(tritium):
    """4 streams at once, each alternating between its own 3 sequences, 5 steps each: 60 requests in flight."""
    streams = [Stream(tritium.url) for _ in range(4)]
    plans = {}
    for s, stream in enumerate(streams):
        ids = [f"stream{s}-{new_id()}" if s % 2 else new_id() for _ in range(3)]
        rngs = [np.random.default_rng(s * 10 + k) for k in range(3)]
        values = {sequence_id: [int(v) for v in rng.integers(-50, 50, 5)] for rng, sequence_id in zip(rngs, ids)}
        plans[s] = values
        for position in range(5):
            for sequence_id in ids:
                stream.send(
                    "accumulate", sequence_id, values[sequence_id][position],
                    start=position == 0, end=position == 4, request_id=f"{sequence_id}/{position}",
                )
    for s, stream in enumerate(streams):
        events = stream.close()
        assert [e.message() for _, e in events if e is not None] == []
        got: dict[str, list[int]] = {}
        for result, _ in events:
            sequence_id, _ = result.get_response().id.rsplit("/", 1)
            got.setdefault(sequence_id, []).append(int(result.as_numpy("OUTPUT")[0, 0]))
        assert got == {str(k): running_sums(v) for k, v in plans[s].items()}


def test_asyncio_sequences_run_concurrently(tritium):
    async def one_sequence(client, sequence_id, values):
        sums = []
        for i, value in enumerate(values):
            result = await client.infer(
                "accumulate", value_input(value),
                sequence_id=sequence_id, sequence_start=i == 0, sequence_end=i == len(values) - 1,
            )
            sums.append(int(result.as_numpy("OUTPUT")[0, 0]))
        return sums

    async def main():
        async with aioclient.InferenceServerClient(url=tritium.url) as client:
            plans = [(new_id(), [k * 100 + j for j in range(6)]) for k in range(10)]
            answers = await asyncio.gather(*(one_sequence(client, sequence_id, values) for sequence_id, values in plans))
            return plans, answers

    plans, answers = asyncio.run(main())
    for (_, values), sums in zip(plans, answers):
        assert sums == running_sums(values)


def test_asyncio_refusal_has_triton_status(tritium):
    async def main():
        async with aioclient.InferenceServerClient(url=tritium.url) as client:
            with pytest.raises(InferenceServerException) as info:
                await client.infer("accumulate", value_input(1), sequence_id=77, sequence_end=True)
            return info.value

    err = asyncio.run(main())
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.message() == needs_start(77)


def test_twelve_sequences_from_threads_share_batches_and_keep_their_sums(tritium, client):
    """12 threads, each one sequence of 6 steps; the statistics move by exactly the 72 requests."""
    before = counts(client, "accumulate")
    plans = [(new_id(), [int(v) for v in np.random.default_rng(k).integers(-1000, 1000, 6)]) for k in range(12)]

    def worker(plan):
        sequence_id, values = plan
        own = grpcclient.InferenceServerClient(url=tritium.url)
        try:
            return run_sequence(own, "accumulate", sequence_id, values)
        finally:
            own.close()

    with ThreadPoolExecutor(len(plans)) as pool:
        answers = list(pool.map(worker, plans))
    for (_, values), sums in zip(plans, answers):
        assert sums == running_sums(values)
    inferences, executions, successes = (a - b for a, b in zip(counts(client, "accumulate"), before))
    assert inferences == 72 and successes == 72
    assert 1 <= executions <= inferences


def test_statistics_count_requests_and_batches(start_tritium):
    """On a server of its own: inference_count = the successful requests, execution_count <= it, and every
    batch_stats entry (oldest strategy: no empty rows) adds up to the inference_count."""
    server = start_tritium()
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: run_sequence(c, "accumulate", 500 + k, [1, 2, 3, 4]), range(8)))
        expect_error("INVALID_ARGUMENT", "START flag", step, c, "accumulate", 999, 1)
        stats = c.get_inference_statistics("accumulate").model_stats[0]
        assert stats.inference_count == 32
        assert stats.inference_stats.success.count == 32
        assert 1 <= stats.execution_count <= 32
        assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == 32
        assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count
    finally:
        c.close()


# --- written sequence models: direct strategy, CORRID types, idle release ---------------------------------------


def test_direct_strategy_sequence_accumulates(seq_client):
    assert run_sequence(seq_client, "seq_direct", new_id(), [3, -1, 10]) == [3, 2, 12]


def test_direct_strategy_with_more_sequences_than_slots(seq_server, seq_client):
    """seq_direct has 4 slots (max_batch_size 4, one instance); 10 concurrent sequences wait in its backlog for
    slots to free and still each get their own sums."""
    before = counts(seq_client, "seq_direct")
    plans = [(new_id(), [k + 1] * 5) for k in range(10)]

    def worker(plan):
        own = grpcclient.InferenceServerClient(url=seq_server.url)
        try:
            return run_sequence(own, "seq_direct", *plan)
        finally:
            own.close()

    with ThreadPoolExecutor(len(plans)) as pool:
        answers = list(pool.map(worker, plans))
    for (_, values), sums in zip(plans, answers):
        assert sums == running_sums(values)
    inferences, executions, successes = (a - b for a, b in zip(counts(seq_client, "seq_direct"), before))
    assert inferences == 50 and successes == 50
    assert 1 <= executions <= 50
    stats = seq_client.get_inference_statistics("seq_direct").model_stats[0]
    # With direct, a batch carries a not-READY row for every idle slot before the last busy one: Triton
    # counts those rows in batch_stats' batch_size, so the rows are at least the requests.
    assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) >= stats.inference_count
    assert sum(b.compute_infer.count for b in stats.batch_stats) == stats.execution_count


def test_direct_strategy_refusals_name_the_model(seq_client):
    expect_error(
        "INVALID_ARGUMENT",
        "inference request to model 'seq_direct' must specify a non-zero or non-empty correlation ID",
        seq_client.infer, "seq_direct", value_input(1),
    )
    expect_error("INVALID_ARGUMENT", needs_start(5, "seq_direct"), step, seq_client, "seq_direct", 5, 1)


def test_string_corrid_model_takes_string_and_numeric_ids(seq_client):
    text = f"session-{new_id()}"
    assert run_sequence(seq_client, "seq_string", text, [2, 3, 4]) == [2, 5, 9]
    assert run_sequence(seq_client, "seq_string", new_id(), [7, 7]) == [7, 14]


def test_numeric_corrid_model_refuses_a_string_id(seq_client):
    err = expect_error(
        "INVALID_ARGUMENT", "inference request to model 'seq_u64'",
        step, seq_client, "seq_u64", "abc", 1, start=True,
    )
    assert err.message() == (
        "inference request to model 'seq_u64' has the string sequence id 'abc', but its CONTROL_SEQUENCE_CORRID is UINT64"
    )
    assert run_sequence(seq_client, "seq_u64", new_id(), [1, 1, 1]) == [1, 2, 3]


def test_model_without_corrid_control_takes_string_ids(seq_client):
    assert run_sequence(seq_client, "seq_idle", f"idle-{new_id()}", [6, 6]) == [6, 12]


def test_idle_sequence_is_released(seq_client):
    """seq_idle releases a sequence after 200 ms without a request: the next request without START is refused,
    and a new START begins from zero."""
    sequence_id = new_id()
    assert step(seq_client, "seq_idle", sequence_id, 40, start=True) == 40
    assert step(seq_client, "seq_idle", sequence_id, 2) == 42
    time.sleep(IDLE_WAIT_S)
    err = expect_error("INVALID_ARGUMENT", "must specify the START flag", step, seq_client, "seq_idle", sequence_id, 1)
    assert err.message() == needs_start(sequence_id, "seq_idle")
    assert step(seq_client, "seq_idle", sequence_id, 1, start=True) == 1
