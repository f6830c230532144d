"""Ensembles (`platform: "ensemble"`) with real tritonclient clients.

What is proven:
- the built-in `add_sub_twice` answers exactly what calling `add_sub` twice by hand gives, reports platform
  "ensemble" in its metadata and config, and its statistics and those of its composing model move by the calls
  made (1 execution of the ensemble, 2 of `add_sub`, per call);
- a written ensemble whose steps are listed out of order, with two steps that can run side by side, answers right;
- a decoupled ensemble over the decoupled `repeat` model streams one answer per `repeat` response;
- a step's error reaches the client as `in ensemble '<ensemble>', <the step's own error>`, with the step's
  status, unary and in-band on a stream;
- broken ensembles fail to load with their reason in the repository index (state UNAVAILABLE; Triton lists them
  by name only): an unknown composing model, a mapping to a non-existing input, a tensor nobody writes, a cycle,
  a tensor written twice, an unused tensor; they answer NOT_FOUND while the good models of the repository serve;
- explicit model control: loading an ensemble loads its composing models, at startup (`--load-model`) and through
  the load API; loading one with an unknown composing model fails with Triton's status and message.

Triton's wording is in /tmp/triton_sched_findings.md section 3 (probed on tritonserver 2.51).
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import REPO, add_sub_config, expect_error, finish_server, start_server, write_model

REPEAT_CONFIG = (REPO / "worker" / "models" / "repeat.pbtxt").read_text()
STREAM_TIMEOUT_S = 30


def ensemble_config(
    name: str, steps: list[tuple[str, dict, dict]], inputs=("IN0", "IN1"), outputs=("OUT0", "OUT1"), extra: str = ""
) -> str:
    """An INT32 [-1] ensemble; each step is (model, {model input: tensor}, {model output: tensor})."""
    tensors = lambda names: ", ".join(f'{{ name: "{n}" data_type: TYPE_INT32 dims: [ -1 ] }}' for n in names)  # noqa: E731
    maps = lambda kind, pairs: " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs.items())  # noqa: E731
    rendered = ",\n    ".join(
        f'{{ model_name: "{model}" model_version: -1 {maps("input_map", ins)} {maps("output_map", outs)} }}'
        for model, ins, outs in steps
    )
    return f"""
