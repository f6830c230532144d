"""The report of bench/python_backend.py: its rows, servers and targets, one perf_analyzer run (`Run`, as the .json
beside the report keeps it), medians over rounds, ratios paired within rounds, and the markdown tables (kept apart
from the driver, which starts the servers and runs perf_analyzer). `bench/python_backend.py --render X.json`
rewrites a report from its .json through `write_report`."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass

from onnx_report import fmt, median, verdict, x
from schedulers_report import MODES, at_most

# model -> (title, perf_analyzer arguments); both are bench/triton-models, served unchanged by both servers.
MODELS = {
    "identity": ("identity FP32 [16]", ["--shape", "INPUT0:16"]),
    "add_sub": ("add_sub INT32 [16] x2", []),
}
ROW_MODES = ("c1", "c16")
SERVERS = {"tritium": "Tritium (python backend)", "triton": "Triton 2.51 (python backend)"}
# The targets, Tritium / Triton: infer/s at c=16, CPU per request (every row), p99 at c=1.
THROUGHPUT_C16 = 1.5
CPU_RATIO = 0.6
P99_C1 = 1.0


@dataclass
class Run:
    model: str
    mode: str
    server: str
    round: int
    ok: bool
    infer_s: float = 0.0
    p50_us: float = 0.0
    p99_us: float = 0.0
    requests: int = 0
    cpu_s: float = 0.0  # the server's whole process session over the run: the server and its stub processes
    stub_cpu_s: float = 0.0  # the part of cpu_s spent outside the server's own process (its stubs)
    processes: int = 0  # processes in the server's session after the run (the server + its stubs)
    gone: str = ""  # pids of the session that were there before the run and not after (a stub restarted or died)
    wall_s: float = 0.0
    steal: float = 0.0
    tries: int = 1
    error: str = ""

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.ok and self.requests else math.nan

    @property
    def stub_cpu_us_per_request(self) -> float:
        return self.stub_cpu_s / self.requests * 1e6 if self.ok and self.requests else math.nan


class Table:
    def __init__(self, runs: list[Run]) -> None:
        self.by: dict[tuple[str, str, str], list[Run]] = {}
        for r in runs:
            self.by.setdefault((r.model, r.mode, r.server), []).append(r)

    def runs(self, model: str, mode: str, server: str) -> list[Run]:
        return self.by.get((model, mode, server), [])

    def med(self, model: str, mode: str, server: str, attr: str) -> float:
        return median([getattr(r, attr) for r in self.runs(model, mode, server) if r.ok])

    def ratio(self, model: str, mode: str, attr: str = "infer_s") -> float:
        """Median over rounds of Tritium / Triton within each round."""
        theirs = {r.round: getattr(r, attr) for r in self.runs(model, mode, "triton") if r.ok}
        pairs = [getattr(r, attr) / theirs[r.round] for r in self.runs(model, mode, "tritium") if r.ok and theirs.get(r.round)]
        return median(pairs)

    def has(self, model: str, mode: str) -> bool:
        return any(self.runs(model, mode, s) for s in SERVERS)


def row_label(model: str, mode: str) -> str:
    return f"{MODELS[model][0]}, {MODES[mode][0]}"


def targets(t: Table, models: list[str]) -> list[tuple[str, str, float, str]]:
    """(row, what, ratio, verdict) for every target the run can judge."""
    out = []
    for model in models:
        if t.has(model, "c16"):
            ratio = t.ratio(model, "c16")
            out.append((row_label(model, "c16"), f"infer/s at least {THROUGHPUT_C16:.1f}x Triton's", ratio,
                        verdict(ratio, THROUGHPUT_C16).strip()))  # fmt: skip
        for mode in ROW_MODES:
            if t.has(model, mode):
                ratio = t.ratio(model, mode, "cpu_us_per_request")
                out.append((row_label(model, mode), f"CPU per request at most {CPU_RATIO:.1f}x Triton's", ratio,
                            at_most(ratio, CPU_RATIO).strip()))  # fmt: skip
        if t.has(model, "c1"):
            ratio = t.ratio(model, "c1", "p99_us")
            out.append((row_label(model, "c1"), f"p99 at most {P99_C1:.1f}x Triton's", ratio, at_most(ratio, P99_C1).strip()))
    return out


def render(meta: dict, runs: list[Run]) -> str:
    t = Table(runs)
    models = [m for m in meta["models"] if any(t.has(m, mode) for mode in ROW_MODES)]
    m, v = meta["machine"], meta["versions"]
    out: list[str] = []
    w = out.append
    w("# Python backend: Tritium vs Triton 2.51, the same model.py files\n")
    w(f"- **Date:** {meta['date']}; the whole run took {meta['duration_s'] / 60:.1f} min")
    w(f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']} memory, Linux {m['kernel']} "
      f"(load average at start: {m['load']})")  # fmt: skip
    w(f"- **Versions:** Tritium {v['tritium']}; Triton {meta['triton_version']} (nvidia-pytriton {v['pytriton']}); "
      f"perf_analyzer {v['perf_analyzer']}; both servers' model.py run under {v['python']} with {v['triton_venv']}")
    w(f"- **Command:** `{meta['command']}`; {meta['rounds']} round(s), perf_analyzer over gRPC with windows of "
      f"{meta['window_ms']} ms (three per run, `-s 1000`), random input data; servers in reversed order every other "
      f"round; a run with more than {meta['max_steal']:.0%} CPU steal is run again ({meta['steal_tries']} tries at most)")
    w(f"- **Tritium binary:** `{meta['tritium_bin']}`")
    w("")
    w("Servers (each started once, its own process session, on 127.0.0.1), both serving `bench/triton-models` "
      "unchanged (`backend: \"python\"`, max_batch_size 0, no dynamic_batching, instance_group left to each server's "
      "default):\n")
    w(f"- **Tritium:** `tritium serve --model-repository bench/triton-models --python-interpreter "
      f"{meta['python']} --allow-http=false --allow-metrics=false`; every model instance is a stub process "
      "(its own process group, the server's session).")
    w("- **Triton 2.51:** `tritonserver --model-repository bench/triton-models` with its python backend "
      "(`triton_python_backend_stub` processes, same session), which embeds the libpython of the venv's base "
      "interpreter and finds numpy through the venv (bench/lib/triton-env.sh): the same Python and numpy as Tritium's "
      "stubs.")
    for key, groups in meta.get("instance_groups", {}).items():
        w(f"- {SERVERS[key]} instance_group as the server reports it: "
          + "; ".join(f"{model} `{json.dumps(g, separators=(',', ':'))}`" for model, g in groups.items()))
    w("")
    w("**CPU per request** is utime + stime of every process in the server's session (the server and all its stub "
      "processes) from /proc over the run, divided by perf_analyzer's request count; \"of which stubs\" is the part "
      "outside the server's own process. Server and perf_analyzer share the machine's cores: compare only within one "
      "report.\n")

    w("## Targets\n")
    w("Ratios Tritium / Triton, paired within a round, median over rounds.\n")
    w("| row | target | Tritium / Triton | verdict |")
    w("|---|---|---:|---|")
    for row, what, ratio, mark in targets(t, models):
        w(f"| {row} | {what} | {x(ratio)} | {mark or '–'} |")
    w("")
    if meta.get("notes"):
        w("## Notes (written after the run)\n")
        for note in meta["notes"]:
            w(f"- {note}")
        w("")

    w("## Rows\n")
    w("Medians over rounds.\n")
    w("| row | server | infer/s | p50 µs | p99 µs | CPU µs / request | of which stubs | processes in session | ok |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in models:
        for mode in ROW_MODES:
            for key in SERVERS:
                cell = t.runs(model, mode, key)
                if not cell:
                    continue
                procs = sorted({r.processes for r in cell if r.ok})
                w(f"| {row_label(model, mode)} | {SERVERS[key]} | {fmt(t.med(model, mode, key, 'infer_s'))} | "
                  f"{fmt(t.med(model, mode, key, 'p50_us'))} | {fmt(t.med(model, mode, key, 'p99_us'))} | "
                  f"{fmt(t.med(model, mode, key, 'cpu_us_per_request'))} | "
                  f"{fmt(t.med(model, mode, key, 'stub_cpu_us_per_request'))} | "
                  f"{', '.join(map(str, procs)) or '–'} | {sum(r.ok for r in cell)}/{len(cell)} |")  # fmt: skip
    w("")
    w("| row | infer/s Tritium / Triton | CPU / request | p50 | p99 |")
    w("|---|---:|---:|---:|---:|")
    for model in models:
        for mode in ROW_MODES:
            if t.has(model, mode):
                marks = [verdict(t.ratio(model, mode), THROUGHPUT_C16) if mode == "c16" else "",
                         at_most(t.ratio(model, mode, "cpu_us_per_request"), CPU_RATIO),
                         at_most(t.ratio(model, mode, "p99_us"), P99_C1) if mode == "c1" else ""]  # fmt: skip
                w(f"| {row_label(model, mode)} | {x(t.ratio(model, mode))}{marks[0]} | "
                  f"{x(t.ratio(model, mode, 'cpu_us_per_request'))}{marks[1]} | {x(t.ratio(model, mode, 'p50_us'))} | "
                  f"{x(t.ratio(model, mode, 'p99_us'))}{marks[2]} |")  # fmt: skip
    w("")

    w("## Stub processes and server logs\n")
    for key in SERVERS:
        ok = [r for r in runs if r.server == key and r.ok]
        if not ok:
            continue
        procs = sorted({r.processes for r in ok})
        counted = sum(r.stub_cpu_s > 0 for r in ok)
        gone = [f"r{r.round} {r.model} {r.mode}: {r.gone}" for r in runs if r.server == key and r.gone]
        w(f"- **{SERVERS[key]}:** {', '.join(map(str, procs))} process(es) in the server's session after each run "
          f"(the server and its stubs); the stubs' CPU was counted (non-zero) in {counted} of {len(ok)} runs; "
          + (f"processes gone during a run (a stub restarted or died): {'; '.join(gone)}." if gone
             else "no process of the session went away during a run."))  # fmt: skip
    for key, left in meta.get("leftovers", {}).items():
        if left:
            w(f"- **{SERVERS[key]}:** processes of its session still alive after the server was stopped (killed by pid): "
              f"{left}")
    for key, found in meta.get("log_lines", {}).items():
        if found["count"]:
            w(f"- **{SERVERS[key]} log:** {found['count']} line(s) that look like errors or warnings "
              f"(the first {len(found['lines'])}):\n")
            w("```")
            out.extend(line[:300] for line in found["lines"])
            w("```")
        else:
            w(f"- **{SERVERS[key]} log:** no line that looks like an error or a warning.")
        if found.get("no_gpu"):
            w(f"  ({found['no_gpu']} line(s) of Triton's start-up about the missing GPU, CUDA, NVML or DCGM left out.)")
    w("")

    w("## Every run\n")
    w("| round | row | server | infer/s | p50 µs | p99 µs | requests | CPU s | of which stubs | processes | steal | tries "
      "| error |")
    w("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def key(r: Run) -> tuple:
        return list(MODELS).index(r.model), ROW_MODES.index(r.mode), list(SERVERS).index(r.server), r.round

    for r in sorted(runs, key=key):
        w(f"| {r.round} | {row_label(r.model, r.mode)} | {SERVERS[r.server]} | {fmt(r.infer_s) if r.ok else '–'} | "
          f"{fmt(r.p50_us) if r.ok else '–'} | {fmt(r.p99_us) if r.ok else '–'} | {r.requests} | {r.cpu_s:.2f} | "
          f"{r.stub_cpu_s:.2f} | {r.processes} | {r.steal:.0%} | {r.tries} | {r.error} |")  # fmt: skip
    return "\n".join(out) + "\n"


def write_report(out: pathlib.Path, meta: dict, runs: list[Run]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    out.write_text(render(meta, runs))
