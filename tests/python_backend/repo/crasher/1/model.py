"""MODE "pid": PID = the id of the process running this model; MODE "exit": the process exits at once (status 1)."""

import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            if mode == "exit":
                os._exit(1)
            pid = pb_utils.Tensor("PID", np.array([os.getpid()], dtype=np.int64))
            out.append(pb_utils.InferenceResponse(output_tensors=[pid]))
        return out
