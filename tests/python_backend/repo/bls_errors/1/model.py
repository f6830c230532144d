"""BLS calls that fail. TARGET: missing (a model that does not exist), not_ready (init_fails), bad_input (identity_fp32
given an input it does not have), wrong_dtype (identity_fp32 given INT32), bad_output (asks identity_fp32 for an
output it does not have), child_raise / child_error / child_code / child_fewer (the errors model raising, answering
an error, one with a code, or no response). MODE: report (TEXT = JSON of has_error, the error's message and code name), raise
(raise TritonModelException(message)), return_error (answer with the inner response's error object)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

FP32 = np.array([1.0, 2.0], dtype=np.float32)
TARGETS = {
    "missing": ("no_such_model", "INPUT0", FP32, ["OUTPUT0"]),
    "not_ready": ("init_fails", "INPUT0", FP32, ["OUTPUT0"]),
    "bad_input": ("identity_fp32", "WRONG", FP32, ["OUTPUT0"]),
    "wrong_dtype": ("identity_fp32", "INPUT0", np.array([1, 2], dtype=np.int32), ["OUTPUT0"]),
    "bad_output": ("identity_fp32", "INPUT0", FP32, ["NOPE"]),
    # A python child that fails in its own way (the errors model, by its MODE).
    "child_raise": ("errors", "MODE", np.array([b"raise"], dtype=np.object_), ["OUT"]),
    "child_error": ("errors", "MODE", np.array([b"error_response"], dtype=np.object_), ["OUT"]),
    "child_code": ("errors", "MODE", np.array([b"code_NOT_FOUND"], dtype=np.object_), ["OUT"]),
    "child_fewer": ("errors", "MODE", np.array([b"fewer"], dtype=np.object_), ["OUT"]),
}


def code_name(error):
    code = error.code()
    for name in ("UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
                 "CANCELLED"):  # fmt: skip
        if code == getattr(pb_utils.TritonError, name):
            return name
    return str(code)


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            target = pb_utils.get_input_tensor_by_name(request, "TARGET").as_numpy()[0].decode()
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            model, name, data, outputs = TARGETS[target]
            try:
                inner = pb_utils.InferenceRequest(
                    model_name=model, inputs=[pb_utils.Tensor(name, data)], requested_output_names=outputs
                ).exec()
            except Exception as e:  # an exception instead of an error response is also an answer
                report = {"raised": f"{type(e).__name__}: {e}"}
                text = np.array([json.dumps(report).encode()], dtype=np.object_)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
                continue
            error = inner.error() if inner.has_error() else None
            if mode == "raise" and error is not None:
                raise pb_utils.TritonModelException(error.message())
            if mode == "return_error" and error is not None:
                out.append(pb_utils.InferenceResponse(error=error))
                continue
            report = {
                "has_error": inner.has_error(),
                "message": None if error is None else error.message(),
                "code": None if error is None else code_name(error),
                "outputs": sorted(t.name() for t in inner.output_tensors()),
            }
            text = np.array([json.dumps(report, sort_keys=True).encode()], dtype=np.object_)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]))
        return out
