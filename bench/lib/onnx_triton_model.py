"""The model.py that bench/onnx.py writes into Triton's model repositories: Triton 2.51 (nvidia-pytriton) has no
onnxruntime backend, so its python backend serves the same model.onnx through an onnxruntime.InferenceSession;
`TRITON_MODEL_PY_BATCHED` is the one for the dynamic_batching repository, which stacks the requests it is handed."""


TRITON_MODEL_PY = '''"""Triton python backend: an ONNX model through onnxruntime (bench/onnx.py writes this file)."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        # ONNX Runtime's default session options, as Tritium's onnxruntime backend uses when the config sets none.
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            values = self.session.run(self.outputs, feeds)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in zip(self.outputs, values)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


TRITON_MODEL_PY_BATCHED = '''"""Triton python backend with dynamic_batching: an ONNX model through onnxruntime (bench/onnx.py writes this
file). Triton's dynamic batcher hands execute() several requests; the python backend does not stack them, so this
model does: inputs concatenated along the batch dim, one session.run, every output split back by request."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        # ONNX Runtime's default session options, as Tritium's onnxruntime backend uses when the config sets none.
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        arrays = {name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.inputs}
        feeds = {name: a[0] if len(a) == 1 else np.concatenate(a) for name, a in arrays.items()}
        rows = [a.shape[0] for a in arrays[self.inputs[0]]]
        values = self.session.run(self.outputs, feeds)
        bounds = np.cumsum(rows)[:-1]
        parts = [np.split(value, bounds) for value in values]
        responses = []
        for i in range(len(requests)):
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(p[i])) for name, p in zip(self.outputs, parts)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''
