"""Runs one BLS request on stats_child per MODE element (that element as the child's MODE) and answers with
what each returned: TEXT[i] = JSON {"error": message} or {"out": values}."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            answers = []
            for mode in pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy():
                inner = pb_utils.InferenceRequest(
                    model_name="stats_child",
                    inputs=[pb_utils.Tensor("MODE", np.array([mode], dtype=np.object_))],
                    requested_output_names=["OUT"],
                ).exec()
                if inner.has_error():
                    answers.append({"error": inner.error().message()})
                else:
                    answers.append({"out": pb_utils.get_output_tensor_by_name(inner, "OUT").as_numpy().tolist()})
            text = np.array([json.dumps(a, sort_keys=True).encode() for a in answers], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out
