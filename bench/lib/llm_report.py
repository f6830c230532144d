"""The report of bench/llm.py: medians over rounds, the comparisons with the engine alone, and the markdown tables
(kept apart from the driver, which runs the servers and clients)."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
from dataclasses import dataclass


@dataclass
class Setup:
    """What the run was: the driver's settings, as the report states them."""

    repo: pathlib.Path
    rev: str
    kinds: list[str]
    labels: dict[str, str]
    streams: list[int]
    rounds: int
    max_tokens: int
    quiet_cores: float
    quiet_wait: float



def clean(info: list[dict], r: int, quiet_cores: float) -> bool:
    return info[r]["foreign"] < quiet_cores


def row(kind: str, n: int, results, info, quiet_cores: float) -> dict[str, float]:
    """Medians over the rounds that other work left alone (over all rounds when none was). Comparisons with the
    engine alone are made per round, against the engine-alone run next to it, then their median is taken."""
    rounds, by_round = results[kind][n], info[kind][n]
    ok = [r for r in range(len(rounds)) if clean(by_round, r, quiet_cores)] or list(range(len(rounds)))
    med = lambda f, among=ok: statistics.median(f(r) for r in among)  # noqa: E731
    out = {key: med(lambda r, key=key: rounds[r][key]) for key in ("tok_s", "ttft", "itl_mean", "itl_p50", "itl_p99")}
    engine, engine_info = results["engine"][n], info["engine"][n]
    engine_ok = [r for r in range(len(engine)) if clean(engine_info, r, quiet_cores)] or list(range(len(engine)))
    out["engine_itl"] = med(lambda r: engine[r]["itl_mean"], engine_ok)
    out["engine_itl_token"] = med(lambda r: engine[r]["itl_token"], engine_ok)
    out["engine_cpu_ms"] = med(lambda r: by_round[r]["engine"] / rounds[r]["tokens"]) * 1e3
    if kind != "engine":
        paired = [r for r in ok if clean(engine_info, r, quiet_cores)] or ok
        out["share"] = med(lambda r: 1 - engine[r]["itl_mean"] / rounds[r]["itl_mean"], paired)
        out["bridge_itl"] = med(lambda r: by_round[r]["bridge_itl"])
        out["slowdown"] = med(lambda r: 1 - engine[r]["itl_token"] / by_round[r]["bridge_itl"], paired)
        out["frontend_cpu_ms"] = med(lambda r: by_round[r]["frontend"] / rounds[r]["tokens"]) * 1e3
        out["client_cpu_ms"] = med(lambda r: by_round[r]["client"] / rounds[r]["tokens"]) * 1e3
    return out


