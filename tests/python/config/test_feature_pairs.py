"""Features turned on together (issue 59, item 2), each pair through a real request: on-demand loading with an
ensemble whose top and step use the response cache (loaded by the first request, answered from the cache after,
evicted and reloaded past `--max-loaded-models`, never an error); the rate limiter with the built-in and ONNX
Runtime backends (its resources held across both kinds, each execution answered). The other pairs' tests are named in
docs/src/combinations.md, "Where each pair is tested"."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import response_cache_scenario as scenario
from helpers import identity_config, write_model

CACHE = "response_cache { enable: true }\n"


def infer(client, model: str, values, dims=None) -> list:
    array = np.asarray(values, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", list(array.shape) if dims is None else dims, "FP32")
    tensor.set_data_from_numpy(array)
    return client.infer(model, [tensor]).as_numpy("OUTPUT0").tolist()


def cache_counts(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    return int(stats.get("cache_hit", {}).get("count", 0)), int(stats.get("cache_miss", {}).get("count", 0))


def loaded(client) -> set[str]:
    return {m["name"] for m in client.get_model_repository_index(as_json=True)["models"] if m.get("state") == "READY"}


def test_on_demand_loading_an_ensemble_with_the_response_cache(start_tritium, model_repo):
    write_model(model_repo, "step", identity_config("step", "TYPE_FP32") + CACHE)
    write_model(model_repo, "ens", scenario.ENSEMBLE)
    write_model(model_repo, "other", identity_config("other", "TYPE_FP32"))
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "on-demand",
                           "--max-loaded-models", "2", "--cache-config", "local,size=1048576")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    try:
        assert loaded(client) == set()
        # The first request loads the ensemble and its step; the repeats are the ensemble's cache hits.
        for _ in range(3):
            assert infer(client, "ens", [1, 2]) == [1, 2]
        assert loaded(client) == {"ens", "step"}
        assert cache_counts(client, "ens") == (2, 1)
        # A third model past the limit evicts the least recently used; the ensemble loads again when asked.
        assert infer(client, "other", [5]) == [5]
        assert len(loaded(client)) <= 2 and "other" in loaded(client)
        assert infer(client, "ens", [3, 4]) == [3, 4]
        assert {"ens", "step"} <= loaded(client)
    finally:
        client.close()


LIMITED = 'instance_group [ { count: 1 kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 1 } ] } } ]\n'


@pytest.mark.onnx
def test_the_rate_limiter_holds_one_resource_across_the_built_in_and_onnx_backends(start_tritium, model_repo):
    import os

    import onnx_models

    write_model(model_repo, "builtin", identity_config("builtin", "TYPE_FP32") + LIMITED)
    cnn = onnx_models.cnn(model_repo, "cnn", batch=False)
    cnn.write_config(cnn.config(extra=LIMITED))
    library = os.environ.get("ORT_DYLIB_PATH")
    server = start_tritium("--model-repository", str(model_repo), "--rate-limit", "execution_count",
                           *(["--onnxruntime-library", library] if library else []))  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    try:
        assert infer(client, "builtin", [1, 2, 3]) == [1, 2, 3]
        (data,) = cnn.inputs
        image = grpcclient.InferInput(data.name, list(data.dims), data.datatype)
        image.set_data_from_numpy(np.ones(data.dims, dtype=data.dtype))
        scores = client.infer("cnn", [image]).as_numpy(cnn.outputs[0].name)
        assert scores.size == 1000 and np.isclose(scores.sum(), 1.0, atol=1e-3), "a softmax over the classes"
        for model in ("builtin", "cnn"):
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
            assert int(stats["execution_count"]) == 1, stats
    finally:
        client.close()