name: "{name}"
platform: "ensemble"
max_batch_size: 0
{extra}
input [ {tensors(inputs)} ]
output [ {tensors(outputs)} ]
ensemble_scheduling {{ step [
    {rendered}
] }}
"""


BOTH = {"INPUT0": "IN0", "INPUT1": "IN1"}
# name -> (steps, ensemble inputs, ensemble outputs, the load error of the ensemble)
BROKEN = {
    "ens_unknown": (
        [("no_such_model", BOTH, {"OUTPUT0": "OUT0", "OUTPUT1": "OUT1"})], ("IN0", "IN1"), ("OUT0", "OUT1"),
        "ensemble ens_unknown contains models that are not available or ambiguous: no_such_model",
    ),
    "ens_badinput": (
        [("adder", {"WRONG": "IN0", "INPUT1": "IN1"}, {"OUTPUT0": "OUT0", "OUTPUT1": "OUT1"})], ("IN0", "IN1"), ("OUT0", "OUT1"),
        "in ensemble ens_badinput, ensemble tensor IN0 is mapping to non-existing input WRONG in model adder",
    ),
    "ens_noproducer": (
        [("adder", {"INPUT0": "IN0", "INPUT1": "nothing_makes_this"}, {"OUTPUT0": "OUT0", "OUTPUT1": "OUT1"})],
        ("IN0",), ("OUT0", "OUT1"),
        "in ensemble 'ens_noproducer', step 'adder' reads ensemble tensor 'nothing_makes_this', which no input or step writes",
    ),
    # Step 1 needs t2 from step 2, which needs t1 from step 1.
    "ens_cycle": (
        [
            ("adder", {"INPUT0": "IN0", "INPUT1": "t2"}, {"OUTPUT0": "t1", "OUTPUT1": "OUT0"}),
            ("adder", {"INPUT0": "t1", "INPUT1": "IN1"}, {"OUTPUT0": "t2", "OUTPUT1": "OUT1"}),
        ],
        ("IN0", "IN1"), ("OUT0", "OUT1"),
        "ensemble 'ens_cycle' has a cycle: step 'adder' depends on its own outputs",
    ),
    "ens_dupout": (
        [
            ("adder", BOTH, {"OUTPUT0": "OUT0", "OUTPUT1": "OUT1"}),
            ("adder", BOTH, {"OUTPUT0": "OUT0", "OUTPUT1": "spare"}),
        ],
        ("IN0", "IN1"), ("OUT0", "OUT1"),
        "ensemble tensor 'OUT0' can appear in an output map only once for ensemble 'ens_dupout' step 1",
    ),
    "ens_unused": (
        [("adder", BOTH, {"OUTPUT0": "OUT0", "OUTPUT1": "spare"})], ("IN0", "IN1"), ("OUT0",),
        "ensemble tensor 'spare' is unused in ensemble 'ens_unused'",
    ),
}


def write_good_models(repo) -> None:
    write_model(repo, "adder", add_sub_config("adder", dims="[ -1 ]"))
    write_model(repo, "repeat", REPEAT_CONFIG)
    write_model(repo, "ens_pair", ensemble_config("ens_pair", [("adder", BOTH, {"OUTPUT0": "OUT0", "OUTPUT1": "OUT1"})]))
    # OUT0 = 2 (IN0 + IN1), OUT1 = 2 (IN0 - IN1): the two doubling steps need only the first one, and are listed
    # before it.
    write_model(repo, "ens_diamond", ensemble_config("ens_diamond", [
        ("adder", {"INPUT0": "sum", "INPUT1": "sum"}, {"OUTPUT0": "OUT0"}),
        ("adder", {"INPUT0": "difference", "INPUT1": "difference"}, {"OUTPUT0": "OUT1"}),
        ("adder", BOTH, {"OUTPUT0": "sum", "OUTPUT1": "difference"}),
    ]))
    # Decoupled: N answers, TWICE = 2 * (0..N-1).
    write_model(repo, "ens_stream", ensemble_config(
        "ens_stream",
        [
            ("repeat", {"IN": "N"}, {"OUT": "count"}),
            ("adder", {"INPUT0": "count", "INPUT1": "count"}, {"OUTPUT0": "TWICE", "OUTPUT1": "ZERO"}),
        ],
        inputs=("N",), outputs=("TWICE", "ZERO"), extra="model_transaction_policy { decoupled: true }",
    ).replace("dims: [ -1 ] }", "dims: [ 1 ] }"))


@pytest.fixture(scope="module")
def ens_server(tmp_path_factory):
    """A server over good and broken ensembles side by side (the broken ones fail to load)."""
    repo = tmp_path_factory.mktemp("ensembles") / "models"
    repo.mkdir()
    write_good_models(repo)
    for name, (steps, inputs, outputs, _) in BROKEN.items():
        write_model(repo, name, ensemble_config(name, steps, inputs, outputs))
    server = start_server("--model-repository", str(repo))
    yield server
    finish_server(server)


@pytest.fixture
def ens_client(ens_server):
    c = grpcclient.InferenceServerClient(url=ens_server.url)
    yield c
    c.close()


def int32_inputs(names: tuple[str, ...], *arrays: np.ndarray) -> list[grpcclient.InferInput]:
    tensors = []
    for name, array in zip(names, arrays):
        tensor = grpcclient.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array.astype(np.int32))
        tensors.append(tensor)
    return tensors


def add_sub(client, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = client.infer("add_sub", int32_inputs(("INPUT0", "INPUT1"), a, b))
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")


def model_counts(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def rng_pair(seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(-10_000, 10_000, size, dtype=np.int32), rng.integers(-10_000, 10_000, size, dtype=np.int32)


# --- the built-in add_sub_twice ----------------------------------------------------------------------------


def test_add_sub_twice_equals_add_sub_called_twice_by_hand(client):
    a, b = rng_pair(1)
    result = client.infer("add_sub_twice", int32_inputs(("INPUT0", "INPUT1"), a, b))
    by_hand = add_sub(client, *add_sub(client, a, b))
    np.testing.assert_array_equal(result.as_numpy("DOUBLE0"), by_hand[0])
    np.testing.assert_array_equal(result.as_numpy("DOUBLE1"), by_hand[1])
    np.testing.assert_array_equal(result.as_numpy("DOUBLE0"), 2 * a)
    np.testing.assert_array_equal(result.as_numpy("DOUBLE1"), 2 * b)
    assert [o.name for o in result.get_response().outputs] == ["DOUBLE0", "DOUBLE1"]


def test_add_sub_twice_integers_wrap_like_add_sub(client):
    a = np.full(16, 2**30, dtype=np.int32)
    b = np.full(16, 1, dtype=np.int32)
    result = client.infer("add_sub_twice", int32_inputs(("INPUT0", "INPUT1"), a, b))
    by_hand = add_sub(client, *add_sub(client, a, b))
    np.testing.assert_array_equal(result.as_numpy("DOUBLE0"), by_hand[0])
    assert int(result.as_numpy("DOUBLE0")[0]) == -(2**31)


def test_add_sub_twice_metadata_and_config_say_ensemble(client):
    metadata = client.get_model_metadata("add_sub_twice")
    assert metadata.platform == "ensemble"
    described = lambda tensors: [(t.name, t.datatype, list(t.shape)) for t in tensors]  # noqa: E731
    assert described(metadata.inputs) == [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])]
    assert described(metadata.outputs) == [("DOUBLE0", "INT32", [16]), ("DOUBLE1", "INT32", [16])]
    config = client.get_model_config("add_sub_twice").config
    assert config.platform == "ensemble"
    assert [s.model_name for s in config.ensemble_scheduling.step] == ["add_sub", "add_sub"]


def test_add_sub_twice_requested_output_only(client):
    a, b = rng_pair(2)
    result = client.infer(
        "add_sub_twice", int32_inputs(("INPUT0", "INPUT1"), a, b), outputs=[grpcclient.InferRequestedOutput("DOUBLE1")]
    )
    assert [o.name for o in result.get_response().outputs] == ["DOUBLE1"]
    np.testing.assert_array_equal(result.as_numpy("DOUBLE1"), 2 * b)


def test_statistics_of_the_ensemble_and_its_composing_model(client):
    calls = 5
    ensemble_before, add_sub_before = model_counts(client, "add_sub_twice"), model_counts(client, "add_sub")
    for seed in range(calls):
        client.infer("add_sub_twice", int32_inputs(("INPUT0", "INPUT1"), *rng_pair(seed)))
    ensemble_after, add_sub_after = model_counts(client, "add_sub_twice"), model_counts(client, "add_sub")
    assert (ensemble_after[0] - ensemble_before[0], ensemble_after[1] - ensemble_before[1]) == (calls, calls)
    assert (add_sub_after[0] - add_sub_before[0], add_sub_after[1] - add_sub_before[1]) == (2 * calls, 2 * calls)
    stats = client.get_inference_statistics("add_sub_twice").model_stats[0]
    assert stats.inference_stats.success.count == stats.inference_count
    assert [b.batch_size for b in stats.batch_stats] == [1]
    assert stats.batch_stats[0].compute_infer.count == stats.execution_count


# --- written ensembles ---------------------------------------------------------------------------------


def test_steps_listed_out_of_order_run_producers_first(ens_client):
    a, b = rng_pair(3, size=7)
    before = model_counts(ens_client, "adder")
    result = ens_client.infer("ens_diamond", int32_inputs(("IN0", "IN1"), a, b))
    np.testing.assert_array_equal(result.as_numpy("OUT0"), 2 * (a + b))
    np.testing.assert_array_equal(result.as_numpy("OUT1"), 2 * (a - b))
    after = model_counts(ens_client, "adder")
    assert after[1] - before[1] == 3


def test_ensemble_over_a_variable_shape_model(ens_client):
    for size in (1, 5, 300):
        a, b = rng_pair(size, size=size)
        result = ens_client.infer("ens_pair", int32_inputs(("IN0", "IN1"), a, b))
        np.testing.assert_array_equal(result.as_numpy("OUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUT1"), a - b)


def test_ensemble_metadata_platform(ens_client):
    metadata = ens_client.get_model_metadata("ens_pair")
    assert metadata.platform == "ensemble"
    assert [t.name for t in metadata.inputs] == ["IN0", "IN1"]
    assert ens_client.get_model_metadata("adder").platform != "ensemble"


def test_step_error_reaches_the_client_with_the_ensemble_named(ens_client):
    """adder refuses inputs of different shapes at run time; through the ensemble the same error comes back,
    with the same status, behind `in ensemble 'ens_pair', `."""
    a, b = np.arange(3, dtype=np.int32), np.arange(4, dtype=np.int32)
    fragment = "must have the same shape"
    direct = expect_error("INVALID_ARGUMENT", fragment, ens_client.infer, "adder", int32_inputs(("INPUT0", "INPUT1"), a, b))
    err = expect_error("INVALID_ARGUMENT", fragment, ens_client.infer, "ens_pair", int32_inputs(("IN0", "IN1"), a, b))
    assert err.message() == f"in ensemble 'ens_pair', {direct.message()}"
    # The ensemble goes on serving.
    result = ens_client.infer("ens_pair", int32_inputs(("IN0", "IN1"), a, a))
    np.testing.assert_array_equal(result.as_numpy("OUT0"), 2 * a)


def test_unknown_ensemble_input_is_refused(ens_client):
    a = np.arange(4, dtype=np.int32)
    expect_error(
        "INVALID_ARGUMENT", "unexpected inference input 'NOPE' for model 'ens_pair'",
        ens_client.infer, "ens_pair", int32_inputs(("IN0", "NOPE"), a, a),
    )


def stream_events(url: str, requests: list[tuple[int, str]]) -> list:
    c = grpcclient.InferenceServerClient(url=url)
    events: queue.Queue = queue.Queue()
    c.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=STREAM_TIMEOUT_S)
    try:
        for n, request_id in requests:
            c.async_stream_infer("ens_stream", int32_inputs(("N",), np.array([n])), request_id=request_id)
    finally:
        c.stop_stream()
        c.close()
    return [events.get_nowait() for _ in range(events.qsize())]


def test_decoupled_ensemble_streams_one_answer_per_step_response(ens_server):
    events = stream_events(ens_server.url, [(4, "four")])
    assert [e for _, e in events] == [None] * 4
    assert [int(r.as_numpy("TWICE")[0]) for r, _ in events] == [0, 2, 4, 6]
    assert [int(r.as_numpy("ZERO")[0]) for r, _ in events] == [0, 0, 0, 0]
    assert {r.get_response().id for r, _ in events} == {"four"}


def test_decoupled_step_error_is_in_band_on_the_stream(ens_server):
    events = stream_events(ens_server.url, [(-1, "bad"), (2, "good")])
    errors = [e for _, e in events if e is not None]
    assert len(errors) == 1
    assert errors[0].status() is None, "in-band stream errors carry no gRPC status"
    assert errors[0].message() == "in ensemble 'ens_stream', model 'repeat' version 1: IN must be >= 0, got -1"
    assert [int(r.as_numpy("TWICE")[0]) for r, e in events if e is None] == [0, 2]


# --- load-time validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_ensemble_is_unavailable_with_its_reason(ens_client, name):
    rows = [m for m in ens_client.get_model_repository_index().models if m.name == name]
    assert len(rows) == 1, rows
    assert rows[0].state == "UNAVAILABLE"
    # Triton's load API wording (it lists failed ensembles without a reason; Tritium gives the same sentence there).
    assert rows[0].reason == f"load failed for model '{name}': {BROKEN[name][3]}"
    assert not ens_client.is_model_ready(name)


def test_broken_ensemble_answers_not_found(ens_client):
    a = np.arange(4, dtype=np.int32)
    inputs = int32_inputs(("IN0", "IN1"), a, a)
    expect_error("NOT_FOUND", "Request for unknown model: 'ens_unknown'", ens_client.infer, "ens_unknown", inputs)
    expect_error("NOT_FOUND", "Request for unknown model: 'ens_cycle'", ens_client.get_model_metadata, "ens_cycle")


def test_good_models_serve_beside_the_broken_ones(ens_client):
    ready = {m.name for m in ens_client.get_model_repository_index().models if m.state == "READY"}
    assert ready == {"adder", "repeat", "ens_pair", "ens_diamond", "ens_stream"}


def test_explicit_load_model_of_an_ensemble_loads_its_composing_models(start_tritium, model_repo):
    """`--load-model ens_pair` alone: Triton loads the composing `adder` with it."""
    write_good_models(model_repo)
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit", "--load-model", "ens_pair")
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        states = {m.name: m.state for m in c.get_model_repository_index().models}
        assert states.get("ens_pair") == "READY", c.get_model_repository_index()
        assert states.get("adder") == "READY"
        a, b = rng_pair(4, size=3)
        np.testing.assert_array_equal(c.infer("ens_pair", int32_inputs(("IN0", "IN1"), a, b)).as_numpy("OUT0"), a + b)
    finally:
        c.close()


def test_load_api_loads_the_composing_models(start_tritium, model_repo):
    write_good_models(model_repo)
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit")
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        assert not c.is_model_ready("repeat") and not c.is_model_ready("adder")
        c.load_model("ens_stream")
        assert c.is_model_ready("ens_stream") and c.is_model_ready("repeat") and c.is_model_ready("adder")
        assert [int(r.as_numpy("TWICE")[0]) for r, _ in stream_events(server.url, [(3, "x")])] == [0, 2, 4]
    finally:
        c.close()


def test_load_api_refuses_an_ensemble_of_an_unknown_model(start_tritium, model_repo):
    """Triton 2.51: INVALID_ARGUMENT `load failed for model 'ens_unknown': ensemble ens_unknown contains models that
    are not available or ambiguous: no_such_model` (the message is compared up to Triton's trailing newline)."""
    steps, inputs, outputs, reason = BROKEN["ens_unknown"]
    write_model(model_repo, "ens_unknown", ensemble_config("ens_unknown", steps, inputs, outputs))
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit")
    c = grpcclient.InferenceServerClient(url=server.url)
    try:
        err = expect_error("INVALID_ARGUMENT", reason, c.load_model, "ens_unknown")
        assert "ens_unknown" in err.message()
        assert not c.is_model_ready("ens_unknown")
    finally:
        c.close()
