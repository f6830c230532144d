"""Responses carrying parameters; MODE picks the set (plain: str, int and bool; float, nested, big_int, empty)."""

import numpy as np
import triton_python_backend_utils as pb_utils

PARAMETERS = {
    "plain": {"s": "x", "i": 7, "b": True},
    "float": {"f": 1.5},
    "nested": {"d": {"k": 1}},
    "big_int": {"big": 2**63, "neg": -5},
    "empty": {},
}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            tensor = pb_utils.Tensor("OUTPUT0", np.array([1], dtype=np.int32))
            out.append(pb_utils.InferenceResponse(output_tensors=[tensor], parameters=PARAMETERS[mode]))
        return out
