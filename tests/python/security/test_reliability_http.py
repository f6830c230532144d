"""Reliability of the HTTP port (issue 46): keep-alive after an early error, JSON numbers out of range, and hostile
clients (slow headers, deep JSON, lying Content-Length, bodies that never end).

An early answer (an unknown model or route, a restricted API) used to leave the request body unread on the socket
without `Connection: close`; hyper then closed the connection and the client's next request on it broke
(`server/src/http/unread.rs` now drains a small rest or says `Connection: close`). The header deadline
(`--http-header-timeout`) now bounds every request's head on a keep-alive connection, not only the first, and the idle
deadline (`--http-idle-timeout`) a request body that stops arriving. Timing is only ever asserted as a generous upper
bound for "was closed eventually".
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
import time

import pytest

from helpers import finish_server, start_server

TIMEOUT_S = 30
KEY, SECRET = "admin-key", "s3cret"
BIG_BODY = b"x" * (320 * 1024)
SMALL_BODY = b"x" * 10_000  # under the 64 KiB the server drains to keep a connection
ROUNDS = 20
HEADER_TIMEOUT_MS = 2000
IDLE_TIMEOUT_MS = 3000
# "Closed eventually": the deadline plus room for a loaded 2-core machine, still well under hyper's own 30 s.
CLOSE_SLACK_S = 15


@pytest.fixture(scope="module")
def server():
    """The built-in repository, with the model-repository API group restricted behind a header."""
    s = start_server("--http-restricted-api", f"model-repository:{KEY}={SECRET}")
    yield s
    finish_server(s)


@pytest.fixture(scope="module")
def guarded():
    """Short header and idle deadlines, so that hostile clients are closed within a test's time."""
    s = start_server("--http-header-timeout", str(HEADER_TIMEOUT_MS), "--http-idle-timeout", str(IDLE_TIMEOUT_MS))
    yield s
    finish_server(s)


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def assert_serving(s) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", s.http_port, timeout=TIMEOUT_S)
    try:
        assert call(conn, "GET", "/v2/health/ready")[0] == 200
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "FP32", "data": [1.5, -2.0]}]})
        status, _, data = call(conn, "POST", "/v2/models/identity/infer", body.encode())
        assert status == 200, data
        assert json.loads(data)["outputs"][0]["data"] == [1.5, -2.0]
    finally:
        conn.close()


# --- keep-alive after an early error ------------------------------------------------------------------------------

EARLY_ERRORS = {
    # Triton 2.51's texts; the infer route looks the model up before it reads the body.
    "missing model": ("/v2/models/no_such_model/infer", 404, "Request for unknown model: 'no_such_model' is not found"),
    "unknown route": ("/v2/no/such/route", 404, "Not Found"),
    "restricted api": ("/v2/repository/index", 403, f"This API is restricted, expecting header '{KEY}'"),
}


@pytest.mark.parametrize("case", EARLY_ERRORS)
@pytest.mark.parametrize("body", [BIG_BODY, SMALL_BODY], ids=["320KB", "10KB"])
def test_an_early_error_leaves_the_connection_usable(server, case, body):
    path, want_status, want_error = EARLY_ERRORS[case]
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        for round_ in range(ROUNDS):
            status, headers, data = call(conn, "POST", path, body, {"Content-Type": "application/json"})
            assert (status, json.loads(data)) == (want_status, {"error": want_error}), (round_, status, data[:300])
            if body is SMALL_BODY:
                # A small rest is read off the socket by the server: the connection itself is kept.
                assert headers.get("connection") != "close", (round_, headers)
                sock = conn.sock
            # A large one closes it, but says so (`Connection: close`), so http.client opens a new one here.
            status, _, data = call(conn, "GET", "/v2/health/ready")
            assert status == 200, (round_, status, data)
            if body is SMALL_BODY:
                assert conn.sock is sock, f"round {round_}: the server closed the connection"
    finally:
        conn.close()


@pytest.mark.parametrize("case", EARLY_ERRORS)
def test_an_answer_before_the_body_is_sent_keeps_the_connection(server, case):
    # The answer comes before any of the body has left the client: the server reads the declared rest (at most 64 KiB)
    # once it arrives, and the connection carries the next request.
    path, want_status, want_error = EARLY_ERRORS[case]
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        for round_ in range(ROUNDS):
            conn.putrequest("POST", path)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(SMALL_BODY)))
            conn.endheaders()
            response = conn.getresponse()
            data = response.read()
            assert (response.status, json.loads(data)) == (want_status, {"error": want_error}), (round_, data[:300])
            assert response.getheader("connection") != "close", round_
            sock = conn.sock
            conn.send(SMALL_BODY)
            assert call(conn, "GET", "/v2/health/ready")[0] == 200, round_
            assert conn.sock is sock, f"round {round_}: the server closed the connection"
    finally:
        conn.close()


# --- JSON numbers out of range -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "shown"),
    [("1e400", "1e400"), ("-1e400", "-1e400"), ("9" * 10_000, "9" * 24 + "… (10000 characters)")],
    ids=["1e400", "-1e400", "10000 digits"],
)
def test_a_number_beyond_a_double_is_a_bad_request_naming_the_input(server, number, shown):
    body = '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":[%s]}]}' % number
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        status, _, data = call(conn, "POST", "/v2/models/identity/infer", body.encode())
        want = f"Unable to parse 'data' of input 'INPUT0': the number {shown} is out of range for FP32"
        assert (status, json.loads(data)) == (400, {"error": want})
        # What a double holds is read as before.
        status, _, data = call(conn, "POST", "/v2/models/identity/infer", body.replace(number, "1e-400").encode())
        assert (status, json.loads(data)["outputs"][0]["data"]) == (200, [0.0])
    finally:
        conn.close()