def write_report(setup: Setup, results, info, load: float, elapsed: float) -> pathlib.Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    host = platform.node()
    default = setup.repo / "bench" / "results" / f"llm-{now:%Y-%m-%d}-{host}.md"
    path = pathlib.Path(os.environ.get("BENCH_OUT", default))
    kept = sum(i["foreign"] >= setup.quiet_cores for by_n in info.values() for rounds in by_n.values() for i in rounds)
    rows = {(kind, n): row(kind, n, results, info, setup.quiet_cores) for kind in setup.kinds for n in setup.streams}
    lines = [
        f"# LLM rows: SmolLM2-135M-Instruct Q4_1 through Tritium ({now:%Y-%m-%d}, {host}, {os.cpu_count()} cores)",
        "",
        f"`.venv/bin/python bench/llm.py`: tritium {setup.rev}, release build, `tritium serve --model-path <gguf>` with the "
        f"default engine options (`--llm-max-sequences` 8). Each stream: its own prompt, greedy, `ignore_eos`, "
        f"{setup.max_tokens} tokens. {setup.rounds} rounds, each with freshly started processes; load average {load:.2f} at the start; {elapsed:.0f} s in all. "
        f"Every run waited for other work on the machine to drop under {setup.quiet_cores} cores and was run again (up to 3 "
        f"times) when other work took more during it, within {setup.quiet_wait:.0f} s of waiting in all; {kept} runs kept "
        "anyway (`other work` under Every round), and left out of the medians when the row has undisturbed rounds.",
        "",
        "| protocol | streams | tokens/s | TTFT mean (ms) | ITL mean (ms) | ITL p50 | ITL p99 | engine-alone ITL mean (ms) "
        "| frontend share of ITL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, n), m in rows.items():
        share = f"{m['share']:+.1%}" if kind != "engine" else "-"
        lines.append(
            f"| {setup.labels[kind]} | {n} | {m['tok_s']:.1f} | {m['ttft']:.1f} | {m['itl_mean']:.2f} | {m['itl_p50']:.2f} | "
            f"{m['itl_p99']:.2f} | {m['engine_itl']:.2f} | {share} |"
        )
    lines += [
        "",
        "- **tokens/s**: all streams' tokens over the run's wall time (first send to last text). **TTFT**: send to "
        "first text, per stream. **ITL**: gaps between consecutive text deltas, client-side (mean: each stream's first "
        "to last delta over the gaps between; p50 / p99 over all gaps). The bridge holds back a token whose text is "
        "half a character or nothing (a special token after an ignored EOS), so a gap may span two tokens: `deltas / "
        "tokens` under Every round.",
        "- **engine alone**: `bench/examples/engine_itl.rs` loads the same GGUF through the same `tritium_llm` "
        "factory and engine options, encodes the same prompts the way both frontends do, submits the streams at once "
        "and timestamps each token as its `TokenStream` yields it, with no frontend, transport or client. It runs "
        "each token through the bridge's detokenizer after the timestamp, so its deltas are the ones a client sees.",
        "- **frontend share of ITL**: 1 - (engine-alone ITL mean / ITL mean through the server), per round against "
        "the engine-alone run next to it (same round, same streams, back to back), median over rounds. It holds "
        "everything after the engine's channel: the bridge, the transport and the client, whose CPU competes with "
        "the engine for the same cores. A steady per-token delay shifts every token alike and leaves ITL unchanged: "
        "what shows is CPU taken from the engine and delays that vary. The Python clients (tritonclient, openai; one "
        "thread per stream) spend far more CPU per token than the server's frontend does (next table); the Rust "
        "client (`bench/examples/llm_client.rs`, one thread, one connection per stream) spends little, so its rows "
        "are the frontend's own share.",
        "- 16 streams exceed the engine's batch of 8 (`--llm-max-sequences` default): 8 wait for the first 8 to "
        "finish, so their TTFT holds a whole generation and tokens/s is that of two batches of 8 in turn.",
        "",
        "## Where the difference is",
        "",
        "| protocol | streams | engine-alone ITL per token (ms) | server's own ITL per token (ms) | engine slower in the "
        "server by | engine CPU per token, alone / in the server (ms) | frontend CPU per token (ms) | client CPU per "
        "token (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, n), m in rows.items():
        if kind == "engine":
            continue
        alone = rows[("engine", n)]
        lines.append(
            f"| {setup.labels[kind]} | {n} | {m['engine_itl_token']:.2f} | {m['bridge_itl']:.2f} | {m['slowdown']:+.1%} | "
            f"{alone['engine_cpu_ms']:.1f} / {m['engine_cpu_ms']:.1f} | {m['frontend_cpu_ms']:.3f} | {m['client_cpu_ms']:.3f} |"
        )
    lines += [
        "",
        "- **server's own ITL**: `tritium_llm_inter_token_latency_seconds` from the server's `/metrics` over the run "
        "(sum / count): the bridge observes each token as it leaves the engine's channel, before detokenization and "
        "transport. **engine slower in the server by**: 1 - engine-alone ITL per token / the server's own ITL, per "
        "round, median over rounds (so not quite the ratio of the two medians beside it). When it is close to the "
        "frontend share, the share is the engine running slower in the server's process, not time spent on the way "
        "to the client.",
        "- **engine CPU**: the engine thread and its kernels' thread pools (server), the whole engine_itl process "
        "(alone). "
        "**frontend CPU**: the server's tokio threads (gRPC/HTTP, the bridge). **client CPU**: the Python driver "
        "(tritonclient or openai, one thread per stream) or the Rust client's process. All per generated token.",
        "",
        "## Every round",
        "",
        "| protocol | streams | round | tokens/s | TTFT (ms) | ITL mean | p50 | p99 | deltas / tokens "
        "| CPU s: engine / frontend / client | other work (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in setup.kinds:
        for n in setup.streams:
            for r, (s, used) in enumerate(zip(results[kind][n], info[kind][n])):
                split = f"{used['engine']:.2f}"
                if kind != "engine":
                    split += f" / {used['frontend']:.2f} / {used['client']:.2f}"
                lines.append(
                    f"| {setup.labels[kind]} | {n} | {r + 1} | {s['tok_s']:.1f} | {s['ttft']:.1f} | {s['itl_mean']:.2f} | "
                    f"{s['itl_p50']:.2f} | {s['itl_p99']:.2f} | {s['deltas']} / {s['tokens']} | {split} | {used['foreign']:.2f} |"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    # Every run's figures beside the report, for another look at the noise.
    path.with_suffix(".json").write_text(json.dumps({"results": results, "info": info}, indent=1) + "\n")
    return path
