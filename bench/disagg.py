"""Aggregated vs disaggregated prefill/decode under mixed load (issue 25 items 5 and 6), SmolLM2, release build.

8 streams decode while ~1,500-token prompts arrive back to back, a second apart at the least, until ARRIVALS (4) of
them are answered. The decoding streams' inter-token latency p50/p99 over that time, and the long prompts' time to
their one token, in the same run, after a warm-up round (the first write to each page of a fresh KV pool costs a
page fault, on whichever side writes it; a server that has run a while has paid them):

- aggregated: `tritium serve --model-path` on both cores, prefill chunk 256 (the default) and 64;
- disaggregated: a `tritium worker --disaggregation-mode prefill` pinned to core 0 and a
  `--disaggregation-mode decode` pinned to core 1 (`taskset`), behind a frontend (file discovery, unpinned);
  the long prompts are prefilled on the prefill worker and their KV blocks pulled by the decode worker.

    .venv/bin/python bench/disagg.py        # about 4 minutes once built; prints the report's path

Environment: ROUNDS (3), ARRIVALS (4), NO_BUILD, BENCH_OUT.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "lib"))

from kv_cache import GGUF, MODEL, TRITIUM, client, mixed_load, start  # noqa: E402
from servers import Processes, Server, listening_socket  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
ARRIVALS = int(os.environ.get("ARRIVALS", "4"))


def say(text: str) -> None:
    print(f"disagg: {text}", flush=True)


def start_worker(procs: Processes, work: pathlib.Path, core: int, discovery: pathlib.Path, name: str, mode: str) -> subprocess.Popen:
    """`tritium worker` pinned to `core`, on a listener bound here; returns once it is ready."""
    listener = listening_socket()
    log = open(work / f"{name}.log", "wb")
    argv = ["taskset", "-c", str(core), str(TRITIUM), "worker", "--worker-listen-fd", str(listener.fileno()),
            "--discovery", "file", "--discovery-dir", str(discovery), "--worker-id", name,
            "--disaggregation-mode", mode, "--model-path", str(GGUF), "--model-name", MODEL]  # fmt: skip
    proc = procs.popen(argv, pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    listener.close()
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if b"tritium worker ready" in line:
            threading.Thread(target=lambda: [log.write(rest) for rest in proc.stdout], daemon=True).start()
            return proc
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"{name} did not start (log: {work / f'{name}.log'})")


def wait_for_model(server: Server) -> None:
    llm = client(server)
    deadline = time.monotonic() + 60
    while MODEL not in [m.id for m in llm.models.list().data]:
        if time.monotonic() > deadline:
            raise RuntimeError("the frontend never listed the model")
        time.sleep(0.2)
    llm.close()


def rounds(server: Server) -> dict[str, float]:
    mixed_load(server, 2 * ARRIVALS)  # warm-up
    runs = [mixed_load(server, ARRIVALS) for _ in range(ROUNDS)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-j2", "-p", "tritium-server", "--bin", "tritium"], cwd=REPO, check=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-disagg-bench-"))
    lines = [f"# Aggregated vs disaggregated prefill/decode: SmolLM2-135M Q4_1, release, {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"8 streams decode while ~1,500-token prompts arrive back to back, a second apart at the least, until {ARRIVALS} "
             f"are answered (median of {ROUNDS} rounds).", "",
             "| serving | decode ITL p50 (ms) | decode ITL p99 (ms) | p99 / p50 | long prompt's reply (s) |",
             "|---|---|---|---|---|"]  # fmt: skip
    results = {}
    for chunk in ("256", "64"):
        server = start(str(TRITIUM), work, "tritium", "--llm-prefill-chunk", chunk)
        results[f"aggregated, both cores, prefill chunk {chunk}"] = rounds(server)
        server.stop()
        say(f"aggregated chunk {chunk}: {results[f'aggregated, both cores, prefill chunk {chunk}']}")

    procs = Processes()
    discovery = work / "discovery"
    discovery.mkdir()
    try:
        start_worker(procs, work, 0, discovery, "prefill-0", "prefill")
        start_worker(procs, work, 1, discovery, "decode-1", "decode")
        frontend = Server("frontend", "frontend", procs, work / "frontend.log")
        argv = [str(TRITIUM), "serve", "--discovery", "file", "--discovery-dir", str(discovery)]
        frontend.start_with_ready_line(argv, "tritium ready grpc=", 60, http=True)
        wait_for_model(frontend)
        label = "disaggregated: prefill worker on core 0, decode worker on core 1"
        results[label] = rounds(frontend)
        say(f"disaggregated: {results[label]}")
        frontend.stop()
    finally:
        procs.stop_all()
    for label, r in results.items():
        lines.append(f"| {label} | {r['itl_p50']:.1f} | {r['itl_p99']:.1f} | {r['itl_p99'] / r['itl_p50']:.1f}x | "
                     f"{r['arrival_s']:.2f} |")  # fmt: skip
    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results" / f"disagg-{time.strftime('%Y-%m-%d', time.gmtime())}-{os.uname().nodename}.md"))
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
