"""Speculative decoding with a draft model (issue 43, item 6): tokens/s of the release `tritium serve` with
`--speculative draft --draft-model-path` against the same binary without it, in the same run, SmolLM2 (GGUF Q4_1),
greedy completions with ignore_eos.

No smaller model with SmolLM2's tokenizer is packaged here, so the drafts are SmolLM2's own first K blocks
(`bench/lib/truncate_gguf.py`: same tokenizer, embeddings, norm and head; layer-skipping self-speculation). Rows:
`code editing, 1 stream` (speculative.py's copy task, 200 tokens) and `a story, 1 stream` (128 tokens). Rounds
alternate the order of the servers; figures are medians; acceptance is the server's `spec_decode` counters.

    .venv/bin/python bench/speculative_draft.py     # about 10 min; needs target/release/tritium

Environment: ROUNDS (3), DRAFT_BLOCKS (comma-separated K, default 8,16), BENCH_OUT.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "lib"))

import speculative  # noqa: E402
from truncate_gguf import truncate  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
BLOCKS = [int(k) for k in os.environ.get("DRAFT_BLOCKS", "8,16").split(",")]
ROWS = {"code editing, 1 stream": ([speculative.EDIT], 200), "a story, 1 stream": ([speculative.STORIES[0]], 128)}


def main() -> int:
    if not speculative.TRITIUM.is_file():
        raise SystemExit(f"{speculative.TRITIUM} is missing: cargo build --release -p tritium-server --bin tritium")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-draft-"))
    servers = {"plain": speculative.start(work, "plain")}
    for k in BLOCKS:
        draft = work / f"draft-{k}.gguf"
        truncate(speculative.GGUF, draft, k)
        servers[f"draft {k} blocks"] = speculative.start(work, f"draft{k}", "--speculative", "draft", "--draft-model-path", str(draft))
    results: dict[tuple[str, str], list[float]] = {}
    acceptance: dict[tuple[str, str], float] = {}
    try:
        for server in servers.values():
            speculative.tokens_per_second(server, ["Warm up."], 8)
        for row, (prompts, max_tokens) in ROWS.items():
            before = {name: speculative.counters(server) for name, server in servers.items()}
            for r in range(ROUNDS):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    rate = speculative.tokens_per_second(servers[name], prompts, max_tokens)
                    speculative.say(f"{row}, {name}, round {r + 1}: {rate:.1f} tokens/s")
                    results.setdefault((row, name), []).append(rate)
            for name, server in servers.items():
                after = speculative.counters(server)
                drafted = after[0] - before[name][0]
                acceptance[(row, name)] = (after[1] - before[name][1]) / drafted if drafted else 0.0
    finally:
        for server in servers.values():
            server.stop()
    drafts = [name for name in servers if name != "plain"]
    lines = [
        f"# Speculative decoding with a draft model, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs; SmolLM2-135M-Instruct Q4_1 (30 blocks); drafts: its first K "
        f"blocks; release `tritium serve` with `--speculative draft` (5 proposed tokens) and without; {ROUNDS} rounds; "
        "medians. Command: `.venv/bin/python bench/speculative_draft.py`.",
        "",
        "| row | plain tokens/s | " + " | ".join(f"{d}: tokens/s, x plain, kept" for d in drafts) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in drafts) + " |",
    ]
    for row in ROWS:
        plain = statistics.median(results[(row, "plain")])
        cells = []
        for name in drafts:
            rate = statistics.median(results[(row, name)])
            cells.append(f"{rate:.1f}, {rate / plain:.2f}x, {acceptance[(row, name)]:.0%}")
        lines.append(f"| {row} | {plain:.1f} | " + " | ".join(cells) + " |")
    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"speculative-draft-{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-vm.md"
    path.write_text("\n".join(lines) + "\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
