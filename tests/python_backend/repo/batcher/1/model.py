"""Dynamic batching: OUTPUT0 echoes INPUT0; COUNT is how many requests this execute call was given
(one row per request row, so a request of batch 2 gets [[n], [n]])."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        count = len(requests)
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            counts = np.full((data.shape[0], 1), count, dtype=np.int32)
            tensors = [pb_utils.Tensor("OUTPUT0", data), pb_utils.Tensor("COUNT", counts)]
            out.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return out
