"""BLS, blocking: OUTPUT0 = identity_fp32(INPUT0) + 1, through InferenceRequest.exec()."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            inner = pb_utils.InferenceRequest(
                model_name="identity_fp32",
                inputs=[pb_utils.Tensor("INPUT0", data)],
                requested_output_names=["OUTPUT0"],
            ).exec()
            if inner.has_error():
                raise pb_utils.TritonModelException(inner.error().message())
            echoed = pb_utils.get_output_tensor_by_name(inner, "OUTPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", echoed + np.float32(1))]))
        return out
