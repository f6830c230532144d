"""Decoupled: one response per element of IN (OUT = IN[i], IDX = i), each after DELAY[i] ms, sent from a thread;
then a response sender call with only the final flag. execute itself returns after WAIT ms."""

import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delays = pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()
            wait_ms = int(pb_utils.get_input_tensor_by_name(request, "WAIT").as_numpy()[0])
            sender = request.get_response_sender()
            thread = threading.Thread(target=self.respond, args=(sender, values, delays), daemon=True)
            thread.start()
            self.threads.append(thread)
            time.sleep(wait_ms / 1000.0)
        return None

    @staticmethod
    def respond(sender, values, delays):
        for i, value in enumerate(values):
            if i < len(delays):
                time.sleep(int(delays[i]) / 1000.0)
            out = pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))
            idx = pb_utils.Tensor("IDX", np.array([i], dtype=np.uint32))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out, idx]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self.threads:
            thread.join(timeout=5)
