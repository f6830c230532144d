"""System shared memory end to end with tritonclient.utils.shared_memory: inputs AND outputs in POSIX shm
regions registered with the server, plus status, unregister and Triton's error codes (kserve-triton.md §0.9).
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from helpers import expect_error

TENSOR_BYTES = 16 * 4  # add_sub: INT32[16]


@pytest.fixture
def regions(client):
    """Factory creating uniquely named shm regions; destroys them and unregisters everything afterwards."""
    created = []

    def create(byte_size: int):
        tag = uuid.uuid4().hex[:12]
        name, key = f"region_{tag}", f"/tritium_test_{os.getpid()}_{tag}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        created.append((name, handle))
        return name, key, handle

    yield create
    for name, _ in created:
        client.unregister_system_shared_memory(name)
    for _, handle in created:
        shm.destroy_shared_memory_region(handle)


def add_sub_data():
    a = np.arange(16, dtype=np.int32) * 3
    b = np.arange(16, dtype=np.int32) - 8
    return a, b


def test_inputs_and_outputs_in_shared_memory(client, regions):
    a, b = add_sub_data()
    in_name, in_key, in_handle = regions(2 * TENSOR_BYTES)
    out_name, out_key, out_handle = regions(2 * TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a, b])
    client.register_system_shared_memory(in_name, in_key, 2 * TENSOR_BYTES)
    client.register_system_shared_memory(out_name, out_key, 2 * TENSOR_BYTES)

    inputs = [grpcclient.InferInput("INPUT0", [16], "INT32"), grpcclient.InferInput("INPUT1", [16], "INT32")]
    inputs[0].set_shared_memory(in_name, TENSOR_BYTES)
    inputs[1].set_shared_memory(in_name, TENSOR_BYTES, offset=TENSOR_BYTES)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(out_name, TENSOR_BYTES)
    outputs[1].set_shared_memory(out_name, TENSOR_BYTES, offset=TENSOR_BYTES)

    response = client.infer("add_sub", inputs, outputs=outputs, request_id="shm").get_response()
    assert response.id == "shm"
    # Outputs written to shm still carry their metadata plus an empty raw entry (§0.9).
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "INT32", [16]),
        ("OUTPUT1", "INT32", [16]),
    ]
    assert list(response.raw_output_contents) == [b"", b""]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [16], offset=TENSOR_BYTES), a - b)


def test_mixed_shm_and_raw_inputs(client, regions):
    # Only INPUT1 in shm: the raw list then holds one entry for two inputs (§2.1).
    a, b = add_sub_data()
    name, key, handle = regions(TENSOR_BYTES)
    shm.set_shared_memory_region(handle, [b])
    client.register_system_shared_memory(name, key, TENSOR_BYTES)
    raw = grpcclient.InferInput("INPUT0", [16], "INT32")
    raw.set_data_from_numpy(a)
    in_shm = grpcclient.InferInput("INPUT1", [16], "INT32")
    in_shm.set_shared_memory(name, TENSOR_BYTES)
    result = client.infer("add_sub", [raw, in_shm])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_region_registered_with_offset(client, regions):
    data = np.linspace(0, 1, 8, dtype=np.float32)
    name, key, handle = regions(256)
    shm.set_shared_memory_region(handle, [data], offset=64)
    client.register_system_shared_memory(name, key, 128, offset=64)
    tensor = grpcclient.InferInput("INPUT0", [8], "FP32")
    tensor.set_shared_memory(name, data.nbytes)
    np.testing.assert_array_equal(client.infer("identity", [tensor]).as_numpy("OUTPUT0"), data)


def test_status_and_unregister(client, regions):
    first, first_key, _ = regions(128)
    second, second_key, _ = regions(256)
    client.register_system_shared_memory(first, first_key, 128)
    client.register_system_shared_memory(second, second_key, 192, offset=64)

    status = client.get_system_shared_memory_status().regions
    assert {first, second} <= set(status)
    assert (status[first].name, status[first].key, status[first].offset, status[first].byte_size) == (
        first, first_key, 0, 128,
    )
    assert (status[second].key, status[second].offset, status[second].byte_size) == (second_key, 64, 192)

    only = client.get_system_shared_memory_status(first).regions
    assert list(only) == [first]

    client.unregister_system_shared_memory(first)
    assert first not in client.get_system_shared_memory_status().regions
    assert second in client.get_system_shared_memory_status().regions

    as_json = client.get_system_shared_memory_status(as_json=True)
    assert second in as_json["regions"]


def test_unregister_all(client, regions):
    names = []
    for _ in range(2):
        name, key, _ = regions(64)
        client.register_system_shared_memory(name, key, 64)
        names.append(name)
    client.unregister_system_shared_memory()
    remaining = client.get_system_shared_memory_status().regions
    assert not set(names) & set(remaining)


def test_unregister_unknown_region_is_ok(client):
    client.unregister_system_shared_memory("never_registered")


def test_duplicate_region_name(client, regions):
    name, key, _ = regions(64)
    client.register_system_shared_memory(name, key, 64)
    expect_error("ALREADY_EXISTS", "", client.register_system_shared_memory, name, key, 64)


def test_register_bad_key(client):
    expect_error("INTERNAL", "", client.register_system_shared_memory, "bad_key", f"/tritium_missing_{uuid.uuid4().hex}", 64)


def test_register_larger_than_segment(client, regions):
    name, key, _ = regions(64)
    # Triton 2.51: INVALID_ARGUMENT "failed to register shared memory region '<name>': invalid args".
    expect_error("INVALID_ARGUMENT", f"failed to register shared memory region '{name}': invalid args",
                 client.register_system_shared_memory, name, key, 4096)  # fmt: skip


def test_infer_with_unregistered_region(client):
    tensor = grpcclient.InferInput("INPUT0", [4], "FP32")
    tensor.set_shared_memory("not_registered_region", 16)
    expect_error("NOT_FOUND", "", client.infer, "identity", [tensor])


def test_input_out_of_region_bounds(client, regions):
    name, key, _ = regions(64)
    client.register_system_shared_memory(name, key, 64)
    tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
    tensor.set_shared_memory(name, 64, offset=32)
    expect_error("INVALID_ARGUMENT", "", client.infer, "identity", [tensor])


def test_output_region_too_small(client, regions):
    a, b = add_sub_data()
    name, key, _ = regions(16)
    client.register_system_shared_memory(name, key, 16)
    inputs = []
    for input_name, data in (("INPUT0", a), ("INPUT1", b)):
        tensor = grpcclient.InferInput(input_name, [16], "INT32")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    output = grpcclient.InferRequestedOutput("OUTPUT0")
    output.set_shared_memory(name, 16)
    expect_error("INTERNAL", "should be at least 64 bytes", client.infer, "add_sub", inputs, outputs=[output])
