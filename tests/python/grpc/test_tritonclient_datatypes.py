"""Every KServe datatype round-trips through a built-in identity model (one model per datatype, in a
temporary repository), including zero-element tensors, BYTES with empty and non-UTF-8 elements, and BF16.

BF16: tritonclient 2.73.0 maps BF16 to `ml_dtypes.bfloat16` (a dependency of tritonclient), so
`InferInput(..., "BF16").set_data_from_numpy(np.array(..., dtype=ml_dtypes.bfloat16))` works and
`as_numpy` returns a bfloat16 array; no raw-content tricks are needed. The tests also compare the raw
uint16 bit patterns.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import serialize_byte_tensor

from helpers import finish_server, identity_config, start_server, write_model

# KServe datatype -> (config.pbtxt TYPE_*, numpy dtype)
DATATYPES = {
    "BOOL": ("TYPE_BOOL", np.bool_),
    "UINT8": ("TYPE_UINT8", np.uint8),
    "UINT16": ("TYPE_UINT16", np.uint16),
    "UINT32": ("TYPE_UINT32", np.uint32),
    "UINT64": ("TYPE_UINT64", np.uint64),
    "INT8": ("TYPE_INT8", np.int8),
    "INT16": ("TYPE_INT16", np.int16),
    "INT32": ("TYPE_INT32", np.int32),
    "INT64": ("TYPE_INT64", np.int64),
    "FP16": ("TYPE_FP16", np.float16),
    "BF16": ("TYPE_BF16", ml_dtypes.bfloat16),
    "FP32": ("TYPE_FP32", np.float32),
    "FP64": ("TYPE_FP64", np.float64),
    "BYTES": ("TYPE_STRING", np.object_),
}


def model_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


@pytest.fixture(scope="module")
def dtype_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dtype_models")
    for datatype, (config_type, _) in DATATYPES.items():
        write_model(repo, model_name(datatype), identity_config(model_name(datatype), config_type, dims="[ -1, -1 ]"))
    server = start_server("--model-repository", str(repo))
    yield server
    finish_server(server)


@pytest.fixture
def dclient(dtype_server):
    c = grpcclient.InferenceServerClient(url=dtype_server.url)
    yield c
    c.close()


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic values that include each type's extremes."""
    count = int(np.prod(shape))
    _, dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        values = np.array([(i % 3) == 0 for i in range(count)], dtype=np.bool_)
    elif datatype == "BYTES":
        pool = [b"", b"hello", "h\u00e9llo w\u00f6rld".encode(), b"\xff\xfe\x00\x80", b"\x00", b"x" * 300]
        values = np.array([pool[i % len(pool)] for i in range(count)], dtype=np.object_)
    elif np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        pool = [info.min, info.max, 0, 1, info.max // 3]
        values = np.array([pool[i % len(pool)] for i in range(count)], dtype=dtype)
    else:
        pool = [0.0, -1.5, 3.25, 65504.0 if datatype == "FP16" else 1e30, -0.0, float("inf")]
        values = np.array([pool[i % len(pool)] for i in range(count)], dtype=dtype)
    return values.reshape(shape)


def infer(client, datatype: str, data: np.ndarray):
    tensor = grpcclient.InferInput("INPUT0", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return client.infer(model_name(datatype), [tensor])


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_metadata_datatype(dclient, datatype):
    metadata = dclient.get_model_metadata(model_name(datatype))
    assert [(t.datatype, list(t.shape)) for t in metadata.inputs] == [(datatype, [-1, -1])]
    assert [(t.datatype, list(t.shape)) for t in metadata.outputs] == [(datatype, [-1, -1])]


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_round_trip(dclient, datatype):
    data = sample(datatype, (2, 3))
    result = infer(dclient, datatype, data)
    response = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("OUTPUT0", datatype, [2, 3])]
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (2, 3)
    if datatype == "BYTES":
        assert out.tolist() == data.tolist()
        # Raw output uses the 4-byte little-endian length prefix per element.
        assert response.raw_output_contents[0] == serialize_byte_tensor(data).item()
    else:
        assert out.dtype == data.dtype
        assert response.raw_output_contents[0] == data.tobytes()
        np.testing.assert_array_equal(out.view(np.uint8), data.view(np.uint8))


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_zero_element_tensor(dclient, datatype):
    data = sample(datatype, (0, 3))
    result = infer(dclient, datatype, data)
    response = result.get_response()
    assert [(o.datatype, list(o.shape)) for o in response.outputs] == [(datatype, [0, 3])]
    assert len(response.raw_output_contents) == 1 and response.raw_output_contents[0] == b""
    assert result.as_numpy("OUTPUT0").shape == (0, 3)


def test_bf16_bit_patterns(dclient):
    bits = np.array([[0x0000, 0x3F80, 0xBF80], [0x7F80, 0x4049, 0x0001]], dtype=np.uint16)  # 0, 1, -1, inf, ~3.14, tiny
    data = bits.view(ml_dtypes.bfloat16)
    out = infer(dclient, "BF16", data).as_numpy("OUTPUT0")
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(out.view(np.uint16), bits)


def test_fp16_nan_bit_pattern_preserved(dclient):
    bits = np.array([[0x7E00, 0xFC00, 0x3C00]], dtype=np.uint16)  # NaN, -inf, 1.0
    out = infer(dclient, "FP16", bits.view(np.float16)).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out.view(np.uint16), bits)


def test_bytes_all_empty_elements(dclient):
    data = np.array([[b"", b"", b""]], dtype=np.object_)
    out = infer(dclient, "BYTES", data).as_numpy("OUTPUT0")
    assert out.tolist() == [[b"", b"", b""]]


def test_bool_values(dclient):
    data = np.array([[True, False, True], [False, False, True]])
    result = infer(dclient, "BOOL", data)
    assert result.get_response().raw_output_contents[0] == bytes([1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)


def test_large_fp32_tensor(dclient):
    # 8 MiB: above tonic's default 4 MiB decode limit, which a compatible server must lift (§2.15).
    data = np.arange(2 * 1024 * 1024, dtype=np.float32).reshape(2, -1)
    out = infer(dclient, "FP32", data).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, data)
