"""HTTP/2 pings on the gRPC port, with raw frames over a socket: a ping flood gets GOAWAY
ENHANCE_YOUR_CALM `too_many_pings` and its connection is closed while the server goes on serving
others (as Triton's gRPC server does); the permissive flags let pings through; the server's own
keepalive ping, left unanswered, closes the connection, and answered, keeps it.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import tritonclient.grpc as grpcclient

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
ENHANCE_YOUR_CALM = 0xB


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class RawH2:
    """A client that speaks HTTP/2 frames by hand (no HPACK: it opens no stream)."""

    def __init__(self, url: str) -> None:
        host, port = url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
        self.buffered = b""

    def _read(self, n: int) -> bytes | None:
        while len(self.buffered) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return None  # closed with our last frames unread: the kernel resets instead of a FIN
            if not chunk:
                return None
            self.buffered += chunk
        taken, self.buffered = self.buffered[:n], self.buffered[n:]
        return taken

    def next(self) -> tuple[int, int, bytes] | None:
        """(type, flags, payload) of the next frame other than SETTINGS; None once the server closed."""
        while True:
            head = self._read(9)
            if head is None:
                return None
            length = int.from_bytes(head[:3], "big")
            payload = self._read(length)
            if payload is None:
                return None
            if head[3] == SETTINGS:
                if not head[4] & ACK:
                    try:
                        self.sock.sendall(frame(SETTINGS, ACK, 0))
                    except OSError:
                        pass
                continue
            return head[3], head[4], payload

    def until(self, kind: int) -> tuple[int, bytes] | None:
        while (got := self.next()) is not None:
            if got[0] == kind:
                return got[1], got[2]
        return None

    def ping(self, n: int) -> None:
        self.sock.sendall(frame(PING, 0, 0, bytes([n]) * 8))

    def closed(self) -> bool:
        """Reads until the server closes (True) or 30 s pass with it open (the socket's timeout raises)."""
        while self.next() is not None:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def served(url: str) -> bool:
    client = grpcclient.InferenceServerClient(url=url)
    try:
        data = np.arange(16, dtype=np.float32)
        inp = grpcclient.InferInput("INPUT0", [16], "FP32")
        inp.set_data_from_numpy(data)
        result = client.infer("identity", [inp])
        return bool(np.array_equal(result.as_numpy("OUTPUT0"), data))
    finally:
        client.close()


def test_a_ping_flood_gets_goaway_too_many_pings_and_only_its_connection_closes(tritium):
    bystander = RawH2(tritium.url)
    flooder = RawH2(tritium.url)
    # The first ping is free and two strikes pass: the fourth ping is one too many. Nothing is sent after it, so
    # the server's close cannot turn into a reset that discards the GOAWAY before it is read.
    for n in range(4):
        flooder.ping(n)
    goaway = flooder.until(GOAWAY)
    assert goaway is not None, "no GOAWAY before the server closed"
    _, payload = goaway
    last_stream, code = struct.unpack(">II", payload[:8])
    assert (last_stream, code, payload[8:]) == (0, ENHANCE_YOUR_CALM, b"too_many_pings")
    assert flooder.closed()
    flooder.close()
    # Another connection, and new clients, are served as before.
    bystander.ping(1)
    assert bystander.until(PING) == (ACK, bytes([1]) * 8)
    bystander.close()
    assert served(tritium.url)


def test_the_first_ping_and_two_strikes_pass_a_third_strike_does_not(tritium):
    client = RawH2(tritium.url)
    for n in range(3):
        client.ping(n)
        assert client.until(PING) == (ACK, bytes([n]) * 8)
    client.ping(3)
    assert client.until(GOAWAY) is not None
    client.close()


def test_permissive_flags_let_pings_through(start_tritium):
    server = start_tritium(
        "--grpc-keepalive-permit-without-calls", "true", "--grpc-http2-min-recv-ping-interval-without-data", "0"
    )
    client = RawH2(server.url)
    for n in range(50):
        client.ping(n)
        assert client.until(PING) == (ACK, bytes([n]) * 8), n
    client.close()
    server = start_tritium("--grpc-http2-max-ping-strikes", "0")
    client = RawH2(server.url)
    for n in range(50):
        client.ping(n)
        assert client.until(PING) == (ACK, bytes([n]) * 8), n
    client.close()


def test_an_unanswered_keepalive_ping_closes_the_connection_and_an_answered_one_keeps_it(start_tritium):
    server = start_tritium("--grpc-keepalive-time", "100", "--grpc-keepalive-timeout", "300")
    silent = RawH2(server.url)
    answering = RawH2(server.url)
    flags, payload = answering.until(PING)
    assert flags == 0
    answering.sock.sendall(frame(PING, ACK, 0, payload))
    got = silent.until(PING)
    assert got is not None and got[0] == 0, "the server pings"
    assert silent.closed(), "not answered: closed"
    silent.close()
    # The answered connection got its second ping (the limit without data is 2), and stays open.
    flags, payload = answering.until(PING)
    answering.sock.sendall(frame(PING, ACK, 0, payload))
    answering.ping(9)
    assert answering.until(PING) == (ACK, bytes([9]) * 8)
    answering.close()
    assert served(server.url)
