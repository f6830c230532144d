"""Decoupled behaviour and misbehaviour, picked by MODE; everything is sent from execute itself. `last_error`
answers with the text of the exception the previous `send_after_final_caught` request caught."""

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def value(n, **kwargs):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([n], dtype=np.int32))], **kwargs)


class TritonPythonModel:
    def initialize(self, args):
        self.last_error = "none"

    def execute(self, requests):
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            result = self.run(mode, request.get_response_sender())
            if result is not None:
                return result
        return None

    def run(self, mode, sender):
        if mode == "two_then_final":
            sender.send(value(1))
            sender.send(value(2))
            sender.send(flags=FINAL)
        elif mode == "with_final":
            sender.send(value(1))
            sender.send(value(2), flags=FINAL)
        elif mode == "zero":
            sender.send(flags=FINAL)
        elif mode == "error_then_final":
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("decoupled custom")))
            sender.send(flags=FINAL)
        elif mode == "error_with_final":
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("decoupled final")), flags=FINAL)
        elif mode == "value_error_value_final":
            sender.send(value(1))
            error = pb_utils.TritonError("in between", pb_utils.TritonError.NOT_FOUND)
            sender.send(pb_utils.InferenceResponse(error=error))
            sender.send(value(2))
            sender.send(flags=FINAL)
        elif mode == "params":
            sender.send(value(1, parameters={"s": "x", "i": 7, "b": True}))
            sender.send(value(2, parameters={"triton_final_response": "user"}), flags=FINAL)
        elif mode == "raise":
            raise Exception("decoupled boom")
        elif mode == "raise_after_send":
            sender.send(value(1))
            raise pb_utils.TritonModelException("after one")
        elif mode == "raise_after_final":
            sender.send(value(1), flags=FINAL)
            raise Exception("after final")
        elif mode == "return_list":
            return [value(1)]
        elif mode == "return_list_after_final":
            sender.send(value(1), flags=FINAL)
            return [value(2)]
        elif mode == "send_after_final":
            sender.send(value(1), flags=FINAL)
            sender.send(value(2))
        elif mode == "send_after_final_caught":
            sender.send(value(1), flags=FINAL)
            try:
                sender.send(value(2))
                self.last_error = "no exception"
            except Exception as e:  # what the stub raises is the point
                self.last_error = f"{type(e).__name__}: {e}"
        elif mode == "last_error":
            text = np.array([self.last_error.encode()], dtype=np.object_)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text)]), flags=FINAL)
        elif mode == "no_final":
            sender.send(value(1))
        elif mode == "unknown_output":
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("NOPE", np.array([1], dtype=np.int32))]))
            sender.send(flags=FINAL)
        elif mode == "wrong_dtype":
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([1.5], dtype=np.float32))]))
            sender.send(flags=FINAL)
        else:
            raise Exception(f"unknown mode {mode!r}")
        return None
