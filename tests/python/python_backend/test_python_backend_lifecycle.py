"""The python backend's stub processes over their life, with the real tritonclient over gRPC: a stub that crashes
mid-request (the request fails, the next one is served by a new stub), one that hangs past the client's deadline
(the server and other models answer), initialize raising (load fails with the traceback's last line), an
interpreter without numpy, the dynamic batcher handing execute() lists, system shared memory, and unload and
SIGTERM ending every stub after its model's finalize.

Each model is a small model.py written by the test; the stubs run the test's own interpreter (it has numpy).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm

from helpers import expect_error, start_server, tritium_bin, wait_for, write_python_model

pytestmark = pytest.mark.python_backend

PYTHON = sys.executable


INT32_IO = """
    max_batch_size: 0
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
    output [ { name: "OUT", data_type: TYPE_INT32, dims: [ -1 ] } ]
"""

# IN[0]: 1 exits the process, 2 sleeps IN[1] ms; otherwise OUT = IN. finalize() writes the marker file the
# config's MARKER parameter names.
BEHAVING_BADLY = """
    import os
    import time
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            import json
            params = json.loads(args["model_config"]).get("parameters", {})
            self.marker = params.get("MARKER", {}).get("string_value", "")

        def execute(self, requests):
            responses = []
            for request in requests:
                values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
                if values[0] == 1:
                    os._exit(3)
                if values[0] == 2:
                    time.sleep(values[1] / 1000)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", values.copy())]))
            return responses

        def finalize(self):
            if self.marker:
                with open(self.marker, "a") as f:
                    f.write(f"finalized {os.getpid()}\\n")
"""


def int32_input(values) -> grpcclient.InferInput:
    data = np.array(values, dtype=np.int32)
    tensor = grpcclient.InferInput("IN", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return tensor


def stub_pids(server) -> list[int]:
    """Processes of the server's session running our stub script."""
    sid = os.getsid(server.proc.pid)
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"tritium_python_stub.py" in cmdline and os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return sorted(pids)


@pytest.fixture
def repo(tmp_path):
    marker = tmp_path / "finalized.txt"
    marked = INT32_IO + f'parameters {{ key: "MARKER" value {{ string_value: "{marker}" }} }}\n'
    write_python_model(tmp_path / "models", "flaky", marked, BEHAVING_BADLY)
    write_python_model(tmp_path / "models", "steady", INT32_IO, BEHAVING_BADLY)
    return tmp_path


def serve(start_tritium, repo, *extra):
    return start_tritium("--model-repository", str(repo / "models"), "--python-interpreter", PYTHON,
                         "--model-control-mode", "explicit", "--load-model", "*",
                         "--backend-config", "python,stub-timeout-seconds=5", *extra)  # fmt: skip


def test_a_crashing_stub_fails_its_request_and_a_new_stub_serves_the_next(start_tritium, repo):
    server = serve(start_tritium, repo)
    client = grpcclient.InferenceServerClient(server.url)
    first = stub_pids(server)
    assert len(first) == 2, first
    error = expect_error("INTERNAL", "is not healthy", client.infer, "flaky", [int32_input([1])])
    assert "flaky" in str(error)
    result = client.infer("flaky", [int32_input([5, 6])])
    np.testing.assert_array_equal(result.as_numpy("OUT"), [5, 6])
    assert stub_pids(server) != first, "a new stub process serves the model"
    np.testing.assert_array_equal(client.infer("steady", [int32_input([7])]).as_numpy("OUT"), [7])
    assert server.proc.poll() is None


def test_a_stub_hanging_past_the_deadline_leaves_the_server_and_other_models_answering(start_tritium, repo):
    server = serve(start_tritium, repo)
    client = grpcclient.InferenceServerClient(server.url)
    expect_error("DEADLINE_EXCEEDED", "", client.infer, "flaky", [int32_input([2, 60_000])], client_timeout=0.5)
    np.testing.assert_array_equal(client.infer("steady", [int32_input([4])]).as_numpy("OUT"), [4])
    assert client.is_server_live()
    # Unloading the hung model ends its stub once finalize has had its time (the stub timeout, 5 s here).
    hung = stub_pids(server)
    client.unload_model("flaky")
    assert wait_for(lambda: len(stub_pids(server)) == len(hung) - 1), stub_pids(server)
    assert server.proc.poll() is None


def test_unload_and_sigterm_run_finalize_and_end_every_stub(repo):
    # Started by hand: the fixture's teardown would count the SIGTERM exit as a crash.
    server = serve(lambda *args: start_server(*args), repo)
    client = grpcclient.InferenceServerClient(server.url)
    client.infer("flaky", [int32_input([3])])
    assert len(stub_pids(server)) == 2, "one stub per model"
    client.unload_model("flaky")
    marker = repo / "finalized.txt"
    assert wait_for(lambda: marker.exists() and "finalized" in marker.read_text())
    assert wait_for(lambda: len(stub_pids(server)) == 1), "the unloaded model's stub has ended"
    client.load_model("flaky")
    remaining = stub_pids(server)
    assert len(remaining) == 2
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert marker.read_text().count("finalized") == 2, marker.read_text()
    assert wait_for(lambda: not any(pathlib.Path(f"/proc/{pid}").exists() for pid in remaining), 10)
    server.stop()
    server.stderr_path.unlink(missing_ok=True)


