"""Send one HTTP case (see http_cases.py) over plain HTTP/1.1 and turn the reply into the recorded form.

Recorded form of a reply:
    {"status": int,
     "headers": {name: value} for content-type, content-encoding, inference-header-content-length, content-length
                (lower-case names, only those present),
     "body": one of
        None                                   empty body
        <JSON value>                           the (decompressed) body parsed as JSON
        {"json": <JSON>, "binary_base64": str} a binary-extension reply split at Inference-Header-Content-Length
        {"sse": [<JSON or {"text": line}>...]} a text/event-stream reply, one entry per `data:` line
        {"base64": str}                        anything else
    }
A compressed reply (Content-Encoding gzip/deflate) is decompressed before it is parsed; the header is kept.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import time
import zlib
from urllib.parse import urlsplit

RECORDED_HEADERS = ("content-type", "content-encoding", "inference-header-content-length", "content-length")


def encode_body(case: dict, backend: str | None = None) -> tuple[bytes, dict]:
    """The request bytes and headers of a case. `binary`: body is {"json": obj, "binary": [bytes, ...]} and the
    Inference-Header-Content-Length header is the JSON's length unless the case sets it itself. `encode`: gzip or
    deflate the finished body and set Content-Encoding."""
    headers = dict(case.get("headers") or {})
    body = case.get("body")
    if case.get("binary"):
        head = json.dumps(body["json"], separators=(",", ":")).encode()
        data = head + b"".join(body.get("binary", []))
        if not any(k.lower() == "inference-header-content-length" for k in headers):
            headers["Inference-Header-Content-Length"] = str(len(head))
    elif body is None:
        data = b""
    elif isinstance(body, (bytes, bytearray)):
        data = bytes(body)
    else:
        data = json.dumps(body, separators=(",", ":")).encode()
    if backend is not None:
        data = data.replace(b"@BACKEND@", backend.encode())
    encoding = case.get("encode")
    if encoding == "gzip":
        data = gzip.compress(data, mtime=0)
    elif encoding == "deflate":
        data = zlib.compress(data)
    if encoding:
        headers["Content-Encoding"] = encoding
    return data, headers


def send(base_url: str, case: dict, timeout: float = 30.0, backend: str | None = None) -> tuple[int, dict, bytes]:
    """Send a case; return (status, lower-cased headers, raw body)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        data, headers = encode_body(case, backend)
        method = case.get("method", "GET")
        # http.client adds Content-Length only for bodies; send it always for POST/PUT so both servers see a length.
        if data or method in ("POST", "PUT"):
            headers.setdefault("Content-Length", str(len(data)))
        conn.putrequest(method, case["path"], skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        if data:
            conn.send(data)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw
    finally:
        conn.close()


def _decompress(raw: bytes, encoding: str | None) -> bytes:
    if not raw or not encoding:
        return raw
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        try:
            return zlib.decompress(raw)
        except zlib.error:
            return zlib.decompress(raw, -zlib.MAX_WBITS)  # raw deflate without the zlib wrapper
    return raw


def _json_or_none(data: bytes):
    try:
        return True, json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return False, None


def normalize(status: int, headers: dict, raw: bytes) -> dict:
    kept = {k: headers[k] for k in RECORDED_HEADERS if k in headers}
    encoding = headers.get("content-encoding")
    data = _decompress(raw, encoding)
    ctype = headers.get("content-type", "")
    header_len = headers.get("inference-header-content-length")
    if not data:
        body = None
    elif header_len is not None:
        n = int(header_len)
        ok, head = _json_or_none(data[:n])
        body = {"json": head if ok else {"base64": base64.b64encode(data[:n]).decode()},
                "binary_base64": base64.b64encode(data[n:]).decode()}
    elif ctype.startswith("text/event-stream"):
        events = []
        for line in data.decode("utf-8", "replace").split("\n"):
            if line.startswith("data:"):
                payload = line[5:].strip()
                ok, value = _json_or_none(payload.encode())
                events.append(value if ok else {"text": payload})
            elif line.strip():
                events.append({"line": line})
        body = {"sse": events}
    else:
        ok, value = _json_or_none(data)
        body = value if ok else {"base64": base64.b64encode(data).decode()}
    return {"status": status, "headers": kept, "body": body}


def replay(base_url: str, case: dict, timeout: float = 30.0, backend: str | None = None) -> dict:
    try:
        return normalize(*send(base_url, case, timeout, backend))
    except (OSError, http.client.HTTPException) as err:
        return {"status": None, "headers": {}, "body": None, "transport_error": f"{type(err).__name__}: {err}"}


def _index_state(base_url: str, model: str) -> str | None:
    """The model's state in POST /v2/repository/index ("absent" if not listed), None if the index fails."""
    reply = replay(base_url, {"method": "POST", "path": "/v2/repository/index", "body": b""}, timeout=5)
    if reply["status"] != 200 or not isinstance(reply["body"], list):
        return None
    for entry in reply["body"]:
        if isinstance(entry, dict) and entry.get("name") == model:
            return entry.get("state")
    return "absent"


def wait_for_state(base_url: str, model: str, state: str, timeout: float = 15.0) -> None:
    """Poll the repository index until `model` is in `state`; give up quietly after `timeout` or when the index
    itself fails (the case that follows then shows what the server answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _index_state(base_url, model)
        if now is None or now == state:
            return
        time.sleep(0.1)


def read_shm(case: dict) -> dict:
    """The pseudo-case SHM_READ: the bytes of a system shared-memory segment, as a reply-like record."""
    with open(f"/dev/shm/{case['path']}", "rb") as f:  # POSIX shared memory lives there on Linux
        f.seek(case["offset"])
        data = f.read(case["size"])
    return {"status": 0, "headers": {}, "body": {"base64": base64.b64encode(data).decode()}}


def run_cases(base_url: str, cases: list[dict], backends: dict[str, str] | None = None, timeout: float = 30.0) -> dict:
    """Send every case in order; return {case id: recorded reply}. `backends` maps a model name to what
    "@BACKEND@" becomes in its cases (None: "python", as on Triton)."""
    results = {}
    for case in cases:
        if case.get("method") == "SHM_READ":
            results[case["id"]] = read_shm(case)
            continue
        if "wait" in case:
            wait_for_state(base_url, case["wait"]["model"], case["wait"]["state"])
        backend = None
        if "backend_model" in case:
            backend = (backends or {}).get(case["backend_model"], "python")
        results[case["id"]] = replay(base_url, case, timeout, backend)
    return results
