"""`tritium.worker.Worker`: a Python process joins a Tritium cluster as a worker. A frontend (the real
`tritium serve --discovery file`) and Python workers (scripts run in the fresh environment that
package_env.py's fixture builds from ./python) share a discovery folder: a numpy function
bound on the worker answers tritonclient gRPC and HTTP requests sent to the frontend, a function's
error reaches the client through it, a killed worker's model disappears once its lease runs out and
a second Python worker takes over, and a stopped one deregisters at once. Language-model workers
(`bind_llm`, the SmolLM2 GGUF's card for the frontend's tokenizer) answer openai completions and
chat, streaming too, and KServe; a client going away ends the handler; and over etcd and NATS a
stream moves to a second Python worker when its worker is killed."""

from __future__ import annotations

import pathlib
import queue
import signal
import subprocess
import textwrap
import threading
import urllib.request
import uuid

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from cluster import metric, start_etcd, start_nats, wait_until
from conftest import model_paths
from helpers import start_server
from package_env import PACKAGE_TEST_TIMEOUT, clean_env, python, run

pytestmark = PACKAGE_TEST_TIMEOUT

LEASE_TTL = 2
READY_TIMEOUT = 120

WORKER_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np
    import tritium
    from tritium.worker import Worker

    discovery_dir, worker_id, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])

    @tritium.batch
    def scale(x):
        return {"y": x * np.float32(factor)}

    def fail(requests):
        raise ValueError("the worker's function refused: x is unlucky")

    worker = Worker(discovery="file", discovery_dir=discovery_dir, worker_id=worker_id, lease_ttl_secs=%d)
    tensor = lambda name: tritium.Tensor(name=name, dtype=np.float32, shape=(-1,))
    worker.bind("scale", scale, inputs=[tensor("x")], outputs=[tensor("y")], config=tritium.ModelConfig(max_batch_size=8))
    worker.bind("fail", fail, inputs=[tensor("x")], outputs=[tensor("y")])
    worker.start()
    print("ready", worker.port, worker.worker_id, flush=True)
    worker.run()
    print("stopped", flush=True)
    """
    % LEASE_TTL
)


class PythonWorker:
    """A worker script running in the fresh environment; its stdout lines arrive on a queue."""

    def __init__(self, venv: pathlib.Path, script: pathlib.Path, *args):
        self.proc = subprocess.Popen(
            [python(venv), str(script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
            cwd=venv,
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, put) -> None:
        for line in stream:
            put(line.rstrip("\n"))
        put(None)

    def line(self) -> str:
        try:
            line = self.lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            line = None
        if line is None:
            self.kill()
            pytest.fail("the Python worker printed nothing more; stderr:\n" + "\n".join(self.stderr[-40:]))
        return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def frontend(tmp_path):
    discovery = tmp_path / "discovery"
    discovery.mkdir()
    server = start_server("--discovery", "file", "--discovery-dir", str(discovery), "--lease-ttl-secs", str(LEASE_TTL))
    yield server, discovery
    server.stop()
    server.stderr_path.unlink(missing_ok=True)


def _x(module, values: np.ndarray):
    tensor = module.InferInput("x", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return tensor


def _scaled(client, module, values: np.ndarray) -> np.ndarray:
    return client.infer("scale", [_x(module, values)]).as_numpy("y")


def test_a_python_worker_serves_through_the_frontend_and_its_death_is_handled(venv, frontend, tmp_path):
    server, discovery = frontend
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    grpc = grpcclient.InferenceServerClient(server.url)
    http = httpclient.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert not grpc.is_model_ready("scale"), "the frontend serves nothing before a worker registers"
    workers = []
    try:
        first = PythonWorker(venv, script, discovery, "py-one", 2.0)
        workers.append(first)
        ready = first.line().split()
        assert ready[0] == "ready" and int(ready[1]) > 0 and ready[2] == "py-one", ready
        wait_until(lambda: grpc.is_model_ready("scale"), 10, "scale served through the frontend")

        metadata = grpc.get_model_metadata("scale")
        assert (metadata.inputs[0].name, metadata.inputs[0].datatype, metadata.outputs[0].name) == ("x", "FP32", "y")
        values = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)
        np.testing.assert_array_equal(_scaled(grpc, grpcclient, values), values * 2)
        np.testing.assert_array_equal(_scaled(http, httpclient, values), values * 2)

        # The function's error reaches the client through the frontend; the worker goes on serving.
        with pytest.raises(InferenceServerException) as raised:
            grpc.infer("fail", [_x(grpcclient, np.ones((1, 3), dtype=np.float32))])
        assert "x is unlucky" in raised.value.message(), raised.value.message()
        with pytest.raises(InferenceServerException) as raised:
            http.infer("fail", [_x(httpclient, np.ones((1, 3), dtype=np.float32))])
        assert "x is unlucky" in raised.value.message(), raised.value.message()
        np.testing.assert_array_equal(_scaled(grpc, grpcclient, values), values * 2)

        # SIGKILL: nothing deregisters; the model goes when the lease runs out.
        first.kill()
        wait_until(lambda: not grpc.is_model_ready("scale"), LEASE_TTL + 3, "scale gone after its worker was killed")
        assert "scale" not in [m["name"] for m in http.get_model_repository_index()]

        # A second Python worker takes over (it scales by 3: the answers are its own).
        second = PythonWorker(venv, script, discovery, "py-two", 3.0)
        workers.append(second)
        assert second.line().split()[:1] == ["ready"]
        wait_until(lambda: grpc.is_model_ready("scale"), 10, "scale served by the second worker")
        np.testing.assert_array_equal(_scaled(grpc, grpcclient, values), values * 3)
        np.testing.assert_array_equal(_scaled(http, httpclient, values), values * 3)

        # SIGINT: the worker deregisters on its way out (its record is removed, where the killed
        # worker's was left to go stale).
        second.proc.send_signal(signal.SIGINT)
        assert second.proc.wait(timeout=60) == 0, "\n".join(second.stderr[-40:])
        assert second.line() == "stopped"
        records = " ".join(p.name for p in discovery.rglob("*") if p.is_file())
        assert "py-one" in records and "py-two" not in records, records
        wait_until(lambda: not grpc.is_model_ready("scale"), LEASE_TTL + 3, "scale gone once its worker deregistered")
    finally:
        for worker in workers:
            worker.kill()
        grpc.close()
        http.close()


def test_worker_options_are_checked(venv, tmp_path):
    script = textwrap.dedent(
        f"""
        import numpy as np, tritium
        from tritium.worker import Worker

        def refused(make):
            try:
                make()
            except (TypeError, ValueError, RuntimeError) as error:
                print(type(error).__name__, error)
            else:
                print("accepted")

        refused(lambda: Worker(discovery="mem", discovery_dir="x"))
        refused(lambda: Worker(discovery="file"))
        refused(lambda: Worker(discovery="etcd"))
        refused(lambda: Worker(discovery="file", discovery_dir="x", events="tcp://nats"))
        refused(lambda: Worker(discovery="file", discovery_dir="x", no_such_option=1))
        refused(lambda: Worker(discovery="file", discovery_dir="x", model_control_mode="on-demand"))
        worker = Worker(discovery="file", discovery_dir={str(tmp_path)!r})
        t = tritium.Tensor(name="x", dtype=np.float32, shape=(-1,))
        worker.bind("f", lambda requests: [dict(x=r["x"]) for r in requests], inputs=[t], outputs=[t])
        refused(lambda: worker.bind("f", lambda r: r, inputs=[t], outputs=[t]))
        with worker:
            refused(lambda: worker.bind("g", lambda r: r, inputs=[t], outputs=[t]))
            print("registered", sorted(p.name for p in __import__("pathlib").Path({str(tmp_path)!r}).rglob("*") if p.is_file()) != [])
        print("running", worker.running)
        """
    )
    out = run([python(venv), "-c", script], clean_env(), 120, cwd=venv).splitlines()
    assert out[0].startswith("ValueError discovery must be one of 'file', 'etcd'"), out
    assert out[1].startswith("ValueError discovery='file' needs discovery_dir"), out
    assert out[2].startswith("ValueError discovery='etcd' needs etcd_endpoints"), out
    assert out[3].startswith("ValueError events must be None or a NATS URL"), out
    assert out[4] == "TypeError tritium worker has no option --no-such-option (keyword 'no_such_option')", out
    assert out[5].startswith("ValueError") and "on-demand" in out[5], out
    assert out[6] == "ValueError a function is already bound as model 'f'", out
    assert out[7].startswith("RuntimeError bind functions before the worker starts"), out
    assert out[8] == "registered True", out
    assert out[9] == "running False", out


LLM_SCRIPT = textwrap.dedent(
    """
    import sys

    from tritium.worker import Worker

    discovery_dir, gguf, cancelled_marker = sys.argv[1], sys.argv[2], sys.argv[3]

    async def echo(request):
        # Echoes the prompt, as the frontend tokenized it: the engine stops it at max_tokens or at
        # the first end-of-sequence token (the chat template's <|im_end|>).
        assert isinstance(request.sampling["temperature"], float) and "max_tokens" in request.stop
        for token in request.token_ids:
            if request.cancelled:
                return
            yield token

    async def forever(request):
        # Never ends on its own: only the client going away stops it, which it records.
        import asyncio, pathlib
        while not request.cancelled:
            yield request.token_ids[0]
            await asyncio.sleep(0.01)
        pathlib.Path(cancelled_marker).write_text("cancelled")

    async def broken(request):
        yield request.token_ids[0]
        raise RuntimeError("the handler broke down")

    worker = Worker(discovery="file", discovery_dir=discovery_dir, worker_id="py-llm", lease_ttl_secs=%d)
    worker.bind_llm("echo-llm", echo, gguf)
    worker.bind_llm("broken-llm", broken, gguf)
    worker.bind_llm("forever-llm", forever, gguf)
    worker.start()
    print("ready", worker.port, worker.worker_id, flush=True)
    worker.run()
    """
    % LEASE_TTL
)


@pytest.mark.llm
def test_a_python_language_model_worker_answers_openai_through_the_frontend(venv, frontend, tmp_path):
    gguf, _ = model_paths()
    server, discovery = frontend
    script = tmp_path / "llm_worker.py"
    marker = tmp_path / "cancelled"
    script.write_text(LLM_SCRIPT)
    worker = PythonWorker(venv, script, discovery, gguf, marker)
    try:
        assert worker.line().split()[:1] == ["ready"]
        llm = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused")
        wait_until(lambda: "echo-llm" in [m.id for m in llm.models.list().data], 10, "echo-llm in /v1/models")

        # A raw prompt comes back as it went in: tokenized and detokenized by the frontend.
        completion = llm.completions.create(model="echo-llm", prompt="Hello from Python", max_tokens=50)
        assert completion.choices[0].text == "Hello from Python", completion
        assert completion.choices[0].finish_reason == "stop"
        truncated = llm.completions.create(model="echo-llm", prompt="Hello from Python", max_tokens=1)
        assert truncated.choices[0].finish_reason == "length" and truncated.usage.completion_tokens == 1
        assert "Hello from Python".startswith(truncated.choices[0].text) and truncated.choices[0].text

        # Chat: the frontend applies the GGUF's chat template; the echo ends at its first <|im_end|>.
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        chat = llm.chat.completions.create(model="echo-llm", messages=messages, max_tokens=100)
        text = chat.choices[0].message.content
        assert text.strip() == "system\nBe brief.", repr(text)
        assert chat.choices[0].finish_reason == "stop"
        streamed = llm.chat.completions.create(model="echo-llm", messages=messages, max_tokens=100, stream=True)
        pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
        assert len([p for p in pieces if p]) > 1 and "".join(pieces) == text, pieces

        # KServe through the frontend: it tokenizes with the card the worker sent.
        grpc = grpcclient.InferenceServerClient(server.url)
        text_input = grpcclient.InferInput("text_input", [1], "BYTES")
        text_input.set_data_from_numpy(np.array([b"Hello from Python"], dtype=np.object_))
        result = grpc.infer("echo-llm", [text_input], parameters={"max_tokens": 50})
        assert result.as_numpy("text_output")[0].decode() == "Hello from Python"
        grpc.close()

        # A client that goes away mid-stream ends the handler (its cancellation flag turns true).
        stream = llm.completions.create(model="forever-llm", prompt="Hello", max_tokens=100000, stream=True)
        for received, _ in enumerate(stream):
            if received == 3:
                break
        stream.close()
        wait_until(marker.exists, 30, "the handler saw its request cancelled")

        # A handler that raises: the client gets an error, the worker goes on serving.
        with pytest.raises(openai.APIError) as raised:
            llm.completions.create(model="broken-llm", prompt="Hello", max_tokens=10)
        assert "the handler broke down" in str(raised.value), raised.value
        again = llm.completions.create(model="echo-llm", prompt="Hello from Python", max_tokens=50)
        assert again.choices[0].text == "Hello from Python"
    finally:
        worker.kill()


MIGRATION_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys

    from tritium.worker import Worker

    etcd, nats, namespace, gguf, worker_id = sys.argv[1:6]

    async def repeat(request):
        # The prompt's last token over and over, slowly enough for the test to kill a worker mid-stream.
        while not request.cancelled:
            yield request.token_ids[-1]
            await asyncio.sleep(0.02)

    worker = Worker(discovery="etcd", etcd_endpoints=etcd, namespace=namespace, events=nats, worker_id=worker_id, lease_ttl_secs=%d)
    worker.bind_llm("repeat-llm", repeat, gguf)
    worker.start()
    print("ready", worker.port, worker.worker_id, flush=True)
    worker.run()
    """
    % LEASE_TTL
)


