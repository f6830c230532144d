"""A decoupled model whose execute is `async def` (supported since 24.04): each request waits MS milliseconds on
the event loop, then sends one response and the final flag. ORDER numbers the responses the instance sent, so a
request that waits less answers first even when it came second (its execute ran while the first one waited)."""

import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sent = 0

    async def execute(self, requests):
        for request in requests:
            ms = int(pb_utils.get_input_tensor_by_name(request, "MS").as_numpy()[0])
            sender = request.get_response_sender()
            await asyncio.sleep(ms / 1000)
            self.sent += 1
            order = pb_utils.Tensor("ORDER", np.array([self.sent], np.int32))
            sender.send(pb_utils.InferenceResponse([order]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
