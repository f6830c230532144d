"""A real redis-server for the tests that share a Redis between Tritium processes (the response cache, the
Responses API's shared store): Debian's redis-server (scripts/install-services.sh), no persistence, on
127.0.0.1 at a port chosen by binding port 0."""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest

from helpers import REPO, needs, wait_for

ROOT = REPO


def redis_binary() -> str:
    found = shutil.which("redis-server") or str(ROOT / ".tools/services/bin/redis-server")
    if not pathlib.Path(found).exists():
        pytest.fail("`redis-server` is not installed: scripts/install-services.sh installs Debian's redis-server")
    return found


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """A redis-server with no persistence on a port chosen by binding port 0 (tried again if taken)."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="tritium-redis-")
        for _ in range(5):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            argv = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            self.process = subprocess.Popen(
                argv + ["--dir", self.dir.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if wait_for(lambda: redis_ping(self.port) or self.process.poll() is not None, 30) and self.process.poll() is None:
                return
            self.stop()
        pytest.fail("redis-server did not start")

    @property
    def flag(self) -> str:
        return f"redis,host=127.0.0.1,port={self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@pytest.fixture
@needs("redis")
def redis():
    server = Redis()
    yield server
    server.stop()
    server.dir.cleanup()
