"""`tritium serve -i` with the real SmolLM2: lines on stdin are chat turns answered on stdout
(greedy-free, so only the shape is checked), `/reset` forgets the conversation, and the end of
input stops the server cleanly while the HTTP port served requests meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from conftest import LLM_NAME, LLM_START_TIMEOUT, model_paths
from helpers import start_server

pytestmark = pytest.mark.llm  # SmolLM2 through model_paths()


def wait_for(server, predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}; stdout so far: {server.stdout_lines!r}"
        time.sleep(0.05)


def running_sequences(server) -> float:
    with urllib.request.urlopen(server.http_url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("tritium_llm_engine_running_sequences")]
    assert lines, "no running-sequences gauge in /metrics"
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


# The sampled answer may run to the context's end on a debug build: the test's own 900 s wait for it,
# not pytest.ini's 300 s, is the bound (a fresh-clone run hit the 300 s).
@pytest.mark.timeout(1000)
def test_a_terminal_chat_then_end_of_input_stops_the_server():
    gguf, _ = model_paths()
    server = start_server("--model-path", str(gguf), "--model-name", LLM_NAME, "-i", timeout=LLM_START_TIMEOUT, stdin=subprocess.PIPE)
    try:
        wait_for(server, lambda: any(f"Chatting with {LLM_NAME}" in line for line in server.stdout_lines), "no greeting")
        assert server.proc.stdin is not None
        server.proc.stdin.write("What is a dog?\n")
        server.proc.stdin.flush()
        # The answer ends with a newline and the next prompt: at least two more lines after the greeting.
        wait_for(server, lambda: len(server.stdout_lines) >= 3 and server.proc.poll() is None, "no answer")
        answer = "\n".join(server.stdout_lines[2:])
        assert answer.strip().lstrip(">").strip(), server.stdout_lines
        assert "[error" not in answer, answer

        # The HTTP door works while the terminal chat runs.
        with urllib.request.urlopen(server.http_url + "/v1/models", timeout=30) as reply:
            assert LLM_NAME in [m["id"] for m in json.load(reply)["data"]]

        # The answer is sampled, so its length varies (up to the context): the session reads its next
        # line only once the answer is complete, so wait for the engine to finish it first.
        wait_for(server, lambda: running_sequences(server) == 0, "the answer never ended", timeout=900)
        server.proc.stdin.write("/reset\n")
        server.proc.stdin.close()
        assert server.proc.wait(timeout=60) == 0, server.stderr()
    finally:
        server.stop()
        server.stderr_path.unlink(missing_ok=True)
