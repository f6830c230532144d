"""`--http-restricted-api <groups>:<header>=<value>` on the HTTP port, checked against what Triton 2.51 answers.

Recorded from the real Triton 2.51.0 (nvidia-pytriton 0.7.0, python-backend add_sub from bench/triton-models) on
2026-11-23, with `--http-restricted-api=model-repository,logging:admin-key=s3cret` and, in a second run, with
`--http-restricted-api=statistics,model-config:Other-Key=V2` added (and a third with health, metadata, inference,
shared-memory and trace restricted, which showed the same group of each path as `api_group` in the server):
- a request of a restricted group without the header, with another value (values are case-sensitive, `S3CRET`
  is refused), with an empty value or with two values folded into one (`s3cret,s3cret`) gets
  `403 Forbidden`, `Content-Type: text/plain` (not JSON) and exactly the body
  `{"error":"This API is restricted, expecting header 'admin-key'"}`;
- the header is named in the message as the flag wrote it (`'Other-Key'`), while the request's header name is
  matched case-insensitively (`other-key: V2` and `Admin-Key: s3cret` are accepted);
- the check comes before the method check (`GET /v2/repository/index`, `DELETE /v2/models/m/stats`,
  `PUT /v2/logging`: 403, as is `HEAD /v2/repository/index`, with no body) but after routing: an unknown path
  under a restricted prefix (`POST /v2/repository/bogus`, `GET /v2/models/m/stats/x`) is `404 {"error":"Not Found"}`;
- with the right header the request is answered as usual; the other groups need nothing.
"""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from helpers import add_sub_config, identity_config, write_model
from http_helpers import add_sub_data, http_address, tensor

KEY, SECRET = "admin-key", "s3cret"


def refusal(header: str) -> bytes:
    return json.dumps({"error": f"This API is restricted, expecting header '{header}'"}, separators=(",", ":")).encode()


def request(server, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None):
    """(status, content type, body) of one raw HTTP request."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read()
    finally:
        connection.close()


def assert_refused(server, method: str, path: str, header: str, headers: dict[str, str] | None = None) -> None:
    """403 with Triton's exact body (its content type has a test of its own)."""
    status, _, body = request(server, method, path, headers, b"{}" if method == "POST" else None)
    assert (status, body) == (403, refusal(header)), (method, path, headers)


@pytest.fixture
def repo(model_repo):
    write_model(model_repo, "m_add_sub", add_sub_config("m_add_sub"))
    write_model(model_repo, "m_identity", identity_config("m_identity", "TYPE_FP32"))
    return model_repo


def explicit(repo) -> list[str]:
    return ["--model-repository", str(repo), "--model-control-mode", "explicit", "--load-model", "m_add_sub"]


@pytest.fixture
def one_flag(start_tritium, repo):
    return start_tritium(*explicit(repo), "--http-restricted-api", f"model-repository,logging:{KEY}={SECRET}")


@pytest.fixture
def two_flags(start_tritium, repo):
    return start_tritium(
        *explicit(repo),
        "--http-restricted-api", f"model-repository:{KEY}={SECRET}",
        "--http-restricted-api", "statistics,model-config:other-key=V2",
    )


RESTRICTED_CALLS = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/m_identity/load"),
    ("POST", "/v2/repository/models/m_add_sub/unload"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/logging"),
]


@pytest.mark.parametrize("method,path", RESTRICTED_CALLS)
def test_restricted_calls_without_the_header_are_refused(one_flag, method, path):
    assert_refused(one_flag, method, path, KEY)


@pytest.mark.parametrize("value", ["wrong", "S3CRET", "", f"{SECRET},{SECRET}", f"{SECRET} x"])
def test_restricted_calls_with_another_value_are_refused(one_flag, value):
    assert_refused(one_flag, "POST", "/v2/repository/index", KEY, {KEY: value})
    assert_refused(one_flag, "GET", "/v2/logging", KEY, {KEY: value})
    # Another header with the right value opens nothing.
    assert_refused(one_flag, "GET", "/v2/logging", KEY, {"other-key": SECRET})


