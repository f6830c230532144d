"""BLS to the decoupled repeat_int32. MODE: decoupled (exec(decoupled=True), iterate the responses),
not_decoupled (plain exec() on the decoupled model), decoupled_on_plain (exec(decoupled=True) on identity_fp32).
TEXT: JSON list, one entry per response: {"error": message or null, "outputs": {name: values}}; or
{"raised": ...} when the call raised."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def describe(response):
    error = response.error().message() if response.has_error() else None
    outputs = {t.name(): t.as_numpy().tolist() for t in response.output_tensors()}
    return {"error": error, "outputs": dict(sorted(outputs.items()))}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            if mode == "decoupled_on_plain":
                inner = pb_utils.InferenceRequest(
                    model_name="identity_fp32",
                    inputs=[pb_utils.Tensor("INPUT0", values.astype(np.float32))],
                    requested_output_names=["OUTPUT0"],
                )
            else:
                inner = pb_utils.InferenceRequest(
                    model_name="repeat_int32",
                    inputs=[
                        pb_utils.Tensor("IN", values),
                        pb_utils.Tensor("DELAY", np.zeros(len(values), dtype=np.uint32)),
                        pb_utils.Tensor("WAIT", np.array([0], dtype=np.uint32)),
                    ],
                    requested_output_names=["OUT", "IDX"],
                )
            try:
                if mode == "not_decoupled":
                    report = [describe(inner.exec())]
                else:
                    report = [describe(r) for r in inner.exec(decoupled=True)]
            except Exception as e:  # an exception instead of an error response is also an answer
                report = {"raised": f"{type(e).__name__}: {e}"}
            text = np.array([json.dumps(report, sort_keys=True).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out
