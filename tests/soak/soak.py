"""A bounded soak of the real `tritium` binary: SOAK_CLIENTS threads (16) for SOAK_SECONDS (180) on 127.0.0.1,
90 % normal gRPC traffic checked for correct answers, 10 % malformed or abusive calls (attacks.py) that the
server must refuse without dying, hanging or leaking.

It fails (exit 1) when a normal request fails or answers wrongly, an abusive call is not refused the way it
should be, the server exits, a client thread outlives its timeouts, the final request fails, the server logs a
panic, or its RSS grows by 10 % or more between the end of the warm-up and the end. The last line is
`soak: N passed, M failed`, N and M counting those checks.

    TRITIUM_BIN=target/debug/tritium .venv/bin/python tests/soak/soak.py

The server runs with --allow-shared-memory, explicit model control over a temporary repository, and a
64 MiB message limit (see MAX_MESSAGE).

Environment: SOAK_SECONDS, SOAK_CLIENTS, SOAK_SEED, SOAK_BOMB_MIB (inflated size of the compression bomb,
256, over the 64 MiB limit), SOAK_SKIP (comma-separated attack names to leave out, e.g.
`shm_truncated,load_fifo` against a server known to die of them), TRITIUM_BIN (as in tests/python).
"""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "python")]

import numpy as np  # noqa: E402
import pytest  # noqa: E402  (helpers report a failed start with pytest.fail)
from tritonclient.utils import InferenceServerException  # noqa: E402

import attacks  # noqa: E402
from attacks import CALL_TIMEOUT, Client, code_of, tensor  # noqa: E402
from helpers import REPO, identity_config, start_server, tail, tritium_bin, write_model  # noqa: E402
from rawgrpc import bomb_body  # noqa: E402

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "16"))
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
BOMB_MIB = int(os.environ.get("SOAK_BOMB_MIB", "256"))
SKIP = {name.strip() for name in os.environ.get("SOAK_SKIP", "").split(",") if name.strip()}
ABUSE_SHARE = 0.10
# The allocator keeps growing its pools for the first minute of load; growth is measured after that.
WARMUP = min(60.0, SOAK_SECONDS / 3)
QUIET = min(5.0, WARMUP / 2)
# RSS floors are the lowest samples over this long before the warm-up ends and before the soak ends: the
# allocator gives memory back unevenly, so a few seconds' floor swings by several MiB either way (one run
# measured +10.0 %, the next -8.1 %, with no trend between), while a leak raises every sample.
MEASURE = min(20.0, WARMUP / 2)
RSS_LIMIT = 0.10
SHM_FLAG = "--allow-shared-memory"
# The server's default message limit is Triton's 2 GiB, so a 256 MiB message is legal there. The soak
# lowers it to 64 MiB (its own traffic is tiny) so that the compression bomb is 4x over and must be
# refused while inflating, after 64 MiB at most.
MAX_MESSAGE = 64 << 20


def write_repository(repo: pathlib.Path) -> None:
    """identity and add_sub with the built-in configs' texts, and a BYTES identity."""
    for name in ("identity", "add_sub"):
        write_model(repo, name, (REPO / "worker" / "models" / f"{name}.pbtxt").read_text())
    write_model(repo, "identity_bytes", identity_config("identity_bytes", "TYPE_STRING"))


# Normal traffic: each returns None when the answer is right, else what was wrong.
def identity_sync(c: Client):
    data = c.rng.random(int(c.rng.integers(1, 65)), dtype=np.float32)
    out = c.triton.infer("identity", [tensor("INPUT0", data, "FP32")], client_timeout=CALL_TIMEOUT).as_numpy("OUTPUT0")
    return None if np.array_equal(out, data) else f"identity echoed {out!r} for {data!r}"


