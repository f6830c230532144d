"""Dynamo 1.6.1's frontend and Tritium's side by side over the same Dynamo workers (issue 57):
`python bench/dynamo_frontend.py` (after `bash scripts/setup-dynamo.sh` and a release build:
TRITIUM_BIN defaults to target/release/tritium). It re-runs itself in a private network namespace
(scripts/in-netns.sh), since Dynamo binds 0.0.0.0.

Starts WORKERS instant `dynamo.mocker` workers (file store, TCP request plane, ZeroMQ events),
Dynamo's frontend (`--router-mode kv`, 8 runtime threads as it needs on 2 cores) and `tritium
serve` with the same flags, then sends each frontend in turn, ROUNDS times alternating, the same
chat completions (PROMPT_CHARS characters of a shared system prompt plus a unique user message,
MAX_TOKENS tokens each) from CONCURRENCY keep-alive connections for SECONDS. Reports per frontend:
requests/s, frontend CPU per request (user + system time of the frontend process over the
round, from /proc), and the ratios Tritium/Dynamo. Writes bench/results/dynamo-frontend-<date>.md.
Environment: WORKERS (2), CONCURRENCY (16), SECONDS (10), ROUNDS (2), PROMPT_CHARS (2000), MAX_TOKENS (8).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if [name for _, name in socket.if_nameindex()] != ["lo"]:
    os.execvp("bash", ["bash", str(REPO / "scripts" / "in-netns.sh"), sys.executable, *sys.argv])

sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(REPO / "tests" / "python" / "dynamo_interop"))
os.environ.setdefault("TRITIUM_BIN", str(REPO / "target" / "release" / "tritium"))

from deployment import DYNAMO_PYTHON, HERE, Deployment, models_at, wait_until  # noqa: E402


def setting(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


WORKERS, CONCURRENCY, SECONDS = setting("WORKERS", 2), setting("CONCURRENCY", 16), setting("SECONDS", 10)
ROUNDS, PROMPT_CHARS, MAX_TOKENS = setting("ROUNDS", 2), setting("PROMPT_CHARS", 2000), setting("MAX_TOKENS", 8)
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, its threads included."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def load(base: str, seconds: float) -> tuple[int, int]:
    """Requests answered and failed in `seconds` from CONCURRENCY connections."""
    host, port = base.removeprefix("http://").split(":")
    system = ("You are a careful assistant. " * (PROMPT_CHARS // 29 + 1))[:PROMPT_CHARS]
    deadline = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body = {"model": "mock", "max_tokens": MAX_TOKENS, "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": f"question {index}-{n}"}]}  # fmt: skip
            try:
                connection.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=60)
                ok = False
            with lock:
                counts[0 if ok else 1] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts[0], counts[1]


def main() -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="dynamo-bench-"))
    model = work / "model"
    subprocess.run([str(DYNAMO_PYTHON), str(HERE / "tiny_model.py"), str(model)], check=True)
    deployment = Deployment(work, model, "bench")
    try:
        for _ in range(WORKERS):
            deployment.mocker("mock")
        tritium = deployment.tritium_frontend()
        dynamo = deployment.dynamo_frontend()
        dynamo_pid = deployment.dynamo[-1].proc.pid
        for base in (tritium.http_url, dynamo):
            wait_until(lambda: "mock" in models_at(base), 120, f"mock listed at {base}")
        frontends = {"tritium": (tritium.http_url, tritium.proc.pid), "dynamo": (dynamo, dynamo_pid)}
        for base, _ in frontends.values():
            load(base, 2)  # warm-up: connections, tokenizers, caches
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in frontends}
        for round_ in range(ROUNDS):
            order = list(frontends) if round_ % 2 == 0 else list(reversed(frontends))
            for name in order:
                base, pid = frontends[name]
                cpu, started = cpu_seconds(pid), time.monotonic()
                ok, failed = load(base, SECONDS)
                elapsed, used = time.monotonic() - started, cpu_seconds(pid) - cpu
                results[name].append((ok / elapsed, used / max(ok, 1) * 1000, failed))
                print(f"round {round_ + 1} {name}: {ok / elapsed:.1f} req/s, {used / max(ok, 1) * 1000:.2f} ms CPU/request, {failed} failed", flush=True)
    finally:
        deployment.stop()
    mean = {name: (sum(r[0] for r in runs) / len(runs), sum(r[1] for r in runs) / len(runs), sum(r[2] for r in runs))
            for name, runs in results.items()}  # fmt: skip
    lines = [
        f"# Dynamo's frontend and Tritium's over the same mocker workers ({datetime.date.today()})",
        "",
        f"`python bench/dynamo_frontend.py` on {platform.node()} ({os.cpu_count()} CPUs); Dynamo 1.6.1 (`ai-dynamo`, "
        f"`ai-dynamo-runtime`), Tritium `{os.environ['TRITIUM_BIN']}`. {WORKERS} instant `dynamo.mocker` workers, file "
        f"store + TCP request plane + ZeroMQ events, `--router-mode kv`; chat completions with a {PROMPT_CHARS}-character "
        f"shared system prompt, {MAX_TOKENS} tokens each, {CONCURRENCY} connections, {SECONDS} s per round, {ROUNDS} "
        "rounds alternating. Workers, both frontends and the client share the machine.",
        "",
        "| frontend | requests/s | frontend CPU per request (ms) | failed |",
        "|---|---|---|---|",
        *(f"| {name} | {m[0]:.1f} | {m[1]:.2f} | {m[2]} |" for name, m in mean.items()),
        "",
        f"Tritium/Dynamo: {mean['tritium'][0] / mean['dynamo'][0]:.2f}x the requests/s at "
        f"{mean['tritium'][1] / mean['dynamo'][1]:.2f}x the CPU per request.",
    ]
    out = REPO / "bench" / "results" / f"dynamo-frontend-{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0 if all(m[2] == 0 for m in mean.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
