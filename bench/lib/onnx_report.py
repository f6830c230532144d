"""The report of bench/onnx.py: the rows and servers it names, one perf_analyzer or in-process run (`Run`, as the
.json beside the report keeps it), medians over rounds, ratios paired within rounds, and the markdown tables (kept
apart from the driver, which installs, starts the servers and runs perf_analyzer). `bench/onnx.py --render X.json`
rewrites a report from its .json through `write_report`."""

from __future__ import annotations

import json
import math
import pathlib
import statistics
from dataclasses import asdict, dataclass

MODELS = {"cnn": "SqueezeNet 1.1 CNN, FP32 [1, 3, 224, 224]", "sklearn": "sklearn pipeline, FP32 [1, 6]"}
MODES = {"c1": ("sync, c=1", [], 1), "c16": ("--async, c=16", ["--async"], 16), "c64": ("--async, c=64", ["--async"], 64)}
# The servers with `dynamic_batching { }` added to the same config, and the server each is compared with.
BATCHED = {"tritium-db": "tritium", "triton-db": "triton"}
# Tritium variants for the defaults table (CNN only): key -> (instance count, intra_op_thread_count).
VARIANTS = {"tritium-i1-t0": (1, 0), "tritium-i1-t1": (1, 1), "tritium-i2-t1": (2, 1)}
DEFAULT_SHAPE = (2, 0)  # what "tritium" runs with: no instance_group (2 CPU instances), no parameters
LABELS = {
    "tritium": "Tritium (onnxruntime backend)",
    "triton": "Triton 2.51 (python backend + onnxruntime)",
    "ort": "ONNX Runtime in-process (Python)",
    "tritium-db": "Tritium, dynamic_batching",
    "triton-db": "Triton 2.51, dynamic_batching (model.py batches)",
    **{k: f"Tritium, {n} instance{'s' if n > 1 else ''}, intra_op_thread_count {t}" for k, (n, t) in VARIANTS.items()},
}


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
    cpu_s: float = 0.0  # the server's (or the in-process process's) CPU seconds over the run
    wall_s: float = 0.0
    steal: float = 0.0
    tries: int = 1
    error: str = ""
    # The server's own statistics over the run, as perf_analyzer prints them: rows inferred and backend executions
    # (inferences / executions = the average batch the dynamic batcher formed).
    inferences: int = 0
    executions: int = 0

    @property
    def rows_per_execution(self) -> float:
        return self.inferences / self.executions if self.ok and self.executions else math.nan

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s / self.requests * 1e3 if self.ok and self.requests else math.nan


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def fmt(x: float, digits: int = 0) -> str:
    if math.isnan(x):
        return "–"
    if digits == 0 and abs(x) < 100:
        digits = 1
    return f"{x:,.{digits}f}"


class Table:
    def __init__(self, runs: list[Run]) -> None:
        self.by: dict[tuple[str, str, str], list[Run]] = {}
        for r in runs:
            self.by.setdefault((r.model, r.mode, r.server), []).append(r)

    def runs(self, model: str, mode: str, server: str) -> list[Run]:
        return self.by.get((model, mode, server), [])

    def med(self, model: str, mode: str, server: str, attr: str) -> float:
        runs = [r for r in self.runs(model, mode, server) if r.ok]
        return median([getattr(r, attr) for r in runs])

    def ratio(self, model: str, mode: str, server: str, other: str, attr: str = "infer_s") -> float:
        """Median over rounds of server/other within each round."""
        theirs = {r.round: getattr(r, attr) for r in self.runs(model, mode, other) if r.ok}
        ours = [getattr(r, attr) / theirs[r.round] for r in self.runs(model, mode, server) if r.ok and theirs.get(r.round)]
        return median(ours)

    def has(self, model: str, server: str) -> bool:
        return any(self.runs(model, mode, server) for mode in MODES)


def x(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.2f}x"


def verdict(value: float, target: float) -> str:
    if math.isnan(value):
        return ""
    if value >= target:
        return " (met)"
    # A miss that x() rounds up to the target itself shows its third digit.
    return f" (**missed**: {value:.3f}x)" if f"{value:.2f}" == f"{target:.2f}" else " (**missed**)"


