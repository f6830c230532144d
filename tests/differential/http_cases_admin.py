"""Trace, logging, shared-memory and repository (index, load, unload) cases; and the --model-control-mode none ones."""

from __future__ import annotations

import base64
import json

from http_cases_common import CONFIG_ALLOW, META_ALLOW, V2_ALLOW, add_sub_body, get, infer, one_input, post, tensor
from triton_http_models import IDENTITY_PY

TRACE_CASES: list[dict] = [
    get("trace_get_global", "/v2/trace/setting"),
    get("trace_get_model", "/v2/models/add_sub/trace/setting"),
    get("trace_get_model_unknown", "/v2/models/nope/trace/setting"),
    get("trace_get_model_version", "/v2/models/add_sub/versions/1/trace/setting"),
    {"id": "trace_put", "method": "PUT", "path": "/v2/trace/setting", "body": {}},
    post("trace_set_empty", "/v2/trace/setting", {}),
    post("trace_set_rate", "/v2/trace/setting", {"trace_rate": "5"}),
    post("trace_set_rate_number", "/v2/trace/setting", {"trace_rate": 5}),
    post("trace_set_unknown_key", "/v2/trace/setting", {"foo": "5"}),
    post("trace_set_model_rate", "/v2/models/add_sub/trace/setting", {"trace_rate": "7"}),
    get("trace_get_model_after_set", "/v2/models/add_sub/trace/setting"),
    get("trace_get_global_after_model_set", "/v2/trace/setting"),
    post("trace_clear_model_rate", "/v2/models/add_sub/trace/setting", {"trace_rate": None},
         note="clearing a model setting falls back to the global one"),  # fmt: skip
    post("trace_set_model_unknown", "/v2/models/nope/trace/setting", {}),
    post("trace_set_level_without_file", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
    post("trace_set_level_unknown", "/v2/trace/setting", {"trace_level": ["BOGUS"]}),
    post("trace_set_level_string", "/v2/trace/setting", {"trace_level": "TIMESTAMPS"}),
    post("trace_set_count_not_number", "/v2/trace/setting", {"trace_count": "abc"}),
    post("trace_set_file", "/v2/trace/setting", {"trace_file": "/tmp/trace.json"}),
    post("trace_set_malformed", "/v2/trace/setting", b"{"),
    post("trace_reset", "/v2/trace/setting", {"trace_level": None, "trace_rate": None, "trace_count": None, "log_frequency": None}),
    get("trace_get_global_after_reset", "/v2/trace/setting"),
]

LOGGING_CASES: list[dict] = [
    get("logging_get", "/v2/logging"),
    {"id": "logging_put", "method": "PUT", "path": "/v2/logging", "body": {}},
    post("logging_set_empty_object", "/v2/logging", {}),
    post("logging_set_empty_body", "/v2/logging", b""),
    post("logging_set_verbose", "/v2/logging", {"log_verbose_level": 0}),
    post("logging_set_verbose_string", "/v2/logging", {"log_verbose_level": "x"}),
    post("logging_set_verbose_null", "/v2/logging", {"log_verbose_level": None}),
    post("logging_set_unknown_key", "/v2/logging", {"foo": 1}),
    post("logging_set_format_bogus", "/v2/logging", {"log_format": "bogus"}),
    post("logging_set_format_iso8601", "/v2/logging", {"log_format": "ISO8601"}),
    post("logging_set_format_default", "/v2/logging", {"log_format": "default"}),
    post("logging_set_file", "/v2/logging", {"log_file": "/tmp/x.log"}),
    post("logging_set_info_string", "/v2/logging", {"log_info": "yes"}),
    post("logging_set_info_false", "/v2/logging", {"log_info": False}),
    post("logging_set_info_true", "/v2/logging", {"log_info": True}),
]

_SHM = "/v2/systemsharedmemory"


def _shm_in(name: str, offset: int, size: int = 64, region: str = "in") -> dict:
    return tensor(name, "INT32", [16], shared_memory_region=region, shared_memory_offset=offset, shared_memory_byte_size=size)


def _reg(case_id: str, region: str, body, **kw) -> dict:
    return post(case_id, f"{_SHM}/region/{region}/register", body, **kw)


SHM_CASES: list[dict] = [
    get("shm_status_empty", f"{_SHM}/status"),
    get("shm_status_unknown_region", f"{_SHM}/region/foo/status"),
    post("shm_status_post", f"{_SHM}/status", b""),
    get("shm_register_get", f"{_SHM}/region/r1/register"),
    _reg("shm_register_bad_key", "r1", {"key": "/tritium_httpdiff_nonexistent", "offset": 0, "byte_size": 64}),
    _reg("shm_register_missing_byte_size", "r1", {"key": "/tritium_httpdiff_in", "offset": 0}),
    _reg("shm_register_missing_key", "r1", {"offset": 0, "byte_size": 64}),
    _reg("shm_register_missing_offset", "r1", {"key": "/tritium_httpdiff_nonexistent", "byte_size": 64}),
    _reg("shm_register_byte_size_string", "r1", {"key": "/tritium_httpdiff_in", "offset": 0, "byte_size": "64"}),
    _reg("shm_register_empty_body", "r1", b""),
    post("shm_register_without_region", f"{_SHM}/register", {"key": "/tritium_httpdiff_in", "offset": 0, "byte_size": 64}),
    _reg("shm_register_in", "in", {"key": "/tritium_httpdiff_in", "offset": 0, "byte_size": 128}),
    _reg("shm_register_out", "out", {"key": "/tritium_httpdiff_out", "offset": 0, "byte_size": 128}),
    _reg("shm_register_duplicate_name", "in", {"key": "/tritium_httpdiff_in", "offset": 0, "byte_size": 128}),
    # Not a case: a second region over a key that is already registered fails on Triton 2.51 either with 500
    # "Invalid shared memory region: '<key>'" or with 400 "failed to register shared memory region '<name>':
    # invalid args", varying from one attempt to the next.
    _reg("shm_register_unaligned_offset", "extra", {"key": "/tritium_httpdiff_extra", "offset": 64, "byte_size": 64}),
    _reg("shm_register_past_end", "extra", {"key": "/tritium_httpdiff_extra", "offset": 4096, "byte_size": 8192}),
    _reg("shm_register_page_offset", "extra", {"key": "/tritium_httpdiff_extra", "offset": 4096, "byte_size": 64}),
    _reg("shm_register_beyond_segment", "beyond", {"key": "/tritium_httpdiff_small", "offset": 0, "byte_size": 8192},
         allow=[("error", ("prefix", "failed to register shared memory region 'beyond': invalid args"),
                 "Triton's words, then the offset, size and segment size")]),  # fmt: skip
    get("shm_status_all", f"{_SHM}/status"),
    get("shm_status_region", f"{_SHM}/region/in/status"),
    infer("shm_infer_inputs", "add_sub", {"inputs": [_shm_in("INPUT0", 0), _shm_in("INPUT1", 64)]}),
    infer("shm_infer_output", "add_sub", {"inputs": [_shm_in("INPUT0", 0), _shm_in("INPUT1", 64)], "outputs": [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64}}, {"name": "OUTPUT1"}]}),  # fmt: skip
    {"id": "shm_read_output", "method": "SHM_READ", "path": "tritium_httpdiff_out", "offset": 0, "size": 128},
    infer("shm_infer_output_shm_and_binary", "add_sub", {"inputs": add_sub_body()["inputs"], "outputs": [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64, "binary_data": True}}]}),  # fmt: skip
    infer("shm_infer_output_shm_and_binary_false", "add_sub", {"inputs": add_sub_body()["inputs"], "outputs": [
        {"name": "OUTPUT0", "parameters": {"binary_data": False, "shared_memory_region": "out", "shared_memory_byte_size": 64}}]}),  # fmt: skip
    infer("shm_infer_output_offset_binary", "add_sub", {"inputs": [_shm_in("INPUT0", 0), _shm_in("INPUT1", 64)],
        "parameters": {"binary_data_output": True}, "outputs": [
        {"name": "OUTPUT1", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64, "shared_memory_offset": 64}},
        {"name": "OUTPUT0", "parameters": {"binary_data": True}}]}),  # fmt: skip
    {"id": "shm_read_output_offset", "method": "SHM_READ", "path": "tritium_httpdiff_out", "offset": 0, "size": 128},
    infer("shm_infer_output_too_small", "add_sub", {"inputs": add_sub_body()["inputs"], "outputs": [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 32}}]}),  # fmt: skip
    infer("shm_infer_output_past_region", "add_sub", {"inputs": add_sub_body()["inputs"], "outputs": [
        {"name": "OUTPUT0", "parameters": {"shared_memory_region": "out", "shared_memory_byte_size": 64, "shared_memory_offset": 100}}]}),  # fmt: skip
    infer("shm_infer_input_out_of_bounds", "add_sub", {"inputs": [_shm_in("INPUT0", 100), _shm_in("INPUT1", 64)]}),
    infer("shm_infer_unknown_region", "add_sub", {"inputs": [_shm_in("INPUT0", 0, region="zzz"), _shm_in("INPUT1", 64)]}),
    infer("shm_infer_no_byte_size", "add_sub", {"inputs": [tensor("INPUT0", "INT32", [16], shared_memory_region="in"), _shm_in("INPUT1", 64)]}),
    infer("shm_infer_with_data", "add_sub", {"inputs": [dict(_shm_in("INPUT0", 0), data=list(range(16))), _shm_in("INPUT1", 64)]}),
    infer("shm_infer_wrong_byte_size", "add_sub", {"inputs": [_shm_in("INPUT0", 0, size=60), _shm_in("INPUT1", 64)]}),
    post("shm_unregister_in", f"{_SHM}/region/in/unregister", b""),
    get("shm_status_after_unregister", f"{_SHM}/status"),
    post("shm_unregister_unknown", f"{_SHM}/region/nope/unregister", b""),
    get("shm_unregister_get", f"{_SHM}/unregister"),
    post("shm_unregister_all", f"{_SHM}/unregister", b""),
    get("shm_status_after_unregister_all", f"{_SHM}/status"),
    # CUDA shared memory: no GPU on either side; only the routes and their validation.
    get("cuda_shm_status", "/v2/cudasharedmemory/status"),
    get("cuda_shm_status_unknown_region", "/v2/cudasharedmemory/region/foo/status"),
    post("cuda_shm_register_bad_handle", "/v2/cudasharedmemory/region/r1/register", {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}),
    post("cuda_shm_register_missing_handle", "/v2/cudasharedmemory/region/r1/register", {"device_id": 0, "byte_size": 64}),
    post("cuda_shm_register_missing_device", "/v2/cudasharedmemory/region/r1/register", {"raw_handle": {"b64": "AAAA"}, "byte_size": 64}),
    post("cuda_shm_register_empty_body", "/v2/cudasharedmemory/region/r1/register", b""),
    post("cuda_shm_register_without_region", "/v2/cudasharedmemory/register", {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 64}),
    get("cuda_shm_register_without_region_get", "/v2/cudasharedmemory/register"),
    post("cuda_shm_unregister_region", "/v2/cudasharedmemory/region/r1/unregister", b""),
    post("cuda_shm_unregister_all", "/v2/cudasharedmemory/unregister", b""),
]

