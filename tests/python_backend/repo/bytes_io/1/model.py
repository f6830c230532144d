"""BYTES in and out, and a DLPack round trip.
TEXT_OUT: each TEXT element reversed (object array of the config's numpy type); LENGTHS: their byte lengths;
FIXED: a fixed-width np.bytes_ array; NUM_OUT: NUM * 2 after Tensor.to_dlpack -> Tensor.from_dlpack;
INFO: JSON with the input tensors' is_cpu(), numpy dtypes and the config's numpy type for TEXT_OUT."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        text_config = pb_utils.get_output_config_by_name(config, "TEXT_OUT")
        self.text_dtype = pb_utils.triton_string_to_numpy(text_config["data_type"])

    def execute(self, requests):
        out = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT")
            num = pb_utils.get_input_tensor_by_name(request, "NUM")
            words = text.as_numpy()
            reversed_words = np.array([w[::-1] for w in words.reshape(-1)], dtype=self.text_dtype).reshape(words.shape)
            lengths = np.array([len(w) for w in words.reshape(-1)], dtype=np.int32).reshape(words.shape)
            round_trip = pb_utils.Tensor.from_dlpack("NUM_OUT", num.to_dlpack())
            doubled = pb_utils.Tensor("NUM_OUT", round_trip.as_numpy() * np.float32(2))
            info = {
                "text_is_cpu": text.is_cpu(),
                "num_is_cpu": num.is_cpu(),
                "round_trip_is_cpu": round_trip.is_cpu(),
                "text_dtype": str(words.dtype),
                "num_dtype": str(num.as_numpy().dtype),
                "config_dtype": np.dtype(self.text_dtype).name,
                "element_types": sorted({type(w).__name__ for w in words.reshape(-1)}),
            }
            tensors = [
                pb_utils.Tensor("TEXT_OUT", reversed_words),
                pb_utils.Tensor("LENGTHS", lengths),
                pb_utils.Tensor("FIXED", np.array([b"a", b"bcd"], dtype=np.bytes_)),
                doubled,
                pb_utils.Tensor("INFO", np.array([json.dumps(info, sort_keys=True).encode()], dtype=np.object_)),
            ]
            out.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return out
