"""`Replay`: an `engine-replay` process (tests/src/bin/engine_replay.rs), a vLLM gRPC engine played back from
the frames recorded with the real one in `tests/fixtures/engine_grpc/` (re-recorded with
`bash scripts/test-engines.sh --record`), and the recorded exchange the tests compare with."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from helpers import REPO, tritium_bin

FIXTURE = REPO / "tests" / "fixtures" / "engine_grpc"
EXCHANGE = json.loads((FIXTURE / "exchange.json").read_text())
MODEL = "smollm2"


class Replay:
    """A running `engine-replay` process."""

    def __init__(self, *args: str):
        binary = tritium_bin().parent / "engine-replay"
        if not binary.is_file():
            pytest.fail(f"{binary} not found: run `cargo build -p tritium-tests --bin engine-replay`")
        self.proc = subprocess.Popen([str(binary), "--fixture", str(FIXTURE), *args], stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        assert first.startswith("listening on "), first
        self.address = first.removeprefix("listening on ")
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