def test_a_refusal_is_plain_text_as_in_triton(one_flag):
    """Triton 2.51 sends the JSON body of a refusal as `Content-Type: text/plain`."""
    for method, path in RESTRICTED_CALLS:
        status, content_type, body = request(one_flag, method, path, body=b"{}" if method == "POST" else None)
        assert (status, content_type, body) == (403, "text/plain", refusal(KEY)), (method, path)


def test_the_check_comes_before_the_method_check(one_flag):
    assert_refused(one_flag, "GET", "/v2/repository/index", KEY)
    assert_refused(one_flag, "PUT", "/v2/logging", KEY)


def test_head_on_a_restricted_path_is_refused(one_flag):
    status, content_type, body = request(one_flag, "HEAD", "/v2/repository/index")
    assert (status, content_type, body) == (403, "text/plain", b"")


def test_unknown_paths_under_a_restricted_prefix_are_not_found(one_flag):
    for method, path in [("POST", "/v2/repository/bogus"), ("POST", "/v2/repository/models/m_add_sub/bogus")]:
        status, _, body = request(one_flag, method, path, body=b"{}")
        assert (status, json.loads(body)) == (404, {"error": "Not Found"}), (method, path, body)


def test_restricted_calls_with_the_header_are_answered(one_flag):
    for name in (KEY, "Admin-Key", "ADMIN-KEY"):
        status, content_type, body = request(one_flag, "POST", "/v2/repository/index", {name: SECRET}, b"{}")
        assert (status, content_type) == (200, "application/json"), (name, body)
        assert {"name": "m_add_sub", "version": "1", "state": "READY"} in json.loads(body)
    status, content_type, body = request(one_flag, "GET", "/v2/logging", {KEY: SECRET})
    assert (status, content_type) == (200, "application/json"), body
    assert "log_verbose_level" in json.loads(body)
    # The same header twice with the right value (Triton 2.51 accepts it).
    connection = http.client.HTTPConnection("127.0.0.1", one_flag.http_port, timeout=30)
    try:
        connection.putrequest("GET", "/v2/logging")
        connection.putheader(KEY, SECRET)
        connection.putheader(KEY, SECRET)
        connection.endheaders()
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_unrestricted_groups_need_no_header(one_flag):
    for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/m_add_sub/ready", "/v2", "/v2/models/m_add_sub",
                 "/v2/models/m_add_sub/config", "/v2/models/m_add_sub/stats", "/v2/models/stats", "/v2/trace/setting",
                 "/v2/systemsharedmemory/status"]:
        status, _, body = request(one_flag, "GET", path)
        assert status == 200, (path, body)
    client = httpclient.InferenceServerClient(url=http_address(one_flag))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("m_add_sub")
        assert client.get_server_metadata()["name"]
        assert client.get_model_metadata("m_add_sub")["name"] == "m_add_sub"
        assert client.get_model_config("m_add_sub")["name"] == "m_add_sub"
        a, b = add_sub_data()
        result = client.infer("m_add_sub", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    finally:
        client.close()


def test_tritonclient_http_loads_and_unloads_with_the_header(one_flag):
    client = httpclient.InferenceServerClient(url=http_address(one_flag))
    admin = {KEY: SECRET}
    try:
        for call in (lambda: client.load_model("m_identity"), lambda: client.get_model_repository_index(),
                     lambda: client.unload_model("m_add_sub"), lambda: client.get_log_settings()):
            with pytest.raises(InferenceServerException) as info:
                call()
            assert info.value.status() == "403"
            assert info.value.message() == f"This API is restricted, expecting header '{KEY}'"
        assert not client.is_model_ready("m_identity")

        client.load_model("m_identity", headers=admin)
        assert client.is_model_ready("m_identity")
        values = np.arange(6, dtype=np.float32)
        got = client.infer("m_identity", [tensor("INPUT0", values, "FP32")]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(got, values)
        index = {(m["name"], m.get("state")) for m in client.get_model_repository_index(headers=admin)}
        assert {("m_add_sub", "READY"), ("m_identity", "READY")} <= index
        client.unload_model("m_identity", headers=admin)
        assert "log_verbose_level" in client.get_log_settings(headers=admin)
    finally:
        client.close()


def test_the_message_names_the_header_as_the_flag_wrote_it(start_tritium, repo):
    """Triton 2.51 keeps the flag's spelling (`'Other-Key'`) in the message and matches the header in any case."""
    server = start_tritium(*explicit(repo), "--http-restricted-api", "statistics:Other-Key=V2")
    status, _, body = request(server, "GET", "/v2/models/stats")
    assert (status, body) == (403, refusal("Other-Key"))
    for name in ("Other-Key", "other-key", "OTHER-KEY"):
        assert request(server, "GET", "/v2/models/stats", {name: "V2"})[0] == 200, name


def test_two_flags_restrict_two_groups_with_their_own_headers(two_flags):
    other = "other-key"
    for method, path in [("GET", "/v2/models/stats"), ("GET", "/v2/models/m_add_sub/stats"),
                         ("GET", "/v2/models/m_add_sub/versions/1/stats"), ("GET", "/v2/models/m_add_sub/config"),
                         ("GET", "/v2/models/m_add_sub/versions/1/config"), ("DELETE", "/v2/models/m_add_sub/stats")]:
        assert_refused(two_flags, method, path, other)
        assert_refused(two_flags, method, path, other, {other: "v2"})
        assert_refused(two_flags, method, path, other, {KEY: SECRET})
        status, _, body = request(two_flags, "GET", path, {"Other-Key": "V2"})
        assert status == 200, (path, body)
    assert_refused(two_flags, "POST", "/v2/repository/index", KEY)
    assert_refused(two_flags, "POST", "/v2/repository/index", KEY, {other: "V2"})
    status, _, _ = request(two_flags, "POST", "/v2/repository/index", {KEY: SECRET}, b"{}")
    assert status == 200
    # Unknown paths under a restricted prefix are routed first (404), as in Triton.
    status, _, body = request(two_flags, "GET", "/v2/models/m_add_sub/stats/x")
    assert (status, json.loads(body)) == (404, {"error": "Not Found"}), body
    # Logging, metadata and inference are not restricted here.
    for path in ["/v2/logging", "/v2/models/m_add_sub", "/v2/health/ready"]:
        assert request(two_flags, "GET", path)[0] == 200, path
    client = httpclient.InferenceServerClient(url=http_address(two_flags))
    try:
        a, b = add_sub_data()
        result = client.infer("m_add_sub", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        with pytest.raises(InferenceServerException) as info:
            client.get_inference_statistics("m_add_sub")
        want = ("403", f"This API is restricted, expecting header '{other}'")
        assert (info.value.status(), info.value.message()) == want
        stats = client.get_inference_statistics("m_add_sub", headers={other: "V2"})
        assert stats["model_stats"][0]["inference_count"] == 1
        assert client.get_model_config("m_add_sub", headers={"other-key": "V2"})["name"] == "m_add_sub"
    finally:
        client.close()


def test_the_admission_group_guards_post_busy_threshold(start_tritium, repo):
    """Tritium's own group: `admission` restricts `POST /busy_threshold`; reading the thresholds stays open."""
    server = start_tritium(*explicit(repo), "--http-restricted-api", f"admission:{KEY}={SECRET}")
    setting = json.dumps({"model": "m_add_sub", "active_decode_blocks_threshold": 0.5}).encode()
    status, _, body = request(server, "POST", "/busy_threshold", {"Content-Type": "application/json"}, setting)
    assert (status, json.loads(body)) == (403, {"error": f"This API is restricted, expecting header '{KEY}'"}), body
    # With the key the request is judged on its merits: m_add_sub is no language model.
    status, _, body = request(server, "POST", "/busy_threshold", {"Content-Type": "application/json", KEY: SECRET}, setting)
    assert status == 404 and "is not a language model served here" in json.loads(body)["error"], body
    assert request(server, "GET", "/busy_threshold")[0] == 200
    assert request(server, "GET", "/v2/logging")[0] == 200, "only the named group is restricted"
