"""Raw gRPC over HTTP/2 (the `h2` package) for what grpcio cannot send: a message cut short on purpose and a
body compressed beforehand (a "zip bomb" that inflates far past its size on the wire).

Every read has a deadline: a server that neither answers nor closes makes `outcome` return `timed_out`.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.parse
import zlib
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from tritonclient.grpc import service_pb2

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"

# grpc-status numbers (https://grpc.github.io/grpc/core/md_doc_statuscodes.html) by name.
STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
    10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


def grpc_frame(payload: bytes, compressed: bool = False, declared: int | None = None) -> bytes:
    """The 5-byte gRPC message prefix (compressed flag, big-endian length) and the payload; `declared`
    overrides the length the prefix announces."""
    return struct.pack(">BI", 1 if compressed else 0, len(payload) if declared is None else declared) + payload


def bomb_body(model: str, inflated_mib: int, encoding: str) -> bytes:
    """A ModelInferRequest for `model` with one FP32 input of `inflated_mib` MiB of zeros, compressed with
    `encoding` ("gzip" or "deflate"): about a thousandth of its inflated size."""
    elements = inflated_mib * (1 << 20) // 4
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[elements])
    head = request.SerializeToString()
    raw_len = elements * 4
    # Field 7 (raw_input_contents), wire type 2, appended after the other fields: protobuf allows any order.
    head += b"\x3a" + _varint(raw_len)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    parts = [compressor.compress(head)]
    chunk = bytes(1 << 20)
    for _ in range(raw_len >> 20):
        parts.append(compressor.compress(chunk))
    parts.append(compressor.compress(bytes(raw_len & ((1 << 20) - 1))))
    parts.append(compressor.flush())
    return b"".join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@dataclass
class Outcome:
    """How a raw call ended, from the client's side."""

    status: int | None = None  # grpc-status from the headers or trailers
    message: str = ""
    data_bytes: int = 0  # response message bytes received (an answer, not an error)
    reset: int | None = None  # RST_STREAM error code
    goaway: int | None = None  # GOAWAY error code
    closed: bool = False  # the server closed the TCP connection
    timed_out: bool = False
    settings_seen: bool = False  # the server spoke HTTP/2 at all

    def describe(self) -> str:
        if self.status is not None:
            return f"grpc-status {STATUS_NAMES.get(self.status, self.status)}: {self.message[:160]}"
        if self.data_bytes:
            return f"answered with {self.data_bytes} bytes of response data"
        if self.reset is not None:
            return f"stream reset (RST_STREAM code {self.reset})"
        if self.goaway is not None:
            return f"connection ended with GOAWAY code {self.goaway}"
        if self.closed:
            return "connection closed without a status"
        return "no answer before the deadline" if self.timed_out else "no answer"


class RawGrpc:
    """One HTTP/2 connection to 127.0.0.1:`port` speaking gRPC by hand; one stream at a time."""

    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.port = port
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.out = Outcome()
        self._flush()

    def __enter__(self) -> RawGrpc:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def open(self, path: str = INFER_PATH, encoding: str | None = None) -> int:
        stream = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ]
        if encoding:
            headers.append(("grpc-encoding", encoding))
        self.conn.send_headers(stream, headers)
        self._flush()
        return stream

    def send(self, stream: int, data: bytes, end_stream: bool, deadline: float) -> bool:
        """Sends within HTTP/2 flow control; False when the stream or connection ended first (the server
        may answer before it has read everything) or the deadline passed."""
        view = memoryview(data)
        while view:
            if self._finished(stream) or time.monotonic() > deadline:
                return False
            window = min(self.conn.local_flow_control_window(stream), self.conn.max_outbound_frame_size, len(view))
            if window <= 0:
                if not self.pump(deadline, stream):
                    return False
                continue
            try:
                self.conn.send_data(stream, bytes(view[:window]))
                self._flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, OSError):
                return False
            view = view[window:]
        if end_stream:
            try:
                self.conn.end_stream(stream)
                self._flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, OSError):
                return False
        return True

    def _finished(self, stream: int) -> bool:
        o = self.out
        # A GOAWAY with NO_ERROR (0) still lets the open stream finish; any other code ends it.
        return o.status is not None or o.reset is not None or bool(o.goaway) or o.closed

    def pump(self, deadline: float, stream: int) -> bool:
        """Reads once (until the deadline at most) and records what arrived; False once the connection is gone."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.out.timed_out = True
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            self.out.timed_out = True
            return False
        except OSError:
            self.out.closed = True
            return False
        if not data:
            self.out.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.out.message = f"HTTP/2 protocol error from the server: {e}"
            self.out.closed = True
            return False
        for event in events:
            self._record(event, stream)
        try:
            self._flush()
        except OSError:
            self.out.closed = True
            return False
        return not self.out.goaway

    def _record(self, event, stream: int) -> None:
        o = self.out
        if isinstance(event, h2.events.RemoteSettingsChanged):
            o.settings_seen = True
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            headers = dict(event.headers)
            if "grpc-status" in headers:
                o.status = int(headers["grpc-status"])
                o.message = urllib.parse.unquote(headers.get("grpc-message", ""))  # percent-encoded on the wire
        elif isinstance(event, h2.events.DataReceived):
            o.data_bytes += len(event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
            o.reset = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            o.goaway = int(event.error_code)

    def outcome(self, stream: int, deadline: float) -> Outcome:
        """Waits for a status, a reset, a close, response data or the deadline."""
        while not self._finished(stream) and not self.out.data_bytes:
            if not self.pump(deadline, stream):
                break
        return self.out

    def hold(self, seconds: float, stream: int) -> Outcome:
        """Keeps the connection open for `seconds`, reading whatever the server sends."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.pump(deadline, stream):
            pass
        self.out.timed_out = False
        return self.out
