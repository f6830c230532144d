"""Model control from inside a model. ACTION: ready (is_model_ready(NAME)), ready_v1 / ready_v2 (with a version),
load (load_model), unload (unload_model). READY is is_model_ready(NAME) after the action; TEXT is "ok" or the
exception the action raised ("Type: message")."""

import numpy as np
import triton_python_backend_utils as pb_utils


def act(action, name):
    if action == "ready":
        return
    if action.startswith("ready_v"):
        return pb_utils.is_model_ready(model_name=name, model_version=action[len("ready_v"):])
    if action == "load":
        return pb_utils.load_model(model_name=name)
    if action == "unload":
        return pb_utils.unload_model(model_name=name)
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
