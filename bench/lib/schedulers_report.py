"""The report of bench/schedulers.py: its sections, rows and targets, one perf_analyzer run (`Run`, as the .json
beside the report keeps it), medians over rounds, ratios paired within rounds, and the markdown tables (kept apart
from the driver, which starts the servers and runs perf_analyzer). `bench/schedulers.py --render X.json` rewrites a
report from its .json through `write_report`."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass

from onnx_report import fmt, median, verdict, x

MODES = {"c1": ("sync, c=1", [], 1), "c16": ("--async, c=16", ["--async"], 16), "c64": ("--async, c=64", ["--async"], 64)}
# perf_analyzer's sequence options for the sequence rows (20 requests per sequence, ±20 % by default).
SEQUENCE_ARGS = ["--sequence-length", "20", "--sequence-id-range", "1:1000"]
SECTIONS = {
    "dense": ("Dynamic batching: `dense`, FP32 [4096] · W [4096 x 4096]", ("c16", "c64")),
    "sequence": ("Sequence batching: `accumulate`, INT32 [1], sequences of 20 (±20 %)", ("c1", "c16")),
    "ensemble": ("Ensemble: `add_sub_twice` (two add_sub steps) against `add_sub` alone, INT32 [16] x2", ("c1", "c16")),
}
# What each section runs against: (server, model).
TARGETS = {
    "dense": [("tritium", "dense"), ("tritium-db", "dense"), ("triton", "dense"), ("triton-db", "dense")],
    "sequence": [("tritium", "accumulate"), ("triton", "accumulate")],
    "ensemble": [("tritium", "add_sub"), ("tritium", "add_sub_twice"), ("triton", "add_sub"), ("triton", "add_sub_twice")],
}
SERVERS = {
    "tritium": "Tritium",
    "tritium-db": "Tritium, dynamic_batching",
    "triton": "Triton 2.51 (python backend)",
    "triton-db": "Triton 2.51, dynamic_batching",
}


def label(server: str, model: str) -> str:
    return SERVERS[server] + {"add_sub": ": add_sub", "add_sub_twice": ": add_sub_twice (ensemble)"}.get(model, "")


@dataclass
class Run:
    section: str
    mode: str
    server: str
    model: str
    round: int
    ok: bool
    infer_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    requests: int = 0
    cpu_s: float = 0.0  # the server's CPU seconds over the run (its whole process session)
    wall_s: float = 0.0
    steal: float = 0.0
    tries: int = 1
    error: str = ""
    # The model's own statistics over the run as perf_analyzer prints them: rows inferred and executions (their
    # quotient is the average batch the scheduler formed).
    inferences: int = 0
    executions: int = 0

    @property
    def rows_per_execution(self) -> float:
        return self.inferences / self.executions if self.ok and self.executions else math.nan

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e3 if self.ok and self.requests else math.nan


class Table:
    def __init__(self, runs: list[Run]) -> None:
        self.by: dict[tuple[str, str, str, str], list[Run]] = {}
        for r in runs:
            self.by.setdefault((r.section, r.mode, r.server, r.model), []).append(r)

    def runs(self, section: str, mode: str, target: tuple[str, str]) -> list[Run]:
        return self.by.get((section, mode, *target), [])

    def med(self, section: str, mode: str, target: tuple[str, str], attr: str) -> float:
        return median([getattr(r, attr) for r in self.runs(section, mode, target) if r.ok])

    def ratio(self, section: str, mode: str, ours: tuple[str, str], other: tuple[str, str], attr: str = "infer_s") -> float:
        """Median over rounds of ours/other within each round."""
        theirs = {r.round: getattr(r, attr) for r in self.runs(section, mode, other) if r.ok}
        pairs = [getattr(r, attr) / theirs[r.round] for r in self.runs(section, mode, ours) if r.ok and theirs.get(r.round)]
        return median(pairs)

    def has(self, section: str) -> bool:
        return any(self.runs(section, mode, t) for mode in SECTIONS[section][1] for t in TARGETS[section])


def at_most(value: float, target: float) -> str:
    if math.isnan(value):
        return ""
    return " (met)" if value <= target else " (**missed**)"


def render(meta: dict, runs: list[Run]) -> str:
    t = Table(runs)
    sections = [s for s in SECTIONS if t.has(s)]
    m, v = meta["machine"], meta["versions"]
    out: list[str] = []
    w = out.append
    w("# Schedulers: Tritium vs Triton 2.51 (python backend) — dynamic batching, sequence batching, ensembles\n")
    w(f"- **Date:** {meta['date']}; the whole run took {meta['duration_s'] / 60:.1f} min")
    w(f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']} memory, Linux {m['kernel']} "
      f"(load average at start: {m['load']})")  # fmt: skip
    w(f"- **Versions:** Tritium {v['tritium']}; Triton {meta['triton_version']} (nvidia-pytriton {v['pytriton']}, "
      f"{v['triton_venv']} in its venv); perf_analyzer {v['perf_analyzer']}")
    w(f"- **Command:** `{meta['command']}`; {meta['rounds']} round(s), perf_analyzer over gRPC with windows of "
      f"{meta['window_ms']} ms (three per run, `-s 1000`); targets in reversed order every other round; a run with more "
      f"than {meta['max_steal']:.0%} CPU steal is run again ({meta['steal_tries']} tries at most)")
    w("")
    w("Servers (each started once, its own process, on 127.0.0.1):\n")
    w("- **Tritium:** `tritium serve --model-repository` with the built-in backends `dense`, `accumulate` and `add_sub` "
      "(config.pbtxt + an empty `1/`) and the `add_sub_twice` ensemble (worker/models/add_sub_twice.pbtxt); "
      "**Tritium, dynamic_batching:** a second one serving only `dense` with `dynamic_batching "
      "{ max_queue_delay_microseconds: 1000 }`.")
    w("- **Triton 2.51:** the same configs with `backend: \"python\"` and a numpy model.py per model "
      "(bench/lib/schedulers_triton_model.py): `dense` builds W once and runs one matmul over every request it is "
      "handed (numpy's OpenBLAS with its default threads); `accumulate` keeps each sequence's sum in a dict keyed by "
      "a TYPE_UINT64 CORRID control input (the 2.51 python backend does not store implicit state); `add_sub` is "
      "bench/triton-models/add_sub and `add_sub_twice` the same ensemble config over it. **Triton 2.51, "
      "dynamic_batching:** a second Triton serving only `dense` with the same dynamic_batching.")
    w("- `dense`: max_batch_size 16, one CPU instance on every server. `accumulate`: max_batch_size 8, "
      "sequence_batching `oldest` (64 candidate sequences), instance_group left to the defaults. Sequence rows: "
      f"`{' '.join(SEQUENCE_ARGS)}`. perf_analyzer's random input data everywhere.")
    w("")
    w("**Caveat:** server and perf_analyzer share the machine's cores, and perf_analyzer spends about 100 µs of CPU per "
      "small request: from c=16 up the client is much of the bottleneck on a 2-core machine (see CPU per request). "
      "Compare only within one report.\n")

    w("## Summary\n")
    w("Ratios are medians over rounds of the ratio within each round.\n")
    if "dense" in sections:
        s, ours, plain = "dense", ("tritium-db", "dense"), ("tritium", "dense")
        gain, p99 = t.ratio(s, "c64", ours, plain), t.ratio(s, "c64", ours, plain, "p99_us")
        w(f"- **Dynamic batching, c=64:** Tritium with / without: {x(gain)} infer/s{verdict(gain, 2.0)}, "
          f"{x(p99)} p99{at_most(p99, 1.5)} (targets: at least 2x infer/s, p99 at most 1.5x). "
          f"Tritium / Triton: {x(t.ratio(s, 'c64', plain, ('triton', 'dense')))} without dynamic batching, "
          f"{x(t.ratio(s, 'c64', ours, ('triton-db', 'dense')))} with it; Triton with / without: "
          f"{x(t.ratio(s, 'c64', ('triton-db', 'dense'), ('triton', 'dense')))}.")
    if "sequence" in sections:
        pair = (("tritium", "accumulate"), ("triton", "accumulate"))
        w("- **Sequence batching:** Tritium / Triton " + ", ".join(
            f"{x(t.ratio('sequence', mode, *pair))} infer/s ({x(t.ratio('sequence', mode, *pair, 'p99_us'))} p99) at "
            f"{MODES[mode][0]}" for mode in SECTIONS["sequence"][1]) + ".")  # fmt: skip
    if "ensemble" in sections:
        parts = []
        for mode in SECTIONS["ensemble"][1]:
            ens = [t.ratio("ensemble", mode, (k, "add_sub_twice"), (k, "add_sub")) for k in ("tritium", "triton")]
            vs = t.ratio("ensemble", mode, ("tritium", "add_sub_twice"), ("triton", "add_sub_twice"))
            parts.append(f"{MODES[mode][0]}: ensemble / add_sub {x(ens[0])} on Tritium, {x(ens[1])} on Triton; "
                         f"Tritium / Triton on the ensemble {x(vs)}")  # fmt: skip
        w("- **Ensemble:** " + "; ".join(parts) + ".")
    w("")
    if meta.get("notes"):
        w("## Notes (written after the run)\n")
        for note in meta["notes"]:
            w(f"- {note}")
        w("")

    if "dense" in sections:
        s = "dense"
        keys = [("tritium", "dense"), ("tritium-db", "dense"), ("triton", "dense"), ("triton-db", "dense")]
        w(f"## {SECTIONS[s][0]}\n")
        w("infer/s and p99 (µs), medians over rounds; ratios of infer/s (and p99) paired within rounds; rows / "
          "execution: the model's inference count over its execution count, the average batch formed.\n")
        w("| row | Tritium | Tritium + db | Triton | Triton + db | Tritium: db / without (infer/s) | Tritium: db / "
          "without (p99) | Triton: db / without | Tritium / Triton | Tritium + db / Triton + db | p99 Tritium, + db | "
          "p99 Triton, + db | rows / execution Tritium + db, Triton + db |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in SECTIONS[s][1]:
            ips = " | ".join(fmt(t.med(s, mode, k, "infer_s")) for k in keys)
            db, p99 = t.ratio(s, mode, keys[1], keys[0]), t.ratio(s, mode, keys[1], keys[0], "p99_us")
            marks = (verdict(db, 2.0), at_most(p99, 1.5)) if mode == "c64" else ("", "")
            w(f"| {MODES[mode][0]} | {ips} | {x(db)}{marks[0]} | {x(p99)}{marks[1]} | "
              f"{x(t.ratio(s, mode, keys[3], keys[2]))} | {x(t.ratio(s, mode, keys[0], keys[2]))} | "
              f"{x(t.ratio(s, mode, keys[1], keys[3]))} | "
              f"{fmt(t.med(s, mode, keys[0], 'p99_us'))}, {fmt(t.med(s, mode, keys[1], 'p99_us'))} | "
              f"{fmt(t.med(s, mode, keys[2], 'p99_us'))}, {fmt(t.med(s, mode, keys[3], 'p99_us'))} | "
              f"{fmt(t.med(s, mode, keys[1], 'rows_per_execution'), 2)}, "
              f"{fmt(t.med(s, mode, keys[3], 'rows_per_execution'), 2)} |")  # fmt: skip
        w("\nTargets (c=64): Tritium with dynamic batching at least 2x the infer/s of Tritium without, with a p99 no "
          "worse than 1.5x.\n")
    if "sequence" in sections:
        s, a, b = "sequence", ("tritium", "accumulate"), ("triton", "accumulate")
        w(f"## {SECTIONS[s][0]}\n")
        w("| row | Tritium infer/s | p50 µs | p99 µs | Triton infer/s | p50 µs | p99 µs | Tritium / Triton (infer/s) | "
          "Tritium / Triton (p99) | rows / execution Tritium, Triton |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in SECTIONS[s][1]:
            cells = [fmt(t.med(s, mode, k, f)) for k in (a, b) for f in ("infer_s", "p50_us", "p99_us")]
            w(f"| {MODES[mode][0]} | {' | '.join(cells)} | {x(t.ratio(s, mode, a, b))} | "
              f"{x(t.ratio(s, mode, a, b, 'p99_us'))} | {fmt(t.med(s, mode, a, 'rows_per_execution'), 2)}, "
              f"{fmt(t.med(s, mode, b, 'rows_per_execution'), 2)} |")  # fmt: skip
        w("")
    if "ensemble" in sections:
        s = "ensemble"
        keys = [("tritium", "add_sub"), ("tritium", "add_sub_twice"), ("triton", "add_sub"), ("triton", "add_sub_twice")]
        w(f"## {SECTIONS[s][0]}\n")
        w("infer/s, medians over rounds; ratios paired within rounds. The ensemble runs two add_sub steps per request "
          "(1.00x would be free orchestration and steps; 0.50x costs as much as two requests).\n")
        w("| row | Tritium add_sub | Tritium ensemble | Triton add_sub | Triton ensemble | Tritium: ensemble / add_sub | "
          "Triton: ensemble / add_sub | Tritium / Triton, ensemble | Tritium / Triton, add_sub | p99 µs Tritium "
          "add_sub, ensemble | p99 µs Triton add_sub, ensemble |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in SECTIONS[s][1]:
            ips = " | ".join(fmt(t.med(s, mode, k, "infer_s")) for k in keys)
            w(f"| {MODES[mode][0]} | {ips} | {x(t.ratio(s, mode, keys[1], keys[0]))} | "
              f"{x(t.ratio(s, mode, keys[3], keys[2]))} | {x(t.ratio(s, mode, keys[1], keys[3]))} | "
              f"{x(t.ratio(s, mode, keys[0], keys[2]))} | "
              f"{fmt(t.med(s, mode, keys[0], 'p99_us'))}, {fmt(t.med(s, mode, keys[1], 'p99_us'))} | "
              f"{fmt(t.med(s, mode, keys[2], 'p99_us'))}, {fmt(t.med(s, mode, keys[3], 'p99_us'))} |")  # fmt: skip
        w("")

    w("## Every target\n")
    w("Medians over rounds. CPU: the server's whole process session (Triton: tritonserver and its python stubs) per "
      "request, utime + stime from /proc.\n")
    w("| section | row | target | infer/s | p50 µs | p99 µs | CPU ms / request | rows / execution | ok |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for s in sections:
        for mode in SECTIONS[s][1]:
            for target in TARGETS[s]:
                cell = t.runs(s, mode, target)
                if cell:
                    w(f"| {s} | {MODES[mode][0]} | {label(*target)} | {fmt(t.med(s, mode, target, 'infer_s'))} | "
                      f"{fmt(t.med(s, mode, target, 'p50_us'))} | {fmt(t.med(s, mode, target, 'p99_us'))} | "
                      f"{fmt(t.med(s, mode, target, 'cpu_ms_per_request'), 2)} | "
                      f"{fmt(t.med(s, mode, target, 'rows_per_execution'), 2)} | "
                      f"{sum(r.ok for r in cell)}/{len(cell)} |")  # fmt: skip
    w("")
    w("## Every run\n")
    w("| round | section | row | target | infer/s | p50 µs | p99 µs | requests | rows / execution | CPU s | steal | tries "
      "| error |")
    w("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    order = [(s, target) for s in SECTIONS for target in TARGETS[s]]

    def key(r: Run) -> tuple:
        return list(SECTIONS).index(r.section), list(MODES).index(r.mode), order.index((r.section, (r.server, r.model))), r.round

    for r in sorted(runs, key=key):
        w(f"| {r.round} | {r.section} | {MODES[r.mode][0]} | {label(r.server, r.model)} | "
          f"{fmt(r.infer_s) if r.ok else '–'} | {fmt(r.p50_us) if r.ok else '–'} | {fmt(r.p99_us) if r.ok else '–'} | "
          f"{r.requests} | {fmt(r.rows_per_execution, 2)} | {r.cpu_s:.2f} | {r.steal:.0%} | {r.tries} | {r.error} |")  # fmt: skip
    return "\n".join(out) + "\n"


def write_report(out: pathlib.Path, meta: dict, runs: list[Run]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    out.write_text(render(meta, runs))
