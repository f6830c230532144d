"""gRPC over TLS against plaintext: two release `tritium serve` processes, one with --grpc-use-ssl (a test CA and
certificate made here by `openssl`), the same real perf_analyzer on both (identity FP32[16], sync c=1 and --async
c=16), alternating which goes first each round; medians over ROUNDS (default 3). Writes
bench/results/tls-<UTC date>-<host>.md and prints its path. Target (issue 19): TLS at most 15 % fewer infer/s.

    .venv/bin/python bench/tls.py          # needs target/release/tritium (bash bench/run.sh builds it) or TRITIUM_BIN
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from bench import Run, machine, run_perf_analyzer  # noqa: E402
from servers import Processes, Server  # noqa: E402

ROUNDS = int(os.environ.get("ROUNDS", "3"))
WINDOW_MS = int(os.environ.get("WINDOW_MS", "3000"))
ROWS = {"sync-c1": ([], 1), "async-c16": (["--async"], 16)}
MODES = ("plain", "tls")


def make_certs(d: pathlib.Path) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "1", "-subj", "/CN=bench-ca")
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    run("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=localhost")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "1", "-extfile", str(d / "server.ext"))


def main() -> int:
    binary = os.environ.get("TRITIUM_BIN", str(REPO / "target" / "release" / "tritium"))
    pa = str(REPO / "scripts" / "perf_analyzer")
    procs = Processes()
    results: dict[tuple[str, str], list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="tritium-tls-bench-") as tmp:
        work = pathlib.Path(tmp)
        make_certs(work)
        servers: dict[str, Server] = {}
        try:
            base = [binary, "serve", "--allow-http=false", "--allow-metrics=false"]
            tls = ["--grpc-use-ssl", "--grpc-server-cert", str(work / "server.pem"), "--grpc-server-key", str(work / "server.key")]
            for mode, extra in (("plain", []), ("tls", tls)):
                server = Server(mode, f"Tritium {mode}", procs, work / f"{mode}.log")
                server.start_with_ready_line(base + extra, "tritium ready grpc=", 120)
                servers[mode] = server
            for rnd in range(ROUNDS):
                for row, (args, concurrency) in ROWS.items():
                    order = MODES if rnd % 2 == 0 else MODES[::-1]
                    for mode in order:
                        server = servers[mode]
                        address = server.address.replace("127.0.0.1", "localhost") if mode == "tls" else server.address
                        csv_path = work / f"{row}.{mode}.r{rnd}.csv"
                        argv = [pa, "-i", "grpc", "-u", address, "-m", "identity", "--shape", "INPUT0:16",
                                "--concurrency-range", str(concurrency), "-p", str(WINDOW_MS), "-s", "1000", "-f", str(csv_path), *args]
                        if mode == "tls":
                            argv += ["--ssl-grpc-use-ssl", "true", "--ssl-grpc-root-certifications-file", str(work / "ca.pem")]
                        run = Run(row, mode, rnd, False)
                        run_perf_analyzer(procs, work, argv, 120, server, run, csv_path, work / f"{row}.{mode}.r{rnd}.out")
                        results.setdefault((row, mode), []).append(run)
                        print(f"tls bench: {row} {mode} round {rnd}: {run.infer_s:.0f} infer/s {run.error}", flush=True)
        finally:
            procs.stop_all()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = REPO / "bench" / "results" / f"tls-{date}-{platform.node() or 'host'}.md"
    box = machine()
    lines = [
        f"# gRPC over TLS vs plaintext ({date})",
        "",
        f"Machine: {box['cpu']}, {box['cores']} cores, {box['memory']}. Two release `tritium serve` processes (the same flags, one with `--grpc-use-ssl`, an",
        "ECDSA P-256 certificate), the real perf_analyzer 2.60 (`--ssl-grpc-use-ssl` for TLS), identity FP32[16],",
        f"{WINDOW_MS} ms windows, {ROUNDS} rounds alternating which server goes first; medians. Target: TLS at most 15 % fewer infer/s.",
        "",
        "| row | plaintext infer/s | TLS infer/s | TLS/plaintext | plaintext p99 us | TLS p99 us | target met |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        med = {}
        for mode in MODES:
            runs = [r for r in results.get((row, mode), []) if r.ok]
            med[mode] = (statistics.median(r.infer_s for r in runs), statistics.median(r.p99_us for r in runs)) if runs else (0.0, 0.0)
        ratio = med["tls"][0] / med["plain"][0] if med["plain"][0] else 0.0
        lines.append(f"| {row} | {med['plain'][0]:.0f} | {med['tls'][0]:.0f} | {ratio:.2f} | {med['plain'][1]:.0f} | "
                     f"{med['tls'][1]:.0f} | {'yes' if ratio >= 0.85 else 'no'} |")
    out.write_text("\n".join(lines) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
