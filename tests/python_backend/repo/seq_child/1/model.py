"""A stateful model for BLS: SUM is the running sum of IN over the sequence (correlation id), reset by the START
flag; SEEN is JSON [correlation_id(), flags()] as the model got them."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        out = []
        for request in requests:
            corr, flags = request.correlation_id(), request.flags()
            value = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
            if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START:
                self.sums[corr] = 0
            self.sums[corr] = self.sums.get(corr, 0) + value
            total = self.sums[corr]
            if flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END:
                del self.sums[corr]
            seen = np.array([json.dumps([corr, flags]).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([total], np.int32)),
                                                   pb_utils.Tensor("SEEN", seen)]))  # fmt: skip
        return out
