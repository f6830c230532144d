"""No config field silently ignored (issue 41, item 5): a model whose config.pbtxt sets a field Tritium does not
implement fails to load with a reason naming the field (shown by the repository index, and by an explicit load),
a field that only tunes performance loads with one warning naming it per load, and the rest of the repository
serves. The table itself is `repository/src/fields/`; the book's page docs/src/model-repository/config-fields.md lists it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import identity_config, wait_for, write_model

IO = """
backend: "identity"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

# One model per refused field: (model name, what its reason must name, the config's extra text).
REFUSED = [
    ("shape_tensor", "config field 'input.is_shape_tensor'",
     'input [ { name: "S" data_type: TYPE_INT32 dims: [ 1 ] is_shape_tensor: true } ]'),
    ("non_linear_io", "config field 'output.is_non_linear_format_io'",
     'output [ { name: "S" data_type: TYPE_FP32 dims: [ 1 ] is_non_linear_format_io: true } ]'),
    ("iterative", "config field 'sequence_batching.iterative_sequence'", "sequence_batching { iterative_sequence: true }"),
    ("passive", "config field 'instance_group.passive'", "instance_group [ { count: 1 kind: KIND_CPU passive: true } ]"),
    ("tags", "config field 'metric_tags'", 'metric_tags { key: "team-a" value: "search" }'),
    ("ops", "config field 'model_operations'", 'model_operations { op_library_filename: "libcustom.so" }'),
    ("agents", "config field 'model_repository_agents'", 'model_repository_agents { agents [ { name: "checksum" } ] }'),
    ("metrics_control", "config field 'model_metrics'",
     'model_metrics { metric_control [ { metric_identifier { family: "x" } } ] }'),
    ("foreign_runtime", "config field 'runtime'", 'runtime: "model.py"'),
    ("oldest_ordering", "config field 'sequence_batching.oldest.preserve_ordering'",
     "sequence_batching { oldest { max_candidate_sequences: 2 preserve_ordering: true } } instance_group [ { count: 2 } ]"),
    ("gpu", "instance group gpu_0 of model gpu has kind KIND_GPU but server does not support GPUs",
     "instance_group [ { kind: KIND_GPU } ]"),
    ("cpu_gpus", "instance group g of model cpu_gpus has kind KIND_CPU but specifies one or more GPUs",
     'instance_group [ { name: "g" kind: KIND_CPU gpus: [ 0 ] } ]'),
    ("nhwc", "model input NHWC/NCHW require 3 dims",
     'input [ { name: "IMG" data_type: TYPE_FP32 dims: [ 4, 4 ] format: FORMAT_NHWC } ]'),
]  # fmt: skip
NAMESPACED = """
platform: "ensemble"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling { step [ { model_name: "good" model_version: -1 model_namespace: "team"
  input_map { key: "INPUT0" value: "IN" } output_map { key: "OUTPUT0" value: "OUT" } } ] }
"""
# Fields that only tune performance: the model loads, and each is named once per load.
PERF_ONLY = """
optimization { priority: PRIORITY_MAX cuda { graphs: true } }
instance_group [ { count: 2 kind: KIND_CPU host_policy: "numa0" }, { count: 1 kind: KIND_CPU host_policy: "numa1" } ]
"""
WARNED_FIELDS = ["optimization.priority", "optimization.cuda", "instance_group.host_policy"]


def repository(root) -> None:
    write_model(root, "good", identity_config("good", "TYPE_FP32", "[ 4 ]"))
    write_model(root, "perf", IO + PERF_ONLY)
    for name, _, extra in REFUSED:
        write_model(root, name, IO + extra)
    write_model(root, "namespaced", NAMESPACED)


