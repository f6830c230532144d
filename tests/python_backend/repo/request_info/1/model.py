"""Answers with what the backend told it about the request and the model, each as its own output. Strings are JSON
(CORRELATION_ID keeps the int/str distinction; requested_output_names() is a set, sent sorted). Every output is
returned; the server drops those not asked for."""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def text(value):
    return np.array([value.encode()], dtype=np.object_)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.args = json.dumps(
            {
                "keys": sorted(args),
                "model_name": args["model_name"],
                "model_version": args["model_version"],
                "model_instance_kind": args["model_instance_kind"],
                "model_instance_name": args["model_instance_name"],
                "model_instance_device_id": args["model_instance_device_id"],
                "model_repository": os.path.basename(args["model_repository"].rstrip("/")),
            },
            sort_keys=True,
        )
        self.config_keys = json.dumps(sorted(config))
        self.input_config = json.dumps(pb_utils.get_input_config_by_name(config, "INPUT0"), sort_keys=True)
        self.output_config = json.dumps(pb_utils.get_output_config_by_name(config, "FLAGS"), sort_keys=True)

    def execute(self, requests):
        out = []
        for request in requests:
            tensors = {
                "REQUEST_ID": text(request.request_id()),
                "CORRELATION_ID": text(json.dumps(request.correlation_id())),
                "FLAGS": np.array([request.flags()], dtype=np.uint32),
                "TIMEOUT": np.array([request.timeout()], dtype=np.uint64),
                "PARAMETERS": text(request.parameters()),
                "REQUESTED_OUTPUTS": text(json.dumps(sorted(request.requested_output_names()))),
                "ARGS": text(self.args),
                "CONFIG_KEYS": text(self.config_keys),
                "INPUT_CONFIG": text(self.input_config),
                "OUTPUT_CONFIG": text(self.output_config),
            }
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in tensors.items()]))
        return out