def test_initialize_raising_fails_the_load_with_the_tracebacks_last_line(start_tritium, tmp_path):
    write_python_model(tmp_path, "broken", INT32_IO, """
        class TritonPythonModel:
            def initialize(self, args):
                raise ValueError("initialize exploded")
    """)  # fmt: skip
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON,
                           "--model-control-mode", "explicit")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    error = expect_error("INTERNAL", "ValueError: initialize exploded", client.load_model, "broken")
    assert "broken" in str(error)
    assert not client.is_model_ready("broken")
    assert client.is_server_live()


def test_an_interpreter_without_numpy_is_one_clear_load_error(start_tritium, tmp_path):
    bare = pathlib.Path("/usr/bin/python3")
    if not bare.exists() or os.system(f"{bare} -c 'import numpy' 2>/dev/null") == 0:
        pytest.skip("needs a python3 without numpy at /usr/bin/python3")
    write_python_model(tmp_path, "needs_numpy", INT32_IO, BEHAVING_BADLY)
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", str(bare),
                           "--model-control-mode", "explicit")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    expect_error("INTERNAL", "needs numpy", client.load_model, "needs_numpy")


def test_the_dynamic_batcher_hands_execute_lists_of_requests(start_tritium, tmp_path):
    write_python_model(tmp_path, "counts", """
        max_batch_size: 8
        dynamic_batching { max_queue_delay_microseconds: 200000 }
        input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
        output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] }, { name: "BATCH", data_type: TYPE_INT32, dims: [ 1 ] } ]
    """, """
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                n = len(requests)
                return [pb_utils.InferenceResponse([
                    pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() * 10),
                    pb_utils.Tensor("BATCH", np.full([1, 1], n, dtype=np.int32)),
                ]) for r in requests]
    """)  # fmt: skip
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    client = grpcclient.InferenceServerClient(server.url)
    results: dict[int, tuple] = {}

    def call(value: int) -> None:
        result = client.infer("counts", [int32_input([[value]])])
        results[value] = (int(result.as_numpy("OUT")[0][0]), int(result.as_numpy("BATCH")[0][0]))

    threads = [threading.Thread(target=call, args=(v,)) for v in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {v: out for v, (out, _) in results.items()} == {v: v * 10 for v in range(1, 7)}
    assert max(batch for _, batch in results.values()) > 1, results


def test_inputs_and_outputs_in_system_shared_memory(start_tritium, tmp_path):
    write_python_model(tmp_path, "ident", """
        max_batch_size: 0
        input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
        output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
    """, """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                        pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
    """)  # fmt: skip
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON, "--allow-shared-memory")
    client = grpcclient.InferenceServerClient(server.url)
    data = np.arange(1 << 18, dtype=np.float32)  # 1 MiB
    key_in, key_out = f"/py_in_{os.getpid()}", f"/py_out_{os.getpid()}"
    region_in = shm.create_shared_memory_region("py_in", key_in, data.nbytes)
    region_out = shm.create_shared_memory_region("py_out", key_out, data.nbytes)
    try:
        shm.set_shared_memory_region(region_in, [data])
        client.register_system_shared_memory("py_in", key_in, data.nbytes)
        client.register_system_shared_memory("py_out", key_out, data.nbytes)
        tensor = grpcclient.InferInput("INPUT0", [data.size], "FP32")
        tensor.set_shared_memory("py_in", data.nbytes)
        output = grpcclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("py_out", data.nbytes)
        client.infer("ident", [tensor], outputs=[output])
        np.testing.assert_array_equal(shm.get_contents_as_numpy(region_out, np.float32, [data.size]), data)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(region_in)
        shm.destroy_shared_memory_region(region_out)


def test_a_tensor_larger_than_the_region_travels_through_the_socket(start_tritium, tmp_path):
    write_python_model(tmp_path, "ident", INT32_IO, """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT",
                        pb_utils.get_input_tensor_by_name(r, "IN").as_numpy() + 1)]) for r in requests]
    """)  # fmt: skip
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON,
                           "--backend-config", "python,shm-region-byte-size=65536")  # fmt: skip
    client = grpcclient.InferenceServerClient(server.url)
    for size in (16, 200_000):  # 64 B in the region; 800 kB past its 32 kB halves
        values = np.arange(size, dtype=np.int32)
        result = client.infer("ident", [int32_input(values)])
        np.testing.assert_array_equal(result.as_numpy("OUT"), values + 1)


def test_model_folders_may_hold_modules_model_py_imports(start_tritium, tmp_path):
    model_dir = write_python_model(tmp_path, "helper_user", INT32_IO, """
        import triton_python_backend_utils as pb_utils
        from helper_module import triple

        class TritonPythonModel:
            def execute(self, requests):
                return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT",
                        triple(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy()))]) for r in requests]
    """)  # fmt: skip
    (model_dir / "1" / "helper_module.py").write_text("def triple(x):\n    return x * 3\n")
    server = start_tritium("--model-repository", str(tmp_path), "--python-interpreter", PYTHON)
    client = grpcclient.InferenceServerClient(server.url)
    np.testing.assert_array_equal(client.infer("helper_user", [int32_input([1, 2])]).as_numpy("OUT"), [3, 6])


def test_a_bad_backend_config_value_is_refused_at_start(tmp_path):
    out = subprocess.run([str(tritium_bin()), "serve", "--model-repository", str(tmp_path), "--grpc-port", "0",
                          "--backend-config", "python,shm-region-byte-size=12"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode != 0
    assert "shm-region-byte-size must be at least" in out.stderr
