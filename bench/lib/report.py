"""The markdown report of one bench run: medians over rounds, ratios, and every run underneath."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

MAIN = ("triton", "tritium", "limit")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


class Cell:
    """The medians of one (row, server) over its successful rounds."""

    def __init__(self, runs: list) -> None:
        ok = [r for r in runs if r.ok]
        self.total = len(runs)
        self.ok = len(ok)
        self.infer_s = _median([r.infer_s for r in ok])
        self.p50 = _median([r.p50_us for r in ok])
        self.p99 = _median([r.p99_us for r in ok])
        self.cpu = _median([r.cpu_per_1k for r in ok if r.requests])
        self.errors = sorted({r.error for r in runs if not r.ok})
        self.notes = sorted({r.note for r in runs if r.note})


def num(x: float, digits: int = 0) -> str:
    if x is None or math.isnan(x):
        return "–"
    if digits == 0 and abs(x) < 100:
        digits = 1
    return f"{x:,.{digits}f}"


def cpu(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:,.1f}"


def _value(run, attr: str) -> float:
    value = getattr(run, attr) if run.ok else math.nan
    return math.nan if value is None or math.isnan(value) or value == 0 else value


def paired(runs: list, others: list, attr: str) -> str:
    """The median over rounds of a run's figure over the other server's in the same round. Runs of one round are
    minutes apart at most, so they share the machine's speed of the moment, which on a shared VM drifts by far more
    (CPU steal) than the differences measured here; the ratio of the medians mixes rounds."""
    theirs = {r.round: _value(r, attr) for r in others}
    ratios = [_value(r, attr) / theirs[r.round] for r in runs if r.round in theirs]
    ratios = [x for x in ratios if not math.isnan(x)]
    return f"{statistics.median(ratios):.2f}x" if ratios else "–"


def render(meta: dict, rows: list, variants: dict, runs: list) -> str:
    by = defaultdict(list)
    for r in runs:
        by[(r.row, r.server)].append(r)

    def pair(row, other: str, attr: str) -> str:
        return paired(by[(row.key, "tritium")], by[(row.key, other)], attr)
    cells = {key: Cell(v) for key, v in by.items()}
    labels = dict(meta["servers"])
    labels["triton"] = f"Triton {meta['triton_version']} (python backend)"
    labels["tritium"] = "Tritium"
    labels["limit"] = "limit (tonic echo)"
    has_limit = "limit" in labels
    m, v, s = meta["machine"], meta["versions"], meta["settings"]

    out: list[str] = []
    w = out.append
    w("# Tritium vs Triton: side-by-side perf_analyzer run\n")
    w(f"- **Date:** {meta['date']}; the whole run took {meta['duration_s'] / 60:.1f} min")
    w(f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['memory']} memory, Linux {m['kernel']} "
      f"(load average at start: {m['load']}); servers and perf_analyzer share these cores")  # fmt: skip
    w(f"- **Versions:** Tritium {v.get('tritium', '?')}; Triton {meta['triton_version']} from nvidia-pytriton "
      f"{v.get('pytriton', '?')} (python backend, `bench/triton-models/`); perf_analyzer {v.get('perf_analyzer', '?')}; "
      f"{v.get('rustc', 'rustc ?')}")  # fmt: skip
    w(f"- **Command:** `{meta['command']}`")
    small = f"3 windows of {s['window_ms']} ms" if s["window_ms"] else ""
    large = ", ".join(f"{k}: 3 windows of {n} requests" for k, n in s["large_count"].items())
    w(f"- **Per run:** {small}; large tensors count windows ({large}), perf_analyzer capped at {s['mem_cap_gib']} GiB "
      f"of address space; {s['rounds']} round(s), servers alternating within each row; figures are medians over rounds")  # fmt: skip
    if "max_steal" in s:
        w(f"- **Steal:** a run during which the hypervisor took more than {s['max_steal']:.0%} of the machine's CPU time "
          f"(`/proc/stat` steal) was run again, up to {s['steal_tries']} tries; the last try is kept (`tries`, `steal` "
          "under Every run)")  # fmt: skip
    if s.get("limit_args"):
        w(f"- **Limit:** `limit-server {' '.join(s['limit_args'])}`, the transport `tritium serve` has by default")
    if s["quick"]:
        w("- **QUICK=1:** smoke-test settings; these numbers are not for comparison")
    w("")
    w("Server CPU is utime + stime of the server's whole process session (Triton: tritonserver and its python-backend "
      "stub processes) from `/proc/<pid>/stat`, read before and after each perf_analyzer run, divided by the requests "
      "perf_analyzer reported for its three measurement windows (`Request count`), which cover nearly the whole run: "
      "the few requests between windows are not counted, which overstates every server's CPU per request alike.")  # fmt: skip
    w("")
    for note in meta["notes"]:
        w(f"> {note}\n")

    # Summary: one line per row.
    w("## Summary\n")
    head = "| row | Triton infer/s | Tritium infer/s |"
    line = "|---|---:|---:|"
    if has_limit:
        head += " limit infer/s |"
        line += "---:|"
    head += " Tritium/Triton infer/s | Tritium/Triton CPU |"
    line += "---:|---:|"
    if has_limit:
        head += " Tritium/limit infer/s | Tritium/limit p99 | Tritium/limit CPU |"
        line += "---:|---:|---:|"
    w(head)
    w(line)
    empty = Cell([])
    for row in rows:
        tn, tr, li = (cells.get((row.key, k), empty) for k in MAIN)
        cols = [row.title, num(tn.infer_s), num(tr.infer_s)]
        if has_limit:
            cols.append(num(li.infer_s))
        cols += [pair(row, "triton", "infer_s"), pair(row, "triton", "cpu_per_1k")]
        if has_limit:
            cols += [pair(row, "limit", "infer_s"), pair(row, "limit", "p99_us"), pair(row, "limit", "cpu_per_1k")]
        w("| " + " | ".join(cols) + " |")
    w("")
    w("Ratios are Tritium's figure over the other's: above 1 is better for infer/s, below 1 is better for p99 and CPU. "
      "Each is the median over rounds of the ratio within one round (Tritium's run against the other server's "
      "run in the same round), not the ratio of the medians: the machine's speed drifts between rounds (see `steal` "
      "under Every run) by more than the differences measured, and runs of one round share it. Absolute figures are "
      "medians over rounds.\n")  # fmt: skip

    # One table per row.
    group = None
    for row in rows:
        if row.group != group:
            group = row.group
            w(f"## {group}\n")
        w(f"### {row.title}\n")
        head = "| server | infer/s | p50 µs | p99 µs | server CPU s / 1k req | Tritium/Triton infer/s |"
        line = "|---|---:|---:|---:|---:|---:|"
        if has_limit:
            head += " Tritium/limit infer/s | Tritium/limit CPU |"
            line += "---:|---:|"
        w(head)
        w(line)
        tn, tr, li = (cells.get((row.key, k), empty) for k in MAIN)
        for key in MAIN:
            if (row.key, key) not in cells:
                continue
            c = cells[(row.key, key)]
            name = labels[key] + (f" ({', '.join(c.notes)})" if c.notes else "")
            if c.ok == 0:
                w(f"| {name} | failed: {'; '.join(c.errors)} |" + " |" * (line.count("|") - 3))
                continue
            if c.ok < c.total:
                name += f" ({c.ok}/{c.total} runs ok)"
            cols = [name, num(c.infer_s), num(c.p50), num(c.p99), cpu(c.cpu)]
            if key == "tritium":
                cols.append(pair(row, "triton", "infer_s"))
                if has_limit:
                    cols += [pair(row, "limit", "infer_s"), pair(row, "limit", "cpu_per_1k")]
            else:
                cols += ["", "", ""] if has_limit else [""]
            w("| " + " | ".join(cols) + " |")
        w("")

    # HTTP/2 window experiment.
    large = [r for r in rows if r.large]
    if large:
        w("## HTTP/2 windows (Tritium, large tensors)\n")
        w("Tritium started four ways, measured in the same alternation as the rows above: with its default flags, "
          "and with (a) tonic's defaults stated explicitly (hyper's: `--grpc-initial-connection-window-size 1048576 "
          "--grpc-initial-stream-window-size 1048576 --grpc-max-frame-size 16384`), (b) `--grpc-adaptive-window`, "
          "(c) `--grpc-initial-connection-window-size 16777216 --grpc-initial-stream-window-size 16777216 "
          "--grpc-max-frame-size 1048576`. Ratios are against (a).\n")  # fmt: skip
        w("| row | Tritium started with | infer/s | p50 µs | p99 µs | server CPU s / 1k req | infer/s vs (a) | CPU vs (a) |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        for row in large:
            entries = [("tritium", "default flags")] + [(k, short) for k, (_, short, _) in variants.items()]
            if has_limit:
                # Runs before the limit took Tritium's transport flags ran it on tonic's defaults.
                limit_windows = "Tritium's default windows" if s.get("limit_args") else "tonic's defaults"
                entries.append(("limit", f"limit server ({limit_windows}), for reference"))
            for key, label in entries:
                c = cells.get((row.key, key))
                if c is None:
                    continue
                if c.ok == 0:
                    w(f"| {row.title} | {label} | failed: {'; '.join(c.errors)} | | | | | |")
                    continue
                w(f"| {row.title} | {label} | {num(c.infer_s)} | {num(c.p50)} | {num(c.p99)} | {cpu(c.cpu)} | "
                  f"{paired(by[(row.key, key)], by[(row.key, 'tritium-tonic')], 'infer_s')} | "
                  f"{paired(by[(row.key, key)], by[(row.key, 'tritium-tonic')], 'cpu_per_1k')} |")  # fmt: skip
        w("")

    # Every run.
    w("## Every run\n")
    w("`steal`: the share of the machine's CPU time the hypervisor gave to other guests during the run (`/proc/stat`).\n")
    w("| row | server | round | infer/s | p50 µs | p99 µs | requests | server CPU s | CPU s / 1k req | wall s | steal | tries | error |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        w(f"| {r.row} | {labels.get(r.server, r.server)} | {r.round} | {num(r.infer_s) if r.ok else '–'} | "
          f"{num(r.p50_us) if r.ok else '–'} | {num(r.p99_us) if r.ok else '–'} | {r.requests or '–'} | {r.cpu_s:.2f} | "
          f"{cpu(r.cpu_per_1k) if r.ok else '–'} | {r.wall_s:.1f} | {r.steal:.0%} | {r.tries} | {r.error} |")  # fmt: skip
    w("")
    return "\n".join(out)
