"""A request is counted against the byte budget (`--max-buffered-request-bytes`) by what the server allocates for it,
not by what was filled (issue 40): a small compressed request that inflates to a gigabyte is refused once the
budget is spent, and the server's peak resident memory on the way stays within the budget plus a small margin.

Before, the inflated message grew in a buffer that doubled, counted by its length: with a 1 GiB budget a gRPC bomb
peaked at 1.8 GiB. Here the budget is 256 MiB and the bombs inflate to 1 GiB, over gRPC (gzip and deflate, sent
with the compressed flag by hand) and HTTP (a gzip body). The peak is read from VmHWM after resetting it
(`/proc/PID/clear_refs`), so each bomb is measured on its own.
"""

from __future__ import annotations

import http.client
import pathlib
import sys
import time
import zlib

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "tests" / "soak"))  # rawgrpc.py, shared with the soak test

from rawgrpc import RawGrpc, bomb_body, grpc_frame  # noqa: E402

BUDGET = 256 << 20
MARGIN = 96 << 20
INFLATED_MIB = 1024


def status_kib(pid: int, field: str) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    try:
        pathlib.Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS of the server here (/proc/PID/clear_refs)")


@pytest.fixture(scope="module")
def server(tritium_module):
    return tritium_module


@pytest.fixture(scope="module")
def tritium_module():
    from helpers import finish_server, start_server

    server = start_server("--max-buffered-request-bytes", str(BUDGET), "--http-max-body-bytes", str(2 << 30))
    yield server
    finish_server(server)


def peak_growth_of(server, send) -> tuple[int, object]:
    pid = server.proc.pid
    before = status_kib(pid, "VmRSS")
    reset_peak(pid)
    outcome = send()
    peak = status_kib(pid, "VmHWM")
    return (peak - before) * 1024, outcome


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_grpc_bomb_is_refused_within_the_budget(server, encoding):
    body = bomb_body("identity", INFLATED_MIB, encoding)
    assert len(body) < 2 << 20

    def send():
        with RawGrpc(server.port, timeout=60) as raw:
            stream = raw.open(encoding=encoding)
            raw.send(stream, grpc_frame(body, compressed=True), end_stream=True, deadline=time.monotonic() + 60)
            return raw.outcome(stream, time.monotonic() + 60)

    growth, outcome = peak_growth_of(server, send)
    print(f"grpc {encoding} bomb: peak RSS +{growth >> 20} MiB (budget {BUDGET >> 20} MiB)")
    assert outcome.status == 8, outcome.describe()  # RESOURCE_EXHAUSTED
    assert "--max-buffered-request-bytes" in outcome.message, outcome.describe()
    assert growth < BUDGET + MARGIN, f"peak RSS grew by {growth >> 20} MiB with a {BUDGET >> 20} MiB budget"


def test_an_http_gzip_bomb_is_refused_within_the_budget(server):
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    body = b"".join([compressor.compress(chunk) for _ in range(INFLATED_MIB)] + [compressor.flush()])
    assert len(body) < 2 << 20

    def send():
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
        try:
            connection.request("POST", "/v2/models/identity/infer", body,
                               {"Content-Encoding": "gzip", "Content-Type": "application/json"})  # fmt: skip
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    growth, (status, text) = peak_growth_of(server, send)
    print(f"http gzip bomb: peak RSS +{growth >> 20} MiB (budget {BUDGET >> 20} MiB)")
    assert status == 503, text
    assert "--max-buffered-request-bytes" in text, text
    assert growth < BUDGET + MARGIN, f"peak RSS grew by {growth >> 20} MiB with a {BUDGET >> 20} MiB budget"