@pytest.mark.etcd
@pytest.mark.nats
@pytest.mark.llm
def test_python_workers_over_etcd_and_nats_migrate_a_stream_when_one_dies(venv, tmp_path):
    gguf, _ = model_paths()
    etcd, nats = start_etcd(), start_nats()
    namespace = f"pyworker-{uuid.uuid4().hex[:8]}"
    common = ["--discovery", "etcd", "--etcd-endpoints", etcd.address, "--events", "nats", "--nats-url", nats.address]
    frontend = start_server(*common, "--namespace", namespace, "--lease-ttl-secs", str(LEASE_TTL), "--router-mode", "direct")
    script = tmp_path / "repeat_worker.py"
    script.write_text(MIGRATION_SCRIPT)
    workers = {}
    try:
        for worker_id in ("first", "second"):
            worker = workers[worker_id] = PythonWorker(venv, script, etcd.address, nats.address, namespace, gguf, worker_id)
            assert worker.line().split()[:1] == ["ready"]

        def serving() -> float:
            with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
                return metric(response.read().decode(), "tritium_router_workers", 'model="repeat-llm"')

        wait_until(lambda: serving() == 2, 10, "two Python workers serving repeat-llm")
        llm = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="unused")
        stream = llm.completions.create(
            model="repeat-llm", prompt="Hello", max_tokens=40, stream=True, extra_headers={"x-tritium-worker": "first"}
        )
        text, finish, chunks = "", None, 0
        for chunk in stream:
            chunks += 1
            text += chunk.choices[0].text
            if chunks == 5:
                workers["first"].kill()
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "length"
        assert text == "Hello" * 40, f"every token arrives once, before and after the migration: {text!r}"
        with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
            assert metric(response.read().decode(), "tritium_router_migrations_total") >= 1
    finally:
        for worker in workers.values():
            worker.kill()
        frontend.stop()
        frontend.stderr_path.unlink(missing_ok=True)
        etcd.stop()
        nats.stop()


