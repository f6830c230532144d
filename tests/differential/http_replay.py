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
import zlib
from urllib.parse import urlsplit

RECORDED_HEADERS = ("content-type", "content-encoding", "inference-header-content-length", "content-length")


def encode_body(case: dict) -> tuple[bytes, dict]:
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
    encoding = case.get("encode")
    if encoding == "gzip":
        data = gzip.compress(data, mtime=0)
    elif encoding == "deflate":
        data = zlib.compress(data)
    if encoding:
        headers["Content-Encoding"] = encoding
    return data, headers


def send(base_url: str, case: dict, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """Send a case; return (status, lower-cased headers, raw body)."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        data, headers = encode_body(case)
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


def replay(base_url: str, case: dict, timeout: float = 30.0) -> dict:
    try:
        return normalize(*send(base_url, case, timeout))
    except (OSError, http.client.HTTPException) as err:
        return {"status": None, "headers": {}, "body": None, "transport_error": f"{type(err).__name__}: {err}"}
