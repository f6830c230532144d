"""Model control from inside a model. ACTION: ready (is_model_ready(NAME)), ready_v1 / ready_v2 (with a version),
load (load_model), unload (unload_model), load_files (load_model of NAME made of files: an identity model, its
config and model.py sent with the call), load_files_no_config (files without a config), load_files_not_a_dict,
load_config (load_model of NAME with a config override). READY is is_model_ready(NAME) after the action; TEXT is
"ok" or the exception the action raised ("Type: message")."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

FILES_CONFIG = json.dumps({
    "backend": "python", "max_batch_size": 0,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
})  # fmt: skip
FILES_MODEL = b"""import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", data * 3)]))
        return out
"""


def act(action, name):
    if action == "ready":
        return
    if action.startswith("ready_v"):
        return pb_utils.is_model_ready(model_name=name, model_version=action[len("ready_v"):])
    if action == "load":
        return pb_utils.load_model(model_name=name)
    if action == "unload":
        return pb_utils.unload_model(model_name=name)
    if action == "load_files":
        return pb_utils.load_model(model_name=name, config=FILES_CONFIG, files={"file:1/model.py": FILES_MODEL})
    if action == "load_files_no_config":
        return pb_utils.load_model(model_name=name, files={"file:1/model.py": FILES_MODEL})
    if action == "load_files_not_a_dict":
        return pb_utils.load_model(model_name=name, config=FILES_CONFIG, files=[("file:1/model.py", FILES_MODEL)])
    if action == "load_config":
        return pb_utils.load_model(model_name=name, config=json.dumps({"backend": "python", "max_batch_size": 0,
                                                                       "parameters": {"k": {"string_value": "v"}}}))
    raise ValueError(f"unknown action {action!r}")


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            action = pb_utils.get_input_tensor_by_name(request, "ACTION").as_numpy()[0].decode()
            name = pb_utils.get_input_tensor_by_name(request, "NAME").as_numpy()[0].decode()
            try:
                result = act(action, name)
                text = "ok" if result is None else f"ok: {result!r}"
            except Exception as e:  # the wording of the error is what is recorded
                text = f"{type(e).__name__}: {e}"
            ready = pb_utils.is_model_ready(model_name=name)
            tensors = [
                pb_utils.Tensor("READY", np.array([ready], dtype=np.bool_)),
                pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_)),
            ]
            out.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return out
