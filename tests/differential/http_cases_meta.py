"""Server metadata, health, routing, model metadata/ready/config/stats cases."""

from __future__ import annotations

from http_cases_common import CONFIG_ALLOW, META_ALLOW, STATS_ALLOW, V2_ALLOW, get, post

MODELS = ["add_sub", "identity", "identity_batch", "identity_bytes", "identity_bool", "identity_fp16", "identity_int64",
          "identity_int8", "identity_uint8"]  # fmt: skip

META_CASES: list[dict] = [
    # --- server metadata and health
    get("server_metadata", "/v2", allow=V2_ALLOW),
    get("health_live", "/v2/health/live"),
    get("health_ready", "/v2/health/ready"),
    get("health_ready_query_string", "/v2/health/ready?verbose=1", note="a query string does not change the route"),
    get("health_no_kind", "/v2/health", note="no such route"),
    post("health_live_post", "/v2/health/live", b""),
    {"id": "health_live_head", "method": "HEAD", "path": "/v2/health/live"},
    {"id": "server_metadata_options", "method": "OPTIONS", "path": "/v2"},
    {"id": "server_metadata_put", "method": "PUT", "path": "/v2", "body": b""},
    post("server_metadata_post", "/v2", b""),
    get("server_metadata_trailing_slash", "/v2/"),
    get("root", "/"),
    get("unknown_path", "/v2/nope"),
    get("unknown_path_deep", "/v2/models/add_sub/nope"),
    get("unknown_path_v1", "/v1/models"),
    # --- statistics of a fresh server (every counter 0)
    get("stats_all_fresh", "/v2/models/stats", allow=STATS_ALLOW),
    get("stats_add_sub_fresh", "/v2/models/add_sub/stats", allow=STATS_ALLOW),
]

# --- model metadata, readiness, config for every model
for _m in MODELS:
    META_CASES += [
        get(f"model_metadata_{_m}", f"/v2/models/{_m}", allow=META_ALLOW),
        get(f"model_ready_{_m}", f"/v2/models/{_m}/ready"),
        get(f"model_config_{_m}", f"/v2/models/{_m}/config", allow=CONFIG_ALLOW),
    ]

META_CASES += [
    get("model_metadata_version_1", "/v2/models/add_sub/versions/1", allow=META_ALLOW),
    get("model_metadata_version_2", "/v2/models/add_sub/versions/2", note="missing numeric version"),
    get("model_metadata_version_0", "/v2/models/add_sub/versions/0"),
    get("model_metadata_version_abc", "/v2/models/add_sub/versions/abc", note="the route only takes digits"),
    get("model_metadata_version_minus_1", "/v2/models/add_sub/versions/-1"),
    get("model_metadata_version_empty", "/v2/models/add_sub/versions/"),
    get("model_metadata_trailing_slash", "/v2/models/add_sub/"),
    get("model_metadata_query_string", "/v2/models/add_sub?x=1", allow=META_ALLOW),
    get("model_metadata_unknown", "/v2/models/nope"),
    get("model_metadata_unknown_version_1", "/v2/models/nope/versions/1"),
    {"id": "model_metadata_delete", "method": "DELETE", "path": "/v2/models/add_sub"},
    post("model_metadata_post", "/v2/models/add_sub", b""),
    get("model_ready_version_1", "/v2/models/add_sub/versions/1/ready"),
    get("model_ready_version_2", "/v2/models/add_sub/versions/2/ready"),
    get("model_ready_version_abc", "/v2/models/add_sub/versions/abc/ready"),
    get("model_ready_unknown", "/v2/models/nope/ready"),
    post("model_ready_post", "/v2/models/add_sub/ready", b""),
    get("model_config_version_1", "/v2/models/add_sub/versions/1/config", allow=CONFIG_ALLOW),
    get("model_config_version_2", "/v2/models/add_sub/versions/2/config"),
    get("model_config_unknown", "/v2/models/nope/config"),
    post("model_config_post", "/v2/models/add_sub/config", b""),
    get("stats_version_1_fresh", "/v2/models/add_sub/versions/1/stats", allow=STATS_ALLOW),
    get("stats_version_2", "/v2/models/add_sub/versions/2/stats"),
    get("stats_version_minus_1", "/v2/models/add_sub/versions/-1/stats"),
    get("stats_unknown_model", "/v2/models/nope/stats"),
    post("stats_post", "/v2/models/stats", b""),
]

# Statistics after every infer and generate case: the counters show which failures count.
FINAL_STATS_CASES: list[dict] = [get(f"stats_after_{_m}", f"/v2/models/{_m}/stats", allow=STATS_ALLOW) for _m in MODELS] + [
    get("stats_after_all", "/v2/models/stats", allow=STATS_ALLOW),
]
