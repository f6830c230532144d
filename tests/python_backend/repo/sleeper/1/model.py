"""Sleeps MS milliseconds, then answers MS_OUT = MS."""

import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            ms = pb_utils.get_input_tensor_by_name(request, "MS").as_numpy()
            time.sleep(int(ms[0]) / 1000.0)
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("MS_OUT", ms)]))
        return out
