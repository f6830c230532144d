"""System shared memory over HTTP (tritonclient.http): register / status / unregister, inputs and outputs in POSIX
shm regions next to JSON and binary tensors, and the errors, each with the HTTP status and message the same call
gets over gRPC. Mirrors test_tritonclient_shm.py; the wire forms were recorded from Triton 2.51.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from http_helpers import add_sub_data, http_address, same_error_both_ways, tensor

TENSOR_BYTES = 16 * 4  # add_sub: INT32[16]


@pytest.fixture
def hclient(tritium):
    c = httpclient.InferenceServerClient(url=http_address(tritium))
    yield c
    c.close()


@pytest.fixture
def regions(hclient):
    """Factory creating uniquely named shm regions; destroys them and unregisters everything afterwards."""
    created = []

    def create(byte_size: int):
        tag = uuid.uuid4().hex[:12]
        name, key = f"hregion_{tag}", f"/tritium_http_{os.getpid()}_{tag}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        created.append((name, handle))
        return name, key, handle

    yield create
    for name, _ in created:
        hclient.unregister_system_shared_memory(name)
    for _, handle in created:
        shm.destroy_shared_memory_region(handle)


def test_shm_inputs_and_outputs(hclient, regions):
    a, b = add_sub_data()
    in_name, in_key, in_handle = regions(2 * TENSOR_BYTES)
    out_name, out_key, out_handle = regions(2 * TENSOR_BYTES)
    shm.set_shared_memory_region(in_handle, [a, b])
    hclient.register_system_shared_memory(in_name, in_key, 2 * TENSOR_BYTES)
    hclient.register_system_shared_memory(out_name, out_key, 2 * TENSOR_BYTES)
    inputs = [httpclient.InferInput("INPUT0", [16], "INT32"), httpclient.InferInput("INPUT1", [16], "INT32")]
    inputs[0].set_shared_memory(in_name, TENSOR_BYTES)
    inputs[1].set_shared_memory(in_name, TENSOR_BYTES, offset=TENSOR_BYTES)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0"), httpclient.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory(out_name, TENSOR_BYTES)
    outputs[1].set_shared_memory(out_name, TENSOR_BYTES, offset=TENSOR_BYTES)

    result = hclient.infer("add_sub", inputs, outputs=outputs, request_id="shm")
    response = result.get_response()
    assert response["id"] == "shm"
    # Triton 2.51 answers an output written to shm with its name, datatype and shape only: no data, no parameters.
    assert response["outputs"] == [
        {"name": "OUTPUT0", "datatype": "INT32", "shape": [16]},
        {"name": "OUTPUT1", "datatype": "INT32", "shape": [16]},
    ]
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.int32, [16], offset=TENSOR_BYTES), a - b)


def test_shm_mixed_with_json_and_binary(hclient, regions):
    a, b = add_sub_data()
    name, key, handle = regions(TENSOR_BYTES)
    shm.set_shared_memory_region(handle, [b])
    hclient.register_system_shared_memory(name, key, TENSOR_BYTES)
    in_shm = httpclient.InferInput("INPUT1", [16], "INT32")
    in_shm.set_shared_memory(name, TENSOR_BYTES)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False), httpclient.InferRequestedOutput("OUTPUT1")]
    for binary in (False, True):
        result = hclient.infer("add_sub", [tensor("INPUT0", a, "INT32", binary), in_shm], outputs=outputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_shm_status_and_unregister(hclient, regions):
    # Triton 2.51 maps a region at its offset: a non-page-aligned one (64) fails with 400
    # "...: unable to process address spaceInvalid argument", so the offset here is a page.
    first, first_key, _ = regions(128)
    second, second_key, _ = regions(8192)
    hclient.register_system_shared_memory(first, first_key, 128)
    hclient.register_system_shared_memory(second, second_key, 192, offset=4096)
    status = {r["name"]: r for r in hclient.get_system_shared_memory_status()}
    assert {first, second} <= set(status)
    # JSON numbers here; gRPC's as_json gives the same fields as strings.
    assert (status[first]["key"], status[first]["offset"], status[first]["byte_size"]) == (first_key, 0, 128)
    assert (status[second]["key"], status[second]["offset"], status[second]["byte_size"]) == (second_key, 4096, 192)
    assert [r["name"] for r in hclient.get_system_shared_memory_status(first)] == [first]
    hclient.unregister_system_shared_memory(first)
    remaining = {r["name"] for r in hclient.get_system_shared_memory_status()}
    assert first not in remaining and second in remaining
    hclient.unregister_system_shared_memory()
    assert not {first, second} & {r["name"] for r in hclient.get_system_shared_memory_status()}
    hclient.unregister_system_shared_memory("never_registered")  # OK


def test_shm_errors_match_grpc(hclient, client, regions):
    name, key, _ = regions(128)
    hclient.register_system_shared_memory(name, key, 128)
    # Same name again: ALREADY_EXISTS, "shared memory region '<name>' already in manager".
    same_error_both_ways(
        hclient, lambda: hclient.register_system_shared_memory(name, key, 128),
        lambda: client.register_system_shared_memory(name, key, 128), 400, "already in manager",
    )
    missing = f"/tritium_missing_{uuid.uuid4().hex}"
    same_error_both_ways(
        hclient, lambda: hclient.register_system_shared_memory("bad_key", missing, 64),
        lambda: client.register_system_shared_memory("bad_key", missing, 64), 500, "Unable to open shared memory region",
    )
    # Larger than the segment: INVALID_ARGUMENT (HTTP 400) "...: invalid args", as Triton 2.51, then why.
    big, big_key, _ = regions(64)
    same_error_both_ways(
        hclient, lambda: hclient.register_system_shared_memory(big, big_key, 4096),
        lambda: client.register_system_shared_memory(big, big_key, 4096), 400,
        f"failed to register shared memory region '{big}': invalid args",
    )

    def both(make_input, make_output=None):
        def call(module, c):
            inputs = make_input(module)
            outputs = make_output(module) if make_output else None
            return lambda: c.infer("add_sub" if len(inputs) == 2 else "identity", inputs, outputs=outputs)
        return call(httpclient, hclient), call(grpcclient, client)

    def unregistered(module):
        t = module.InferInput("INPUT0", [4], "FP32")
        t.set_shared_memory("not_registered_region", 16)
        return [t]

    same_error_both_ways(hclient, *both(unregistered), 404, "not_registered_region")

    def out_of_bounds(module):
        t = module.InferInput("INPUT0", [16], "FP32")
        t.set_shared_memory(name, 64, offset=96)
        return [t]

    same_error_both_ways(hclient, *both(out_of_bounds), 400, "Invalid offset + byte size for shared memory region")

    a, b = add_sub_data()

    def raw_inputs(module):
        pair = [module.InferInput("INPUT0", [16], "INT32"), module.InferInput("INPUT1", [16], "INT32")]
        pair[0].set_data_from_numpy(a)
        pair[1].set_data_from_numpy(b)
        return pair

    def small_output(module):
        out = module.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(name, 16)
        return [out]

    same_error_both_ways(hclient, *both(raw_inputs, small_output), 500, "should be at least 64 bytes")