_REPO = "/v2/repository"
_IDENTITY_CFG = {"name": "identity", "backend": "@BACKEND@", "max_batch_size": 4,
                 "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
                 "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}]}  # fmt: skip
_FILE_CFG = dict(_IDENTITY_CFG, name="identity_file", max_batch_size=0)


def _load(case_id: str, model: str, body=b"", **kw) -> dict:
    return post(case_id, f"{_REPO}/models/{model}/load", body, **kw)


def _unload(case_id: str, model: str, body=b"", **kw) -> dict:
    return post(case_id, f"{_REPO}/models/{model}/unload", body, **kw)


REPOSITORY_CASES: list[dict] = [
    post("repo_index", f"{_REPO}/index", b""),
    post("repo_index_ready_true", f"{_REPO}/index", {"ready": True}),
    post("repo_index_ready_false", f"{_REPO}/index", {"ready": False}),
    post("repo_index_ready_string", f"{_REPO}/index", {"ready": "yes"}),
    post("repo_index_malformed", f"{_REPO}/index", b"{"),
    post("repo_index_named_repository", f"{_REPO}/myrepo/index", b""),
    post("repo_load_named_repository", f"{_REPO}/myrepo/models/identity/load", b""),
    post("repo_load_named_repository_malformed", f"{_REPO}/myrepo/models/identity/load", b"{"),
    post("repo_unload_named_repository", f"{_REPO}/myrepo/models/identity/unload", b""),
    get("repo_load_named_repository_get", f"{_REPO}/myrepo/models/identity/load"),
    get("repo_index_get", f"{_REPO}/index"),
    _unload("repo_unload_unknown", "nope"),
    _load("repo_load_unknown", "nope"),
    _load("repo_load_bad_config_json", "identity", {"parameters": {"config": "{bad"}}),
    _load("repo_load_config_not_string", "identity", {"parameters": {"config": {"a": 1}}}),
    _load("repo_load_malformed_body", "identity", b"{"),
    get("repo_load_get", f"{_REPO}/models/identity/load"),
    _load("repo_load_file_without_config", "identity", {"parameters": {"file:1/model.py": base64.b64encode(b"x").decode()}}),
    # a config override: identity with max_batch_size 4
    _load("repo_load_config_override", "identity", {"parameters": {"config": json.dumps(_IDENTITY_CFG)}}, backend_model="identity"),
    get("repo_config_after_override", "/v2/models/identity/config", allow=CONFIG_ALLOW),
    infer("repo_infer_after_override", "identity", one_input("FP32", [1, 2], [1, 2])),
    _load("repo_load_plain_after_override", "identity", note="the repository config is unchanged on disk"),
    get("repo_config_after_plain_load", "/v2/models/identity/config", allow=CONFIG_ALLOW),
    _unload("repo_unload_identity", "identity"),
    post("repo_index_after_unload_identity", f"{_REPO}/index", b"", wait={"model": "identity", "state": "UNAVAILABLE"}),
    _load("repo_load_identity_again", "identity"),
    get("repo_config_after_reload", "/v2/models/identity/config", allow=CONFIG_ALLOW),
    # a new model from a config and a file: parameter (Triton writes the file into a temporary model folder)
    _load("repo_load_with_file", "identity_file", {"parameters": {
        "config": json.dumps(_FILE_CFG), "file:1/model.py": base64.b64encode(IDENTITY_PY.encode()).decode()}},
        backend_model="identity"),  # fmt: skip
    get("repo_metadata_file_model", "/v2/models/identity_file", allow=META_ALLOW),
    infer("repo_infer_file_model", "identity_file", one_input("FP32", [2], [1, 2])),
    post("repo_index_with_file_model", f"{_REPO}/index", b""),
    _unload("repo_unload_file_model", "identity_file"),
    post("repo_index_after_unload_file_model", f"{_REPO}/index", b"", wait={"model": "identity_file", "state": "absent"}),
    # unload add_sub and look at it from every side
    _unload("repo_unload_add_sub", "add_sub"),
    post("repo_index_after_unload", f"{_REPO}/index", b"", wait={"model": "add_sub", "state": "UNAVAILABLE"}),
    post("repo_index_ready_after_unload", f"{_REPO}/index", {"ready": True}),
    get("repo_metadata_unloaded", "/v2/models/add_sub"),
    get("repo_ready_unloaded", "/v2/models/add_sub/ready"),
    get("repo_config_unloaded", "/v2/models/add_sub/config"),
    get("repo_stats_unloaded", "/v2/models/add_sub/stats"),
    infer("repo_infer_unloaded", "add_sub", add_sub_body()),
    _unload("repo_unload_again", "add_sub"),
    _load("repo_load_add_sub", "add_sub"),
    infer("repo_infer_reloaded", "add_sub", add_sub_body()),
    _unload("repo_unload_dependents", "identity_int64", {"parameters": {"unload_dependents": True}}),
    _load("repo_load_empty_object", "identity_int64", {}, wait={"model": "identity_int64", "state": "UNAVAILABLE"}),
    post("repo_index_final", f"{_REPO}/index", b""),
]

ADMIN_CASES: list[dict] = TRACE_CASES + LOGGING_CASES + SHM_CASES + REPOSITORY_CASES

# On a server started with --model-control-mode none (every model loaded, no load/unload).
NONE_MODE_CASES: list[dict] = [
    dict(c, server="none")
    for c in [
        get("none_server_metadata", "/v2", allow=V2_ALLOW),
        post("none_repo_index", f"{_REPO}/index", b""),
        _unload("none_repo_unload", "add_sub"),
        _unload("none_repo_unload_unknown", "nope"),
        _load("none_repo_load", "add_sub"),
        _load("none_repo_load_unknown", "nope"),
        _load("none_repo_load_config_override", "identity", {"parameters": {"config": json.dumps(_IDENTITY_CFG)}}, backend_model="identity"),
        _load("none_repo_load_malformed_body", "identity", b"{"),
        post("none_repo_index_after", f"{_REPO}/index", b""),
    ]
]
