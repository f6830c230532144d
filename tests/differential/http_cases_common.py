"""Builders and shared data for the HTTP cases (http_cases.py describes the case format)."""

from __future__ import annotations

import numpy as np

A = list(range(16))  # INPUT0 of add_sub
B = [1] * 16  # INPUT1 of add_sub
A_BYTES = np.arange(16, dtype=np.int32).tobytes()
B_BYTES = np.ones(16, dtype=np.int32).tobytes()

# Differences a built-in backend cannot avoid, accepted by the comparison (path, rule, why).
V2_ALLOW = [
    ("name", "ignore", "server name: 'triton' there"),
    ("version", "ignore", "server version: '2.51.0' there"),
    ("extensions", "subset", "Tritium claims only the extensions it implements; each must be one Triton names"),
]
META_ALLOW = [("platform", "ignore", "Triton reports the backend's name ('python') when the config has no platform")]
CONFIG_ALLOW = [
    ("backend", "ignore", "'python' there, the built-in backend here"),
    ("default_model_filename", "ignore", "the python backend fills in 'model.py'"),
]
STATS_ALLOW = [
    ("model_stats/*/last_inference", "ignore", "a timestamp (ms since the epoch)"),
    ("model_stats/*/inference_stats/*/ns", "ignore", "durations"),
    ("model_stats/*/batch_stats/*/*/ns", "ignore", "durations"),
]


def get(case_id: str, path: str, **kw) -> dict:
    return {"id": case_id, "method": "GET", "path": path, **kw}


def post(case_id: str, path: str, body=None, **kw) -> dict:
    return {"id": case_id, "method": "POST", "path": path, "body": body, **kw}


def infer(case_id: str, model: str, body, **kw) -> dict:
    return post(case_id, f"/v2/models/{model}/infer", body, **kw)


def binary_infer(case_id: str, model: str, header: dict, parts: list[bytes], **kw) -> dict:
    return post(case_id, f"/v2/models/{model}/infer", {"json": header, "binary": parts}, binary=True, **kw)


def tensor(name: str, datatype: str, shape, data=None, **params) -> dict:
    t = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        t["data"] = data
    if params:
        t["parameters"] = params
    return t


def add_sub_inputs(a=None, b=None) -> list[dict]:
    return [tensor("INPUT0", "INT32", [16], A if a is None else a), tensor("INPUT1", "INT32", [16], B if b is None else b)]


def add_sub_body(**extra) -> dict:
    return {"inputs": add_sub_inputs(), **extra}


def one_input(datatype: str, shape, data, **extra) -> dict:
    return {"inputs": [tensor("INPUT0", datatype, shape, data)], **extra}
