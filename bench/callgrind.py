"""Instructions per request, Tritium against the limit server, counted by callgrind.

Timing on a shared 2-core VM moves by 10-30 % between runs (CPU steal); instruction counts do not: the same
binaries and requests give the same totals whatever else the machine does. So this is how a change to the request
path is judged, before the perf_analyzer run (`bench/run.sh`) that reports what users see.

Each server runs under `valgrind --tool=callgrind` on an ephemeral port. The driver (tritonclient, one thread)
sends WARMUP requests, zeroes the counters, sends REQUESTS more, and dumps the counters: the server's user-space
instructions per request, all its threads together. Three servers: Tritium, the limit on tonic's stock transport
(as `bench/run.sh` runs it), and the limit on Tritium's transport (`--transport tritium`), which leaves Tritium's
request handling as the only difference. Three modes: ModelInfer one at a time; ModelInfer with DEPTH
(16) in flight on one connection, as perf_analyzer's --async rows send them; and one at a time over one
ModelStreamInfer stream. Kernel time (syscalls, wakeups) is not counted; `bench/run.sh` measures that as CPU seconds.

    .venv/bin/python bench/callgrind.py           # about 4 min; needs valgrind and release builds
    REQUESTS=5000 .venv/bin/python bench/callgrind.py
    COMPARE=/path/to/other/tritium .venv/bin/python bench/callgrind.py   # this build against another one

The dumps stay in the work directory it prints, for `callgrind_annotate --inclusive=yes <dump>`.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient

REPO = pathlib.Path(__file__).resolve().parent.parent
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
REQUESTS = int(os.environ.get("REQUESTS", "2000"))
WARMUP = int(os.environ.get("WARMUP", "200"))
DEPTH = int(os.environ.get("DEPTH", "16"))
STARTUP_TIMEOUT = float(os.environ.get("STARTUP_TIMEOUT", "300"))

LIMIT = [str(TARGET / "limit-server"), "--grpc-address", "127.0.0.1", "--grpc-port", "0"]
SERVERS = {
    "Tritium": [str(TARGET / "tritium"), "serve", "--grpc-address", "127.0.0.1", "--grpc-port", "0", "--allow-metrics=false"],
    # The limit as bench/run.sh runs it: the echo over tonic's stock transport.
    "limit": LIMIT,
    # The same echo over Tritium's transport: Tritium / this is what Tritium's request handling costs alone.
    "limit-tt": [*LIMIT, "--transport", "tritium"],
}
# Tritium logs "serving gRPC on ADDR"; the limit prints "limit ready grpc=ADDR".
READY = re.compile(r"(?:serving gRPC on |ready grpc=)(\S+)")


def unary(client: grpcclient.InferenceServerClient, inputs, outputs, count: int) -> None:
    for _ in range(count):
        client.infer("identity", inputs, outputs=outputs)


def concurrent(client: grpcclient.InferenceServerClient, inputs, outputs, count: int) -> None:
    """ModelInfer with DEPTH requests in flight on one connection, as perf_analyzer's --async rows send them."""
    slots = threading.Semaphore(DEPTH)
    errors: list = []

    def done(result, error) -> None:
        if error is not None:
            errors.append(error)
        slots.release()

    for _ in range(count):
        slots.acquire()
        client.async_infer("identity", inputs, done, outputs=outputs)
    for _ in range(DEPTH):
        slots.acquire()
    if errors:
        raise RuntimeError(f"{len(errors)} concurrent requests failed, the first: {errors[0]}")


def streamed(client: grpcclient.InferenceServerClient, inputs, outputs, count: int) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put(error))
    try:
        for _ in range(count):
            client.async_stream_infer("identity", inputs, outputs=outputs)
            error = answers.get(timeout=60)
            if error is not None:
                raise RuntimeError(f"stream request failed: {error}")
    finally:
        client.stop_stream()


MODES = {"ModelInfer": unary, f"ModelInfer-{DEPTH}-in-flight": concurrent, "ModelStreamInfer": streamed}


def total_instructions(dump: pathlib.Path) -> int:
    """The `summary:` (or `totals:`) line of a callgrind dump: events counted since the last zeroing."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def measure(name: str, command: list[str], work: pathlib.Path) -> dict[str, float]:
    log = work / f"{name}.log"
    out = work / f"callgrind.{name}.%p"
    with log.open("w") as sink:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        address = None
        while address is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log}")
            found = READY.search(log.read_text())
            address = found.group(1) if found else None
            time.sleep(0.2)
        client = grpcclient.InferenceServerClient(address)
        tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
        tensor.set_data_from_numpy(np.arange(16, dtype=np.float32))
        inputs, outputs = [tensor], [grpcclient.InferRequestedOutput("OUTPUT0")]
        result = {}
        for mode, run in MODES.items():
            run(client, inputs, outputs, WARMUP)
            subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
            run(client, inputs, outputs, REQUESTS)
            before = set(work.glob(f"callgrind.{name}.{server.pid}.*"))
            subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
            dump = max(set(work.glob(f"callgrind.{name}.{server.pid}.*")) - before, key=lambda p: p.stat().st_mtime)
            dump.rename(work / f"callgrind.{name}.{mode}")
            result[mode] = total_instructions(work / f"callgrind.{name}.{mode}") / REQUESTS
        client.close()
        return result
    finally:
        server.terminate()
        server.wait(timeout=60)


def compare(other: str) -> int:
    """This build's Tritium against another build's (a change's before and after), in the same run."""
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-callgrind-"))
    print(f"callgrind: {REQUESTS} requests per mode after {WARMUP} to warm up; dumps in {work}", flush=True)
    this = SERVERS["Tritium"]
    results = {"this": measure("this", this, work), "other": measure("other", [other, *this[1:]], work)}
    print()
    print(f"| call | this build ({this[0]}) | other build ({other}) | this / other |")
    print("|---|---:|---:|---:|")
    for mode in MODES:
        ours, theirs = results["this"][mode], results["other"][mode]
        print(f"| {mode} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.3f}x |")
    print("\nInstructions per request, both builds' servers counted the same way.")
    return 0


def main() -> int:
    if os.environ.get("COMPARE"):
        if not (TARGET / "tritium").exists():
            print(f"callgrind: {TARGET / 'tritium'} is missing: cargo build --release -p tritium-server", file=sys.stderr)
            return 1
        return compare(os.environ["COMPARE"])
    for binary in ("tritium", "limit-server"):
        if not (TARGET / binary).exists():
            print(f"callgrind: {TARGET / binary} is missing: cargo build --release -p tritium-server -p tritium-bench",
                  file=sys.stderr)
            return 1
    work = pathlib.Path(tempfile.mkdtemp(prefix="tritium-callgrind-"))
    print(f"callgrind: {REQUESTS} requests per mode after {WARMUP} to warm up; dumps in {work}", flush=True)
    results = {name: measure(name, command, work) for name, command in SERVERS.items()}
    print()
    print("| call | Tritium | limit | Tritium / limit | limit on Tritium's transport | Tritium / that |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in MODES:
        ours, limit, same = (results[name][mode] for name in ("Tritium", "limit", "limit-tt"))
        print(f"| {mode} | {ours:,.0f} | {limit:,.0f} | {ours / limit:.2f}x | {same:,.0f} | {ours / same:.2f}x |")
    print("\nInstructions per request. The limit runs on tonic's own transport, as in bench/run.sh; on Tritium's "
          "transport it shows what Tritium's request handling costs beyond an echo.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
