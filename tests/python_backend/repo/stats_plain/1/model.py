"""For ModelStatistics: MODE ok (OUT = [1]), raise, error (an error response), fewer (no response at all)."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            if mode == "raise":
                raise pb_utils.TritonModelException("stats raise")
            if mode == "fewer":
                return []
            if mode == "error":
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("stats error")))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1], dtype=np.int32))]))
        return out
