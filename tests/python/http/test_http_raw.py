"""The KServe v2 REST wire itself, with the standard library's http.client (and curl where it is installed) and, for
HTTP/2 prior knowledge (h2c), the pinned `h2` package: health probes, keep-alive, the binary tensor extension built
by hand, compressed bodies, the body limit and a gzip bomb, malformed bodies, unknown paths, and many connections.

Statuses and texts noted "Triton 2.51" were recorded from the real server. The body limit, the compression bomb and
h2c are Tritium's own: Triton 2.51 speaks only HTTP/1.1 here and took a 65 MiB body and a 128 MiB gzip bomb.
"""

from __future__ import annotations

import gzip
import http.client
import json
import shutil
import socket
import subprocess
import threading
import zlib

import h2.config
import h2.connection
import h2.events
import numpy as np
import pytest

TIMEOUT_S = 30
# Triton 2.51 answers a body that is not JSON with 500 (its JSON reader's errors are INTERNAL):
# {"error":"failed to parse the request JSON buffer: <what> at <offset>"}.
MALFORMED_JSON_STATUS = 500
SMALL_BODY_LIMIT = 64 * 1024
DEFAULT_BODY_LIMIT = 64 << 20  # --http-max-body-bytes (alias --http-max-input-size) default, server/src/config/limits.rs


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request on `conn`; returns (status, headers with lower-case names, body)."""
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        return call(conn, method, path, body, headers)
    finally:
        conn.close()


def send_tolerating_early_answer(server, path: str, body, headers: dict):
    """POST where the server may answer (413) and close before it has read the whole body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        try:
            conn.request("POST", path, body=body, headers=headers, encode_chunked="Content-Length" not in headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def assert_error_body(status: int, data: bytes, want_status: int) -> str:
    assert status == want_status, (status, data[:300])
    body = json.loads(data)
    assert isinstance(body.get("error"), str) and body["error"], body
    return body["error"]


def assert_still_serving(server):
    assert request(server, "GET", "/v2/health/ready")[0] == 200


def add_sub_json(a: np.ndarray, b: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "INPUT0", "shape": [16], "datatype": "INT32", "data": a.tolist()},
            {"name": "INPUT1", "shape": [16], "datatype": "INT32", "data": b.tolist()},
        ],
        **extra,
    }


def add_sub_binary(a: np.ndarray, b: np.ndarray) -> tuple[bytes, int]:
    """A binary-extension body (JSON header, then INPUT0's and INPUT1's bytes) and its header length."""
    header = json.dumps({
        "inputs": [
            {"name": n, "shape": [16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}
            for n in ("INPUT0", "INPUT1")
        ],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}, {"name": "OUTPUT1"}],
    }).encode()
    return header + a.tobytes() + b.tobytes(), len(header)


A = np.arange(16, dtype=np.int32) * 5 - 20
B = np.arange(16, dtype=np.int32) - 3
ADD_SUB = "/v2/models/add_sub/infer"


def check_add_sub_json(data: bytes) -> None:
    outputs = {o["name"]: o for o in json.loads(data)["outputs"]}
    assert outputs["OUTPUT0"]["data"] == (A + B).tolist() and outputs["OUTPUT1"]["data"] == (A - B).tolist(), outputs


# --- health, metadata, JSON and binary infer -------------------------------------------------------------


def test_health_probes(tritium):
    # What a Kubernetes httpGet probe sees: 200 (Triton 2.51: an empty body) on both endpoints.
    for path in ("/v2/health/ready", "/v2/health/live"):
        status, _, data = request(tritium, "GET", path)
        assert (status, data) == (200, b""), (path, status, data)
    assert request(tritium, "GET", "/v2/models/identity/ready")[0] == 200
    assert request(tritium, "GET", "/v2/models/identity_batch/versions/1/ready")[0] == 200
    # Triton 2.51: 400 {"error":"Model version not ready"}.
    assert request(tritium, "GET", "/v2/models/no_such_model/ready")[0] == 400


def test_server_and_model_metadata(tritium):
    status, headers, data = request(tritium, "GET", "/v2")
    assert status == 200 and headers["content-type"].startswith("application/json")
    metadata = json.loads(data)
    assert metadata["name"] and metadata["version"] and "binary_tensor_data" in metadata["extensions"]
    status, _, data = request(tritium, "GET", "/v2/models/add_sub/versions/1")
    assert status == 200
    model = json.loads(data)
    assert model["name"] == "add_sub"
    assert [(t["name"], t["shape"]) for t in model["inputs"]] == [("INPUT0", [16]), ("INPUT1", [16])]
    status, _, data = request(tritium, "GET", "/v2/models/no_such_model")
    assert assert_error_body(status, data, 404) == "Request for unknown model: 'no_such_model' is not found"