def add_sub_sync(c: Client):
    a, b = (c.rng.integers(-1 << 20, 1 << 20, 16, dtype=np.int32) for _ in range(2))
    result = c.triton.infer("add_sub", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")], client_timeout=CALL_TIMEOUT)
    return check_add_sub(result, a, b)


def check_add_sub(result, a, b):
    if np.array_equal(result.as_numpy("OUTPUT0"), a + b) and np.array_equal(result.as_numpy("OUTPUT1"), a - b):
        return None
    return f"add_sub answered {result.as_numpy('OUTPUT0')!r}, {result.as_numpy('OUTPUT1')!r} for {a!r}, {b!r}"


def bytes_sync(c: Client):
    items = [c.rng.bytes(int(c.rng.integers(0, 40))) for _ in range(int(c.rng.integers(1, 9)))]
    data = np.array(items, dtype=np.object_)
    out = c.triton.infer("identity_bytes", [tensor("INPUT0", data, "BYTES")], client_timeout=CALL_TIMEOUT).as_numpy("OUTPUT0")
    return None if list(out) == items else f"identity_bytes echoed {list(out)!r} for {items!r}"


def stream_infer(c: Client):
    """1 to 4 requests on one ModelStreamInfer, each answer matched to its request by id."""
    events: queue.Queue = queue.Queue()
    c.triton.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=CALL_TIMEOUT)
    sent = {}
    try:
        for i in range(int(c.rng.integers(1, 5))):
            if c.rng.random() < 0.5:
                data = c.rng.random(int(c.rng.integers(1, 33)), dtype=np.float32)
                c.triton.async_stream_infer("identity", [tensor("INPUT0", data, "FP32")], request_id=f"i{i}")
                sent[f"i{i}"] = data
            else:
                a, b = (c.rng.integers(-1000, 1000, 16, dtype=np.int32) for _ in range(2))
                c.triton.async_stream_infer("add_sub", [tensor("INPUT0", a, "INT32"), tensor("INPUT1", b, "INT32")], request_id=f"a{i}")
                sent[f"a{i}"] = (a, b)
        answers = [events.get(timeout=CALL_TIMEOUT) for _ in sent]
    except queue.Empty:
        return f"stream: fewer than {len(sent)} answers within {CALL_TIMEOUT:.0f}s"
    finally:
        c.triton.stop_stream()
    for result, error in answers:
        if error is not None:
            return "stream: {}: {}".format(*code_of(error))
        rid = result.get_response().id
        expected = sent.pop(rid, None)
        if expected is None:
            return f"stream: an answer with unknown or repeated id {rid!r}"
        wrong = check_add_sub(result, *expected) if rid.startswith("a") else (
            None if np.array_equal(result.as_numpy("OUTPUT0"), expected) else f"identity echoed wrongly on {rid}")
        if wrong:
            return wrong
    return None


NORMAL = {"identity_sync": identity_sync, "add_sub_sync": add_sub_sync, "bytes_sync": bytes_sync, "stream_infer": stream_infer}


