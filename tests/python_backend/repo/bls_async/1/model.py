"""BLS, async execute: OUTPUT0 = identity_fp32(INPUT0) + bls_sync(INPUT0), both awaited together (async_exec)."""

import asyncio

import triton_python_backend_utils as pb_utils


async def call(model, data):
    inner = await pb_utils.InferenceRequest(
        model_name=model, inputs=[pb_utils.Tensor("INPUT0", data)], requested_output_names=["OUTPUT0"]
    ).async_exec()
    if inner.has_error():
        raise pb_utils.TritonModelException(inner.error().message())
    return pb_utils.get_output_tensor_by_name(inner, "OUTPUT0").as_numpy()


class TritonPythonModel:
    async def execute(self, requests):
        out = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            a, b = await asyncio.gather(call("identity_fp32", data), call("bls_sync", data))
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b)]))
        return out