# --- hostile clients -----------------------------------------------------------------------------------------------


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed `sock` (reading what it may have answered first); never blocks."""
    while True:
        ready, _, _ = select.select([sock], [], [], 0)
        if not ready:
            return False
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True


def wait_closed(socks: list[socket.socket], within_s: float, trickle: bytes | None = None) -> list[int]:
    """Waits until the server has closed every socket, sending one more byte of `trickle` on each open one every second;
    returns the indexes of those still open after `within_s`."""
    open_ = dict(enumerate(socks))
    sent = 0
    deadline = time.monotonic() + within_s
    while open_ and time.monotonic() < deadline:
        for i, sock in list(open_.items()):
            if closed(sock):
                del open_[i]
            elif trickle is not None:
                try:
                    sock.send(trickle[sent % len(trickle) : sent % len(trickle) + 1])
                except OSError:
                    del open_[i]
        sent += 1
        select.select([s for s in open_.values()], [], [], 1.0)
    return sorted(open_)


def read_until_closed(socks: list[socket.socket], within_s: float) -> list[tuple[bytes, bool]]:
    """What the server sent on each socket, and whether it closed it, within `within_s`."""
    answers = {sock: b"" for sock in socks}
    open_ = set(socks)
    deadline = time.monotonic() + within_s
    while open_ and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(open_), [], [], left)
        for sock in ready:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if chunk:
                answers[sock] += chunk
            else:
                open_.discard(sock)
    return [(answers[sock], sock not in open_) for sock in socks]


def raw_connection(s) -> socket.socket:
    return socket.create_connection(("127.0.0.1", s.http_port), timeout=TIMEOUT_S)


SLOW_HEAD = b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Slow: "


def test_slow_headers_do_not_stop_others_and_are_closed_at_the_header_deadline(guarded):
    socks = [raw_connection(guarded) for _ in range(200)]
    try:
        # A quarter first make a whole request, so their slow head is the second on a keep-alive connection.
        for sock in socks[:50]:
            sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        for sock in socks:
            sock.sendall(SLOW_HEAD[:1])
            sock.setblocking(False)
        outcome: list[BaseException | None] = []

        def normal_client() -> None:
            try:
                assert_serving(guarded)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - reported below
                outcome.append(e)

        # A normal client is served while the slow ones hang.
        normal = threading.Thread(target=normal_client)
        normal.start()
        left = wait_closed(socks, HEADER_TIMEOUT_MS / 1000 + CLOSE_SLACK_S, trickle=SLOW_HEAD[1:] + b"a" * 10_000)
        normal.join(TIMEOUT_S)
        assert outcome == [None], f"the normal client was not served: {outcome}"
        assert not left, f"{len(left)} slow connections still open, e.g. #{left[0]} (keep-alive: {left[0] < 50})"
    finally:
        for sock in socks:
            sock.close()
    assert_serving(guarded)


def test_deep_json_is_refused_and_the_server_goes_on(server):
    deep = "[" * 100_000 + "1" + "]" * 100_000
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        for path, body, want_status in [
            # The data reader stops at 64 levels (500, as Triton answers its JSON errors); other members are parsed
            # within serde_json's 128 levels.
            ("/v2/models/identity/infer", '{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],"data":%s}]}' % deep, 500),
            ("/v2/models/identity/infer", '{"parameters":{"a":%s},"inputs":[]}' % deep, 400),
            ("/v1/chat/completions", '{"model":"identity","messages":%s}' % deep, 400),
        ]:
            status, _, data = call(conn, "POST", path, body.encode(), {"Content-Type": "application/json"})
            assert status == want_status, (path, status, data[:300])
            assert json.loads(data)["error"], data[:300]
    finally:
        conn.close()
    assert_serving(server)


def test_a_lying_content_length_then_close_leaves_the_server_serving(guarded):
    for _ in range(20):
        sock = raw_connection(guarded)
        sock.sendall(SLOW_HEAD.split(b"X-Slow")[0] + b"Content-Length: 100000\r\n\r\n" + b'{"inputs":' + b" " * 1000)
        sock.shutdown(socket.SHUT_WR)
        sock.close()
    assert_serving(guarded)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_arriving_is_ended_at_the_idle_deadline(guarded, framing):
    head = SLOW_HEAD.split(b"X-Slow")[0]
    if framing == "chunked":
        start = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"a\r\n{\"inputs\":\r\n"
    else:
        start = head + b"Content-Length: 100000\r\n\r\n" + b'{"inputs":'
    socks = [raw_connection(guarded) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(start)
        assert_serving(guarded)
        answers = read_until_closed(socks, IDLE_TIMEOUT_MS / 1000 + CLOSE_SLACK_S)
        still_open = [i for i, (_, is_closed) in enumerate(answers) if not is_closed]
        assert not still_open, f"{len(still_open)} connections still open, e.g. #{still_open[0]}"
        for answer, _ in answers:
            # 408, and the connection closed after it.
            assert answer.startswith(b"HTTP/1.1 408") and b"--http-idle-timeout" in answer, answer[:300]
            assert b"connection: close" in answer.lower(), answer[:300]
    finally:
        for sock in socks:
            sock.close()
    assert_serving(guarded)