KV_SCRIPT = textwrap.dedent(
    """
    import sys

    from tritium.worker import Worker, kv_block_hashes

    etcd, nats, namespace, gguf, worker_id, log = sys.argv[1:7]
    held = []

    async def cached(request):
        # A prefix cache's announcements: the prompt's blocks are now held; a request with seed
        # 4242 evicts everything this worker announced.
        if request.sampling["seed"] == 4242:
            publisher.removed(held)
            held.clear()
        else:
            held.extend(request.kv.stored(request.token_ids))
        with open(log, "a") as served:
            served.write(f"{len(request.token_ids)}\\n")
        yield request.token_ids[-1]

    worker = Worker(discovery="etcd", etcd_endpoints=etcd, namespace=namespace, events=nats, worker_id=worker_id, lease_ttl_secs=%d)
    for size in (0, -1, 70000):
        try:
            worker.bind_llm("bad-llm", cached, gguf, kv_block_size=size)
        except ValueError as error:
            print("refused", size, error, flush=True)
    publisher = worker.bind_llm("cached-llm", cached, gguf)
    print("block_size", publisher.block_size, [hex(h) for h in kv_block_hashes([1, 2, 3, 4], 2)], flush=True)
    worker.start()
    print("ready", worker.port, worker.worker_id, flush=True)
    worker.run()
    """
    % LEASE_TTL
)

