"""The report of bench/openai_surfaces.py: one run of one cell (`Run`, as the .json beside the report keeps it),
medians over rounds, ratios paired within rounds, and the markdown tables (kept apart from the driver, which starts
the server and runs the clients). `bench/openai_surfaces.py --render X.json` rewrites a report from its .json."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass, field

from onnx_report import fmt, median, verdict, x
from schedulers_report import at_most

SURFACES = {
    "chat": "`POST /v1/chat/completions`",
    "responses": "`POST /v1/responses`",
    "messages": "`POST /v1/messages` (Anthropic)",
}
FORMATS = {"plain": "unconstrained", "json": "`response_format: json_schema`"}
# The targets: every surface within 5 % of chat completions (tokens/s at least, TTFT at most); constrained
# decoding at most 10 % slower per token.
TARGETS = {"tok_s": 0.95, "ttft_mean": 1.05, "decode_ms": 1.10}


@dataclass
class Run:
    """One cell of one round: `streams` clients sending `requests` streamed requests each, back to back. Times in ms,
    CPU in seconds over the whole run; `foreign` is other work on the machine during it, in cores."""

    section: str  # "surfaces" or "constrained"
    kind: str  # a key of SURFACES or FORMATS
    streams: int
    round: int
    error: str = ""
    foreign: float = 0.0
    requests: int = 0
    tokens: int = 0
    tokens_min: int = 0
    tokens_max: int = 0
    finishes: dict = field(default_factory=dict)
    tok_s: float = math.nan
    ttft_mean: float = math.nan
    ttft_p50: float = math.nan
    ttft_p99: float = math.nan
    decode_ms: float = math.nan
    wall_s: float = math.nan
    frontend_s: float = math.nan
    engine_s: float = math.nan
    client_s: float = math.nan

    @property
    def ok(self) -> bool:
        return not self.error

    def per_token_ms(self, attr: str) -> float:
        return getattr(self, attr) / self.tokens * 1e3 if self.ok and self.tokens else math.nan


class Table:
    def __init__(self, runs: list[Run], quiet_cores: float) -> None:
        self.quiet = quiet_cores
        self.by: dict[tuple[str, str, int], list[Run]] = {}
        for r in runs:
            self.by.setdefault((r.section, r.kind, r.streams), []).append(r)

    def runs(self, section: str, kind: str, n: int) -> list[Run]:
        """The successful runs, only those other work left alone when there are any."""
        ok = [r for r in self.by.get((section, kind, n), []) if r.ok]
        return [r for r in ok if r.foreign < self.quiet] or ok

    def med(self, section: str, kind: str, n: int, attr: str) -> float:
        return median([getattr(r, attr) for r in self.runs(section, kind, n)])

    def cpu(self, section: str, kind: str, n: int, attr: str) -> float:
        return median([r.per_token_ms(attr) for r in self.runs(section, kind, n)])

    def ratio(self, section: str, kind: str, other: str, n: int, attr: str) -> float:
        """Median over rounds of kind / other within each round."""
        theirs = {r.round: getattr(r, attr) for r in self.runs(section, other, n)}
        ours = [getattr(r, attr) / theirs[r.round] for r in self.runs(section, kind, n) if theirs.get(r.round)]
        return median(ours)

    def tokens(self, section: str, kind: str, n: int) -> str:
        runs = self.runs(section, kind, n)
        if not runs:
            return "–"
        low, high = min(r.tokens_min for r in runs), max(r.tokens_max for r in runs)
        return str(low) if low == high else f"{low}-{high}"

    def errors(self) -> list[str]:
        return sorted({f"{k[0]} {k[1]} x{k[2]}: {r.error}" for k, runs in self.by.items() for r in runs if r.error})


def render(meta: dict, runs: list[Run]) -> str:
    t = Table(runs, meta["quiet_cores"])
    m, s = meta["machine"], meta["settings"]
    out: list[str] = []
    w = out.append
    w(f"# OpenAI and Anthropic surfaces through Tritium ({meta['date']}, {meta['host']})\n")
    w(f"- **Machine:** {m['cpu']}, {m['cores']} cores (nproc), {m['memory']} memory, Linux {m['kernel']} (load average "
      f"at start: {m['load']}); server and clients share these cores")  # fmt: skip
    w(f"- **Binary:** `{meta['binary']}` ({meta['build']} build), tritium {meta['rev']}")
    w(f"- **Model:** `{meta['model']}` as `{meta['model_name']}`; `tritium serve --model-path <gguf> --model-name "
      f"{meta['model_name']} --enable-anthropic-api --allow-metrics=false` on pre-bound ephemeral listeners, default "
      "engine options (`--llm-max-sequences` 8); one server for the whole run")
    w(f"- **Command:** `{meta['command']}`; {s['rounds']} round(s), {s['requests']} request(s) per client per cell; "
      f"the whole run took {meta['duration_s'] / 60:.1f} min")
    w(f"- **Surfaces:** greedy (temperature 0), max tokens {s['max_tokens']}, one prompt per client (the same prompts on "
      "every surface), `nvext.ignore_eos` on chat completions and responses; `/v1/messages` has no ignore_eos, so its "
      "prompts ask for long essays that run past max tokens (tokens per request below: what usage reported)")
    w(f"- **Constrained:** chat completions with `response_format: json_schema` (strings with maxLength, at most "
      f"{s['json_max_tokens']} tokens) against the same request without it, `ignore_eos` and max tokens set per prompt "
      "to what the constrained request generated, so both generate the same tokens on the same prompts")
    w(f"- Each cell runs after other work on the machine drops under {meta['quiet_cores']} cores and is run again (up "
      f"to 3 times) when other work took more during it, within {meta['quiet_wait']:.0f} s of waiting in all; the "
      "medians leave disturbed rounds out when the cell has undisturbed ones (`other work` under Every run)")
    w("")
    w("## Surfaces against chat completions\n")
    w("Ratios: median over rounds of the surface's figure over chat completions' in the same round (surfaces back to "
      "back at each concurrency, their order rotated every round). Target: within 5 % of chat completions (tokens/s "
      f"at least {TARGETS['tok_s']:.2f}x, TTFT mean at most {TARGETS['ttft_mean']:.2f}x).\n")
    w("| surface | streams | tokens/s | TTFT mean (ms) | TTFT p50 | TTFT p99 | decode ms/token | tokens/request | "
      "tokens/s vs chat | TTFT mean vs chat | frontend CPU ms/token | client CPU ms/token |")  # fmt: skip
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in s["streams"]:
        for kind in SURFACES:
            med = lambda attr: t.med("surfaces", kind, n, attr)  # noqa: E731
            tok, ttft = "–", "–"
            if kind != "chat":
                r_tok = t.ratio("surfaces", kind, "chat", n, "tok_s")
                r_ttft = t.ratio("surfaces", kind, "chat", n, "ttft_mean")
                tok, ttft = x(r_tok) + verdict(r_tok, TARGETS['tok_s']), x(r_ttft) + at_most(r_ttft, TARGETS['ttft_mean'])
            w(f"| {SURFACES[kind]} | {n} | {fmt(med('tok_s'))} | {fmt(med('ttft_mean'))} | {fmt(med('ttft_p50'))} | "
              f"{fmt(med('ttft_p99'))} | {fmt(med('decode_ms'), 2)} | {t.tokens('surfaces', kind, n)} | {tok} | {ttft} | "
              f"{fmt(t.cpu('surfaces', kind, n, 'frontend_s'), 3)} | {fmt(t.cpu('surfaces', kind, n, 'client_s'), 3)} |")  # fmt: skip
    w("")
    w("- **tokens/s**: every request's generated tokens (from usage) over the cell's wall time, first send to last "
      "event. **TTFT**: send to the first text: chat's first chunk with content, the first "
      "`response.output_text.delta`, the first `content_block_delta`; mean, p50 and p99 over all requests of the cell "
      "(few requests per cell: p99 is close to the maximum). **decode ms/token**: first text to the event that ends the "
      "stream, over tokens - 1, all requests together.")
    w("- **frontend CPU**: the server's tokio threads (HTTP, the bridge, the SSE writers); **client CPU**: this "
      "driver (one thread per client, `http.client`, its own SSE parsing, one JSON parse per text event on every "
      "surface). Per generated token.")
    w("- With 16 streams, 8 wait for the engine's batch of 8: their TTFT holds a whole generation.")
    w("")
    paired = meta.get("paired_ttft_ms")
    if paired:
        render_paired(paired, w)
    w("## Constrained against unconstrained decoding (chat completions)\n")
    w(f"Target: constrained at most {TARGETS['decode_ms'] - 1:.0%} slower per token (decode ms/token ratio at most "
      f"{TARGETS['decode_ms']:.2f}x), paired within rounds.\n")
    w("| streams | decoding | decode ms/token | tokens/s | TTFT mean (ms) | tokens/request | finish | "
      "per token vs unconstrained | engine CPU ms/token |")
    w("|---:|---|---:|---:|---:|---:|---|---:|---:|")
    for n in s["json_streams"]:
        for kind in FORMATS:
            med = lambda attr: t.med("constrained", kind, n, attr)  # noqa: E731
            ratio = "–"
            if kind == "json":
                r = t.ratio("constrained", "json", "plain", n, "decode_ms")
                ratio = x(r) + at_most(r, TARGETS['decode_ms'])
            finishes = sorted({f for r in t.runs("constrained", kind, n) for f in r.finishes})
            w(f"| {n} | {FORMATS[kind]} | {fmt(med('decode_ms'), 2)} | {fmt(med('tok_s'))} | {fmt(med('ttft_mean'))} | "
              f"{t.tokens('constrained', kind, n)} | {', '.join(finishes) or '–'} | {ratio} | "
              f"{fmt(t.cpu('constrained', kind, n, 'engine_s'), 2)} |")  # fmt: skip
    w("")
    w("- The grammar's first mask is in TTFT, not in decode ms/token. **engine CPU**: the engine thread and its "
      "kernels' pools, where the grammar's masks are computed.")
    w("")
    w("## Every run\n")
    w("| section | kind | streams | round | tokens/s | TTFT mean | p50 | p99 | decode ms/token | requests | tokens "
      "| finish | CPU s: engine / frontend / client | other work (cores) |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in sorted(runs, key=lambda r: (r.section != "surfaces", r.streams, r.kind, r.round)):
        if not r.ok:
            w(f"| {r.section} | {r.kind} | {r.streams} | {r.round + 1} | failed: {r.error} |||||||||| {r.foreign:.2f} |")
            continue
        finish = ", ".join(f"{k} {v}" for k, v in sorted(r.finishes.items()))
        w(f"| {r.section} | {r.kind} | {r.streams} | {r.round + 1} | {fmt(r.tok_s)} | {fmt(r.ttft_mean)} | "
          f"{fmt(r.ttft_p50)} | {fmt(r.ttft_p99)} | {fmt(r.decode_ms, 2)} | {r.requests} | {r.tokens} | {finish} | "
          f"{r.engine_s:.2f} / {r.frontend_s:.2f} / {r.client_s:.2f} | {r.foreign:.2f} |")  # fmt: skip
    errors = t.errors()
    if errors:
        w("\n## Failures\n")
        out.extend(f"- {e}" for e in errors)
    return "\n".join(out) + "\n"


def render_paired(paired: dict[str, list[float]], w) -> None:
    """The paired TTFT check: per surface, its median TTFT and the median of its per-turn ratio to chat's."""
    turns = len(paired["chat"])
    w(f"### Paired TTFT check (one client, {turns} turns, the three surfaces request by request)\n")
    w("Cells of a few requests drift with the machine by more than the 5 % asked for, so TTFT is also measured with "
      "neighbouring requests through each surface in turn on one connection (order rotated every turn, 8 max tokens); "
      "the ratio is the median of each turn's TTFT over chat's in the same turn.\n")
    w("| surface | TTFT median (ms) | TTFT mean (ms) | TTFT vs chat (paired) |")
    w("|---|---:|---:|---:|")
    for kind, label in SURFACES.items():
        values = paired[kind]
        ratio = "–"
        if kind != "chat":
            r = median([v / c for v, c in zip(values, paired["chat"]) if c > 0])
            ratio = x(r) + at_most(r, TARGETS["ttft_mean"])
        w(f"| {label} | {fmt(median(values))} | {fmt(sum(values) / len(values))} | {ratio} |")
    w("")


def write_report(out: pathlib.Path, meta: dict, runs: list[Run]) -> None:
    """`out` (markdown) and, beside it, the same run as JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    out.write_text(render(meta, runs))


def rewrite(raw: pathlib.Path) -> pathlib.Path:
    """Rewrites the markdown beside `raw` (a report's .json) from it."""
    data = json.loads(raw.read_text())
    out = raw.with_suffix(".md")
    write_report(out, data["meta"], [Run(**r) for r in data["runs"]])
    return out
