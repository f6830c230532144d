"""Non-decoupled misbehaviour, picked by MODE (see the table below). A well-formed answer is OUT = [1, 2]."""

import numpy as np
import triton_python_backend_utils as pb_utils

def good():
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", np.array([1, 2], dtype=np.int32))])


def answer(mode):
    """The responses execute returns for one request of `mode` (a list, or anything else on purpose)."""
    if mode == "ok":
        return [good()]
    if mode == "raise":
        raise Exception("boom")
    if mode == "raise_value_error":
        raise ValueError("bad value")
    if mode == "model_exception":
        raise pb_utils.TritonModelException("bad")
    if mode == "error_response":
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError("custom"))]
    if mode.startswith("code_"):
        code = getattr(pb_utils.TritonError, mode[len("code_"):])
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"with code {mode[len('code_'):]}", code))]
    if mode == "error_and_outputs":
        tensor = pb_utils.Tensor("OUT", np.array([1, 2], dtype=np.int32))
        return [pb_utils.InferenceResponse(output_tensors=[tensor], error=pb_utils.TritonError("both"))]
    if mode == "empty_message":
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(""))]
    if mode == "fewer":
        return []
    if mode == "more":
        return [good(), good()]
    if mode == "none":
        return None
    if mode == "single":
        return good()
    if mode == "tuple":
        return (good(),)
    if mode == "not_a_response":
        return ["not a response"]
    if mode == "none_in_list":
        return [None]
    if mode == "unknown_output":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("NOPE", np.array([1, 2], dtype=np.int32))])]
    if mode == "wrong_dtype":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1.5, 2.5], dtype=np.float32))])]
    if mode == "wrong_shape":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1, 2, 3], dtype=np.int32))])]
    if mode == "wrong_rank":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[1, 2]], dtype=np.int32))])]
    if mode == "no_outputs":
        return [pb_utils.InferenceResponse(output_tensors=[])]
    if mode == "duplicate_output":
        tensor = pb_utils.Tensor("OUT", np.array([1, 2], dtype=np.int32))
        return [pb_utils.InferenceResponse([tensor, tensor])]
    if mode == "bytes_from_object":
        text = np.array([b"a", "b", b"\x00c"], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)])]
    if mode == "bytes_from_bytes_":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array([b"a", b"bc"], dtype=np.bytes_))])]
    if mode == "bytes_from_str_":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array(["a", "bc"], dtype=np.str_))])]
    if mode == "int_as_bytes_output":
        return [pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array([1, 2], dtype=np.int32))])]
    raise Exception(f"unknown mode {mode!r}")


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            result = answer(mode)
            if not isinstance(result, list):
                return result
            out.extend(result)
        return out
