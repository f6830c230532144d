"""One response-cache scenario run against Triton 2.51 (record_response_cache_triton.py writes what it answered to
response_cache_triton.json) and against Tritium (test_response_cache.py compares): a plain model, a batching model
and an ensemble over a step, each with `response_cache { enable: true }`, the same input three times and another
once, then the step called on its own before the ensemble sends it the same input. What is compared: every count
of ModelStatistics (success, fail, queue and compute phases, cache hit and miss, inference and execution counts,
batch_stats) and the `nv_cache_num_*_per_model` samples of the metrics page. Durations differ by machine and are
only checked for being there."""

import pathlib
import textwrap
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import json_format

MODELS = ("plain_cached", "batch_cached", "step", "ens")

ENSEMBLE = """
name: "ens"
platform: "ensemble"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [ { model_name: "step" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "OUTPUT0" } } ] }
response_cache { enable: true }
"""

PYTHON_IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests
        ]
'''


def write_repository(repo: pathlib.Path, backend: str) -> None:
    """The scenario's models; `backend` is "identity" (Tritium's built-in) or "python" (Triton, with a model.py)."""
    for name, batch, extra in (("plain_cached", 0, ""), ("batch_cached", 8, "dynamic_batching { }\n"), ("step", 0, "")):
        (repo / name / "1").mkdir(parents=True, exist_ok=True)
        (repo / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "{backend}"\nmax_batch_size: {batch}\n'
            'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
            "response_cache { enable: true }\n" + extra
        )
        if backend == "python":
            (repo / name / "1" / "model.py").write_text(textwrap.dedent(PYTHON_IDENTITY))
    (repo / "ens" / "1").mkdir(parents=True, exist_ok=True)
    (repo / "ens" / "config.pbtxt").write_text(ENSEMBLE)


def statistics(client, model: str) -> dict:
    s = json_format.MessageToDict(client.get_inference_statistics(model, as_json=False), preserving_proto_field_name=True)
    s = s["model_stats"][0]
    phases = s["inference_stats"]
    counts = {key: int(value.get("count", 0)) for key, value in phases.items()}
    timed = sorted(key for key, value in phases.items() if int(value.get("ns", 0)) > 0)
    batches = [[int(b["batch_size"]), int(b["compute_infer"]["count"])] for b in s.get("batch_stats", [])]
    return {
        "counts": counts,
        "timed": timed,
        "inference_count": int(s.get("inference_count", 0)),
        "execution_count": int(s.get("execution_count", 0)),
        "batch_stats": batches,
    }


def cache_metrics(metrics_url: str) -> dict:
    page = urllib.request.urlopen(metrics_url, timeout=30).read().decode()
    found = {}
    for line in page.splitlines():
        if line.startswith(("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model")):
            found[line.rsplit(" ", 1)[0]] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(("nv_cache_hit_duration_per_model", "nv_cache_miss_duration_per_model")):
            found[line.rsplit(" ", 1)[0]] = "present"
    return found


def run(grpc_url: str, metrics_url: str) -> dict:
    client = grpcclient.InferenceServerClient(grpc_url)

    def infer(model: str, values) -> list:
        array = np.asarray(values, dtype=np.float32)
        if model == "batch_cached":
            array = array.reshape(1, -1)
        tensor = grpcclient.InferInput("INPUT0", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        return client.infer(model, [tensor]).as_numpy("OUTPUT0").reshape(-1).tolist()

    answers = []
    for model in ("plain_cached", "batch_cached", "ens"):
        for values in ([1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 4]):
            answers.append(infer(model, values))
    stages = {"repeated": {m: statistics(client, m) for m in MODELS}}
    answers.append(infer("step", [7]))
    answers.append(infer("ens", [7]))
    stages["step_then_ensemble"] = {m: statistics(client, m) for m in ("step", "ens")}
    client.close()
    return {"answers": answers, "stages": stages, "metrics": cache_metrics(metrics_url)}
