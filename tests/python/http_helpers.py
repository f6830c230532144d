"""Shared by the tritonclient.http tests: the client address, Triton's HTTP error statuses (kserve-triton.md §2.8)
and the check that an HTTP error carries the same message as the same call over gRPC; and one plain JSON
request for the tests of JSON routes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def http_address(server) -> str:
    """tritonclient.http takes `host:port` without the scheme."""
    return server.http_url.removeprefix("http://")


def expect_http_error(client, status: int, fragment: str, fn, *args, **kwargs) -> InferenceServerException:
    """fn raises InferenceServerException with HTTP `status` and `fragment` in its message; the server still answers."""
    with pytest.raises(InferenceServerException) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.status() == str(status), f"expected HTTP {status}, got {err.status()} ({err.message()!r})"
    assert fragment in err.message(), f"expected {fragment!r} in {err.message()!r}"
    assert client.is_server_live() is True, "the server must keep answering after an error"
    return err


# Triton's HTTP status for each gRPC code (kserve-triton.md §2.8); RESOURCE_EXHAUSTED is Tritium's own limits' 429.
HTTP_STATUS_OF_GRPC = {
    "StatusCode.INTERNAL": 500, "StatusCode.NOT_FOUND": 404, "StatusCode.UNAVAILABLE": 503,
    "StatusCode.UNIMPLEMENTED": 501, "StatusCode.RESOURCE_EXHAUSTED": 429,
}


def same_error_both_ways(hclient, http_call, grpc_call, status: int | None, fragment: str) -> None:
    """The HTTP call fails with the gRPC call's message and the HTTP status of its gRPC code (and `status`, if given)."""
    with pytest.raises(InferenceServerException) as grpc_info:
        grpc_call()
    want = HTTP_STATUS_OF_GRPC.get(grpc_info.value.status(), 400)
    err = expect_http_error(hclient, want if status is None else status, fragment, http_call)
    assert want == int(err.status()), f"gRPC {grpc_info.value.status()} but HTTP {err.status()}"
    assert err.message() == grpc_info.value.message()


def tensor(name: str, data: np.ndarray, datatype: str, binary: bool = True, module=httpclient):
    """An InferInput of `module` (tritonclient.http or .grpc); over HTTP as binary data or as JSON."""
    t = module.InferInput(name, list(data.shape), datatype)
    if module is httpclient:
        t.set_data_from_numpy(data, binary_data=binary)
    else:
        t.set_data_from_numpy(data)
    return t


def add_sub_data() -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32) * 7 - 40
    b = np.full(16, 3, dtype=np.int32) - np.arange(16, dtype=np.int32)
    return a, b


def json_call(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    """One JSON request; the status and the JSON answer, an error's too."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
