"""A model that is not decoupled answering through its requests' response senders (the python backend allows it
since 24.06: one response per request, with the final flag on it or after it). MODE picks how:
send_final, send_then_final, final_only, send_and_return, send_twice, return_list_of_none, is_cancelled (answers
OUT = [sender.is_cancelled()], returned as a list), send_from_thread (sends from another thread after execute
returned None)."""

import threading

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def response(value):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))])


class TritonPythonModel:
    def execute(self, requests):
        returned = []
        for request in requests:
            mode = pb_utils.get_input_tensor_by_name(request, "MODE").as_numpy()[0].decode()
            sender = request.get_response_sender()
            if mode == "send_final":
                sender.send(response(1), flags=FINAL)
            elif mode == "send_then_final":
                sender.send(response(2))
                sender.send(flags=FINAL)
            elif mode == "final_only":
                sender.send(flags=FINAL)
            elif mode == "send_and_return":
                sender.send(response(3), flags=FINAL)
                returned.append(response(4))
            elif mode == "send_twice":
                sender.send(response(5))
                sender.send(response(6), flags=FINAL)
            elif mode == "return_list_of_none":
                sender.send(response(7), flags=FINAL)
                returned.append(None)
            elif mode == "is_cancelled":
                returned.append(response(int(sender.is_cancelled())))
            elif mode == "send_from_thread":
                threading.Thread(target=lambda s=sender: s.send(response(8), flags=FINAL)).start()
        return returned or None
