"""A tensor-input Dynamo worker written on Dynamo's own Python API, registered as `dynamo.triton`
registers Triton's models (`ModelInput.Tensor`, `ModelType.TensorBased`, Triton's ModelConfig as
protobuf bytes in `tensor_model_config`), with a handler reading and answering Dynamo's tensor
protocol as `dynamo.triton`'s does. The model adds and subtracts: INPUT0 and INPUT1 (FP32 [4]) give
OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, and NOTE (BYTES [1]) says how many values
it summed; only the outputs a request names are answered.

Usage: python tensor_worker.py MODEL_NAME CONFIG_HEX
(CONFIG_HEX: the serialized ModelConfig, made by the test with tritonclient's protobuf classes;
discovery and planes from Dynamo's own variables)."""

import argparse
import asyncio
import os

import uvloop
from dynamo.llm import ModelInput, ModelType, WorkerType, register_model
from dynamo.runtime import DistributedRuntime, dynamo_worker


def tensor(name: str, data_type: str, shape: list[int], values: list) -> dict:
    return {"metadata": {"name": name, "data_type": data_type, "shape": shape}, "data": {"data_type": data_type, "values": values}}


async def add_sub(request, context=None):
    inputs = {t["metadata"]["name"]: t["data"]["values"] for t in request["tensors"]}
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    answers = [
        tensor("OUTPUT0", "Float32", [len(a)], [x + y for x, y in zip(a, b)]),
        tensor("OUTPUT1", "Float32", [len(a)], [x - y for x, y in zip(a, b)]),
        tensor("NOTE", "Bytes", [1], [list(f"summed {len(a)}".encode())]),
    ]
    wanted = {output["name"] for output in request.get("outputs") or []}
    yield {"id": request.get("id"), "model": request["model"], "tensors": [t for t in answers if not wanted or t["metadata"]["name"] in wanted]}


@dynamo_worker()
async def main(runtime: DistributedRuntime, args):
    namespace = os.environ.get("DYN_NAMESPACE", "dynamo")
    endpoint = runtime.endpoint(f"{namespace}.tensor.generate")
    config = {"name": "", "inputs": [], "outputs": [], "triton_model_config": bytes.fromhex(args.config_hex)}
    await register_model(
        ModelInput.Tensor, ModelType.TensorBased, endpoint, args.model_name, worker_type=WorkerType.Aggregated, tensor_model_config=config
    )
    await endpoint.serve_endpoint(add_sub)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model_name")
    parser.add_argument("config_hex")
    uvloop.install()
    asyncio.run(main(parser.parse_args()))
