"""BLS with a stateful model (seq_child): MODE int / str runs a sequence of three requests (START, -, END) with
correlation id 4 / "ex-4" and the values 1, 2, 3; no_start sends a request of a sequence never started;
zero_id one with START and correlation id 0. TEXT: per request, JSON of the child's SUM and SEEN, or its error."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

START = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START
END = pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END
PLANS = {
    "int": [(4, START, 1), (4, 0, 2), (4, END, 3)],
    "str": [("ex-4", START, 1), ("ex-4", 0, 2), ("ex-4", END, 3)],
    "both": [(7, START | END, 5)],
    "no_start": [(99, 0, 1)],
    "zero_id": [(0, START, 1)],
}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            answers = []
            for corr, flags, value in PLANS[mode]:
                inner = pb_utils.InferenceRequest(
                    model_name="seq_child", requested_output_names=["SUM", "SEEN"],
                    inputs=[pb_utils.Tensor("IN", np.array([value], np.int32))], correlation_id=corr, flags=flags,
                ).exec()  # fmt: skip
                if inner.has_error():
                    answers.append({"error": inner.error().message()})
                    continue
                total = pb_utils.get_output_tensor_by_name(inner, "SUM").as_numpy().tolist()
                seen = json.loads(pb_utils.get_output_tensor_by_name(inner, "SEEN").as_numpy()[0])
                answers.append({"sum": total, "seen": seen})
            text = np.array([json.dumps(a, sort_keys=True).encode() for a in answers], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out