def render(meta: dict, runs: list[Run]) -> str:
    t = Table(runs)
    models = [m for m in meta["models"] if any(t.runs(m, mode, s) for mode in MODES for s in LABELS)]
    m, v = meta["machine"], meta["versions"]
    out: list[str] = []
    w = out.append
    w("# ONNX Runtime backend: Tritium vs Triton 2.51 (python backend + onnxruntime) vs ONNX Runtime in-process\n")
    w(f"- **Date:** {meta['date']}; the whole run took {meta['duration_s'] / 60:.1f} min")
    w(f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']} memory, Linux {m['kernel']} "
      f"(load average at start: {m['load']})")  # fmt: skip
    w(f"- **Versions:** Tritium {v['tritium']}; Triton {meta['triton_version']} (nvidia-pytriton {v['pytriton']}); "
      f"ONNX Runtime {v['onnxruntime']} everywhere (Tritium: the C library of the wheel; Triton's stubs and the "
      f"in-process loop: the Python package); perf_analyzer {v['perf_analyzer']}")  # fmt: skip
    w(f"- **Command:** `{meta['command']}`; {meta['rounds']} round(s), perf_analyzer windows of {meta['window_ms']} ms "
      f"(three per run, `-s 1000`), in-process runs as long as three windows; servers in reversed order every other "
      f"round; a run with more than {meta['max_steal']:.0%} CPU steal is run again ({meta['steal_tries']} tries at most)")
    batching = any(t.runs(mo, mode, k) for mo in models for mode in MODES for k in BATCHED)
    w("- **Models** (tests/python/onnx_models.py): " + "; ".join(f"`{k}`: {MODELS[k]}" for k in models) +
      "; max_batch_size 8 with no dynamic_batching (each request runs alone)" +
      (" except on the dynamic_batching servers" if batching else "") +
      ", every request of batch 1, perf_analyzer's random input data")  # fmt: skip
    w("")
    w("Servers:\n")
    w("- **Tritium:** `tritium serve --model-repository`, `platform: \"onnxruntime_onnx\"`, instance_group and "
      "parameters at their defaults (2 CPU instances, each its own session; ONNX Runtime picks its thread count"
      + ("; the most recently idle instance takes the next request" if meta.get("lifo") else "") + ").")
    w("- **Triton:** the Triton in nvidia-pytriton has no onnxruntime backend, only the python backend, so Triton serves "
      "the same model.onnx and config (`backend: \"python\"`) through a model.py that opens an "
      "`onnxruntime.InferenceSession` (default options) in initialize() and runs it in execute(); 2 CPU instances "
      "(Triton's default), each a stub process with its own session; shared-memory IPC per request.")
    w("- **ONNX Runtime in-process:** `session.run` on one fixed input in a Python loop, default session options (what "
      "Tritium uses): 1 thread for the c=1 rows, 16 threads sharing one session for the c=16 rows. No gRPC, no "
      "serialization, no client: the engine's limit. Its latency is one `session.run` call.")
    if batching:
        w("- **With dynamic batching** (c=16 and c=64 rows): a second Tritium and a second Triton, the same configs plus "
          "`dynamic_batching { }` (no queue delay, no preferred batch size; batches of up to max_batch_size 8 while an "
          "instance is busy). Triton's python backend hands `execute()` the batch as a list of requests and stacks "
          "nothing itself, so that Triton's model.py concatenates the requests' inputs along the batch dim, runs the "
          "session once and splits every output back by request (what a python-backend user writes).")
    if any(t.runs(mo, "c64", k) for mo in models for k in LABELS):
        w("- **c=64** rows: the four servers above only (no in-process loop, no defaults variants).")
    w("")
    w("**Caveat:** server and client share the machine's 2 cores. perf_analyzer's own CPU (about 100 µs per small "
      "request, more per CNN input of 588 KiB) is taken from the server, and the in-process loop has no client at "
      "all; at c=16 ONNX Runtime's threads and the server's contend for the same 2 cores. The machine may be shared "
      "with other work (steal and load are recorded). Compare only within one report.\n")

    w("## Summary\n")
    w("Ratios are medians over rounds of the ratio within each round (infer/s).\n")
    head = "| model | Tritium / in-process ORT, c=1 | Tritium / Triton, c=16 | Tritium / in-process ORT, c=16 | Tritium / Triton, c=1 |"
    rule = "|---|---:|---:|---:|---:|"
    if batching:
        head += " both with dynamic_batching: Tritium / Triton, c=16 | Tritium with / without dynamic_batching, c=16 |"
        rule += "---:|---:|"
    w(head)
    w(rule)
    for model in models:
        c1_ort = t.ratio(model, "c1", "tritium", "ort")
        c16_triton = t.ratio(model, "c16", "tritium", "triton")
        target_c1 = verdict(c1_ort, 0.7) if model == "cnn" else ""
        line = (f"| {model} | {x(c1_ort)}{target_c1} | {x(c16_triton)}{verdict(c16_triton, 2.0)} | "
                f"{x(t.ratio(model, 'c16', 'tritium', 'ort'))} | {x(t.ratio(model, 'c1', 'tritium', 'triton'))} |")  # fmt: skip
        if batching:
            line += f" {x(t.ratio(model, 'c16', 'tritium-db', 'triton-db'))} | {x(t.ratio(model, 'c16', 'tritium-db', 'tritium'))} |"
        w(line)
    w("\nTargets: Tritium / in-process ORT at c=1 >= 0.7x for the CNN; Tritium / Triton at c=16 >= 2x (the servers as "
      "configured above, without dynamic_batching).\n")
    if meta.get("notes"):
        w("## Notes (written after the run)\n")
        for note in meta["notes"]:
            w(f"- {note}")
        w("")

    for model in models:
        w(f"## {model}: {MODELS[model]}\n")
        w("Medians over rounds. CPU: the server's whole process session (Triton: tritonserver and its stubs; "
          "in-process: the Python process) per request, utime + stime from /proc.\n")  # fmt: skip
        w("`Tritium / this`: infer/s of the Tritium row with the same batching (no dynamic_batching for Triton and the "
          "in-process loop, dynamic_batching for Triton's dynamic_batching row), paired within rounds.\n")
        w("| row | server | infer/s | p50 µs | p99 µs | CPU ms / request | Tritium / this (infer/s) | ok |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for mode, (title, _, _) in MODES.items():
            for key in ("tritium", "triton", "ort", "tritium-db", "triton-db"):
                cell = t.runs(model, mode, key)
                if not cell:
                    continue
                ok = sum(r.ok for r in cell)
                ours = "tritium-db" if key in BATCHED else "tritium"
                vs = "" if key == ours else x(t.ratio(model, mode, ours, key))
                w(f"| {title} | {LABELS[key]} | {fmt(t.med(model, mode, key, 'infer_s'))} | "
                  f"{fmt(t.med(model, mode, key, 'p50_us'))} | {fmt(t.med(model, mode, key, 'p99_us'))} | "
                  f"{fmt(t.med(model, mode, key, 'cpu_ms_per_request'), 2)} | {vs} | {ok}/{len(cell)} |")  # fmt: skip
        w("")

    if batching:
        w("## Dynamic batching: with and without\n")
        w("The same servers' configs with and without `dynamic_batching { }`. Ratios of infer/s paired within rounds, "
          "median over rounds; p99 in µs.\n")
        w("Rows / execution: the server's inference count over its execution count (perf_analyzer's server-side "
          "statistics), the average batch the batcher formed.\n")
        w("| model | row | Tritium | Tritium + db | Triton | Triton + db | Tritium: db / without | Triton: db / without | "
          "Tritium + db / Triton + db | Tritium + db / Triton | p99 Tritium, + db | p99 Triton, + db | "
          "rows / execution Tritium + db, Triton + db |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for model in models:
            for mode, (title, _, _) in MODES.items():
                if not any(t.runs(model, mode, k) for k in BATCHED):
                    continue
                ips = [fmt(t.med(model, mode, k, "infer_s")) for k in ("tritium", "tritium-db", "triton", "triton-db")]
                ratios = [x(t.ratio(model, mode, "tritium-db", "tritium")), x(t.ratio(model, mode, "triton-db", "triton")),
                          x(t.ratio(model, mode, "tritium-db", "triton-db")), x(t.ratio(model, mode, "tritium-db", "triton"))]  # fmt: skip
                p99 = [f"{fmt(t.med(model, mode, a, 'p99_us'))}, {fmt(t.med(model, mode, b, 'p99_us'))}"
                       for a, b in (("tritium", "tritium-db"), ("triton", "triton-db"))]  # fmt: skip
                rows = ", ".join(fmt(t.med(model, mode, k, "rows_per_execution"), 2) for k in BATCHED)
                w(f"| {model} | {title} | {' | '.join(ips)} | {' | '.join(ratios)} | {' | '.join(p99)} | {rows} |")
        w("")

    if "cnn" in models and any(t.has("cnn", k) for k in VARIANTS):
        w("## Defaults: Tritium's instance_group count and intra_op_thread_count (CNN)\n")
        w("config.pbtxt variants of the CNN on Tritium; `2 / 0` is the Tritium server above (no instance_group, no "
          "parameters: 2 CPU instances as in Triton, and 0 = ONNX Runtime's own choice, one thread per physical core). "
          "Ratios: infer/s against that default within each round, median over rounds.\n")  # fmt: skip
        w("| instances / intra_op threads | c=1 infer/s | c=1 p50 µs | c=1 p99 µs | c=1 vs default | c=1 / in-process ORT | "
          "c=16 infer/s | c=16 p50 µs | c=16 p99 µs | c=16 vs default | c=16 / Triton | CPU ms / request c=1, c=16 |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        shapes = {"tritium": DEFAULT_SHAPE, **VARIANTS}
        best = {}
        table_modes = ("c1", "c16")
        for key, (count, threads) in sorted(shapes.items(), key=lambda kv: kv[1]):
            cells = []
            for mode in table_modes:
                vs = "(default)" if key == "tritium" else x(t.ratio("cnn", mode, key, "tritium"))
                against = "ort" if mode == "c1" else "triton"  # the targets' comparisons, paired within rounds
                cells += [fmt(t.med("cnn", mode, key, "infer_s")), fmt(t.med("cnn", mode, key, "p50_us")),
                          fmt(t.med("cnn", mode, key, "p99_us")), vs, x(t.ratio("cnn", mode, key, against))]  # fmt: skip
                best.setdefault(mode, []).append((t.med("cnn", mode, key, "infer_s"), f"{count} / {threads}"))
            cpu_cells = ", ".join(fmt(t.med("cnn", mode, key, "cpu_ms_per_request"), 2) for mode in table_modes)
            w(f"| {count} / {threads}{' (default)' if key == 'tritium' else ''} | {' | '.join(cells)} | {cpu_cells} |")
        w("")
        for mode in table_modes:
            title = MODES[mode][0]
            ranked = sorted((b for b in best[mode] if not math.isnan(b[0])), reverse=True)
            if ranked:
                w(f"- Highest median infer/s at {title}: {ranked[0][1]} ({fmt(ranked[0][0])} infer/s)")
        w("")

    w("## Every run\n")
    w("| round | model | row | server | infer/s | p50 µs | p99 µs | requests | rows / execution | CPU s | steal | tries | error |")
    w("|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in sorted(runs, key=lambda r: (r.model, list(MODES).index(r.mode), list(LABELS).index(r.server), r.round)):
        w(f"| {r.round} | {r.model} | {MODES[r.mode][0]} | {LABELS[r.server]} | {fmt(r.infer_s) if r.ok else '–'} | "
          f"{fmt(r.p50_us) if r.ok else '–'} | {fmt(r.p99_us) if r.ok else '–'} | {r.requests} | "
          f"{fmt(r.rows_per_execution, 2) if r.server != 'ort' else ''} | {r.cpu_s:.2f} | "
          f"{r.steal:.0%} | {r.tries} | {r.error} |")  # fmt: skip
    return "\n".join(out) + "\n"


def write_report(out: pathlib.Path, meta: dict, runs: list[Run]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}, indent=1) + "\n")
    out.write_text(render(meta, runs))
