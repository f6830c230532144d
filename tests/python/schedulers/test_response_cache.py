"""Triton's response cache (`--cache-config`, `response_cache { enable: true }`) with tritonclient over gRPC
and HTTP: hits and misses in ModelStatistics and on the metrics port as Triton 2.51 counts them (a hit is a
success with no compute, no execution and no inference count), a changed input byte, parameter or requested
output misses, an entry larger than the cache is not kept, decoupled and sequence-batched models refused at
load with Triton's words, sequence requests not cached, ensembles cached at the top and per step, a real Redis
(Debian's redis-server, scripts/install-services.sh) shared by two servers, and a Redis that is down or goes
away leaving every request answered."""

import pathlib
import socket
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import response_cache_scenario as scenario
from redis_service import Redis, redis  # noqa: F401 - redis: a fixture
from helpers import REPO, TESTS, add_sub_config, needs, identity_config, start_failure, wait_for, write_model

CACHE = "response_cache { enable: true }\n"
LOCAL = ("--cache-config", "local,size=1048576")
ROOT = REPO


def cached_identity(repo: pathlib.Path, name: str, data_type: str = "TYPE_FP32") -> None:
    write_model(repo, name, identity_config(name, data_type) + CACHE)


def infer(client, model: str, values, datatype: str = "FP32", outputs=None, **kwargs):
    array = np.asarray(values)
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensor = module.InferInput("INPUT0", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    requested = [module.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=requested, **kwargs)


def stats(client, model: str) -> dict:
    """The counts of `model`'s statistics that the cache changes."""
    grpc = isinstance(client, grpcclient.InferenceServerClient)
    answer = client.get_inference_statistics(model, as_json=True) if grpc else client.get_inference_statistics(model)
    s = answer["model_stats"][0]
    phase = s["inference_stats"]
    count = lambda key: int(phase.get(key, {}).get("count", 0))  # noqa: E731
    return {
        "success": count("success"),
        "queue": count("queue"),
        "compute_infer": count("compute_infer"),
        "hit": count("cache_hit"),
        "miss": count("cache_miss"),
        "inference_count": int(s.get("inference_count", 0)),
        "execution_count": int(s.get("execution_count", 0)),
    }


def metric_lines(server, model: str) -> dict[str, float]:
    """The `nv_cache_*_per_model` samples of `model`, by family."""
    page = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    found = {}
    for line in page.splitlines():
        if line.startswith("nv_cache_") and f'model="{model}"' in line:
            found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return found


def test_hits_and_misses_in_statistics_and_metrics(start_tritium, model_repo):
    cached_identity(model_repo, "cached")
    write_model(model_repo, "plain", identity_config("plain", "TYPE_FP32"))
    server = start_tritium("--model-repository", str(model_repo), *LOCAL)
    client = grpcclient.InferenceServerClient(server.url)
    for _ in range(3):
        assert infer(client, "cached", np.array([1, 2, 3], np.float32)).as_numpy("OUTPUT0").tolist() == [1, 2, 3]
        infer(client, "plain", np.array([1, 2, 3], np.float32))
    # As Triton 2.51 counts: every request a success, only the miss computed and executed.
    want = {"success": 3, "queue": 3, "compute_infer": 1, "hit": 2, "miss": 1, "inference_count": 1, "execution_count": 1}
    assert stats(client, "cached") == want
    assert stats(client, "plain") == {**want, "compute_infer": 3, "hit": 0, "miss": 0, "inference_count": 3, "execution_count": 3}
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert infer(http, "cached", np.array([1, 2, 3], np.float32)).as_numpy("OUTPUT0").tolist() == [1, 2, 3]
    assert stats(http, "cached") == {**want, "success": 4, "queue": 4, "hit": 3}
    metrics = metric_lines(server, "cached")
    assert metrics["nv_cache_num_hits_per_model"] == 3 and metrics["nv_cache_num_misses_per_model"] == 1, metrics
    assert {"nv_cache_hit_duration_per_model", "nv_cache_miss_duration_per_model"} <= metrics.keys()
    # A model without the cache has no cache metrics, as in Triton.
    assert metric_lines(server, "plain") == {}
    page = urllib.request.urlopen(server.metrics_url, timeout=30).read().decode()
    assert "nv_cache_num_entries 1" in page and "nv_cache_num_lookups 4" in page
    client.close()
    http.close()


def test_a_changed_input_byte_parameter_or_output_misses(start_tritium, model_repo):
    cached_identity(model_repo, "bytes_id", "TYPE_UINT8")
    write_model(model_repo, "add_sub", add_sub_config("add_sub") + CACHE)
    server = start_tritium("--model-repository", str(model_repo), *LOCAL)
    client = grpcclient.InferenceServerClient(server.url)
    data = np.arange(64, dtype=np.uint8)
    infer(client, "bytes_id", data, "UINT8")
    changed = data.copy()
    changed[63] ^= 1
    assert infer(client, "bytes_id", changed, "UINT8").as_numpy("OUTPUT0").tolist() == changed.tolist()
    assert stats(client, "bytes_id")["miss"] == 2
    assert infer(client, "bytes_id", changed, "UINT8").as_numpy("OUTPUT0").tolist() == changed.tolist()
    assert (stats(client, "bytes_id")["hit"], stats(client, "bytes_id")["miss"]) == (1, 2)
    # A custom parameter reaches the backend, so it is part of the key; priority is not.
    infer(client, "bytes_id", changed, "UINT8", parameters={"custom": "x"})
    infer(client, "bytes_id", changed, "UINT8", priority=1)
    assert (stats(client, "bytes_id")["hit"], stats(client, "bytes_id")["miss"]) == (2, 3)

    a, b = np.arange(16, dtype=np.int32), np.ones(16, dtype=np.int32)

    def add_sub(outputs):
        inputs = [grpcclient.InferInput(n, [16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        result = client.infer("add_sub", inputs, outputs=requested)
        return {o.name: result.as_numpy(o.name).tolist() for o in result.get_response().outputs}

    assert add_sub(["OUTPUT0"]) == {"OUTPUT0": (a + b).tolist()}
    assert add_sub(["OUTPUT1"]) == {"OUTPUT1": (a - b).tolist()}
    assert add_sub(["OUTPUT0"]) == {"OUTPUT0": (a + b).tolist()}
    assert (stats(client, "add_sub")["hit"], stats(client, "add_sub")["miss"]) == (1, 2)
    client.close()


def test_an_entry_larger_than_the_cache_is_not_kept(start_tritium, model_repo):
    cached_identity(model_repo, "cached")
    server = start_tritium("--model-repository", str(model_repo), "--cache-config", "local,size=1024")
    client = grpcclient.InferenceServerClient(server.url)
    big = np.arange(1024, dtype=np.float32)
    for _ in range(2):
        assert infer(client, "cached", big).as_numpy("OUTPUT0").tolist() == big.tolist()
    small = np.array([1], np.float32)
    infer(client, "cached", small)
    infer(client, "cached", small)
    assert (stats(client, "cached")["hit"], stats(client, "cached")["miss"]) == (1, 3)
    client.close()


def test_a_model_with_the_cache_on_a_server_without_one_runs_uncached(start_tritium, model_repo):
    cached_identity(model_repo, "cached")
    server = start_tritium("--model-repository", str(model_repo))
    client = grpcclient.InferenceServerClient(server.url)
    for _ in range(2):
        infer(client, "cached", np.array([1], np.float32))
    assert stats(client, "cached")["execution_count"] == 2 and stats(client, "cached")["hit"] == 0
    client.close()


def test_decoupled_and_sequence_models_are_refused_with_tritons_words(start_tritium, model_repo):
    repeat = (ROOT / "worker/models/repeat.pbtxt").read_text().replace('name: "repeat"', 'name: "repeat_cached"')
    write_model(model_repo, "repeat_cached", repeat + CACHE)
    accumulate = (ROOT / "worker/models/accumulate.pbtxt").read_text().replace('name: "accumulate"', 'name: "acc_cached"')
    write_model(model_repo, "acc_cached", accumulate + CACHE)
    cached_identity(model_repo, "cached")
    server = start_tritium("--model-repository", str(model_repo), "--model-control-mode", "explicit", *LOCAL)
    client = grpcclient.InferenceServerClient(server.url)
    for model, words in [
        ("repeat_cached", "with 'decoupled' transaction policy. Please disable the response cache."),
        ("acc_cached", "with sequence batching scheduler. Please disable the response cache."),
    ]:
        with pytest.raises(Exception) as error:
            client.load_model(model)
        assert f"Response Cache does not currently support model {model} {words}" in str(error.value)
        assert not client.is_model_ready(model)
    client.load_model("cached")
    assert client.is_model_ready("cached")
    client.close()


def test_sequence_requests_are_not_cached(start_tritium, model_repo):
    cached_identity(model_repo, "cached")
    server = start_tritium("--model-repository", str(model_repo), *LOCAL)
    client = grpcclient.InferenceServerClient(server.url)
    for _ in range(2):
        infer(client, "cached", np.array([5], np.float32), sequence_id=7, sequence_start=True)
    assert stats(client, "cached") | {"queue": 0} == {
        "success": 2, "queue": 0, "compute_infer": 2, "hit": 0, "miss": 0, "inference_count": 2, "execution_count": 2,
    }  # fmt: skip
    client.close()


def test_an_ensemble_caches_at_the_top_and_per_step(start_tritium, model_repo):
    cached_identity(model_repo, "step")
    # The ensemble of the recorded scenario: over "step", with the response cache on.
    write_model(model_repo, "ens", scenario.ENSEMBLE)
    server = start_tritium("--model-repository", str(model_repo), *LOCAL)
    client = grpcclient.InferenceServerClient(server.url)
    for _ in range(3):
        assert infer(client, "ens", np.array([1, 2], np.float32)).as_numpy("OUTPUT0").tolist() == [1, 2]
    # The ensemble's own cache answers the repeats: its step ran once.
    assert (stats(client, "ens")["hit"], stats(client, "ens")["miss"]) == (2, 1)
    assert (stats(client, "step")["success"], stats(client, "step")["miss"]) == (1, 1)
    # What the step cached on its own answers the ensemble's step (a miss at the top), as in Triton.
    infer(client, "step", np.array([7], np.float32))
    assert infer(client, "ens", np.array([7], np.float32)).as_numpy("OUTPUT0").tolist() == [7]
    assert (stats(client, "ens")["hit"], stats(client, "ens")["miss"]) == (2, 2)
    assert (stats(client, "step")["hit"], stats(client, "step")["miss"], stats(client, "step")["execution_count"]) == (1, 2, 2)
    client.close()


def test_bad_cache_flags_stop_the_server_with_tritons_words():
    assert "--cache-config option format is '<cache name>,<setting>=<value>'. Got local" in start_failure(
        "--cache-config", "local"
    )
    two = start_failure("--cache-config", "local,size=100", "--cache-config", "redis,host=h")
    assert "found multiple cache configurations, but only a single cache is currently supported" in two
    secret = start_failure("--cache-config", "redis,host=h,password=hunter2,port=nope").split("stderr:", 1)[1]
    assert "'port' must be a port number" in secret and "hunter2" not in secret


# Redis: a real redis-server on 127.0.0.1.




def test_redis_is_shared_by_two_servers(start_tritium, model_repo, redis):
    cached_identity(model_repo, "cached")
    first = start_tritium("--model-repository", str(model_repo), "--cache-config", redis.flag)
    second = start_tritium("--model-repository", str(model_repo), "--cache-config", redis.flag)
    one = grpcclient.InferenceServerClient(first.url)
    two = grpcclient.InferenceServerClient(second.url)
    value = np.array([4, 2], np.float32)
    assert infer(one, "cached", value).as_numpy("OUTPUT0").tolist() == [4, 2]
    assert (stats(one, "cached")["hit"], stats(one, "cached")["miss"]) == (0, 1)
    # The second server never ran it: the answer is what the first stored.
    assert infer(two, "cached", value).as_numpy("OUTPUT0").tolist() == [4, 2]
    assert stats(two, "cached") | {"queue": 0} == {
        "success": 1, "queue": 0, "compute_infer": 0, "hit": 1, "miss": 0, "inference_count": 0, "execution_count": 0,
    }  # fmt: skip
    http = httpclient.InferenceServerClient(second.http_url.removeprefix("http://"))
    assert infer(http, "cached", value).as_numpy("OUTPUT0").tolist() == [4, 2]
    assert stats(two, "cached")["hit"] == 2
    for c in (one, two, http):
        c.close()


def test_a_redis_that_is_down_or_goes_away_leaves_requests_answered(start_tritium, model_repo, redis):
    cached_identity(model_repo, "cached")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = start_tritium("--model-repository", str(model_repo), "--cache-config", f"redis,host=127.0.0.1,port={closed}")
    client = grpcclient.InferenceServerClient(down.url)
    for i in range(5):
        assert infer(client, "cached", np.array([i], np.float32)).as_numpy("OUTPUT0").tolist() == [i]
    assert stats(client, "cached")["hit"] == 0 and stats(client, "cached")["success"] == 5
    assert "redis response cache unavailable" in down.stderr()
    client.close()

    up = start_tritium("--model-repository", str(model_repo), "--cache-config", redis.flag)
    client = grpcclient.InferenceServerClient(up.url)
    value = np.array([9], np.float32)
    infer(client, "cached", value)
    infer(client, "cached", value)
    assert stats(client, "cached")["hit"] == 1
    redis.stop()
    for _ in range(5):
        assert infer(client, "cached", value).as_numpy("OUTPUT0").tolist() == [9]
    assert stats(client, "cached")["success"] == 7 and stats(client, "cached")["hit"] == 1
    client.close()


def test_counts_match_triton_2_51(start_tritium, model_repo):
    """response_cache_scenario.run against Tritium gives what Triton 2.51 gave (response_cache_triton.json,
    recorded by record_response_cache_triton.py): every statistic count, batch_stats and the cache metrics."""
    import json


    recorded = json.loads((TESTS / "response_cache_triton.json").read_text())
    recorded.pop("triton")
    scenario.write_repository(model_repo, "identity")
    server = start_tritium("--model-repository", str(model_repo), *LOCAL)
    assert scenario.run(server.url, server.metrics_url) == recorded
