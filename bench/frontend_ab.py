"""Two Tritium builds as Dynamo-protocol frontends, side by side over the same `dynamo.mocker` workers
and workloads as `bench/agent_frontend.py`: frontend CPU per request (user and system time from
/proc), in alternating rounds. For judging a change to the request path on a machine whose speed
drifts between rounds by more than the change.

    BEFORE_BIN=/tmp/tritium-before .venv/bin/python bench/frontend_ab.py

Of two frontends started over the same mockers, the first started measured about 10 % cheaper per
request whichever build it was (two agent runs, 2026-11-29), so each comparison runs twice, once per
start order, and the summary averages both. Environment: BEFORE_BIN (required), AFTER_BIN
(target/release/tritium), BEFORE_ARGS and AFTER_ARGS (extra `tritium serve` flags), WORKLOAD (`chat`
or `agent`), CONCURRENCY (16), SECONDS (12) and ROUNDS (4) per order. Prints each round and the
means; writes nothing.
"""

from __future__ import annotations

import os
import pathlib
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import agent_frontend as bench  # noqa: E402  (re-runs this script in a private network namespace)

TICKS = os.sysconf("SC_CLK_TCK")


def user_and_system(pid: int) -> tuple[float, float]:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def one_order(variants: list[tuple[str, str, list[str]]], workload: str, concurrency: int, rounds: int, results: dict) -> None:
    """Starts the frontends in `variants`' order over fresh mockers, then alternates rounds."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="frontend-ab-"))
    deployment = bench.Deployment(work, work / "unused", "agents")
    try:
        deployment.model_dir = bench.model_folder(deployment, work)
        for _ in range(bench.WORKERS):
            deployment.mocker(bench.MODEL, "--num-gpu-blocks-override", "65536", "--max-model-len", "131072")
        frontends = {}
        for name, binary, args in variants:
            os.environ["TRITIUM_BIN"] = binary
            frontend = deployment.tritium_frontend(*args)
            bench.wait_until(lambda f=frontend: bench.MODEL in bench.models_at(f.http_url), 120, f"{name} lists the model")
            frontends[name] = frontend
        rng = random.Random(58)
        system = "You are a coding agent working in a large repository. " + bench.words(
            rng, int(bench.AGENT_SYSTEM_TOKENS / 1.5) if workload == "agent" else 100
        )
        seconds, bench.SECONDS = bench.SECONDS, 3
        for frontend in frontends.values():
            bench.run(frontend.http_url, workload, 4, system)
        bench.SECONDS = seconds
        for round_ in range(rounds):
            order = list(frontends) if round_ % 2 == 0 else list(reversed(frontends))
            for name in order:
                pid = frontends[name].proc.pid
                user, system_time = user_and_system(pid)
                started = time.monotonic()
                load = bench.run(frontends[name].http_url, workload, concurrency, system)
                elapsed = time.monotonic() - started
                user_after, system_after = user_and_system(pid)
                done = max(load.ok, 1)
                per_request = ((user_after - user) * 1000 / done, (system_after - system_time) * 1000 / done)
                results.setdefault(name, []).append(per_request)
                print(
                    f"{name} (started {[v[0] for v in variants].index(name) + 1}.) round {round_}: {load.ok / elapsed:.0f} req/s, "
                    f"user {per_request[0]:.3f} + system {per_request[1]:.3f} ms a request, {load.failed} failed",
                    flush=True,
                )
    finally:
        deployment.stop()


def main() -> int:
    os.environ.update({"DYN_TOKENIZER_CACHE": "1", "DYN_TOKENIZER_CACHE_BYTES": str(bench.CACHE_BYTES), "DYN_TOKENIZER": bench.TOKENIZER})
    after = os.environ.get("AFTER_BIN", str(bench.REPO / "target" / "release" / "tritium"))
    variants = [
        ("before", os.environ["BEFORE_BIN"], os.environ.get("BEFORE_ARGS", "").split()),
        ("after", after, os.environ.get("AFTER_ARGS", "").split()),
    ]
    workload = os.environ.get("WORKLOAD", "chat")
    concurrency, rounds = bench.setting("CONCURRENCY", 16), bench.setting("ROUNDS", 4)
    bench.SECONDS = bench.setting("SECONDS", 12)
    results: dict[str, list[tuple[float, float]]] = {}
    for order in (variants, list(reversed(variants))):
        one_order(order, workload, concurrency, rounds, results)
    for name, binary, _ in variants:
        rows = results.get(name, [])
        user, system = statistics.mean(r[0] for r in rows), statistics.mean(r[1] for r in rows)
        print(f"{name} ({binary}): {user + system:.3f} ms a request (user {user:.3f}, system {system:.3f}) over {len(rows)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
