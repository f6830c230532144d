"""Triton python-backend add_sub: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 [16])."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", np.add(a, b, dtype=np.int32))
            out1 = pb_utils.Tensor("OUTPUT1", np.subtract(a, b, dtype=np.int32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses
