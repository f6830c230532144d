"""The soak's malformed and abusive calls. Each takes a `Client` and returns (verdict, detail) with verdict
"expected" (the server refused it the way it should) or "unexpected" (anything else: success, a wrong
code, a hang past the call's timeout, a dropped connection), or "skipped" when a gate said not now.
Every call carries its own timeout."""

from __future__ import annotations

import errno
import os
import pathlib
import queue
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from rawgrpc import RawGrpc, grpc_frame

CALL_TIMEOUT = 30.0  # seconds; a debug build on two busy cores is slow, a hang is far slower
LOAD_TIMEOUT = 20.0
FIFO_VICTIM, FIFO_NAME = "fifo_victim", "weights.gguf"
LLM_VICTIM = "llm_victim"
EMBED_VICTIM = "embed_victim"
BAD_INPUT = {"INVALID_ARGUMENT"}
LOAD_REFUSED = {"INVALID_ARGUMENT", "INTERNAL", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION"}
# grpc-status numbers accepted for a body the server must refuse (bad compression, over a limit, cut short).
BODY_REFUSED = {1, 3, 8, 11, 13}


@dataclass
class Client:
    """What one soak thread talks with: a tritonclient, a raw stub, and the shared bits."""

    url: str
    port: int
    repo: pathlib.Path
    rng: np.random.Generator
    bombs: dict[str, bytes]
    gates: dict[str, threading.Lock]
    quiet: threading.Event | None = None  # set while the soak measures RSS: no bombs then
    triton: grpcclient.InferenceServerClient = field(init=False)
    stub: service_pb2_grpc.GRPCInferenceServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.triton = grpcclient.InferenceServerClient(self.url)
        self.channel = grpc.insecure_channel(self.url)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        self.triton.close()
        self.channel.close()


def code_of(err: BaseException) -> tuple[str, str]:
    if isinstance(err, InferenceServerException):
        return (err.status() or "NO_STATUS").replace("StatusCode.", ""), err.message() or ""
    if isinstance(err, grpc.RpcError):
        return err.code().name, err.details() or ""
    return type(err).__name__, str(err)


def expect(codes: set[str], call) -> tuple[str, str]:
    """Runs `call`; "expected" when it fails with one of `codes`."""
    try:
        call()
    except (InferenceServerException, grpc.RpcError) as err:
        code, message = code_of(err)
        return ("expected" if code in codes else "unexpected"), f"{code}: {message[:160]}"
    return "unexpected", "succeeded"


def tensor(name: str, data: np.ndarray, datatype: str, shape=None) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(data.shape if shape is None else shape), datatype)
    t.set_data_from_numpy(data)
    return t


def wrong_dtype(c: Client):
    a = c.rng.random(16, dtype=np.float32)
    if c.rng.random() < 0.5:
        inputs = [tensor("INPUT0", a, "FP32"), tensor("INPUT1", a, "FP32")]
        return expect(BAD_INPUT, lambda: c.triton.infer("add_sub", inputs, client_timeout=CALL_TIMEOUT))
    ints = np.arange(8, dtype=np.int32)
    return expect(BAD_INPUT, lambda: c.triton.infer("identity", [tensor("INPUT0", ints, "INT32")], client_timeout=CALL_TIMEOUT))


def wrong_shape(c: Client):
    shape = [[8], [4, 4], [17], [1, 16]][c.rng.integers(4)]
    a = np.zeros(shape, dtype=np.int32)
    inputs = [tensor("INPUT0", a, "INT32"), tensor("INPUT1", a, "INT32")]
    return expect(BAD_INPUT, lambda: c.triton.infer("add_sub", inputs, client_timeout=CALL_TIMEOUT))


def unknown_model(c: Client):
    name = ["no_such_model", "identity/../add_sub", "x" * 4096, ""][c.rng.integers(4)]
    data = np.ones(4, dtype=np.float32)
    return expect({"NOT_FOUND", "INVALID_ARGUMENT"},
                  lambda: c.triton.infer(name, [tensor("INPUT0", data, "FP32")], client_timeout=CALL_TIMEOUT))


def unknown_input(c: Client):
    data = np.ones(4, dtype=np.float32)
    inputs = [tensor("NOPE", data, "FP32")]
    if c.rng.random() < 0.5:  # the right input plus an extra one
        inputs.insert(0, tensor("INPUT0", data, "FP32"))
    return expect(BAD_INPUT, lambda: c.triton.infer("identity", inputs, client_timeout=CALL_TIMEOUT))