class Soak:
    def __init__(self, server, repo: pathlib.Path, bombs: dict[str, bytes]):
        self.server, self.repo, self.bombs = server, repo, bombs
        self.attacks = {k: v for k, v in attacks.ATTACKS.items() if k not in SKIP}
        self.attack_names = list(self.attacks)
        weights = np.array([w for _, w in self.attacks.values()], dtype=float)
        self.attack_p = weights / weights.sum()
        self.gates = {"compression_bomb": threading.Lock(), "load": threading.Lock()}
        self.lock = threading.Lock()
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # ok, expected, unexpected
        self.samples: dict[str, list[str]] = defaultdict(list)  # unexpected outcomes, a few per kind
        self.refusals: dict[str, str] = {}  # one expected refusal per kind, to show how the server said no
        self.in_flight: dict[int, tuple[str, float]] = {}  # thread -> (kind, start) of the call it is making
        self.ended: list[tuple[float, float, str]] = []  # (start, end, kind) of the latest abusive calls
        self.cut_off = 0  # calls that failed because the server had exited (not counted per kind)
        self.stop = threading.Event()
        self.death: tuple[int, list[str]] | None = None
        self.rss_warm = self.rss_end = self.rss_peak = 0
        self.quiet = threading.Event()  # set during the RSS windows: no compression bombs then
        self.stuck: list[str] = []

    def record(self, kind: str, verdict: str, detail: str) -> None:
        with self.lock:
            self.counts[kind][("ok", "expected", "unexpected").index(verdict)] += 1
            if verdict == "unexpected" and detail not in self.samples[kind] and len(self.samples[kind]) < 4:
                self.samples[kind].append(detail)
            if verdict == "expected":
                self.refusals.setdefault(kind, detail)

    def client_loop(self, index: int, end: float) -> None:
        rng = np.random.default_rng(SEED + index)
        c = Client(self.server.url, self.server.port, self.repo, rng, self.bombs, self.gates, self.quiet)
        me = threading.get_ident()
        try:
            while not self.stop.is_set() and time.monotonic() < end:
                if rng.random() < ABUSE_SHARE and self.attack_names:
                    kind = self.attack_names[rng.choice(len(self.attack_names), p=self.attack_p)]
                    call = self.attacks[kind][0]
                else:
                    kind = list(NORMAL)[rng.integers(len(NORMAL))]
                    call = NORMAL[kind]
                started = time.monotonic()
                with self.lock:
                    self.in_flight[me] = (kind, started)
                verdict, detail = self.run_one(kind, call, c)
                with self.lock:
                    self.in_flight.pop(me, None)
                    if kind not in NORMAL:
                        self.ended = [*self.ended[-63:], (started, time.monotonic(), kind)]
                if verdict == "skipped":
                    continue
                if verdict == "unexpected" and self.server.proc.poll() is not None:
                    with self.lock:  # the exit itself is reported once, with its suspects
                        self.cut_off += 1
                    return
                self.record(kind, verdict, detail)
        finally:
            c.close()

    @staticmethod
    def run_one(kind: str, call, c: Client) -> tuple[str, str]:
        try:
            result = call(c)
        except (InferenceServerException, Exception) as err:  # noqa: BLE001 - every failure is a finding
            return "unexpected", "{}: {}".format(*code_of(err))[:240]
        if kind in NORMAL:
            return ("ok", "") if result is None else ("unexpected", result)
        return result

    def monitor(self, start: float, end: float) -> None:
        pid, next_report = self.server.proc.pid, start + 15
        floor, warm_reported = 1 << 60, False
        alive_at = start
        while not self.stop.wait(0.05):
            now = time.monotonic()
            if self.server.proc.poll() is not None:
                # Suspects: the calls running since the server was last seen alive, 50 ms ago at most (the
                # one that killed it may have ended since, on its dropped connection); abusive ones first.
                with self.lock:
                    running = {k for k, _ in self.in_flight.values()} | {k for _, e, k in self.ended if e >= alive_at}
                    suspects = {k for k in running if k not in NORMAL} or running
                    self.death = (self.server.proc.returncode, sorted(suspects))
                self.stop.set()
                return
            alive_at = now
            rss = read_rss_kib(pid)
            self.rss_peak, floor = max(self.rss_peak, rss), min(floor, rss)
            # RSS is compared between the end of the warm-up and the end, by the lowest samples of the
            # MEASURE seconds before each (the last QUIET seconds of them send no compression bomb,
            # whose inflated buffer the allocator may hold for a while): a leak raises that floor, a
            # bomb in flight only makes a peak.
            warm_window = start + WARMUP - QUIET <= now < start + WARMUP
            end_window = now >= end - QUIET
            (self.quiet.set if warm_window or end_window else self.quiet.clear)()
            if start + WARMUP - MEASURE <= now < start + WARMUP:
                self.rss_warm = min(self.rss_warm or rss, rss)
            if now >= end - MEASURE:
                self.rss_end = min(self.rss_end or rss, rss)
            if not warm_reported and now >= start + WARMUP:
                warm_reported = True
                print(f"soak: warm-up over after {WARMUP:.0f}s, RSS floor {self.rss_warm / 1024:.1f} MiB", flush=True)
            if now >= next_report:
                with self.lock:
                    done = sum(sum(v) for v in self.counts.values())
                    bad = sum(v[2] for v in self.counts.values())
                print(f"soak: {now - start:5.0f}s  {done} calls, {bad} unexpected, "
                      f"RSS {rss / 1024:.1f} MiB (lowest {floor / 1024:.1f} since the last line)", flush=True)
                next_report, floor = next_report + 15, rss
            if now >= end:
                return

    def run(self) -> None:
        start = time.monotonic()
        end = start + SOAK_SECONDS
        threads = [threading.Thread(target=self.client_loop, args=(i, end), name=f"soak-{i}", daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        self.monitor(start, end)
        self.stop.set()
        # Each call has its own timeout (LOAD_TIMEOUT, CALL_TIMEOUT at most, a stream's stop waits for one
        # more); a thread still running well past them is a hang.
        join_by = time.monotonic() + 3 * CALL_TIMEOUT + 15
        for t in threads:
            t.join(timeout=max(0.0, join_by - time.monotonic()))
        with self.lock:
            self.stuck = [f"{t.name} in {self.in_flight.get(t.ident, ('?',))[0]}" for t in threads if t.is_alive()]


def read_rss_kib(pid: int) -> int:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def final_request(url: str) -> str | None:
    c = Client(url, 0, pathlib.Path(), np.random.default_rng(SEED), {}, {})
    try:
        return identity_sync(c) or add_sub_sync(c)
    except Exception as err:  # noqa: BLE001
        return "{}: {}".format(*code_of(err))
    finally:
        c.close()


def main() -> int:
    checks: list[tuple[bool, str]] = []

    def check(ok: bool, what: str) -> None:
        checks.append((ok, what))
        print(f"  [{'PASS' if ok else 'FAIL'}] {what}", flush=True)

    if BOMB_MIB << 20 <= MAX_MESSAGE:
        print(f"soak: SOAK_BOMB_MIB must be over the soak server's {MAX_MESSAGE >> 20} MiB message limit")
        return 2
    binary = str(tritium_bin())
    print(f"soak: {binary}, {SOAK_SECONDS:.0f}s, {CLIENTS} clients, seed {SEED}, skip {sorted(SKIP) or 'nothing'}", flush=True)
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=120).stdout
    shm_flag = SHM_FLAG in help_text
    args = [SHM_FLAG] if shm_flag else []
    t0 = time.monotonic()
    bombs = {enc: bomb_body("identity", BOMB_MIB, enc) for enc in ("gzip", "deflate")}
    print(f"soak: compression bombs: {BOMB_MIB} MiB inflated, "
          + ", ".join(f"{k} {len(v) >> 10} KiB" for k, v in bombs.items()) + f" ({time.monotonic() - t0:.1f}s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="tritium-soak-") as tmp:
        repo = pathlib.Path(tmp) / "models"
        write_repository(repo)
        args += ["--grpc-max-message-size", str(MAX_MESSAGE), "--model-control-mode", "explicit",
                 "--load-model", "*", "--model-repository", str(repo)]
        try:
            server = start_server(*args)
        except pytest.fail.Exception as err:
            print(f"soak: the server did not start: {err}")
            print("soak: 0 passed, 1 failed")
            return 1
        print(f"soak: {server.ready_line}", flush=True)
        attacks.write_victims(repo)
        soak = Soak(server, repo, bombs)
        try:
            soak.run()
            alive = server.proc.poll() is None
            final = final_request(server.url) if alive else "server not running"
        finally:
            unblock = attacks.unblock_fifo(repo / attacks.FIFO_VICTIM / attacks.FIFO_NAME)
            status = server.stop()
        log = server.stderr()

    print("\nsoak: summary (ok / expected errors / unexpected errors per kind)")
    print(f"  {'kind':<20}{'ok':>8}{'expected':>10}{'unexpected':>12}")
    for kind in [*NORMAL, *soak.attacks]:
        ok_n, exp_n, bad_n = soak.counts.get(kind, [0, 0, 0])
        print(f"  {kind:<20}{ok_n:>8}{exp_n:>10}{bad_n:>12}")
        if kind in soak.refusals:
            print(f"      = {soak.refusals[kind][:200]}")
        for sample in soak.samples.get(kind, []):
            print(f"      ! {sample[:200]}")
    print("\nsoak: checks")
    check(shm_flag, f"the binary accepts {SHM_FLAG}" + ("" if shm_flag else " (started without it)"))
    for kind in NORMAL:
        ok_n, _, bad_n = soak.counts.get(kind, [0, 0, 0])
        check(bad_n == 0 and ok_n > 0, f"normal {kind}: {ok_n} correct answers, {bad_n} unexpected errors")
    for kind in soak.attacks:
        _, exp_n, bad_n = soak.counts.get(kind, [0, 0, 0])
        check(bad_n == 0, f"abusive {kind}: {exp_n} refused as expected, {bad_n} unexpected" + ("" if exp_n + bad_n else " (not run)"))
    if soak.death:
        code, kinds = soak.death
        why = f"signal {-code}" if code < 0 else f"status {code}"
        check(False, f"the server kept running: it exited with {why} (suspects: the {', '.join(kinds) or '?'} "
              f"calls in flight then; {soak.cut_off} calls cut off)")
    else:
        check(alive, "the server kept running" if alive else f"the server kept running (exit status {status})")
    check(not soak.stuck, "client threads ended within their timeouts" + (f"; stuck: {soak.stuck}" if soak.stuck else ""))
    check(final is None, "a final identity + add_sub request succeeds" + (f": {final}" if final else ""))
    if soak.death:
        pass  # no end measurement; the exit is the finding
    elif soak.rss_warm and soak.rss_end:
        growth = (soak.rss_end - soak.rss_warm) / soak.rss_warm
        check(growth < RSS_LIMIT, f"RSS growth after warm-up {growth:+.1%} < {RSS_LIMIT:.0%} (floors "
              f"{soak.rss_warm / 1024:.1f} -> {soak.rss_end / 1024:.1f} MiB, peak {soak.rss_peak / 1024:.1f})")
    else:
        check(False, "RSS measured after warm-up and at the end")
    panics = [line for line in log.splitlines() if "panicked" in line]
    check(not panics, "no panic in the server log" + (f": {panics[0][:200]}" if panics else ""))
    if unblock:
        print("soak: note: a load was still blocked on the FIFO at the end (unblocked it)")
    failed = sum(1 for ok, _ in checks if not ok)
    if failed:
        print(f"\nsoak: server stderr (last 40 lines; full log {server.stderr_path}):\n{tail(log, 40)}")
    else:
        server.stderr_path.unlink(missing_ok=True)
    print(f"soak: {len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
