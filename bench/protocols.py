"""Tritium's own doors against each other: gRPC plaintext, gRPC over TLS and HTTP (binary tensors) to the same
model, with the same real perf_analyzer (identity FP32[16], sync c=1 and --async c=16). Two release `tritium serve`
processes (one plaintext serving gRPC and HTTP, one with --grpc-use-ssl; a test CA and certificate made here by
`openssl`). Within each round the three runs of a row follow each other, in an order that rotates every round, and
the figure reported is the median over rounds of each round's ratio: on a shared 2-core VM the machine's speed
drifts between rounds by more than the differences measured. Writes bench/results/protocols-<UTC date>-<host>.md
and prints its path. Targets (issue 19): TLS at most 15 % fewer infer/s than plaintext; HTTP at least 0.8x gRPC.

    .venv/bin/python bench/protocols.py     # about 6 min; needs target/release/tritium (bash bench/run.sh builds it) or TRITIUM_BIN
    ROUNDS=7 WINDOW_MS=2000 ROWS=async-c16 SUFFIX=-c16 .venv/bin/python bench/protocols.py
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import Run, machine, run_perf_analyzer  # noqa: E402
from servers import Processes, Server  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "5"))
WINDOW_MS = int(os.environ.get("WINDOW_MS", "3000"))
ALL_ROWS = {"sync-c1": ([], 1), "async-c16": (["--async"], 16)}
ROWS = {row: spec for row, spec in ALL_ROWS.items() if row in os.environ.get("ROWS", ",".join(ALL_ROWS)).split(",")}
MODES = ("grpc", "grpc-tls", "http")
# (mode, against, target): the ratio reported and the least it may be.
RATIOS = (("grpc-tls", "grpc", 0.85), ("http", "grpc", 0.8))


def make_certs(d: pathlib.Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "1", "-subj", "/CN=bench-ca")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "1", "-extfile", str(d / "server.ext"))


def perf_analyzer_argv(pa: str, mode: str, server: Server, work: pathlib.Path, concurrency: int, csv_path, args) -> list[str]:
    address = server.http if mode == "http" else server.address
    if mode == "grpc-tls":
        address = address.replace("127.0.0.1", "localhost")
    argv = [pa, "-i", "http" if mode == "http" else "grpc", "-u", address, "-m", "identity", "--shape", "INPUT0:16",
            "--concurrency-range", str(concurrency), "-p", str(WINDOW_MS), "-s", "1000", "-f", str(csv_path), *args]
    if mode == "grpc-tls":
        argv += ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(work / "ca.pem")]
    return argv


def main() -> int:
    binary = os.environ.get("TRITIUM_BIN", str(REPO / "target" / "release" / "tritium"))
    pa = str(REPO / "scripts" / "perf_analyzer")
    procs = Processes()
    results: dict[tuple[str, str], dict[int, Run]] = {}
    with tempfile.TemporaryDirectory(prefix="tritium-protocols-bench-") as tmp:
        work = pathlib.Path(tmp)
        make_certs(work)
        try:
            base = [binary, "serve", "--allow-metrics=false"]
            tls = ["--allow-http=false", "--grpc-use-ssl", "--grpc-server-cert", str(work / "server.pem"),
                   "--grpc-server-key", str(work / "server.key")]
            plain = Server("plain", "Tritium", procs, work / "plain.log")
            plain.start_with_ready_line(base, "tritium ready grpc=", 120, http=True)
            secure = Server("tls", "Tritium TLS", procs, work / "tls.log")
            secure.start_with_ready_line(base + tls, "tritium ready grpc=", 120)
            servers = {"grpc": plain, "grpc-tls": secure, "http": plain}
            for rnd in range(ROUNDS):
                for row, (args, concurrency) in ROWS.items():
                    order = MODES[rnd % len(MODES):] + MODES[: rnd % len(MODES)]
                    for mode in order:
                        server = servers[mode]
                        csv_path = work / f"{row}.{mode}.r{rnd}.csv"
                        argv = perf_analyzer_argv(pa, mode, server, work, concurrency, csv_path, args)
                        run = Run(row, mode, rnd, False)
                        # perf_analyzer's own CPU: what the children reaped meanwhile used (only it is reaped).
                        before = resource.getrusage(resource.RUSAGE_CHILDREN)
                        run_perf_analyzer(procs, work, argv, 120, server, run, csv_path, work / f"{row}.{mode}.r{rnd}.out")
                        after = resource.getrusage(resource.RUSAGE_CHILDREN)
                        run.client_cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                        results.setdefault((row, mode), {})[rnd] = run
                        print(f"protocols bench: {row} {mode} round {rnd}: {run.infer_s:.0f} infer/s {run.error}", flush=True)
        finally:
            procs.stop_all()
    out = write_report(results)
    print(out)
    return 0


def write_report(results: dict[tuple[str, str], dict[int, Run]]) -> pathlib.Path:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = REPO / "bench" / "results" / f"protocols-{date}-{platform.node() or 'host'}{os.environ.get('SUFFIX', '')}.md"
    box = machine()
    lines = [
        f"# Tritium's doors: gRPC, gRPC over TLS and HTTP ({date})",
        "",
        f"Machine: {box['cpu']}, {box['cores']} cores, {box['memory']}; perf_analyzer shares them with the server. Two",
        "release `tritium serve` processes (plaintext gRPC + HTTP; `--grpc-use-ssl` with an ECDSA P-256 certificate), the",
        "real perf_analyzer 2.60 (`-i http` sends binary tensors; `--ssl-grpc-use-ssl` for TLS), identity FP32[16],",
        f"{WINDOW_MS} ms windows, {ROUNDS} rounds; within a round a row's three runs follow each other, in an order that",
        "rotates every round. Ratios are medians over rounds of each round's ratio; infer/s and p99 are medians.",
        "",
        "CPU per request: the server's process (utime + stime from /proc) and perf_analyzer's (getrusage of the",
        "reaped child), over the whole run (warm-up included) divided by the requests of its measured windows, medians.",
        "",
        "| row | gRPC infer/s | TLS infer/s | HTTP infer/s | TLS/gRPC (target >= 0.85) | HTTP/gRPC (target >= 0.8) | p99 gRPC / TLS / HTTP us | server CPU us / request gRPC / TLS / HTTP | perf_analyzer CPU us / request gRPC / TLS / HTTP |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in ROWS:
        runs = {mode: results.get((row, mode), {}) for mode in MODES}
        med = {m: statistics.median([r.infer_s for r in runs[m].values() if r.ok] or [0.0]) for m in MODES}
        p99 = {m: statistics.median([r.p99_us for r in runs[m].values() if r.ok] or [0.0]) for m in MODES}
        per_request = lambda r, seconds: seconds / r.requests * 1e6 if r.requests else 0.0  # noqa: E731
        server_cpu = {m: statistics.median([per_request(r, r.cpu_s) for r in runs[m].values() if r.ok] or [0.0]) for m in MODES}
        client_cpu = {m: statistics.median([per_request(r, r.client_cpu_s) for r in runs[m].values() if r.ok] or [0.0])
                      for m in MODES}
        cells = []
        for mode, against, target in RATIOS:
            per_round = [runs[mode][i].infer_s / runs[against][i].infer_s for i in runs[mode]
                         if i in runs[against] and runs[mode][i].ok and runs[against][i].ok and runs[against][i].infer_s]
            ratio = statistics.median(per_round) if per_round else 0.0
            spread = f"{min(per_round):.2f}-{max(per_round):.2f}" if per_round else "-"
            cells.append(f"{ratio:.2f} ({spread}) {'met' if ratio >= target else 'missed'}")
        lines.append(f"| {row} | {med['grpc']:.0f} | {med['grpc-tls']:.0f} | {med['http']:.0f} | {cells[0]} | {cells[1]} | "
                     f"{p99['grpc']:.0f} / {p99['grpc-tls']:.0f} / {p99['http']:.0f} | "
                     f"{' / '.join(f'{server_cpu[m]:.0f}' for m in MODES)} | {' / '.join(f'{client_cpu[m]:.0f}' for m in MODES)} |")
    out.write_text("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
