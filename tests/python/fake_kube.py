"""A fake Kubernetes API server for the discovery tests: the part of the API that Kubernetes
discovery uses, over plain HTTP on 127.0.0.1, with the real protocol's shapes.

It serves namespaced DynamoWorkerMetadata objects (`nvidia.com/v1alpha1`) and EndpointSlices
(`discovery.k8s.io/v1`): list (with label selectors and a collection resourceVersion), watch
(chunked newline-delimited events from a resourceVersion; `410 Gone` in the stream for one older
than the last compaction), get, server-side apply (PATCH `application/apply-patch+yaml`) and
delete, with Kubernetes' Status errors. The test plays the controllers: it writes EndpointSlices
as the EndpointSlice controller would, deletes pods (their owned objects go, as the garbage
collector does) and compacts history to force re-lists."""

from __future__ import annotations

import json
import pathlib
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METADATA = ("nvidia.com/v1alpha1", "dynamoworkermetadatas", "DynamoWorkerMetadata")
SLICES = ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice")
DYNAMO_SLICE_LABELS = {"nvidia.com/dynamo-discovery-backend": "kubernetes", "nvidia.com/dynamo-discovery-enabled": "true"}


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}


class FakeKube:
    def __init__(self, namespace: str = "tritium-test", crd_installed: bool = True) -> None:
        self.namespace = namespace
        self.crd_installed = crd_installed
        self.lock = threading.Condition()
        self.version = 1
        self.compacted = 0
        # (plural, name) -> object; events: (resourceVersion, plural, type, object)
        self.objects: dict[tuple[str, str], dict] = {}
        self.history: list[tuple[int, str, str, dict]] = []
        self.requests: list[tuple[str, str]] = []
        self.closing = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-kube", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, folder: pathlib.Path, namespace: str | None = None) -> pathlib.Path:
        """A kubeconfig for this server whose context names `namespace` (default: the one served)."""
        path = folder / "kubeconfig.json"  # JSON is YAML
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace or self.namespace}}],
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        with self.lock:
            self.closing = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # The test's side: the controllers' writes, and what the server holds.

    def get(self, plural: str, name: str) -> dict | None:
        with self.lock:
            return self.objects.get((plural, name))

    def names(self, plural: str) -> list[str]:
        with self.lock:
            return sorted(name for (kind, name) in self.objects if kind == plural)

    def set_slice(self, name: str, ready: dict[str, bool], labels: dict[str, str] | None = None) -> None:
        """An EndpointSlice of Dynamo's labels (or `labels`) with one endpoint per pod (uid `uid-{pod}`, as the
        tests name their pods' uids)."""
        endpoints = [{"addresses": ["10.0.0.1"], "conditions": {"ready": r}, "targetRef": {"kind": "Pod", "name": pod, "namespace": self.namespace, "uid": f"uid-{pod}"}}
                     for pod, r in ready.items()]  # fmt: skip
        body = {"apiVersion": SLICES[0], "kind": SLICES[2], "addressType": "IPv4", "endpoints": endpoints,
                "metadata": {"name": name, "namespace": self.namespace, "labels": labels if labels is not None else DYNAMO_SLICE_LABELS}}  # fmt: skip
        with self.lock:
            self._store("endpointslices", name, body)

    def delete_pod(self, pod: str) -> None:
        """What deleting a pod does: the objects it owns are collected."""
        with self.lock:
            for (plural, name), body in list(self.objects.items()):
                owners = body.get("metadata", {}).get("ownerReferences") or []
                if any(o.get("kind") == "Pod" and o.get("name") == pod for o in owners):
                    self._remove(plural, name)

    def compact(self) -> None:
        """Forgets history and ends every watch: watchers must list again (410 Gone)."""
        with self.lock:
            self.version += 1
            self.compacted = self.version
            self.history.clear()
            self.lock.notify_all()

    # Storage, under the lock.

    def _store(self, plural: str, name: str, body: dict) -> tuple[dict, bool]:
        self.version += 1
        existing = self.objects.get((plural, name))
        metadata = body.setdefault("metadata", {})
        metadata["namespace"] = self.namespace
        metadata["uid"] = existing["metadata"]["uid"] if existing else str(uuid.uuid4())
        metadata["resourceVersion"] = str(self.version)
        self.objects[(plural, name)] = body
        self.history.append((self.version, plural, "MODIFIED" if existing else "ADDED", body))
        self.lock.notify_all()
        return body, existing is None

    def _remove(self, plural: str, name: str) -> dict | None:
        body = self.objects.pop((plural, name), None)
        if body is not None:
            self.version += 1
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
            self.history.append((self.version, plural, "DELETED", body))
            self.lock.notify_all()
        return body

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def send_json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def route(self):
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                parts = parsed.path.strip("/").split("/")
                # apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]
                if len(parts) < 6 or parts[0] != "apis" or parts[3] != "namespaces":
                    return None
                api_version, namespace, plural = f"{parts[1]}/{parts[2]}", parts[4], parts[5]
                kind = {METADATA[1]: METADATA, SLICES[1]: SLICES}.get(plural)
                if kind is None or kind[0] != api_version or namespace != fake.namespace:
                    return None
                if plural == METADATA[1] and not fake.crd_installed:
                    return None
                return kind, (parts[6] if len(parts) > 6 else None), query

            def not_found(self) -> None:
                self.send_json(404, status(404, "NotFound", "the server could not find the requested resource"))

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path))
                route = self.route()
                if route is None:
                    return self.not_found()
                kind, name, query = route
                if name is not None:
                    with fake.lock:
                        body = fake.objects.get((kind[1], name))
                    if body is None:
                        return self.send_json(404, status(404, "NotFound", f'{kind[1]} "{name}" not found'))
                    return self.send_json(200, body)
                if query.get("watch") in ("true", "1"):
                    return self.watch(kind, query)
                selector = parse_selector(query.get("labelSelector", ""))
                with fake.lock:
                    items = [b for (p, _), b in sorted(fake.objects.items()) if p == kind[1] and matches(b, selector)]
                    version = str(fake.version)
                self.send_json(200, {"apiVersion": kind[0], "kind": f"{kind[2]}List", "metadata": {"resourceVersion": version}, "items": items})

            def watch(self, kind, query) -> None:
                selector = parse_selector(query.get("labelSelector", ""))
                since = int(query.get("resourceVersion") or 0)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    with fake.lock:
                        if since < fake.compacted:
                            message = f"too old resource version: {since} ({fake.compacted})"
                            self.chunk({"type": "ERROR", "object": status(410, "Expired", message)})
                            return self.end()
                        compacted = fake.compacted
                        while not fake.closing:
                            for version, plural, kind_of_event, body in fake.history:
                                if version > since and plural == kind[1]:
                                    since = version
                                    if matches(body, selector):
                                        self.chunk({"type": kind_of_event, "object": body})
                            fake.lock.wait(timeout=1)
                            if fake.compacted != compacted:
                                break
                    self.end()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def chunk(self, event: dict) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def end(self) -> None:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True

            def body(self) -> dict:
                length = int(self.headers.get("content-length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_PATCH(self) -> None:
                fake.requests.append(("PATCH", self.path))
                route = self.route()
                if route is None or route[1] is None:
                    return self.not_found()
                kind, name, query = route
                if self.headers.get("content-type") != "application/apply-patch+yaml" or "fieldManager" not in query:
                    return self.send_json(415, status(415, "UnsupportedMediaType", "only server-side apply is served here"))
                body = self.body()
                if body.get("metadata", {}).get("name") != name or body.get("kind") != kind[2]:
                    return self.send_json(400, status(400, "BadRequest", "the applied object must name itself and its kind"))
                with fake.lock:
                    stored, created = fake._store(kind[1], name, body)
                self.send_json(201 if created else 200, stored)

            def do_DELETE(self) -> None:
                fake.requests.append(("DELETE", self.path))
                route = self.route()
                if route is None or route[1] is None:
                    return self.not_found()
                kind, name, _ = route
                self.body()
                with fake.lock:
                    removed = fake._remove(kind[1], name)
                if removed is None:
                    return self.send_json(404, status(404, "NotFound", f'{kind[1]} "{name}" not found'))
                self.send_json(200, removed)

        return Handler


def parse_selector(text: str) -> dict[str, str]:
    return dict(term.split("=", 1) for term in text.split(",") if term)


def matches(body: dict, selector: dict[str, str]) -> bool:
    labels = body.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