def test_infer_json(tritium):
    body = json.dumps(add_sub_json(A, B, id="j1")).encode()
    status, headers, data = request(tritium, "POST", ADD_SUB, body, {"Content-Type": "application/json"})
    assert status == 200, data
    assert headers["content-type"].startswith("application/json") and "inference-header-content-length" not in headers
    body = json.loads(data)
    assert (body["id"], body["model_name"]) == ("j1", "add_sub")
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("OUTPUT0", "INT32", [16]),
        ("OUTPUT1", "INT32", [16]),
    ]
    check_add_sub_json(data)
    # Whitespace after the JSON document is fine (Triton 2.51 too).
    status, _, data = request(tritium, "POST", ADD_SUB, json.dumps(add_sub_json(A, B)).encode() + b" \n\t ")
    assert status == 200, data


def test_infer_binary_extension(tritium):
    body, header_len = add_sub_binary(A, B)
    status, headers, data = request(tritium, "POST", ADD_SUB, body, {"Inference-Header-Content-Length": str(header_len)})
    assert status == 200, data
    n = int(headers["inference-header-content-length"])
    header = json.loads(data[:n])
    outputs = {o["name"]: o for o in header["outputs"]}
    assert outputs["OUTPUT0"]["parameters"]["binary_data_size"] == 64 and "data" not in outputs["OUTPUT0"]
    assert outputs["OUTPUT1"]["data"] == (A - B).tolist()  # not asked for as binary: JSON
    assert len(data) == n + 64
    np.testing.assert_array_equal(np.frombuffer(data[n:], dtype=np.int32), A + B)


def test_raw_binary_request(tritium):
    # Inference-Header-Content-Length: 0: the whole body is the one input's bytes, every output comes back binary.
    data = np.linspace(-1, 1, 10, dtype=np.float32)
    headers = {"Inference-Header-Content-Length": "0"}
    status, headers, body = request(tritium, "POST", "/v2/models/identity/infer", data.tobytes(), headers)
    assert status == 200, body
    n = int(headers["inference-header-content-length"])
    (output,) = json.loads(body[:n])["outputs"]
    assert (output["name"], output["shape"], output["parameters"]["binary_data_size"]) == ("OUTPUT0", [10], 40)
    np.testing.assert_array_equal(np.frombuffer(body[n:], dtype=np.float32), data)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_request_and_response(tritium, encoding):
    compress = gzip.compress if encoding == "gzip" else zlib.compress
    decompress = gzip.decompress if encoding == "gzip" else zlib.decompress
    body = compress(json.dumps(add_sub_json(A, B)).encode())
    status, headers, data = request(tritium, "POST", ADD_SUB, body, {"Content-Encoding": encoding, "Accept-Encoding": encoding})
    assert status == 200, data
    assert headers.get("content-encoding") == encoding, headers
    check_add_sub_json(decompress(data))
    # Binary response: Inference-Header-Content-Length counts the JSON of the inflated body.
    body, header_len = add_sub_binary(A, B)
    headers = {"Inference-Header-Content-Length": str(header_len), "Accept-Encoding": encoding}
    status, headers, data = request(tritium, "POST", ADD_SUB, body, headers)
    assert status == 200 and headers.get("content-encoding") == encoding, (status, headers)
    plain, n = decompress(data), int(headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(plain[n:], dtype=np.int32), A + B)


def test_unsupported_content_encoding(tritium):
    status, _, data = request(tritium, "POST", ADD_SUB, json.dumps(add_sub_json(A, B)).encode(), {"Content-Encoding": "br"})
    assert_error_body(status, data, 501)  # Triton 2.51: {"error":"Unsupported compression type"}
    assert_still_serving(tritium)


# --- connections: keep-alive, h2c, many at once, curl ------------------------------------------------------


def test_keep_alive_many_requests(tritium):
    conn = http.client.HTTPConnection("127.0.0.1", tritium.http_port, timeout=TIMEOUT_S)
    try:
        conn.connect()
        sock = conn.sock
        body = json.dumps(add_sub_json(A, B)).encode()
        for i in range(100):
            if i % 2:
                status, headers, data = call(conn, "POST", ADD_SUB, body)
                check_add_sub_json(data)
            else:
                status, headers, data = call(conn, "GET", "/v2/health/ready")
            assert status == 200 and headers.get("connection", "").lower() != "close", (i, headers)
            assert conn.sock is sock, f"request {i} needed a new connection"
    finally:
        conn.close()


