"""Optional inputs, empty tensors and BF16. Every input is optional; each one given comes back as OUT_<kind> after a
DLPack round trip (Tensor.from_dlpack(name, tensor.to_dlpack())), BYTES through as_numpy. INFO (JSON): the inputs
the request has, what get_input_tensor_by_name gives for each name, and per input its shape, is_cpu() and
as_numpy()'s dtype and shape (or the exception, as for BF16)."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

NAMES = ["IN_BF16", "IN_FP32", "IN_BYTES", "IN_BOOL"]


def ask(question):
    try:
        return {"ok": question()}
    except Exception as e:  # noqa: BLE001 - the answer is the exception
        return {"raised": type(e).__name__, "message": str(e)}


def describe(tensor):
    if tensor is None:
        return None

    def numpy_view():
        array = tensor.as_numpy()
        return {"dtype": array.dtype.str, "shape": list(array.shape)}

    return {"name": tensor.name(), "shape": tensor.shape(), "is_cpu": tensor.is_cpu(), "as_numpy": ask(numpy_view)}


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            tensors = []
            for name in NAMES:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is None:
                    continue
                out_name = "OUT_" + name[3:]
                if name == "IN_BYTES":
                    tensors.append(pb_utils.Tensor(out_name, tensor.as_numpy()))
                else:
                    tensors.append(pb_utils.Tensor.from_dlpack(out_name, tensor.to_dlpack()))
            info = {
                "inputs": sorted(t.name() for t in request.inputs()),
                "by_name": {name: describe(pb_utils.get_input_tensor_by_name(request, name)) for name in NAMES},
                "outputs": {t.name(): t.shape() for t in tensors},
            }
            try:
                import ml_dtypes  # noqa: F401 - only where the environment has it

                made = ask(lambda: pb_utils.Tensor("X", np.zeros(2, dtype=ml_dtypes.bfloat16)).shape())
            except ImportError:
                made = "no ml_dtypes"
            info["numpy_bfloat16"] = made
            text = np.array([json.dumps(info, sort_keys=True).encode()], dtype=np.object_)
            tensors.append(pb_utils.Tensor("INFO", text))
            out.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return out
