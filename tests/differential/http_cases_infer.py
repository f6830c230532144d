"""/infer and /generate(_stream) cases."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np

from http_cases_common import (
    A, A_BYTES, B, B_BYTES, add_sub_body, add_sub_inputs, binary_infer, infer, one_input, post, tensor,
)  # fmt: skip

_BIN_INPUTS = [tensor("INPUT0", "INT32", [16], binary_data_size=64), tensor("INPUT1", "INT32", [16], binary_data_size=64)]
_FP16 = np.array([1.0, 2.5], dtype=np.float16).tobytes()
_ADD_SUB_JSON = json.dumps({"inputs": add_sub_inputs()}, separators=(",", ":")).encode()
_ADD_SUB_GZIP = gzip.compress(_ADD_SUB_JSON, mtime=0)
_NOT_FINITE = np.array([np.inf, -np.inf, np.nan, 1.5], dtype=np.float32).tobytes()


def _out(name: str, **params) -> dict:
    return {"name": name, "parameters": params} if params else {"name": name}


INFER_CASES: list[dict] = [
    # --- JSON tensors that work
    infer("infer_json_flat", "add_sub", add_sub_body()),
    infer("infer_json_nested", "add_sub", {"inputs": add_sub_inputs(a=[A[:8], A[8:]])},
          note="nested data for a [16] input is flattened"),  # fmt: skip
    infer("infer_json_nested_2d", "identity_batch", one_input("FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])),
    infer("infer_json_nested_other_shape", "identity", one_input("FP32", [6], [[1, 2.5, 3], [4, 5, 6e10]]),
          note="the nesting need not follow the shape; only the element count matters"),  # fmt: skip
    infer("infer_fp32_values", "identity", one_input("FP32", [6], [0.1, 1e-7, 3.4e38, -0.0, 16777217, 1e-45]),
          note="how FP32 outputs are printed (as the double of the float)"),  # fmt: skip
    infer("infer_fp32_integers", "identity", one_input("FP32", [2], [1, -2])),
    infer("infer_zero_elements", "identity", one_input("FP32", [0], [])),
    infer("infer_bytes_json", "identity_bytes", one_input("BYTES", [3], ["hello", "w\u00f6rld", ""])),
    infer("infer_bool_json", "identity_bool", one_input("BOOL", [3], [True, False, True])),
    infer("infer_int64_json", "identity_int64", one_input("INT64", [3], [1, -9007199254740993, 9223372036854775807])),
    infer("infer_request_id", "add_sub", add_sub_body(id="my-request-1")),
    infer("infer_request_id_empty", "add_sub", add_sub_body(id="")),
    infer("infer_parameters_passthrough", "add_sub", add_sub_body(parameters={"custom": "x", "n": 3, "flag": True})),
    infer("infer_parameters_float", "add_sub", add_sub_body(parameters={"x": 1.5})),
    infer("infer_parameters_negative", "add_sub", add_sub_body(parameters={"x": -1})),
    infer("infer_outputs_subset", "add_sub", add_sub_body(outputs=[_out("OUTPUT1")])),
    infer("infer_outputs_duplicate", "add_sub", add_sub_body(outputs=[_out("OUTPUT0"), _out("OUTPUT0")])),
    infer("infer_outputs_empty_list", "add_sub", add_sub_body(outputs=[])),
    infer("infer_version_1", "add_sub/versions/1", add_sub_body()),
    infer("infer_batch_2x3", "identity_batch", one_input("FP32", [2, 3], [1, 2, 3, 4, 5, 6])),
    infer("infer_int32_overflow", "add_sub", {"inputs": add_sub_inputs(a=[2**40] * 16)},
          note="Triton narrows an out-of-range JSON integer"),  # fmt: skip
    infer("infer_int8_json", "identity_int8", one_input("INT8", [3], [-128, 0, 127])),
    infer("infer_uint8_json", "identity_uint8", one_input("UINT8", [2], [0, 255])),
    infer("infer_int8_out_of_range", "identity_int8", one_input("INT8", [4], [200, -200, 1000, 127]),
          note="Triton narrows: -56, 56, -24, 127"),  # fmt: skip
    infer("infer_uint8_out_of_range", "identity_uint8", one_input("UINT8", [3], [256, 300, 255]),
          note="Triton narrows: 0, 44, 255"),  # fmt: skip
    infer("infer_uint8_negative", "identity_uint8", one_input("UINT8", [1], [-1]),
          note="Triton reads an unsigned type as uint64: a negative number is the wrong kind"),  # fmt: skip
    infer("infer_int32_beyond_int64", "add_sub", {"inputs": add_sub_inputs(a=[2**63] * 16)},
          note="Triton reads a signed type as int64: a number past it is the wrong kind"),  # fmt: skip
    # --- data that is not an array; floats that are not finite
    infer("infer_data_scalar", "identity", one_input("FP32", [1], 1.5)),
    infer("infer_data_scalar_bytes", "identity_bytes", one_input("BYTES", [1], "x")),
    infer("infer_data_null", "identity", {"inputs": [tensor("INPUT0", "FP32", [1]) | {"data": None}]}),
    infer("infer_fp32_overflow_inf", "identity", one_input("FP32", [2], [1e39, 3.4e38]),
          note="1e39 is an FP32 infinity; Triton writes it Infinity"),  # fmt: skip
    infer("infer_fp32_overflow_neg_inf", "identity", one_input("FP32", [1], [-1e39])),
    binary_infer("infer_fp32_not_finite_json_out", "identity", {"inputs": [tensor("INPUT0", "FP32", [4], binary_data_size=16)]},
                 [_NOT_FINITE], note="Infinity, -Infinity, NaN"),  # fmt: skip
    # --- BYTES: how many strings, length indicators, bytes that are not UTF-8
    infer("infer_bytes_fewer_strings", "identity_bytes", one_input("BYTES", [3], ["a", "b"]),
          note="Triton counts strings when it validates the request"),  # fmt: skip
    infer("infer_bytes_more_strings", "identity_bytes", one_input("BYTES", [1], ["a", "b", "c"])),
    infer("infer_bytes_fewer_strings_wrong_shape", "identity_bytes", one_input("BYTES", [2, 2], [["a"], ["b"]]),
          note="the shape is checked before the count"),  # fmt: skip
    binary_infer("infer_binary_bytes_length_partial", "identity_bytes", {"inputs": [tensor("INPUT0", "BYTES", [1], binary_data_size=9)]},
                 [b"\x02\x00\x00\x00hiXYZ"], note="a 4-byte length indicator covers 2 bytes; 3 are left, too few for the next"),  # fmt: skip
    binary_infer("infer_binary_bytes_length_missing", "identity_bytes", {"inputs": [tensor("INPUT0", "BYTES", [1], binary_data_size=2)]},
                 [b"hi"], note="no length indicator at all"),  # fmt: skip
    infer("infer_bytes_not_utf8_json", "identity_bytes",
          b'{"inputs":[{"name":"INPUT0","datatype":"BYTES","shape":[1],"data":["a\xff\xfeb"]}]}',
          note="a JSON string holding bytes that are not UTF-8"),  # fmt: skip
    binary_infer("infer_binary_bytes_not_utf8_json_out", "identity_bytes",
                 {"inputs": [tensor("INPUT0", "BYTES", [1], binary_data_size=7)]}, [b"\x03\x00\x00\x00\xff\xfeA"],
                 note="Triton writes the bytes as they are into the JSON answer"),  # fmt: skip
    # --- classification
    infer("infer_classification", "add_sub", add_sub_body(outputs=[_out("OUTPUT0", classification=3)])),
    infer("infer_classification_more_than_elements", "add_sub", add_sub_body(outputs=[_out("OUTPUT0", classification=100)])),
    infer("infer_classification_binary", "add_sub", add_sub_body(outputs=[_out("OUTPUT0", classification=2, binary_data=True)])),
    infer("infer_classification_zero", "add_sub", add_sub_body(outputs=[_out("OUTPUT0", classification=0)])),
    infer("infer_classification_string", "add_sub", add_sub_body(outputs=[_out("OUTPUT0", classification="2")])),
    # classification on a BYTES output is not a case: it kills Triton 2.51 (SIGFPE, divide error).
    # --- binary tensor data extension
    binary_infer("infer_binary_inputs", "add_sub", {"inputs": _BIN_INPUTS}, [A_BYTES, B_BYTES]),
    binary_infer("infer_binary_one_input_binary", "add_sub", {"inputs": [_BIN_INPUTS[0], add_sub_inputs()[1]]}, [A_BYTES]),
    binary_infer("infer_binary_output_per_output", "add_sub",
                 {"inputs": _BIN_INPUTS, "outputs": [_out("OUTPUT0", binary_data=True), _out("OUTPUT1")]}, [A_BYTES, B_BYTES]),  # fmt: skip
    infer("infer_binary_output_request_level", "add_sub", add_sub_body(parameters={"binary_data_output": True})),
    infer("infer_binary_output_request_true_output_false", "add_sub",
          add_sub_body(parameters={"binary_data_output": True}, outputs=[_out("OUTPUT0", binary_data=False), _out("OUTPUT1")]),
          note="an output listed without binary_data is JSON even when the request asks for binary"),  # fmt: skip
    infer("infer_binary_output_request_true_outputs_listed", "add_sub",
          add_sub_body(parameters={"binary_data_output": True}, outputs=[_out("OUTPUT1")])),  # fmt: skip
    infer("infer_binary_output_request_false_output_true", "add_sub",
          add_sub_body(parameters={"binary_data_output": False}, outputs=[_out("OUTPUT1", binary_data=True)])),  # fmt: skip
    infer("infer_binary_output_bytes", "identity_bytes", one_input("BYTES", [2], ["hello", "w\u00f6rld"], parameters={"binary_data_output": True})),
    binary_infer("infer_binary_input_bytes", "identity_bytes", {"inputs": [tensor("INPUT0", "BYTES", [2], binary_data_size=14)]},
                 [b"\x02\x00\x00\x00hi\x04\x00\x00\x00abcd"]),  # fmt: skip
    binary_infer("infer_binary_input_bytes_short", "identity_bytes", {"inputs": [tensor("INPUT0", "BYTES", [2], binary_data_size=6)]},
                 [b"\x02\x00\x00\x00hi"]),  # fmt: skip
    binary_infer("infer_binary_input_bool", "identity_bool", {"inputs": [tensor("INPUT0", "BOOL", [3], binary_data_size=3)]}, [b"\x01\x00\x01"]),
    binary_infer("infer_fp16_binary_roundtrip", "identity_fp16",
                 {"inputs": [tensor("INPUT0", "FP16", [2], binary_data_size=4)], "parameters": {"binary_data_output": True}}, [_FP16]),  # fmt: skip
    binary_infer("infer_fp16_binary_in_json_out", "identity_fp16", {"inputs": [tensor("INPUT0", "FP16", [2], binary_data_size=4)]}, [_FP16],
                 note="fails after the model ran: FP16 cannot be written as JSON"),  # fmt: skip
    infer("infer_fp16_json", "identity_fp16", one_input("FP16", [2], [1.0, 2.5])),
    binary_infer("infer_binary_size_short", "add_sub", {"inputs": _BIN_INPUTS}, [A_BYTES, B_BYTES[:60]]),
    binary_infer("infer_binary_size_extra", "add_sub", {"inputs": _BIN_INPUTS}, [A_BYTES, B_BYTES + b"xx"]),
    binary_infer("infer_binary_size_string", "identity", {"inputs": [tensor("INPUT0", "FP32", [1], binary_data_size="4")]}, [bytes(4)]),
    infer("infer_binary_size_without_binary", "identity", {"inputs": [tensor("INPUT0", "FP32", [1], binary_data_size=4)]}),
    binary_infer("infer_header_length_larger_than_body", "add_sub", {"inputs": _BIN_INPUTS}, [A_BYTES, B_BYTES],
                 headers={"Inference-Header-Content-Length": "100000"}),  # fmt: skip
    infer("infer_header_length_negative", "add_sub", add_sub_body(), headers={"Inference-Header-Content-Length": "-5"}),
    infer("infer_header_length_not_a_number", "add_sub", add_sub_body(), headers={"Inference-Header-Content-Length": "abc"}),
    binary_infer("infer_binary_huge_shape", "identity", {"inputs": [tensor("INPUT0", "FP32", [1000000000], binary_data_size=4)]}, [bytes(4)]),
    # --- raw binary requests (Inference-Header-Content-Length: 0: the body is the one input's bytes)
    infer("infer_raw_identity", "identity", np.arange(4, dtype=np.float32).tobytes(), headers={"Inference-Header-Content-Length": "0"}),
    infer("infer_raw_identity_batch", "identity_batch", bytes(8), headers={"Inference-Header-Content-Length": "0"}),
    infer("infer_raw_wrong_size", "identity", bytes(5), headers={"Inference-Header-Content-Length": "0"}),
    infer("infer_raw_bytes_model", "identity_bytes", b"\x05\x00\x00\x00hello", headers={"Inference-Header-Content-Length": "0"}),
    infer("infer_raw_two_inputs", "add_sub", bytes(128), headers={"Inference-Header-Content-Length": "0"}),
    infer("infer_raw_json_body", "identity", one_input("FP32", [1], [1]), headers={"Inference-Header-Content-Length": "0"},
          note="a JSON body with header length 0 is taken as raw bytes"),  # fmt: skip
    infer("infer_raw_accept_gzip", "identity", bytes(8), headers={"Inference-Header-Content-Length": "0", "Accept-Encoding": "gzip"}),
    # --- compression
    infer("infer_gzip_body", "add_sub", add_sub_body(), encode="gzip"),
    infer("infer_deflate_body", "add_sub", add_sub_body(), encode="deflate"),
    binary_infer("infer_gzip_binary_body", "add_sub", {"inputs": [_BIN_INPUTS[0], add_sub_inputs()[1]]}, [A_BYTES], encode="gzip"),
    infer("infer_gzip_corrupt_body", "add_sub", b"not gzip at all", headers={"Content-Encoding": "gzip"}),
    infer("infer_gzip_corrupt_body_one_input", "identity", b"not gzip at all", headers={"Content-Encoding": "gzip"},
          note="Triton reads it as an empty raw request and runs the model on no data"),  # fmt: skip
    infer("infer_gzip_truncated_body", "add_sub", _ADD_SUB_GZIP[:40], headers={"Content-Encoding": "gzip"}),
    infer("infer_gzip_without_trailer", "add_sub", _ADD_SUB_GZIP[:-8], headers={"Content-Encoding": "gzip"},
          note="the deflate data whole, the CRC and length trailer cut off"),  # fmt: skip
    infer("infer_content_encoding_gzip_upper", "add_sub", _ADD_SUB_GZIP, headers={"Content-Encoding": "GZIP"}),
    infer("infer_content_encoding_deflate_upper", "add_sub", zlib.compress(_ADD_SUB_JSON), headers={"Content-Encoding": "DEFLATE"}),
    infer("infer_content_encoding_br", "add_sub", add_sub_body(), headers={"Content-Encoding": "br"}),
    infer("infer_content_encoding_identity", "add_sub", add_sub_body(), headers={"Content-Encoding": "identity"}),
    infer("infer_accept_gzip", "add_sub", add_sub_body(), headers={"Accept-Encoding": "gzip"}),
    infer("infer_accept_deflate", "add_sub", add_sub_body(), headers={"Accept-Encoding": "deflate"}),
    infer("infer_accept_gzip_deflate", "add_sub", add_sub_body(), headers={"Accept-Encoding": "gzip, deflate"}),
    infer("infer_accept_deflate_gzip", "add_sub", add_sub_body(), headers={"Accept-Encoding": "deflate, gzip"}),
    infer("infer_accept_br", "add_sub", add_sub_body(), headers={"Accept-Encoding": "br"}),
    infer("infer_accept_star", "add_sub", add_sub_body(), headers={"Accept-Encoding": "*"}),
    infer("infer_accept_gzip_q0", "add_sub", add_sub_body(), headers={"Accept-Encoding": "gzip;q=0"}),
    infer("infer_accept_gzip_binary_output", "add_sub", add_sub_body(parameters={"binary_data_output": True}),
          headers={"Accept-Encoding": "gzip"}),  # fmt: skip
    infer("infer_accept_gzip_error", "nope", add_sub_body(), headers={"Accept-Encoding": "gzip"}),
    {"id": "metadata_accept_gzip", "method": "GET", "path": "/v2/models/add_sub", "headers": {"Accept-Encoding": "gzip"},
     "allow": [("platform", "ignore", "python backend name")]},  # fmt: skip
    # --- errors: model, version, route, method
    infer("infer_unknown_model", "nope", add_sub_body()),
    infer("infer_unknown_version", "add_sub/versions/2", add_sub_body()),
    infer("infer_version_abc", "add_sub/versions/abc", add_sub_body()),
    {"id": "infer_get", "method": "GET", "path": "/v2/models/add_sub/infer"},
    {"id": "infer_put", "method": "PUT", "path": "/v2/models/add_sub/infer", "body": add_sub_body()},
    # --- errors: inputs and outputs
    infer("infer_unknown_input", "add_sub", {"inputs": [add_sub_inputs()[0], tensor("X", "INT32", [16], B)]}),
    infer("infer_extra_input", "add_sub", {"inputs": add_sub_inputs() + [tensor("X", "INT32", [1], [1])]}),
    infer("infer_missing_input", "add_sub", {"inputs": add_sub_inputs()[:1]}),
    infer("infer_duplicate_input", "add_sub", {"inputs": add_sub_inputs() + add_sub_inputs()[:1]}),
    infer("infer_no_inputs", "add_sub", {"inputs": []}),
    infer("infer_unknown_output", "add_sub", add_sub_body(outputs=[_out("NOPE")])),
    infer("infer_wrong_datatype", "add_sub", {"inputs": [tensor("INPUT0", "FP32", [16], A), add_sub_inputs()[1]]}),
    infer("infer_invalid_datatype", "identity", one_input("FP33", [1], [1])),
    infer("infer_wrong_shape", "add_sub", {"inputs": [tensor("INPUT0", "INT32", [2, 8], A), add_sub_inputs()[1]]}),
    infer("infer_wrong_shape_with_id", "add_sub", {"id": "req-7", "inputs": [tensor("INPUT0", "INT32", [2, 8], A), add_sub_inputs()[1]]}),
    infer("infer_wrong_element_count", "add_sub", {"inputs": add_sub_inputs(a=A[:15])}),
    infer("infer_string_in_int32", "add_sub", {"inputs": add_sub_inputs(a=["a"] * 16)}),
    infer("infer_float_in_int32", "add_sub", {"inputs": add_sub_inputs(a=[1.5] * 16)}),
    infer("infer_float_in_int64", "identity_int64", one_input("INT64", [1], [1.0])),
    infer("infer_string_in_fp32", "identity", one_input("FP32", [1], ["1.0"])),
    infer("infer_number_in_bytes", "identity_bytes", one_input("BYTES", [2], [1, 2])),
    infer("infer_int_in_bool", "identity_bool", one_input("BOOL", [2], [1, 0])),
    infer("infer_huge_shape", "identity", one_input("FP32", [1000000000], [1])),
    infer("infer_huge_shape_product", "identity_batch", one_input("FP32", [4294967296, 4294967296], [1])),
    infer("infer_negative_shape", "identity", one_input("FP32", [-1], [1])),
    infer("infer_shape_string", "identity", one_input("FP32", "[1]", [1])),
    infer("infer_shape_element_string", "identity", one_input("FP32", ["1"], [1])),
    infer("infer_batch_too_large", "identity_batch", one_input("FP32", [9, 1], [1] * 9)),
    infer("infer_batch_missing_dim", "identity_batch", one_input("FP32", [3], [1, 2, 3])),
    infer("infer_batch_zero", "identity_batch", one_input("FP32", [0, 3], [])),
    infer("infer_missing_name", "identity", {"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}),
    infer("infer_missing_datatype", "identity", {"inputs": [{"name": "INPUT0", "shape": [1], "data": [1]}]}),
    infer("infer_missing_shape", "identity", {"inputs": [{"name": "INPUT0", "datatype": "FP32", "data": [1]}]}),
    infer("infer_missing_data", "identity", {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1]}]}),
    infer("infer_inputs_not_array", "identity", {"inputs": {"name": "INPUT0"}}),
    infer("infer_body_is_array", "identity", [1, 2]),
    infer("infer_no_inputs_key", "identity", {}),
    infer("infer_request_id_number", "identity", one_input("FP32", [1], [1], id=5)),
    infer("infer_parameters_nested", "identity", one_input("FP32", [1], [1], parameters={"x": {"y": 1}})),
    infer("infer_parameters_not_object", "identity", one_input("FP32", [1], [1], parameters=[1])),
    infer("infer_binary_data_output_not_bool", "add_sub", add_sub_body(parameters={"binary_data_output": 1})),
    infer("infer_binary_data_not_bool", "add_sub", add_sub_body(outputs=[_out("OUTPUT0", binary_data="yes")])),
    # --- malformed bodies
    infer("infer_malformed_json", "add_sub", b'{"inputs": ['),
    infer("infer_empty_body", "add_sub", b""),
    infer("infer_trailing_garbage", "add_sub", _ADD_SUB_JSON + b"garbage"),
    infer("infer_trailing_whitespace", "add_sub", _ADD_SUB_JSON + b" \n"),
    # --- sequence, priority and timeout parameters
    infer("infer_sequence_id_string", "add_sub", add_sub_body(parameters={"sequence_id": "abc"}),
          note="a string sequence id is valid; add_sub has no sequence batcher"),  # fmt: skip
    infer("infer_sequence_id_int_start", "add_sub", add_sub_body(parameters={"sequence_id": 5, "sequence_start": True})),
    infer("infer_sequence_id_bool", "add_sub", add_sub_body(parameters={"sequence_id": True})),
    infer("infer_sequence_id_float", "add_sub", add_sub_body(parameters={"sequence_id": 1.5})),
    infer("infer_sequence_id_negative", "add_sub", add_sub_body(parameters={"sequence_id": -3})),
    infer("infer_sequence_start_int", "add_sub", add_sub_body(parameters={"sequence_start": 1})),
    infer("infer_sequence_end_string", "add_sub", add_sub_body(parameters={"sequence_end": "x"})),
    infer("infer_priority_string", "add_sub", add_sub_body(parameters={"priority": "high"})),
    infer("infer_priority_negative", "add_sub", add_sub_body(parameters={"priority": -1})),
    infer("infer_priority_ok", "add_sub", add_sub_body(parameters={"priority": 1})),
    infer("infer_timeout_string", "add_sub", add_sub_body(parameters={"timeout": "x"})),
    infer("infer_timeout_negative", "add_sub", add_sub_body(parameters={"timeout": -5})),
]


def _gen(case_id: str, model: str, body, stream: bool = False, **kw) -> dict:
    return post(case_id, f"/v2/models/{model}/generate{'_stream' if stream else ''}", body, **kw)


GENERATE_CASES: list[dict] = [
    _gen("generate_add_sub", "add_sub", {"INPUT0": A, "INPUT1": B}),
    _gen("generate_identity_list", "identity", {"INPUT0": [1.5, 2]}),
    _gen("generate_identity_one_element", "identity", {"INPUT0": [1]}, note="a one-element output comes back as a scalar"),
    _gen("generate_identity_scalar", "identity", {"INPUT0": 1.5}),
    _gen("generate_bytes_scalar", "identity_bytes", {"INPUT0": "hi"}),
    _gen("generate_bytes_list", "identity_bytes", {"INPUT0": ["hi", "yo"]}),
    _gen("generate_bool", "identity_bool", {"INPUT0": [True]}),
    _gen("generate_batch_model", "identity_batch", {"INPUT0": [1, 2]}),
    _gen("generate_with_id", "identity", {"INPUT0": [1], "id": "x1"}),
    _gen("generate_extra_keys", "add_sub", {"INPUT0": A, "INPUT1": B, "foo": 1, "binary_data_output": True}),
    _gen("generate_parameters", "add_sub", {"INPUT0": A, "INPUT1": B, "parameters": {"foo": 1}}),
    _gen("generate_version_1", "identity/versions/1", {"INPUT0": [1]}),
    _gen("generate_gzip_body", "add_sub", {"INPUT0": A, "INPUT1": B}, encode="gzip"),
    _gen("generate_accept_gzip", "add_sub", {"INPUT0": A, "INPUT1": B}, headers={"Accept-Encoding": "gzip"}),
    _gen("generate_missing_input", "add_sub", {"INPUT0": A}),
    _gen("generate_wrong_count", "add_sub", {"INPUT0": A[:3], "INPUT1": B[:3]}),
    _gen("generate_nested", "identity", {"INPUT0": [[1, 2], [3, 4]]}),
    _gen("generate_fp16", "identity_fp16", {"INPUT0": [1.0]}),
    _gen("generate_unknown_model", "nope", {"INPUT0": A}),
    _gen("generate_unknown_version", "identity/versions/2", {"INPUT0": [1]}),
    _gen("generate_malformed", "add_sub", b"{"),
    _gen("generate_empty_body", "identity", b""),
    _gen("generate_array_body", "identity", [1]),
    {"id": "generate_get", "method": "GET", "path": "/v2/models/add_sub/generate"},
    _gen("generate_stream_add_sub", "add_sub", {"INPUT0": A, "INPUT1": B}, stream=True),
    _gen("generate_stream_identity", "identity", {"INPUT0": [1, 2]}, stream=True),
    _gen("generate_stream_accept_gzip", "identity", {"INPUT0": [1, 2]}, stream=True, headers={"Accept-Encoding": "gzip"}),
    _gen("generate_stream_missing_input", "add_sub", {"INPUT0": A}, stream=True),
    _gen("generate_stream_unknown_model", "nope", {"INPUT0": [1, 2]}, stream=True),
    _gen("generate_stream_malformed", "identity", b"{", stream=True),
    _gen("generate_stream_fp16", "identity_fp16", {"INPUT0": [1.0]}, stream=True),
]
