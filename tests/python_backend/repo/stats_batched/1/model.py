"""For ModelStatistics of batched executions: each request's MODE row: ok, error (an error response for that
request); any request with raise makes the whole execute raise."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        modes = [pb_utils.get_input_tensor_by_name(r, "MODE").as_numpy()[0][0].decode() for r in requests]
        if "raise" in modes:
            raise pb_utils.TritonModelException(f"stats raise in a batch of {len(requests)}")
        out = []
        for mode in modes:
            if mode == "error":
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("stats error")))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[len(modes)]], np.int32))]))
        return out
