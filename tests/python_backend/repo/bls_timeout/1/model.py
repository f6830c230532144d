"""BLS with a request timeout: calls TARGET (sleeper, or sleeper_queued with its batch dimension) sleeping MS, with
InferenceRequest(timeout=TIMEOUT_US). TEXT: JSON {"error": message or null, "outputs": {name: values}}, or
{"raised": ...} when exec() raised."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            target = pb_utils.get_input_tensor_by_name(request, "TARGET").as_numpy()[0].decode()
            ms = pb_utils.get_input_tensor_by_name(request, "MS").as_numpy()
            if target == "sleeper_queued":
                ms = ms.reshape(1, 1)
            timeout = int(pb_utils.get_input_tensor_by_name(request, "TIMEOUT_US").as_numpy()[0])
            try:
                inner = pb_utils.InferenceRequest(
                    model_name=target, inputs=[pb_utils.Tensor("MS", ms)], requested_output_names=["MS_OUT"],
                    timeout=timeout,
                ).exec()
                report = {
                    "error": inner.error().message() if inner.has_error() else None,
                    "outputs": {t.name(): t.as_numpy().tolist() for t in inner.output_tensors()},
                }
            except Exception as e:  # an exception instead of an error response is also an answer
                report = {"raised": f"{type(e).__name__}: {e}"}
            text = np.array([json.dumps(report, sort_keys=True).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out
