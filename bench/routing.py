"""Routing modes side by side on mock workers: `python bench/routing.py` (after `bash scripts/test.sh`
or at least `scripts/setup-python.sh`, `scripts/install-services.sh` and a built `tritium`).

Starts a real etcd and NATS, WORKERS mock workers (`--engine mock`: simulated prefill per uncached
token, a real block KV cache, real KV events) and one frontend per router mode, then sends each
frontend the same kind of shared-prefix workload (GROUPS prefixes of PREFIX tokens, REQUESTS per
group with their own suffix, CONCURRENCY at a time, in random order; fresh prompts per mode so
every mode starts from cold caches). Reports, per mode: prefix-hit rate as the engines counted it,
time to first token (mean, p50, p99), and requests per second. Writes bench/results/routing-<date>.md.
Environment: WORKERS (4), GROUPS (8), REQUESTS (8), PREFIX (512), CONCURRENCY (4), PREFILL_US (200),
DECODE_MS (2), MAX_TOKENS (8).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import random
import statistics
import string
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

import openai  # noqa: E402

from cluster import metric, start_etcd, start_nats, wait_until  # noqa: E402
from helpers import start_server, start_worker  # noqa: E402

MODES = ["round-robin", "random", "least-loaded", "kv"]


def setting(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def engine_totals(url: str) -> tuple[float, float]:
    text = metrics(url)
    labels = 'model="mock-llm"'
    return (
        metric(text, "tritium_llm_engine_prompt_tokens_total", labels),
        metric(text, "tritium_llm_engine_prompt_tokens_cached_total", labels),
    )


def workload(url: str, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " "
    prompts = []
    for _ in range(setting("GROUPS", 8)):
        prefix = "".join(rng.choice(alphabet) for _ in range(setting("PREFIX", 512)))
        prompts += [prefix + "".join(rng.choice(alphabet) for _ in range(32)) for _ in range(setting("REQUESTS", 8))]
    rng.shuffle(prompts)
    tokens = sum(len(p) for p in prompts)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    base_total, base_cached = engine_totals(url)

    def one(prompt: str) -> float:
        started = time.monotonic()
        first = None
        for _ in client.completions.create(model="mock-llm", prompt=prompt, max_tokens=setting("MAX_TOKENS", 8), stream=True):
            first = first or time.monotonic() - started
        return first if first is not None else float("nan")

    started = time.monotonic()
    with ThreadPoolExecutor(setting("CONCURRENCY", 4)) as pool:
        ttfts = sorted(pool.map(one, prompts))
    elapsed = time.monotonic() - started
    wait_until(lambda: engine_totals(url)[0] - base_total >= tokens, 15, "the engines' load reports")
    total, cached = engine_totals(url)
    return {
        "requests": len(prompts),
        "hit": (cached - base_cached) / (total - base_total),
        "ttft_mean": statistics.fmean(ttfts) * 1000,
        "ttft_p50": ttfts[len(ttfts) // 2] * 1000,
        "ttft_p99": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000,
        "rps": len(prompts) / elapsed,
    }


def main() -> None:
    etcd, nats = start_etcd(), start_nats()
    common = ["--discovery", "etcd", "--etcd-endpoints", etcd.address, "--events", "nats", "--nats-url", nats.address]
    common += ["--namespace", f"bench-{uuid.uuid4().hex[:8]}"]
    mock = ["--engine", "mock", "--model-name", "mock-llm"]
    mock += ["--mock-prefill-us-per-token", str(setting("PREFILL_US", 200)), "--mock-decode-ms-per-step", str(setting("DECODE_MS", 2))]
    started = []
    rows = []
    try:
        workers = setting("WORKERS", 4)
        for i in range(workers):
            started.append(start_worker(*common, *mock, "--worker-id", f"mock-{i}"))
        frontends = {mode: start_server(*common, "--router-mode", mode) for mode in MODES}
        started += frontends.values()
        for frontend in frontends.values():
            wait_until(lambda f=frontend: metric(metrics(f.http_url), "tritium_router_workers", 'model="mock-llm"') == workers, 15, "workers registered")
        for seed, (mode, frontend) in enumerate(frontends.items()):
            result = workload(frontend.http_url, seed)
            rows.append((mode, result))
            print(f"{mode:>13}: hit {result['hit']:.1%}  TTFT mean {result['ttft_mean']:.1f} ms  p50 {result['ttft_p50']:.1f}  p99 {result['ttft_p99']:.1f}  {result['rps']:.1f} req/s", flush=True)
    finally:
        for process in reversed(started):
            process.stop()
            process.stderr_path.unlink(missing_ok=True)
        etcd.stop()
        nats.stop()
    write_report(rows)


def write_report(rows: list[tuple[str, dict[str, float]]]) -> None:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = REPO / "bench" / "results" / f"routing-{date}-{platform.node()}.md"
    base = dict(rows).get("round-robin")
    lines = [
        f"# Routing modes on mock workers ({date}, {platform.node()}, {os.cpu_count()} cores)",
        "",
        f"`python bench/routing.py`: {setting('WORKERS', 4)} mock workers (prefill {setting('PREFILL_US', 200)} µs per uncached token, "
        f"decode {setting('DECODE_MS', 2)} ms per step), {setting('GROUPS', 8)} prefixes of {setting('PREFIX', 512)} tokens x "
        f"{setting('REQUESTS', 8)} requests, {setting('CONCURRENCY', 4)} at a time, max_tokens {setting('MAX_TOKENS', 8)}; "
        "real etcd and NATS. Hit rate: prompt tokens the engines found in their KV caches.",
        "",
        "| mode | prefix-hit rate | TTFT mean (ms) | TTFT p50 | TTFT p99 | req/s | TTFT mean vs round-robin |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in rows:
        ratio = f"{r['ttft_mean'] / base['ttft_mean']:.2f}x" if base else "-"
        lines.append(f"| {mode} | {r['hit']:.1%} | {r['ttft_mean']:.1f} | {r['ttft_p50']:.1f} | {r['ttft_p99']:.1f} | {r['rps']:.1f} | {ratio} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"report: {path}")


if __name__ == "__main__":
    main()
