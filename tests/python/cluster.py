"""Real etcd and NATS servers for the distributed tests, on 127.0.0.1 with ports the servers pick
themselves (etcd `:0`, nats-server `-p -1`) read back from their logs, and temporary data dirs.
Installed from Debian by scripts/test.sh (`etcd-server`, `nats-server`)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Callable

import pytest

START_TIMEOUT = 30.0


@dataclass
class Service:
    """A running etcd or nats-server child and the address it serves clients on."""

    name: str
    proc: subprocess.Popen
    address: str
    workdir: tempfile.TemporaryDirectory
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.workdir.cleanup()


def _start(name: str, argv: list[str], find_address: Callable[[str], str | None], workdir: tempfile.TemporaryDirectory) -> Service:
    if shutil.which(argv[0]) is None:
        pytest.fail(f"`{argv[0]}` is not installed: the distributed tests need Debian's etcd-server and nats-server (scripts/test.sh installs them)")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    log: list[str] = []
    found: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        # Drains the log for the server's whole life, so it never blocks on a full pipe.
        assert proc.stdout is not None
        announced = False
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            if not announced and (address := find_address(line)):
                announced = True
                found.put(address)
        found.put(None)

    threading.Thread(target=pump, name=f"{name}-log", daemon=True).start()
    try:
        address = found.get(timeout=START_TIMEOUT)
    except queue.Empty:
        address = None
    if address is None:
        proc.kill()
        proc.wait(timeout=10)
        workdir.cleanup()
        pytest.fail(f"{name} did not start serving clients:\n" + "\n".join(log[-30:]))
    return Service(name=name, proc=proc, address=address, workdir=workdir, log=log)


def _etcd_address(line: str) -> str | None:
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if str(entry.get("msg", "")).startswith("serving client traffic"):
        return f"http://{entry['address']}"
    return None


def _nats_address(line: str) -> str | None:
    marker = "Listening for client connections on "
    if marker in line:
        return "nats://" + line.split(marker, 1)[1].strip()
    return None


def start_etcd(client_port: int = 0, tls: tuple[str, str, str] | None = None) -> Service:
    """An etcd on a port it picks, or on `client_port` (its JSON gateway dials the advertised client
    address, so a test that uses the gateway gives it a real port); with `tls` (certificate, key, CA)
    its clients speak TLS and must show a certificate that CA signed."""
    workdir = tempfile.TemporaryDirectory(prefix="tritium-etcd-")
    scheme = "https" if tls else "http"
    argv = [
        "etcd",
        "--name=test",
        f"--data-dir={workdir.name}/data",
        f"--listen-client-urls={scheme}://127.0.0.1:{client_port}",
        f"--advertise-client-urls={scheme}://127.0.0.1:{client_port}",
        "--listen-peer-urls=http://127.0.0.1:0",
        "--initial-advertise-peer-urls=http://127.0.0.1:0",
        "--initial-cluster=test=http://127.0.0.1:0",
        "--logger=zap",
        "--log-outputs=stderr",
    ]
    if tls:
        cert, key, ca = tls
        argv += [f"--cert-file={cert}", f"--key-file={key}", "--client-cert-auth", f"--trusted-ca-file={ca}"]
    return _start("etcd", argv, lambda line: (found := _etcd_address(line)) and found.replace("http://", f"{scheme}://", 1), workdir)


def start_nats(monitor: bool = False, *extra: str) -> Service:
    """A nats-server on a port it picks; `monitor` also serves its HTTP monitoring (see `nats_monitor`);
    `extra` are more of its flags (`--auth TOKEN`, `--user U --pass P`, ...)."""
    workdir = tempfile.TemporaryDirectory(prefix="tritium-nats-")
    argv = ["nats-server", "-a", "127.0.0.1", "-p", "-1", *(["-m", "-1"] if monitor else []), *extra]
    return _start("nats-server", argv, _nats_address, workdir)


def nats_monitor(nats: Service) -> str:
    """The monitoring URL of a nats-server started with `monitor=True`."""
    marker = "Starting http monitor on "
    for line in nats.log:
        if marker in line:
            return "http://" + line.split(marker, 1)[1].strip()
    pytest.fail("nats-server was started without monitoring")


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> float:
    """Polls `condition` until it holds; returns the seconds it took, fails the test at `timeout`."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout:.1f}s waiting for: {what}")
        time.sleep(every)


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample of a Prometheus/OpenMetrics exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            total += float(value)
    return total


def scrape(frontend) -> str:
    """A frontend's /metrics text."""
    with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
        return response.read().decode()


def workers_serving(frontend, model: str) -> int:
    """The workers the frontend's router has for `model`."""
    return int(metric(scrape(frontend), "tritium_router_workers", f'model="{model}"'))


def listed_models(frontend) -> list[str]:
    """The model ids on the frontend's /v1/models (a worker's model shows once its card has arrived)."""
    with urllib.request.urlopen(f"{frontend.http_url}/v1/models", timeout=10) as response:
        return [model["id"] for model in json.load(response)["data"]]


def stop_cluster(processes: list, *services: Service) -> None:
    """Stops Tritium processes (newest first, their stderr logs removed), then etcd and NATS."""
    for process in reversed(processes):
        process.stop()
        process.stderr_path.unlink(missing_ok=True)
    for service in services:
        service.stop()


# Words for long prompts that tokenize predictably (each at least one token).
WORDS = (
    "river mountain lantern harbour meadow violin copper orchard glacier parcel ribbon canyon pepper saddle "
    "thunder marble falcon blanket compass velvet cinder ladder pilgrim quartz"
).split()


def cluster_args(etcd: Service, nats: Service, namespace: str) -> list[str]:
    """The flags that put a frontend or worker on `etcd` and `nats`, in a fresh namespace starting with
    `namespace`, with a 2-second lease."""
    return [
        "--discovery", "etcd", "--etcd-endpoints", etcd.address, "--events", "nats", "--nats-url", nats.address,
        "--namespace", f"{namespace}-{uuid.uuid4().hex[:8]}", "--lease-ttl-secs", "2",
    ]  # fmt: skip


def etcd_gateway(etcd: Service, path: str, body: dict, token: str | None = None) -> dict:
    """A call to etcd's JSON gateway (there is no etcdctl here), with an auth `token` once auth is on; retried while
    etcd is still electing its leader (503)."""
    headers = {"content-type": "application/json"} | ({"authorization": token} if token else {})
    request = urllib.request.Request(etcd.address + path, data=json.dumps(body).encode(), headers=headers)
    answer: dict = {}

    def answered() -> bool:
        nonlocal answer
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                answer = json.loads(response.read())
                return True
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            return False

    wait_until(answered, 30, f"etcd answering {path}")
    return answer