def _raw_request(model: str, inputs: list[tuple[str, str, list[int]]], contents: list[bytes]):
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend(contents)
    return request


def raw_size(c: Client):
    """raw_input_contents whose byte sizes do not match the declared shapes. (More contents than inputs is
    not here: Triton ignores the extra ones, and so does Tritium.)"""
    two = [("INPUT0", "INT32", [16]), ("INPUT1", "INT32", [16])]
    cases = [
        ("add_sub 60+64 bytes", _raw_request("add_sub", two, [bytes(60), bytes(64)])),
        ("add_sub 64+68 bytes", _raw_request("add_sub", two, [bytes(64), bytes(68)])),
        ("add_sub 64+0 bytes", _raw_request("add_sub", two, [bytes(64), b""])),
        ("add_sub 1 raw content for 2 inputs", _raw_request("add_sub", two, [bytes(64)])),
        ("identity FP32[5] in 21 bytes", _raw_request("identity", [("INPUT0", "FP32", [5])], [bytes(21)])),
        ("identity FP32[2^40] in 16 bytes", _raw_request("identity", [("INPUT0", "FP32", [1 << 40])], [bytes(16)])),
        ("identity FP32[2^31,2^31,2^31]", _raw_request("identity", [("INPUT0", "FP32", [1 << 31] * 3)], [bytes(16)])),
        ("identity FP32[-1]", _raw_request("identity", [("INPUT0", "FP32", [-1])], [bytes(16)])),
    ]
    what, request = cases[c.rng.integers(len(cases))]
    verdict, detail = expect(BAD_INPUT, lambda: c.stub.ModelInfer(request, timeout=CALL_TIMEOUT))
    return verdict, f"{what}: {detail}"