def infer(client, model: str) -> np.ndarray:
    data = grpcclient.InferInput("INPUT0", [4], "FP32")
    values = np.arange(4, dtype=np.float32)
    data.set_data_from_numpy(values)
    result = client.infer(model, [data]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(result, values)
    return result


def warnings_for(server, field: str) -> list[str]:
    return [line for line in server.stderr().splitlines() if f"config field '{field}' is ignored by Tritium" in line]


def test_refused_fields_fail_their_load_naming_the_field_and_the_rest_serves(start_tritium, model_repo):
    repository(model_repo)
    server = start_tritium("--model-repository", str(model_repo))
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        index = {entry.name: entry for entry in client.get_model_repository_index().models}
        for name, named, _ in REFUSED:
            assert index[name].state == "UNAVAILABLE", (name, index[name])
            assert named in index[name].reason, (name, index[name].reason)
            assert not client.is_model_ready(name), name
        assert index["namespaced"].state == "UNAVAILABLE", index["namespaced"]
        assert "config field 'ensemble_scheduling.step.model_namespace'" in index["namespaced"].reason
        reason = index["agents"].reason
        assert reason.startswith("invalid configuration of model 'agents': config field 'model_repository_agents' "
                                 "is not supported by Tritium: "), reason
        assert index["good"].state == "READY" and index["perf"].state == "READY", (index["good"], index["perf"])
        infer(client, "good")
        infer(client, "perf")
        # The whole config as written is kept: the warned fields are ignored, not removed.
        config = client.get_model_config("perf", as_json=True)["config"]
        assert config["optimization"]["priority"] == "PRIORITY_MAX", config["optimization"]
        for field in WARNED_FIELDS:
            assert len(warnings_for(server, field)) == 1, (field, warnings_for(server, field))
            assert "perf" in warnings_for(server, field)[0]
        assert warnings_for(server, "optimization.graph") == []
    finally:
        client.close()


def test_explicit_loads_refuse_and_warn_once_per_load(start_tritium, model_repo):
    repository(model_repo)
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit")
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("agents")
        assert "config field 'model_repository_agents' is not supported by Tritium" in refused.value.message()
        assert not client.is_model_ready("agents")

        # A JSON override is checked as a config.pbtxt is.
        override = {"backend": "identity", "max_batch_size": 0, "metric_tags": {"_team": "search"},
                    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]}],
                    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]}]}  # fmt: skip
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("good", config=json.dumps(override))
        assert "config field 'metric_tags' is not supported by Tritium" in refused.value.message()
        assert not client.is_model_ready("good")
        client.load_model("good")
        infer(client, "good")

        client.load_model("perf")
        infer(client, "perf")
        assert wait_for(lambda: len(warnings_for(server, "optimization.cuda")) == 1)
        client.unload_model("perf")
        assert wait_for(lambda: not client.is_model_ready("perf"))
        client.load_model("perf")
        infer(client, "perf")
        for field in WARNED_FIELDS:
            assert len(warnings_for(server, field)) == 2, (field, warnings_for(server, field))
    finally:
        client.close()


SCHEDULER_FIELDS = {
    "batched": ("dynamic_batching { }", "dynamic_batching"),
    "sequenced": ("sequence_batching { }", "sequence_batching"),
    "two_instances": ("instance_group [ { count: 2 kind: KIND_CPU } ]", "instance_group.count (more than one instance)"),
    "limited": ('instance_group [ { kind: KIND_CPU rate_limiter { resources [ { name: "r" count: 1 } ] } } ]',
                "instance_group.rate_limiter"),
}  # fmt: skip


def test_a_language_model_refuses_the_scheduler_fields_its_engine_would_ignore(start_tritium, model_repo):
    """A language model's engine batches continuously in one instance: Triton's scheduler fields would do nothing for
    it, so a config that sets them fails its load naming them; one instance group of one instance loads."""
    for name, (field, _) in SCHEDULER_FIELDS.items():
        (model_repo / name / "1").mkdir(parents=True)
        (model_repo / name / "config.pbtxt").write_text(f'name: "{name}"\nbackend: "tritium_mock_llm"\n{field}\n')
    (model_repo / "single" / "1").mkdir(parents=True)
    (model_repo / "single" / "config.pbtxt").write_text('name: "single"\nbackend: "tritium_mock_llm"\ninstance_group [ { count: 1 kind: KIND_MODEL } ]\n')
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit")
    client = grpcclient.InferenceServerClient(url=server.url)
    try:
        for name, (_, named) in SCHEDULER_FIELDS.items():
            with pytest.raises(InferenceServerException) as refused:
                client.load_model(name)
            message = refused.value.message()
            assert f"'{name}' is a language model" in message and f"{named} would do nothing for it" in message, message
            assert not client.is_model_ready(name)
        client.load_model("single")
        assert client.is_model_ready("single")
    finally:
        client.close()