def h2c(server, requests: list[tuple[str, str, bytes | None]]) -> list[tuple[int, bytes]]:
    """Sends (method, path, body) requests as concurrent streams of one HTTP/2 prior-knowledge connection."""
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT_S)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    streams: dict[int, dict] = {}
    for method, path, body in requests:
        stream = conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{server.http_port}")]
        if body is not None:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        conn.send_headers(stream, headers, end_stream=body is None)
        if body is not None:
            conn.send_data(stream, body, end_stream=True)  # small: inside the default 64 KiB window
        streams[stream] = {"status": None, "data": b"", "done": False}
    try:
        sock.sendall(conn.data_to_send())
        while not all(s["done"] for s in streams.values()):
            received = sock.recv(65536)
            assert received, "the server closed the HTTP/2 connection"
            for event in conn.receive_data(received):
                if isinstance(event, h2.events.ResponseReceived):
                    streams[event.stream_id]["status"] = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    streams[event.stream_id]["data"] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    streams[event.stream_id]["done"] = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return [(s["status"], s["data"]) for s in streams.values()]


def test_h2c_prior_knowledge(tritium):
    (ready, _), (infer, data), (metadata, meta) = h2c(tritium, [
        ("GET", "/v2/health/ready", None),
        ("POST", ADD_SUB, json.dumps(add_sub_json(A, B)).encode()),
        ("GET", "/v2/models/identity", None),
    ])
    assert (ready, infer, metadata) == (200, 200, 200), (ready, infer, metadata, data[:300])
    check_add_sub_json(data)
    assert json.loads(meta)["name"] == "identity"


def test_many_concurrent_keep_alive_connections(tritium):
    clients, rounds = 48, 10
    barrier = threading.Barrier(clients)
    failures: list[str] = []

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", tritium.http_port, timeout=TIMEOUT_S)
        try:
            conn.connect()
            barrier.wait(timeout=TIMEOUT_S)  # every connection is open before any request
            sock = conn.sock
            for r in range(rounds):
                data = np.full(4, index * 100 + r, dtype=np.float32)
                body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": data.tolist()}]})
                status, _, out = call(conn, "POST", "/v2/models/identity/infer", body.encode())
                if status != 200 or json.loads(out)["outputs"][0]["data"] != data.tolist() or conn.sock is not sock:
                    failures.append(f"client {index} round {r}: {status} {out[:200]!r}")
                    return
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"client {index}: {e!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert failures == [], failures[:5]


def curl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    cmd = ["curl", "-sS", "--max-time", str(TIMEOUT_S), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT_S + 10)


def test_curl(tritium):
    proc = curl("-o", "/dev/null", "-w", "%{http_code}", f"{tritium.http_url}/v2/health/ready")
    assert proc.stdout == b"200", proc
    body = json.dumps(add_sub_json(A, B)).encode()
    url = f"{tritium.http_url}{ADD_SUB}"
    proc = curl("--fail", "-H", "Content-Type: application/json", "--data-binary", "@-", url, stdin=body)
    assert proc.returncode == 0, proc.stderr
    check_add_sub_json(proc.stdout)
    proc = curl("--fail", "--compressed", "--data-binary", "@-", url, stdin=body)
    assert proc.returncode == 0, proc.stderr
    check_add_sub_json(proc.stdout)


def test_curl_http2_prior_knowledge(tritium):
    if b"HTTP2" not in curl("-V").stdout:
        pytest.skip("this curl has no HTTP/2")
    url = f"{tritium.http_url}/v2/health/ready"
    proc = curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", url)
    assert proc.stdout == b"200 2", proc


# --- refusals: the server answers with an error and goes on serving ----------------------------------------


def test_malformed_json(tritium):
    for body in (b"{not json", b'{"inputs": [', b"[1, 2", b"\xff\xfe"):
        status, _, data = request(tritium, "POST", ADD_SUB, body, {"Content-Type": "application/json"})
        assert_error_body(status, data, MALFORMED_JSON_STATUS)
    assert_still_serving(tritium)


def test_trailing_garbage(tritium):
    # Triton 2.51: 500 "failed to parse the request JSON buffer: The document root must not be followed by other values. at N".
    # (It stops reading at a NUL byte, so JSON + b"\x00anything" is a 200 there; not tested either way.)
    document = json.dumps(add_sub_json(A, B)).encode()
    for tail in (b"garbage", b"{}", b"]"):
        status, _, data = request(tritium, "POST", ADD_SUB, document + tail)
        assert_error_body(status, data, MALFORMED_JSON_STATUS)
    # Bytes after the declared binary tensors: Triton 2.51's 400 "unexpected additional input data for model 'add_sub'".
    body, header_len = add_sub_binary(A, B)
    status, _, data = request(tritium, "POST", ADD_SUB, body + b"xxxx", {"Inference-Header-Content-Length": str(header_len)})
    assert "unexpected additional input data for model 'add_sub'" in assert_error_body(status, data, 400)
    assert_still_serving(tritium)


