"""A small OTLP trace receiver for the tests: OTLP/HTTP protobuf (POST /v1/traces) and OTLP/gRPC
(TraceService/Export) on 127.0.0.1 ephemeral ports, decoding with the published opentelemetry-proto
messages, and two broken collectors (a closed port, and one that accepts and never answers).

    with OtlpReceiver() as rx:
        start_server(["--trace-config", f"opentelemetry,url={rx.http_url}", ...])
        spans = rx.wait_for(lambda spans: len(spans) >= 3)
"""

import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

# The most one export may carry (the receiver's own bound, so a broken exporter cannot exhaust the test).
MAX_BODY = 64 << 20


def _value(v: common_pb2.AnyValue):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


class Span(dict):
    """One received span: trace_id, span_id, parent_span_id (hex, '' for none), name, kind (the OTLP
    enum's number), start/end (unix ns), attributes, events [(name, ns, attributes)], resource."""

    @property
    def event_names(self) -> list:
        return [e[0] for e in self["events"]]


def _spans(request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list:
    out = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    Span(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=s.kind,
                        start=s.start_time_unix_nano,
                        end=s.end_time_unix_nano,
                        attributes=_attrs(s.attributes),
                        events=[(e.name, e.time_unix_nano, _attrs(e.attributes)) for e in s.events],
                        resource=resource,
                        transport=transport,
                    )
                )
    return out


class OtlpReceiver:
    """Both transports at once; `spans` holds everything received, in arrival order."""

    def __init__(self):
        self.spans: list = []
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != "/v1/traces" or length > MAX_BODY:
                    self.send_response(404 if self.path != "/v1/traces" else 413)
                    self.end_headers()
                    return
                body = self.rfile.read(length)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                receiver._add(_spans(request, "http"))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.http_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1/traces"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (the service's name)
                receiver._add(_spans(request, "grpc"))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", MAX_BODY)]
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.grpc_url = f"http://127.0.0.1:{port}"

    def _add(self, spans: list):
        with self._cond:
            self.spans.extend(spans)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> list:
        """Waits until predicate(spans) is true and returns the spans; fails the test at timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the collector did not get the expected spans; it has {self.spans!r}")
                self._cond.wait(left)
            return list(self.spans)

    def trace(self, trace_id: str) -> list:
        with self._cond:
            return [s for s in self.spans if s["trace_id"] == trace_id]

    def close(self):
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HangingCollector:
    """Accepts connections and reads what comes, never answering."""

    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1/traces"
        self.accepted = 0
        self._conns = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn):
        try:
            while not self._stop.is_set() and conn.recv(65536):
                pass
        except OSError:
            pass

    def close(self):
        self._stop.set()
        for c in self._conns:
            c.close()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
