"""What the locks cost (issue 60): requests/s through a frontend and a mock-engine worker with the worker plane in
clear and under mutual TLS with the worker token (`DYN_TCP_TLS_*`), and with API keys off and on at the door, in one
run on one machine: `python bench/security_cost.py` (after `scripts/setup-python.sh` and a built `tritium`;
TRITIUM_BIN=target/release/tritium for release timings).

Each setup gets the same load: REQUESTS (2000) OpenAI completions of one token (`--engine mock`, no prefill or decode time,
so the planes and the door are what is measured), CONCURRENCY (8) at a time over kept-alive connections, after a
warm-up of 100; ROUNDS (3) rounds alternate the setups and each row is its median run. Writes bench/results/security-cost-<date>.md with requests/s and p50/p99 latency per setup and the
ratios (TLS on / off, keys on / off).
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from cluster import wait_until  # noqa: E402
from helpers import finish_server, start_server, start_worker  # noqa: E402
from tls_certs import plane_certificates  # noqa: E402

MODEL = "mock-llm"
REQUESTS = int(os.environ.get("REQUESTS", 2000))
CONCURRENCY = int(os.environ.get("CONCURRENCY", 8))
ROUNDS = int(os.environ.get("ROUNDS", 3))
KEY = "bench-key-0123456789"


def load(url: str, key: str | None) -> dict:
    """REQUESTS completions, CONCURRENCY at a time, each worker thread on its own kept-alive connection."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": MODEL, "prompt": "hello", "max_tokens": 1}).encode()
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}

    def run(count: int) -> list[float]:
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        took = []
        for _ in range(count):
            started = time.perf_counter()
            connection.request("POST", "/v1/completions", body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"status {answer.status}")
            took.append(time.perf_counter() - started)
        connection.close()
        return took

    run(100)
    share = [REQUESTS // CONCURRENCY + (i < REQUESTS % CONCURRENCY) for i in range(CONCURRENCY)]
    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        latencies = [t for part in pool.map(run, share) for t in part]
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "rps": REQUESTS / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


def listed(url: str, key: str | None) -> bool:
    import urllib.request

    request = urllib.request.Request(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return MODEL in [model["id"] for model in json.load(answer)["data"]]


def measure(name: str, worker_env: dict[str, str], frontend_args: list[str], key: str | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        discovery = ["--discovery-backend", "file", "--discovery-dir", folder]
        worker = start_worker(*discovery, "--engine", "mock", "--model-name", MODEL, "--mock-decode-ms-per-step", "0",
                              "--mock-prefill-us-per-token", "0", "--worker-token", "plane-secret", env=worker_env)  # fmt: skip
        frontend = start_server(*discovery, "--worker-token", "plane-secret", *frontend_args)
        try:
            wait_until(lambda: listed(frontend.http_url, key), 60, f"{name}: the worker's model listed")
            result = load(frontend.http_url, key)
        finally:
            finish_server(frontend)
            finish_server(worker)
    print(f"{name:<34} {result['rps']:8.1f} req/s  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms", flush=True)
    return {"name": name, **result}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        certs = plane_certificates(pathlib.Path(folder))
        tls_worker = {
            "DYN_TCP_TLS_CERT_PATH": str(certs / "worker.pem"),
            "DYN_TCP_TLS_KEY_PATH": str(certs / "worker.key"),
            "DYN_TCP_TLS_CLIENT_CA_CERT_PATH": str(certs / "ca.pem"),
        }
        tls_frontend = ["--tcp-tls-ca-cert-path", str(certs / "ca.pem"), "--tcp-tls-client-cert-path", str(certs / "frontend.pem"),
                        "--tcp-tls-client-key-path", str(certs / "frontend.key")]  # fmt: skip
        setups = [
            ("plane in clear, no API key", {}, [], None),
            ("plane under mutual TLS, no API key", tls_worker, tls_frontend, None),
            ("plane in clear, API key", {}, ["--api-key", KEY], KEY),
        ]
        # Rounds alternate the setups, so a slow moment of the machine falls on all of them.
        rounds = [[measure(*setup) for setup in setups] for _ in range(ROUNDS)]
    results = []
    for i, (name, *_) in enumerate(setups):
        runs = [one_round[i] for one_round in rounds]
        median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        results.append({**median, "name": name, "runs": [round(r["rps"], 1) for r in runs]})
    plain, tls, keyed = results
    lines = [
        f"# What the locks cost ({datetime.date.today()})",
        "",
        f"{platform.node()}, {os.cpu_count()} cores; `{os.environ.get('TRITIUM_BIN', 'target/debug/tritium')}`; "
        f"{REQUESTS} one-token completions, {CONCURRENCY} at a time, mock engine, one worker behind one frontend.",
        "",
        f"Each setup ran {ROUNDS} times, the setups alternating; the row is the median run (requests/s of every run after it).",
        "",
        "| setup | requests/s | p50 ms | p99 ms | every run |",
        "|---|---|---|---|---|",
        *[f"| {r['name']} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['runs']} |" for r in results],
        "",
        f"Worker-plane mutual TLS: {tls['rps'] / plain['rps']:.3f}x the requests/s in clear. "
        f"API keys: {keyed['rps'] / plain['rps']:.3f}x the requests/s without.",
    ]
    out = REPO / "bench" / "results" / f"security-cost-{datetime.date.today()}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-1:]))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
