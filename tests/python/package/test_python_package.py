"""The `tritium` Python package (python/): built by maturin and installed with `pip install ./python`
from a clean copy of the repository into a fresh virtual environment (the workspace's debug profile and
target folder, so CI reuses its debug build), then driven as a user would: `python -m tritium serve`
answering tritonclient, `tritium.Server` in a `with` block on ports 0 serving Python functions bound as
models (gRPC and HTTP, `@tritium.batch` under concurrent load, BYTES, client shared memory, an
ensemble whose steps are a bound function and a repository model), errors of the function reaching the
client while the server goes on serving, use after fork refused, bad keyword options refused; and
`maturin build` of a wheel. The lifecycle scripts (SIGINT, interpreter exit) are in
test_python_package_lifecycle.py.

The servers run in the fresh environment's interpreter; the clients are this process's tritonclient.
"""

from __future__ import annotations

import json
import pathlib
import queue
import re
import signal
import socket
import subprocess
import textwrap
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from helpers import identity_config, write_model
from package_env import BUILD_TIMEOUT, PACKAGE, PACKAGE_TEST_TIMEOUT, build_env, clean_env, python, run

pytestmark = PACKAGE_TEST_TIMEOUT


def test_import_from_the_fresh_environment(venv):
    out = run([python(venv), "-c", "import tritium, tritium._tritium as n; print(tritium.__file__); print(n.BACKEND_NAME)"], clean_env(), 120, cwd=venv)
    path, backend = out.split()
    assert pathlib.Path(path).is_relative_to(venv), path
    assert backend == "python_function"


def _bound() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def test_python_m_tritium_serve_is_the_cli(venv):
    listeners = [_bound() for _ in range(3)]
    fds = [s.fileno() for s in listeners]
    grpc_port = listeners[0].getsockname()[1]
    cmd = [python(venv), "-m", "tritium", "serve", "--grpc-listen-fd", str(fds[0]), "--http-listen-fd", str(fds[1]), "--metrics-listen-fd", str(fds[2])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=fds, env=clean_env(), cwd=venv)
    for s in listeners:
        s.close()
    try:
        line = proc.stdout.readline()
        assert line.startswith("tritium ready grpc="), (line, proc.stderr.read() if proc.poll() is not None else "")
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready()
        assert client.get_server_metadata().name == "triton"
        assert "dense" in [m.name for m in client.get_model_repository_index().models]
        client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The same parser as the binary's: its usage, its errors.
    bad = subprocess.run([python(venv), "-m", "tritium", "serve", "--no-such-flag"], capture_output=True, text=True, env=clean_env(), cwd=venv, timeout=60)
    assert bad.returncode != 0 and "--no-such-flag" in bad.stderr


SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys, threading, time
    import numpy as np
    import tritium

    @tritium.batch
    def double(x):
        return {"y": x * 2}

    def fail(requests):
        raise ValueError("the function says no")

    def wrong_dtype(requests):
        return [{"y": r["x"].astype(np.float64)} for r in requests]

    def missing(requests):
        return [{} for r in requests]

    def wrong_batch(requests):
        # One row more than the request sent: the batch dimension is checked without strict.
        return [{"y": np.concatenate([r["x"], r["x"][:1]])} for r in requests]

    def upper(requests):
        return [{"out": np.array([s.upper() for s in r["text"].reshape(-1)], dtype=object).reshape(r["text"].shape)}
                for r in requests]

    async def async_double(requests):
        await asyncio.sleep(0)
        return [{"y": r["x"] * 2} for r in requests]

    @tritium.batch
    def count(x):
        for i in range(3):
            yield {"y": x + i}

    @tritium.batch
    async def acount(x):
        for i in range(2):
            await asyncio.sleep(0)
            yield {"y": x * 10 + i}

    both = threading.Barrier(2, timeout=60)

    def meet(requests):
        # Returns only once two calls are in the function at the same time.
        both.wait()
        return [{"y": r["x"]} for r in requests]

    def views(requests):
        x = requests[0]["x"]
        return [{"y": np.array([x.flags.writeable, x.base is not None], dtype=np.bool_).reshape(1, 2)}]

    x = [tritium.Tensor(name="x", dtype=np.float32, shape=(-1,))]
    y = [tritium.Tensor(name="y", dtype=np.float32, shape=(-1,))]
    server = tritium.Server(model_repository=sys.argv[1], grpc_port=0, http_port=0, metrics_port=0, grpc_address="127.0.0.1",
                            http_address="127.0.0.1", metrics_address="127.0.0.1", allow_shared_memory=True)
    batcher = tritium.DynamicBatcher(max_queue_delay_microseconds=2_000_000, preferred_batch_size=[8])
    server.bind("double", double, inputs=x, outputs=y,
                config=tritium.ModelConfig(max_batch_size=8, batcher=batcher))
    server.bind("fail", fail, inputs=x, outputs=y)
    server.bind("wrong_dtype", wrong_dtype, inputs=x, outputs=y)
    server.bind("missing", missing, inputs=x, outputs=y)
    server.bind("wrong_batch", wrong_batch, inputs=x, outputs=y)
    server.bind("upper", upper, inputs=[tritium.Tensor(name="text", dtype=bytes, shape=(-1,))],
                outputs=[tritium.Tensor(name="out", dtype=bytes, shape=(-1,))], config=tritium.ModelConfig(batching=False))
    server.bind("async_double", async_double, inputs=x, outputs=y)
    # The first step of the repository's ensemble 'mixed' (then its identity model 'ident').
    server.bind("plus_one", lambda requests: [{"y": r["x"] + 1} for r in requests], inputs=x, outputs=y,
                config=tritium.ModelConfig(batching=False))
    streaming = tritium.ModelConfig(batching=False, decoupled=True)
    server.bind("count", count, inputs=x, outputs=y, config=streaming)
    server.bind("acount", acount, inputs=x, outputs=y, config=streaming)
    # Generators are decoupled without the config saying so.
    server.bind("count_auto", count, inputs=x, outputs=y, config=tritium.ModelConfig(batching=False))
    server.bind("strict", lambda requests: [{"y": np.zeros((1, 3), dtype=np.float32)}], inputs=x,
                outputs=[tritium.Tensor(name="y", dtype=np.float32, shape=(2,))], strict=True)
    server.bind("meet", meet, inputs=x, outputs=y, config=tritium.ModelConfig(batching=False, instance_count=2))
    server.bind("views", views, inputs=x, outputs=[tritium.Tensor(name="y", dtype=np.bool_, shape=(2,))])
    spins = {"started": 0}

    def spin(requests):
        # Pure Python forever (until the TimeoutError the timeout sends), then normal again.
        spins["started"] += 1
        if requests[0]["x"][0][0] > 0:
            while True:
                pass
        return [{"y": r["x"]} for r in requests]

    def sleepy(requests):
        time.sleep(3)  # in C: the call keeps its thread until it returns
        return [{"y": r["x"]} for r in requests]

    quick = tritium.ModelConfig(timeout_s=0.5)
    server.bind("spin", spin, inputs=x, outputs=y, config=quick)
    server.bind("sleepy", sleepy, inputs=x, outputs=y, config=quick)
    try:
        server.bind("bad_timeout", spin, inputs=x, outputs=y, config=tritium.ModelConfig(timeout_s=0))
    except ValueError as e:
        bad_timeout = str(e)
    try:
        server.bind("double", double, inputs=x, outputs=y)
    except ValueError as e:
        twice = str(e)
    try:
        tritium.Server(no_such_option=1)
    except TypeError as e:
        unknown = str(e)
    with server:
        assert server.running
        # Bound while serving: loaded there and then; a name the repository has is refused.
        server.bind("late", lambda requests: [{"y": r["x"] + 1} for r in requests], inputs=x, outputs=y)
        try:
            server.bind("ident", double, inputs=x, outputs=y)
        except ValueError as e:
            late_taken = str(e)
        print(json.dumps({"grpc": server.grpc_port, "http": server.http_port, "metrics": server.metrics_port,
                          "twice": twice, "unknown": unknown, "late_taken": late_taken, "bad_timeout": bad_timeout}),
                         flush=True)
        pid = os.fork()
        if pid == 0:
            try:
                server.stop()
                os._exit(3)
            except RuntimeError as e:
                os._exit(0 if "another process" in str(e) else 4)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"fork": os.waitstatus_to_exitcode(status)}), flush=True)
        sys.stdin.readline()
    print(json.dumps({"stopped": not server.running, "grpc": server.grpc_port}), flush=True)
    """
)


# A repository ensemble whose first step is a bound function and whose second a repository model.
MIXED_ENSEMBLE = """
name: "mixed"
platform: "ensemble"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling { step [
  { model_name: "plus_one" model_version: -1 input_map { key: "x" value: "IN" } output_map { key: "y" value: "t" } },
  { model_name: "ident" model_version: -1 input_map { key: "INPUT0" value: "t" } output_map { key: "OUTPUT0" value: "OUT" } }
] }
"""


@pytest.fixture(scope="module")
def served(venv, tmp_path_factory):
    script = tmp_path_factory.mktemp("script") / "serve_functions.py"
    script.write_text(SERVER_SCRIPT)
    repository = script.parent / "models"
    write_model(repository, "ident", identity_config("ident", "TYPE_FP32"))
    write_model(repository, "mixed", MIXED_ENSEMBLE)
    proc = subprocess.Popen([python(venv), str(script), str(repository)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=script.parent)
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def next_json():
        line = lines.get(timeout=120)
        if line is None:
            proc.wait(timeout=30)
            pytest.fail(f"the script ended ({proc.returncode}):\n{proc.stderr.read()[-6000:]}")
        return json.loads(line)

    info = next_json()
    info.update(next_json())
    info["next"] = next_json
    yield info, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_server_with_block_ports_and_options(served):
    info, _ = served
    assert all(isinstance(info[k], int) and info[k] > 0 for k in ("grpc", "http", "metrics"))
    assert len({info["grpc"], info["http"], info["metrics"]}) == 3
    assert "already bound as model 'double'" in info["twice"]
    assert "--no-such-option" in info["unknown"]
    # A forked child's use of the parent's server is refused with a clear error.
    assert info["fork"] == 0


def _grpc(info):
    return grpcclient.InferenceServerClient(f"127.0.0.1:{info['grpc']}")


def _x(module, values):
    tensor = module.InferInput("x", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def test_bound_function_over_grpc_and_http(served):
    info, _ = served
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    client = _grpc(info)
    assert client.is_model_ready("double")
    np.testing.assert_array_equal(client.infer("double", [_x(grpcclient, values)]).as_numpy("y"), values * 2)
    config = client.get_model_config("double").config
    assert config.backend == "python_function" and config.max_batch_size == 8
    client.close()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{info['http']}")
    np.testing.assert_array_equal(http.infer("double", [_x(httpclient, values[:1])]).as_numpy("y"), values[:1] * 2)
    http.close()


def test_an_ensemble_mixes_a_bound_function_with_a_repository_model(served):
    info, _ = served
    client = _grpc(info)
    before = client.get_inference_statistics("plus_one").model_stats[0].inference_count
    values = np.array([1.5, -2.0, 7.0], dtype=np.float32)
    tensor = grpcclient.InferInput("IN", [3], "FP32")
    tensor.set_data_from_numpy(values)
    np.testing.assert_array_equal(client.infer("mixed", [tensor]).as_numpy("OUT"), values + 1)
    assert client.get_inference_statistics("plus_one").model_stats[0].inference_count == before + 1
    client.close()


def test_a_bound_function_reads_and_writes_client_shared_memory(served):
    info, _ = served
    client = _grpc(info)
    values = np.arange(12, dtype=np.float32).reshape(2, 6)
    tag = uuid.uuid4().hex[:12]
    regions = {}
    try:
        for role in ("in", "out"):
            regions[role] = (f"{role}_{tag}", f"/tritium_pkg_{role}_{tag}")
            handle = shm.create_shared_memory_region(*regions[role], values.nbytes)
            regions[role] += (handle,)
            client.register_system_shared_memory(*regions[role][:2], values.nbytes)
        shm.set_shared_memory_region(regions["in"][2], [values])
        tensor = grpcclient.InferInput("x", [2, 6], "FP32")
        tensor.set_shared_memory(regions["in"][0], values.nbytes)
        output = grpcclient.InferRequestedOutput("y")
        output.set_shared_memory(regions["out"][0], values.nbytes)
        response = client.infer("double", [tensor], outputs=[output]).get_response()
        assert list(response.raw_output_contents) == [b""]
        np.testing.assert_array_equal(shm.get_contents_as_numpy(regions["out"][2], np.float32, [2, 6]), values * 2)
    finally:
        for name, _, handle in regions.values():
            client.unregister_system_shared_memory(name)
            shm.destroy_shared_memory_region(handle)
        client.close()


def test_bind_on_a_running_server_loads_the_model(served):
    info, _ = served
    values = np.arange(4, dtype=np.float32).reshape(2, 2)
    client = _grpc(info)
    assert client.is_model_ready("late")
    np.testing.assert_array_equal(client.infer("late", [_x(grpcclient, values)]).as_numpy("y"), values + 1)
    assert "late" in [m.name for m in client.get_model_repository_index().models]
    client.close()
    # The repository's model of that name stays; the refused function is not bound.
    assert "model 'ident' did not load" in info["late_taken"] and "already in the repository" in info["late_taken"]


def test_async_function_and_a_repository_beside_the_bound_models(served):
    info, _ = served
    values = np.arange(4, dtype=np.float32).reshape(1, 4)
    client = _grpc(info)
    np.testing.assert_array_equal(client.infer("async_double", [_x(grpcclient, values)]).as_numpy("y"), values * 2)
    ident = grpcclient.InferInput("INPUT0", [3], "FP32")
    ident.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    assert client.infer("ident", [ident]).as_numpy("OUTPUT0").tolist() == [1, 2, 3]
    client.close()


@pytest.mark.parametrize(
    "model, expected", [("count", [[5, 6], [6, 7], [7, 8]]), ("acount", [[50, 60], [51, 61]]), ("count_auto", [[5, 6], [6, 7], [7, 8]])]
)
def test_generator_functions_are_decoupled(served, model, expected):
    info, _ = served
    client = _grpc(info)
    assert client.get_model_config(model).config.model_transaction_policy.decoupled
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    x = grpcclient.InferInput("x", [2], "FP32")
    x.set_data_from_numpy(np.array([5, 6], dtype=np.float32))
    client.async_stream_infer(model, [x], enable_empty_final_response=True)
    responses = []
    while True:
        result, error = got.get(timeout=60)
        assert error is None, error
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
        responses.append(result.as_numpy("y").tolist())
    client.stop_stream()
    client.close()
    assert responses == expected


def test_instances_run_at_the_same_time(served):
    info, _ = served

    def call(value):
        own = _grpc(info)
        try:
            x = grpcclient.InferInput("x", [1], "FP32")
            x.set_data_from_numpy(np.array([value], dtype=np.float32))
            return own.infer("meet", [x]).as_numpy("y").tolist()
        finally:
            own.close()

    # Each call waits for the other inside the function: two instances, both running.
    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(call, [1.0, 2.0])) == [[1.0], [2.0]]


def test_inputs_are_read_only_views(served):
    info, _ = served
    client = _grpc(info)
    got = client.infer("views", [_x(grpcclient, np.ones((1, 4), dtype=np.float32))]).as_numpy("y")
    client.close()
    # Not writeable, and backed by the request's buffer (a base object): no copy.
    assert got.tolist() == [[False, True]]


def test_bytes_tensors_are_object_arrays(served):
    info, _ = served
    client = _grpc(info)
    text = grpcclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"abc", b"tritium"], dtype=object))
    out = client.infer("upper", [text]).as_numpy("out")
    client.close()
    assert out.tolist() == [b"ABC", b"TRITIUM"]


def test_batch_function_gets_dynamic_batches_under_load(served):
    info, _ = served
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(16)]

    def call(values):
        own = _grpc(info)
        try:
            return own.infer("double", [_x(grpcclient, values)]).as_numpy("y")
        finally:
            own.close()

    with ThreadPoolExecutor(len(rows)) as pool:
        answers = list(pool.map(call, rows))
    for sent, got in zip(rows, answers):
        np.testing.assert_array_equal(got, sent * 2)
    client = _grpc(info)
    stats = client.get_inference_statistics("double").model_stats[0]
    client.close()
    assert max(b.batch_size for b in stats.batch_stats) > 1, stats.batch_stats
    assert stats.execution_count < stats.inference_count
    # Triton's metrics count the bound model as any other.
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{info['metrics']}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    success = re.search(r'^nv_inference_request_success\{model="double",version="1"\} (\d+)', metrics, re.MULTILINE)
    assert success and int(success.group(1)) == stats.inference_stats.success.count, metrics[:2000]


@pytest.mark.perf_analyzer
def test_perf_analyzer_on_a_bound_function(served):
    from perf_analyzer_helpers import perf_analyzer

    info, _ = served
    client = _grpc(info)
    before = client.get_inference_statistics("double").model_stats[0].inference_stats.success.count
    perf_analyzer(f"127.0.0.1:{info['grpc']}", "-m", "double", "--shape", "x:4", "--async", "--concurrency-range", "8")
    stats = client.get_inference_statistics("double").model_stats[0]
    client.close()
    assert stats.inference_stats.success.count >= before + 200
    assert max(b.batch_size for b in stats.batch_stats) > 1


@pytest.mark.parametrize(
    "model, fragments",
    [
        ("fail", ["model 'fail'", "the Python function raised ValueError: the function says no"]),
        ("wrong_dtype", ["model 'wrong_dtype'", "output 'y' is FP64; the model declares FP32"]),
        ("missing", ["model 'missing'", "returned no 'y' output"]),
        ("wrong_batch", ["model 'wrong_batch'", "output 'y' has batch size 2; the request's is 1"]),
        ("strict", ["model 'strict'", "output 'y' has shape (1, 3); the model declares (2,)"]),
    ],
)
def test_function_errors_reach_the_client_and_serving_goes_on(served, model, fragments):
    info, _ = served
    values = np.ones((1, 2), dtype=np.float32)
    client = _grpc(info)
    with pytest.raises(InferenceServerException) as error:
        client.infer(model, [_x(grpcclient, values)])
    assert error.value.status() == "StatusCode.INTERNAL"
    for fragment in fragments:
        assert fragment in error.value.message(), error.value.message()
    http = httpclient.InferenceServerClient(f"127.0.0.1:{info['http']}")
    with pytest.raises(InferenceServerException) as http_error:
        http.infer(model, [_x(httpclient, values)])
    assert http_error.value.status() == "500" and fragments[-1] in http_error.value.message()
    np.testing.assert_array_equal(http.infer("double", [_x(httpclient, values)]).as_numpy("y"), values * 2)
    http.close()
    client.close()


def test_a_call_past_its_timeout_answers_unavailable_and_serving_goes_on(served):
    info, _ = served
    assert "timeout_s must be a positive number" in info["bad_timeout"]
    client = _grpc(info)
    for model in ("spin", "sleepy"):
        with pytest.raises(InferenceServerException) as error:
            client.infer(model, [_x(grpcclient, np.ones((1, 2), dtype=np.float32))])
        assert error.value.status() == "StatusCode.UNAVAILABLE", error.value.message()
        assert f"the model '{model}' did not return from its Python function within 0.5 s" in error.value.message()
    # The spinning call got its TimeoutError and freed its thread: the model answers again.
    zeros = np.zeros((1, 2), dtype=np.float32)
    np.testing.assert_array_equal(client.infer("spin", [_x(grpcclient, zeros)]).as_numpy("y"), zeros)
    np.testing.assert_array_equal(client.infer("double", [_x(grpcclient, np.ones((1, 2), np.float32))]).as_numpy("y"), 2)
    client.close()


def test_stop_ends_the_server(served):
    info, proc = served
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    assert info["next"]() == {"stopped": True, "grpc": None}
    assert proc.wait(timeout=60) == 0
    with pytest.raises(InferenceServerException):
        grpcclient.InferenceServerClient(f"127.0.0.1:{info['grpc']}").is_server_live()


@pytest.mark.timeout(BUILD_TIMEOUT + 300, func_only=True)
def test_maturin_builds_a_wheel(venv, tmp_path):
    """`maturin build` (the wheel CI builds; nothing is published), from the same target folder."""
    out = tmp_path / "wheels"
    run([str(venv / "bin/maturin"), "build", "--profile", "dev", "-m", str(PACKAGE / "Cargo.toml"), "-i", python(venv), "-o", str(out)], build_env(venv), BUILD_TIMEOUT)
    wheels = list(out.glob("tritium-*-cp39-abi3-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "tritium/__init__.py" in names and any(n.startswith("tritium/_tritium") and n.endswith(".so") for n in names)