def bytes_prefix(c: Client):
    """BYTES tensors whose 4-byte little-endian length prefixes lie."""
    cases = [
        ("prefix claims 1000 bytes, 3 follow", [1], struct.pack("<I", 1000) + b"abc"),
        ("prefix cut to 2 bytes", [1], b"\x05\x00"),
        ("prefix 0xFFFFFFFF", [1], struct.pack("<I", 0xFFFFFFFF) + b"x"),
        ("2 elements for shape [3]", [3], struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"),
        ("bytes after the last element", [1], struct.pack("<I", 1) + b"a" + b"trailing"),
    ]
    what, shape, content = cases[c.rng.integers(len(cases))]
    request = _raw_request("identity_bytes", [("INPUT0", "BYTES", shape)], [content])
    verdict, detail = expect(BAD_INPUT, lambda: c.stub.ModelInfer(request, timeout=CALL_TIMEOUT))
    return verdict, f"{what}: {detail}"


def half_stream(c: Client):
    """A ModelInfer whose message prefix declares 2 MiB and only a few bytes follow. Half the time the
    stream stays open a few seconds and the socket is dropped; otherwise it is ended (END_STREAM), and the
    server must answer with an error status."""
    body = grpc_frame(b"\x0a\x08identity", declared=2 << 20)
    with RawGrpc(c.port, CALL_TIMEOUT) as raw:
        stream = raw.open()
        if c.rng.random() < 0.5:
            raw.send(stream, body, end_stream=False, deadline=time.monotonic() + CALL_TIMEOUT)
            out = raw.hold(float(c.rng.uniform(1.0, 4.0)), stream)
            if out.closed and not out.settings_seen:
                return "unexpected", "held: " + out.describe()
            return "expected", "held then dropped: " + out.describe()
        raw.send(stream, body, end_stream=True, deadline=time.monotonic() + CALL_TIMEOUT)
        return _refused(raw.outcome(stream, time.monotonic() + CALL_TIMEOUT), "cut short")


def _refused(out, what: str):
    if out.status is not None and out.status in BODY_REFUSED:
        return "expected", f"{what}: {out.describe()}"
    if out.status is None and out.reset is not None:
        return "expected", f"{what}: {out.describe()}"
    return "unexpected", f"{what}: {out.describe()}"


def compression_bomb(c: Client):
    """A ModelInfer body of ~250 KiB that gzip/deflate inflates to SOAK_BOMB_MIB (256) MiB, over the soak
    server's message limit: it must be refused once the inflated size passes the limit, not decoded."""
    gate = c.gates["compression_bomb"]
    # One at a time (each may cost the server the inflated size), and none while the soak measures RSS.
    if (c.quiet is not None and c.quiet.is_set()) or not gate.acquire(blocking=False):
        return "skipped", "another bomb is in flight"
    try:
        encoding = list(c.bombs)[c.rng.integers(len(c.bombs))]
        with RawGrpc(c.port, CALL_TIMEOUT) as raw:
            stream = raw.open(encoding=encoding)
            raw.send(stream, grpc_frame(c.bombs[encoding], compressed=True), end_stream=True,
                     deadline=time.monotonic() + CALL_TIMEOUT)
            return _refused(raw.outcome(stream, time.monotonic() + CALL_TIMEOUT), f"{encoding} bomb")
    finally:
        time.sleep(1.0)  # spaces the bombs out; still under the gate
        gate.release()


def shm_truncated(c: Client):
    """A system shared memory region registered, then shrunk to 0 bytes with ftruncate before an infer that
    reads (or writes) it: the server must refuse the request, not die of SIGBUS."""
    tag = uuid.uuid4().hex[:12]
    name, key = f"soak_{tag}", f"/tritium_soak_{os.getpid()}_{tag}"
    fd = os.open(f"/dev/shm{key}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    registered = False
    try:
        a = np.arange(16, dtype=np.int32)
        os.ftruncate(fd, 128)
        os.pwrite(fd, a.tobytes() * 2, 0)
        try:
            c.triton.register_system_shared_memory(name, key, 128, client_timeout=CALL_TIMEOUT)
            registered = True
        except InferenceServerException as err:
            return "unexpected", "register failed: {}: {}".format(*code_of(err))
        os.ftruncate(fd, 0)
        if c.rng.random() < 0.5:
            inputs = [grpcclient.InferInput("INPUT0", [16], "INT32"), grpcclient.InferInput("INPUT1", [16], "INT32")]
            inputs[0].set_shared_memory(name, 64)
            inputs[1].set_shared_memory(name, 64, offset=64)
            outputs = None
        else:
            inputs = [tensor("INPUT0", a, "INT32"), tensor("INPUT1", a, "INT32")]
            outputs = [grpcclient.InferRequestedOutput("OUTPUT0")]
            outputs[0].set_shared_memory(name, 64)
        return expect({"INVALID_ARGUMENT", "INTERNAL"},
                      lambda: c.triton.infer("add_sub", inputs, outputs=outputs, client_timeout=CALL_TIMEOUT))
    finally:
        if registered:
            try:
                c.triton.unregister_system_shared_memory(name, client_timeout=CALL_TIMEOUT)
            except InferenceServerException:
                pass  # a dead server is reported by the monitor
        os.close(fd)
        os.unlink(f"/dev/shm{key}")


def victim_config(name: str, backend: str, model_path: str) -> str:
    return f'''name: "{name}"
backend: "{backend}"
parameters {{ key: "model_path" value {{ string_value: "{model_path}" }} }}
'''


def write_victims(repo: pathlib.Path) -> None:
    """Model folders for the load attacks, written after the server started so that `--load-model '*'` does
    not try them: a language model and an embedder whose weights are missing, one whose weights are a FIFO,
    and symlinks from inside a model folder to /etc/passwd and /dev/zero."""
    for name, backend, path in ((LLM_VICTIM, "tritium_llm", "missing.gguf"), (EMBED_VICTIM, "tritium_embed", "missing"),
                                (FIFO_VICTIM, "tritium_llm", FIFO_NAME)):
        folder = repo / name
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(victim_config(name, backend, path))
    os.mkfifo(repo / FIFO_VICTIM / FIFO_NAME)
    os.symlink("/etc/passwd", repo / LLM_VICTIM / "passwd.gguf")
    os.symlink("/dev/zero", repo / LLM_VICTIM / "zero.gguf")


def _override(model: str, backend: str, model_path: str) -> str:
    return ('{"name": "%s", "backend": "%s", "parameters": {"model_path": {"string_value": "%s"}}}'
            % (model, backend, model_path))


def load_outside(c: Client):
    """RepositoryModelLoad with a config override whose model_path leaves the model folder, directly or
    through a symlink, or names a device."""
    cases = [
        (LLM_VICTIM, "tritium_llm", "/etc/passwd"),
        (LLM_VICTIM, "tritium_llm", "../../x"),
        (LLM_VICTIM, "tritium_llm", "../identity/config.pbtxt"),
        (LLM_VICTIM, "tritium_llm", "/dev/zero"),
        (LLM_VICTIM, "tritium_llm", "passwd.gguf"),
        (LLM_VICTIM, "tritium_llm", "zero.gguf"),
        (EMBED_VICTIM, "tritium_embed", "/etc"),
        (EMBED_VICTIM, "tritium_embed", "../../.."),
    ]
    model, backend, path = cases[c.rng.integers(len(cases))]
    return _load(c, _override(model, backend, path), f"{backend} model_path {path!r}", model)


def load_fifo(c: Client):
    """RepositoryModelLoad whose model_path is a FIFO inside the model folder: opening it for reading
    blocks until a writer comes, so a server that opens it hangs the load (and the loads queued behind)."""
    fifo = c.repo / FIFO_VICTIM / FIFO_NAME
    try:
        return _load(c, _override(FIFO_VICTIM, "tritium_llm", FIFO_NAME), "FIFO model_path", FIFO_VICTIM)
    finally:
        unblock_fifo(fifo)


def unblock_fifo(fifo: pathlib.Path) -> bool:
    """Opens the FIFO for writing and closes it, so a reader stuck in open() or read() gets EOF."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno in (errno.ENXIO, errno.ENOENT):  # no reader: nothing is stuck on it
            return False
        raise
    os.close(fd)
    return True


def _load(c: Client, config: str, what: str, model: str):
    gate = c.gates["load"]  # loads run one at a time in the server; a hung one would queue the rest
    if not gate.acquire(blocking=False):
        return "skipped", "another load is in flight"
    try:
        verdict, detail = expect(LOAD_REFUSED, lambda: c.triton.load_model(model, config=config, client_timeout=LOAD_TIMEOUT))
        if detail.startswith("DEADLINE_EXCEEDED"):
            detail = f"hung: no answer in {LOAD_TIMEOUT:.0f}s ({detail})"
        return verdict, f"{what}: {detail}"
    finally:
        gate.release()


def silent_connection(c: Client):
    """A TCP connection that sends nothing (or only half the HTTP/2 preface), held a few seconds."""
    with socket.create_connection(("127.0.0.1", c.port), timeout=CALL_TIMEOUT) as sock:
        if c.rng.random() < 0.5:
            sock.sendall(b"PRI * HTTP/2.0\r\n")
        deadline = time.monotonic() + float(c.rng.uniform(1.0, 4.0))
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                if not sock.recv(4096):
                    return "expected", "server closed it"
            except socket.timeout:
                break
            except ConnectionResetError:
                return "expected", "server reset it"
    return "expected", "held then dropped"


def stream_mixed(c: Client):
    """One ModelStreamInfer carrying a bad request then a good one: the bad one gets an error on the
    stream, the good one its answer, and the stream stays usable."""
    events: queue.Queue = queue.Queue()
    c.triton.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=CALL_TIMEOUT)
    try:
        bad = [tensor(name, np.zeros(8, dtype=np.int32), "INT32") for name in ("INPUT0", "INPUT1")]  # add_sub takes [16]
        c.triton.async_stream_infer("add_sub", bad, request_id="bad")
        data = c.rng.random(4, dtype=np.float32)
        c.triton.async_stream_infer("identity", [tensor("INPUT0", data, "FP32")], request_id="good")
        got = [events.get(timeout=CALL_TIMEOUT) for _ in range(2)]
    except queue.Empty:
        return "unexpected", "stream: fewer than 2 answers before the timeout"
    finally:
        c.triton.stop_stream()
    # A stream carries a request's error in-band (error_message), without a gRPC status.
    errors = [code_of(e)[0] for _, e in got if e is not None]
    results = [r for r, e in got if e is None]
    if errors not in (["NO_STATUS"], ["INVALID_ARGUMENT"]) or len(results) != 1:
        return "unexpected", f"stream: errors {errors}, {len(results)} results"
    if not np.array_equal(results[0].as_numpy("OUTPUT0"), data):
        return "unexpected", "stream: the good request's answer is wrong"
    return "expected", f"in-band error ({got_error_text(got)}) then the answer"


def got_error_text(got) -> str:
    return next(("{}: {}".format(*code_of(e))[:120] for _, e in got if e is not None), "")


# name -> (function, weight among the abusive calls)
ATTACKS = {
    "wrong_dtype": (wrong_dtype, 2),
    "wrong_shape": (wrong_shape, 2),
    "unknown_model": (unknown_model, 2),
    "unknown_input": (unknown_input, 2),
    "raw_size": (raw_size, 3),
    "bytes_prefix": (bytes_prefix, 3),
    "stream_mixed": (stream_mixed, 2),
    "half_stream": (half_stream, 2),
    "compression_bomb": (compression_bomb, 1),
    "shm_truncated": (shm_truncated, 2),
    "load_outside": (load_outside, 1),
    "load_fifo": (load_fifo, 1),
    "silent_connection": (silent_connection, 2),
}
