"""Aggregated vs disaggregated prefill/decode under mixed load (issue 25 items 5 and 6), SmolLM2, release build.

8 streams decode 160 tokens each while ~1,500-token prompts arrive back to back, a second apart at the least. The
decoding streams' inter-token latency p50/p99, and the long prompts' time to their one token, in the same run:

- aggregated: `tritium serve --model-path` on both cores, prefill chunk 256 (the default) and 64;
- disaggregated: a `tritium worker --disaggregation-mode prefill` pinned to core 0 and a
  `--disaggregation-mode decode` pinned to core 1 (`taskset`), behind a frontend (file discovery, unpinned);
  the long prompts are prefilled on the prefill worker and their KV blocks pulled by the decode worker.

    .venv/bin/python bench/disagg.py        # about 4 minutes once built; prints the report's path

Environment: ROUNDS (3), NO_BUILD, BENCH_OUT.
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

from kv_cache import GGUF, MODEL, SENTENCE, TRITIUM, client, prompt_of, start  # noqa: E402
from servers import Processes, Server, listening_socket  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))


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


def mixed_load(server: Server) -> dict[str, float]:
    """8 decoding streams' inter-token gaps, and the long arrivals' latency, while long prompts keep arriving."""
    llm = client(server)
    gaps: list[float] = []
    arrivals_s: list[float] = []
    done = threading.Event()

    def decode(i: int) -> None:
        stream = llm.completions.create(
            model=MODEL, prompt=prompt_of(i), max_tokens=160, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        last = None
        for _ in stream:
            now = time.monotonic()
            if last is not None:
                gaps.append(now - last)
            last = now

    def arrivals() -> None:
        n = 0
        while not done.is_set():
            n += 1
            started = time.monotonic()
            try:
                llm.completions.create(model=MODEL, prompt=f"Arrival {n} {time.time_ns()}: " + SENTENCE * 33, max_tokens=1)
            except openai.APIError:
                return
            if not done.is_set():
                arrivals_s.append(time.monotonic() - started)
            done.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    feeder = threading.Thread(target=arrivals, daemon=True)
    with ThreadPoolExecutor(8) as pool:
        feeder.start()
        list(pool.map(decode, range(8)))
    done.set()
    feeder.join(timeout=60)
    llm.close()
    array = np.array(gaps) * 1e3
    return {
        "itl_p50": float(np.percentile(array, 50)),
        "itl_p99": float(np.percentile(array, 99)),
        "arrival_s": statistics.median(arrivals_s) if arrivals_s else float("nan"),
        "arrivals": float(len(arrivals_s)),
    }


def rounds(server: Server) -> dict[str, float]:
    mixed_load_warm = [mixed_load(server) for _ in range(ROUNDS)]
    return {k: statistics.median(r[k] for r in mixed_load_warm) for k in mixed_load_warm[0]}


def main() -> None:
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-j2", "-p", "tritium-server", "--bin", "tritium"], cwd=REPO, check=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-disagg-bench-"))
    lines = [f"# Aggregated vs disaggregated prefill/decode: SmolLM2-135M Q4_1, release, {os.cpu_count()} cores, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "8 streams decode 160 tokens each while ~1,500-token prompts arrive back to back, a second apart at the least "
             f"(median of {ROUNDS} rounds).", "",
             "| serving | decode ITL p50 (ms) | decode ITL p99 (ms) | p99 / p50 | long prompt's reply (s) | long prompts served |",
             "|---|---|---|---|---|---|"]  # fmt: skip
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
        frontend = start(str(TRITIUM), work, "frontend", "--discovery", "file", "--discovery-dir", str(discovery))
        wait_for_model(frontend)
        label = "disaggregated: prefill worker on core 0, decode worker on core 1"
        results[label] = rounds(frontend)
        say(f"disaggregated: {results[label]}")
        frontend.stop()
    finally:
        procs.stop_all()
    for label, r in results.items():
        lines.append(f"| {label} | {r['itl_p50']:.1f} | {r['itl_p99']:.1f} | {r['itl_p99'] / r['itl_p50']:.1f}x | "
                     f"{r['arrival_s']:.2f} | {r['arrivals']:.0f} |")  # fmt: skip
    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results" / f"disagg-{time.strftime('%Y-%m-%d', time.gmtime())}-{os.uname().nodename}.md"))
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