# Long enough for several 16-token blocks, each prompt its own prefix.
KV_PROMPT = (
    "In the first chapter the {} travellers crossed the river at dawn, counting every stone and every bird they "
    "saw on the far bank, and wrote all of it down in a small notebook bound in green leather, which the eldest "
    "of them carried in a pocket sewn inside her coat."
)


@pytest.mark.etcd
@pytest.mark.nats
@pytest.mark.llm
def test_python_workers_kv_events_steer_the_kv_router(venv, tmp_path):
    """Two Python language-model workers announce the blocks their handler stores through
    `request.kv` (over NATS, as a Rust engine's KV events go): a `--router-mode kv` frontend sends
    every prompt sharing a stored prefix to the worker that stored it, and forgets the blocks when
    the handler announces their removal."""
    gguf, _ = model_paths()
    etcd, nats = start_etcd(), start_nats()
    namespace = f"pykv-{uuid.uuid4().hex[:8]}"
    common = ["--discovery", "etcd", "--etcd-endpoints", etcd.address, "--events", "nats", "--nats-url", nats.address]
    frontend = start_server(*common, "--namespace", namespace, "--lease-ttl-secs", str(LEASE_TTL), "--router-mode", "kv")
    script = tmp_path / "kv_worker.py"
    script.write_text(KV_SCRIPT)
    logs = {worker_id: tmp_path / f"{worker_id}.log" for worker_id in ("a", "b")}
    workers = {}
    try:
        for worker_id in logs:
            worker = workers[worker_id] = PythonWorker(venv, script, etcd.address, nats.address, namespace, gguf, worker_id, logs[worker_id])
            refusals = [worker.line() for _ in range(3)]
            assert all(r.startswith("refused") and "kv_block_size must be between 1 and 65536" in r for r in refusals), refusals
            # The router's own block hashes (pinned in backend-api/src/kv.rs).
            assert worker.line() == "block_size 16 ['0xa91ab0c1027b9366', '0x3df829571605c60']"
            assert worker.line().split()[:1] == ["ready"]

        def scraped(name: str, labels: str = "") -> float:
            with urllib.request.urlopen(f"{frontend.http_url}/metrics", timeout=10) as response:
                return metric(response.read().decode(), name, labels)

        def served() -> dict:
            return {w: len(p.read_text().splitlines()) if p.exists() else 0 for w, p in logs.items()}

        wait_until(lambda: scraped("tritium_router_workers", 'model="cached-llm"') == 2, 10, "two Python workers serving cached-llm")
        llm = openai.OpenAI(base_url=f"{frontend.http_url}/v1", api_key="unused")
        holders, blocks = {}, 0
        for travellers in ("three", "seven", "nine"):
            before = served()
            llm.completions.create(model="cached-llm", prompt=KV_PROMPT.format(travellers), max_tokens=1)
            holder = holders[travellers] = next(w for w in logs if served()[w] > before[w])
            blocks += int(logs[holder].read_text().splitlines()[-1]) // 16
            wait_until(lambda: scraped("tritium_router_kv_blocks_indexed") >= blocks, 10, "the stored blocks indexed")
            for question in range(4):
                before = served()
                prompt = KV_PROMPT.format(travellers) + f" Question {question}: how many stones?"
                llm.completions.create(model="cached-llm", prompt=prompt, max_tokens=1)
                after = served()
                assert after[holder] == before[holder] + 1, f"a prompt sharing {holder}'s stored prefix went elsewhere: {before} -> {after}"
        assert blocks >= 3 * 3, "each prompt spans several blocks"
        assert scraped("tritium_router_prompt_blocks_cached_total") >= 12 * 3
        # Each holder evicts what it announced (its own prefix leads the request to it); the
        # router's index empties.
        for holder, travellers in {h: t for t, h in holders.items()}.items():
            llm.completions.create(model="cached-llm", prompt=KV_PROMPT.format(travellers), max_tokens=1, seed=4242)
        wait_until(lambda: scraped("tritium_router_kv_blocks_indexed") == 0, 10, "the removed blocks dropped from the index")
    finally:
        for worker in workers.values():
            worker.kill()
        frontend.stop()
        frontend.stderr_path.unlink(missing_ok=True)
        etcd.stop()
        nats.stop()