def test_binary_header_length_larger_than_body(tritium):
    body, header_len = add_sub_binary(A, B)
    for declared in (len(body) + 100, len(body) + 1, -5):
        # Triton 2.51: 400 "inference header size should be in range (0, <body length>), got: <declared>".
        status, _, data = request(tritium, "POST", ADD_SUB, body, {"Inference-Header-Content-Length": str(declared)})
        assert_error_body(status, data, 400)
    # Fewer tensor bytes than binary_data_size says. Triton 2.51: 400 "unexpected size for input 'INPUT1', expecting 10
    # additional bytes for model 'add_sub'".
    status, _, data = request(tritium, "POST", ADD_SUB, body[:-10], {"Inference-Header-Content-Length": str(header_len)})
    assert "'INPUT1'" in assert_error_body(status, data, 400)
    assert_still_serving(tritium)


def test_unknown_paths_and_methods(tritium):
    unknown = (
        ("GET", "/v2/nope"), ("GET", "/nope"), ("POST", "/v2/models/identity/nope"),
        ("POST", "/v2/models/identity/versions/abc/infer"),  # Triton routes only numeric versions
    )
    for method, path in unknown:
        status, _, data = request(tritium, method, path, b"{}" if method == "POST" else None)
        assert_error_body(status, data, 404)  # Triton 2.51: {"error":"Not Found"}
    for method, path in (("GET", "/v2/models/identity/infer"), ("POST", "/v2/health/ready")):
        status, _, data = request(tritium, method, path, b"{}" if method == "POST" else None)
        assert_error_body(status, data, 405)  # Triton 2.51: {"error":"Method Not Allowed"}
    status, _, data = request(tritium, "POST", "/v2/models/no_such_model/infer", json.dumps(add_sub_json(A, B)).encode())
    assert assert_error_body(status, data, 404) == "Request for unknown model: 'no_such_model' is not found"
    assert_still_serving(tritium)


@pytest.fixture
def limited(start_tritium):
    """A server whose HTTP bodies may be at most SMALL_BODY_LIMIT bytes."""
    return start_tritium("--http-max-body-bytes", str(SMALL_BODY_LIMIT))


def padded_identity_body(total: int) -> bytes:
    """A valid identity infer request padded with whitespace to exactly `total` bytes."""
    document = json.dumps({"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}]}).encode()
    return document + b" " * (total - len(document))


def test_body_over_limit_is_413(limited):
    status, _, data = request(limited, "POST", "/v2/models/identity/infer", padded_identity_body(SMALL_BODY_LIMIT - 16))
    assert status == 200, data
    status, data = send_tolerating_early_answer(
        limited, "/v2/models/identity/infer", padded_identity_body(SMALL_BODY_LIMIT + 4096),
        {"Content-Length": str(SMALL_BODY_LIMIT + 4096)},
    )
    assert status == 413, data[:300]
    # Chunked, so no Content-Length to refuse up front: refused once the limit is crossed.
    chunks = iter([padded_identity_body(8192)] + [b" " * 8192] * 16)
    status, data = send_tolerating_early_answer(limited, "/v2/models/identity/infer", chunks, {"Transfer-Encoding": "chunked"})
    assert status == 413, data[:300]
    assert_still_serving(limited)


def bomb(encoding: str, inflated: int) -> bytes:
    """A small compressed identity request whose JSON, inflated, is `inflated` bytes (mostly whitespace)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    head = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode()
    parts = [compressor.compress(head)]
    chunk = b" " * (1 << 20)
    for _ in range(inflated >> 20):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compression_bomb_is_refused(tritium, limited, encoding):
    # Triton 2.51 has no limit here: it inflated a 128 MiB gzip bomb and answered 200.
    for server, limit, inflated in ((limited, SMALL_BODY_LIMIT, 8 << 20), (tritium, DEFAULT_BODY_LIMIT, 256 << 20)):
        body = bomb(encoding, inflated)
        assert len(body) < limit < inflated  # only the inflated body is over the limit
        status, data = send_tolerating_early_answer(
            server, "/v2/models/identity/infer", body, {"Content-Encoding": encoding, "Content-Length": str(len(body))},
        )
        assert status in (400, 413), (status, data[:300])
        assert "error" in json.loads(data)
        assert_still_serving(server)
