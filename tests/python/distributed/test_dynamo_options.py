"""Dynamo's frontend options under their own names and variables (issue 44), each observed through
real requests on a real `tritium serve`: where the HTTP port listens, whether the KServe gRPC port
is served, where metrics go, which router mode runs, the Anthropic door, the preprocessing pool,
its perf log and the fastokens encoder (the real SmolLM2), every variable read with a flag beating
it, the book's table (docs/src/distributed/dynamo-options.md) against the server, and bad values refused at start naming what is
allowed. The router's options are in test_dynamo_routing.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cluster import wait_until
from conftest import LLM_NAME, LLM_START_TIMEOUT, model_paths
from dynamo_cluster import post
from helpers import READY_PREFIX, REPO, TritiumServer, bound_listener, finish_server, launch, start_failure, start_server, start_worker, tritium_bin


def free_port() -> int:
    """A port nothing listens on now (the OS's pick), for options that take a port number."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_on_grpc_fd(*args: str) -> TritiumServer:
    """`tritium serve` handed only its gRPC socket: HTTP and metrics bind what the options say."""
    grpc = bound_listener()
    return launch(["serve", "--grpc-listen-fd", str(grpc.fileno()), *args], [grpc], READY_PREFIX, 60)


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code




def test_the_http_port_and_host_come_from_dynamos_variables_and_a_flag_beats_them(monkeypatch):
    env_port, flag_port = free_port(), free_port()
    monkeypatch.setenv("DYN_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("DYN_HTTP_PORT", str(env_port))
    server = serve_on_grpc_fd("--allow-metrics", "false")
    try:
        assert get(f"http://127.0.0.1:{env_port}/v2/health/ready") == 200
    finally:
        finish_server(server)
    server = serve_on_grpc_fd("--allow-metrics", "false", "--http-port", str(flag_port))
    try:
        assert get(f"http://127.0.0.1:{flag_port}/v2/health/ready") == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{env_port}/v2/health/ready", timeout=5)
    finally:
        finish_server(server)


def test_no_kserve_grpc_server_serves_http_without_a_grpc_port(monkeypatch):
    for how in (["--no-kserve-grpc-server"], ["--kserve-grpc-server", "--no-kserve-grpc-server"], []):
        if not how:
            monkeypatch.setenv("DYN_KSERVE_GRPC_SERVER", "false")
        server = start_server(*how)
        try:
            assert "grpc=" not in server.ready_line, server.ready_line
            assert get(f"{server.http_url}/v2/health/ready") == 200
            # The socket handed over for gRPC was closed: nothing answers there.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        finally:
            finish_server(server)
    monkeypatch.delenv("DYN_KSERVE_GRPC_SERVER")
    # The flag beats the variable.
    monkeypatch.setenv("DYN_KSERVE_GRPC_SERVER", "0")
    server = start_server("--kserve-grpc-server")
    try:
        assert grpcclient.InferenceServerClient(server.url).is_server_live()
    finally:
        finish_server(server)


def grpc_identity_answers(url: str, headers: dict[str, str] | None = None) -> None:
    """A unary ModelInfer and a ModelStreamInfer on the built-in identity model at `url`."""
    data = np.arange(16, dtype=np.float32)
    tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
    tensor.set_data_from_numpy(data)
    with grpcclient.InferenceServerClient(url) as client:
        assert np.array_equal(client.infer("identity", [tensor], headers=headers).as_numpy("OUTPUT0"), data)
        answers = []
        client.start_stream(lambda result, error: answers.append(error or result))
        client.async_stream_infer("identity", [tensor])
        wait_until(lambda: answers, 30, "the streamed answer")
        client.stop_stream()
    assert not isinstance(answers[0], Exception), answers[0]
    assert np.array_equal(answers[0].as_numpy("OUTPUT0"), data)


def test_kserve_grpc_server_serves_grpc_on_the_http_port():
    """Dynamo's frontend serves KServe gRPC on --http-port when given --kserve-grpc-server: so does
    Tritium, with no gRPC port of its own unless one is named, HTTP still answering on that port, and
    the gRPC port's guards (a restricted group) applying to the calls there."""
    http = bound_listener()
    argv = ["serve", "--http-listen-fd", str(http.fileno()), "--kserve-grpc-server", "--allow-metrics", "false",
            "--grpc-restricted-protocol", "model-repository:admin-key=s3cret"]  # fmt: skip
    server = launch(argv, [http], READY_PREFIX, 60)
    try:
        assert "grpc=" not in server.ready_line and f"http={server.url}" in server.ready_line, server.ready_line
        grpc_identity_answers(server.url)
        assert get(f"http://{server.url}/v2/health/ready") == 200
        with grpcclient.InferenceServerClient(server.url) as client:
            with pytest.raises(Exception, match="This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"):
                client.get_model_repository_index()
            names = [m.name for m in client.get_model_repository_index(headers={"triton-grpc-protocol-admin-key": "s3cret"}).models]
            assert "identity" in names
    finally:
        finish_server(server)
    # Tritium's own layout (no --kserve-grpc-server): the gRPC port, and gRPC on the HTTP port too.
    server = start_server()
    try:
        assert "grpc=" in server.ready_line
        grpc_identity_answers(server.url)
        grpc_identity_answers(server.http_url.removeprefix("http://"))
    finally:
        finish_server(server)
    # Named together with --kserve-grpc-server, the gRPC port is served as well.
    server = start_server("--kserve-grpc-server")
    try:
        assert f"grpc={server.url}" in server.ready_line
        grpc_identity_answers(server.url)
    finally:
        finish_server(server)


def test_grpc_metrics_port_serves_the_metrics():
    """(DYN_GRPC_METRICS_PORT is read as the dump test shows: the harness keeps DYN_GRPC_* from servers.)"""
    port = free_port()
    grpc, http = bound_listener(), bound_listener()
    server = launch(
        ["serve", "--grpc-listen-fd", str(grpc.fileno()), "--http-listen-fd", str(http.fileno()), "--grpc-metrics-port", str(port)],
        [grpc, http],
        READY_PREFIX,
        60,
    )
    try:
        assert f"metrics=0.0.0.0:{port}" in server.ready_line, server.ready_line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert "nv_inference_request_success" in response.read().decode()
    finally:
        finish_server(server)


def test_router_mode_from_its_variable_and_the_flag_beating_it(monkeypatch):
    """`direct` mode makes a request name its worker, so the mode in force shows in the answer."""
    data = np.arange(16, dtype=np.float32)

    def infer(server: TritiumServer):
        tensor = grpcclient.InferInput("INPUT0", [16], "FP32")
        tensor.set_data_from_numpy(data)
        return grpcclient.InferenceServerClient(server.url).infer("identity", [tensor])

    for variable in ("DYN_ROUTER_MODE",):
        monkeypatch.setenv(variable, "direct")
        server = start_server()
        try:
            with pytest.raises(Exception, match="the router is in 'direct' mode"):
                infer(server)
        finally:
            finish_server(server)
        monkeypatch.delenv(variable)
    monkeypatch.setenv("DYN_ROUTER_MODE", "direct")
    server = start_server("--router-mode", "round-robin")
    try:
        np.testing.assert_array_equal(infer(server).as_numpy("OUTPUT0"), data)
    finally:
        finish_server(server)


def test_the_anthropic_door_follows_its_pair_of_flags_and_its_variable(monkeypatch):
    body = {"model": "mock-llm", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    cases = [([], {}, 404), (["--enable-anthropic-api"], {}, 200), (["--enable-anthropic-api", "--no-enable-anthropic-api"], {}, 404),
             ([], {"DYN_ENABLE_ANTHROPIC_API": "1"}, 200), (["--no-enable-anthropic-api"], {"DYN_ENABLE_ANTHROPIC_API": "true"}, 404)]  # fmt: skip
    for flags, env, status in cases:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        server = start_server("--engine", "mock", *flags)
        try:
            assert post(f"{server.http_url}/v1/messages", body)[0] == status, (flags, env)
        finally:
            finish_server(server)
        for name in env:
            monkeypatch.delenv(name)


def perf_lines(server: TritiumServer) -> list[str]:
    return [line for line in server.stderr().splitlines() if "preprocess timing" in line]


@pytest.mark.llm
def test_fastokens_preprocess_workers_and_debug_perf_on_the_real_model():
    """The three prompt encoders on SmolLM2 give the same ids: fastokens, the default (Tritium's
    byte-level BPE encoder with its word cache, named in the perf log) and `tokenizers` alone."""
    gguf, _ = model_paths()
    model = ["--model-path", str(gguf), "--model-name", LLM_NAME]
    fast = start_server(*model, "--tokenizer", "fastokens", "--no-tokenizer-fallback", "--dyn-preprocess-workers", "2",
                        "--dyn-debug-perf", timeout=LLM_START_TIMEOUT)  # fmt: skip
    plain = start_server(*model, "--dyn-debug-perf", timeout=LLM_START_TIMEOUT)
    reference = start_server(*model, "--tokenizer", "tokenizers", timeout=LLM_START_TIMEOUT)
    servers = (fast, plain, reference)
    try:
        texts = ["Hello, world!", "naïve café 日本語 😀 1234567890", "def f(x):\n    return x ** 2\n", "a.a.a.a 11 222 3333 " * 50,
                 "it's  they'RE\t\ttabs\r\n \u00a0<|im_start|>user\nhi<|im_end|>"]  # fmt: skip
        for text in texts:
            for _ in range(2):  # the second time from the word cache
                answers = [post(f"{server.http_url}/tokenize", {"model": LLM_NAME, "prompt": text}) for server in servers]
                assert answers[0] == answers[2] and answers[1] == answers[2] and answers[2][0] == 200, (text, answers)
        messages = [{"role": "user", "content": "What is 2 + 2?"}]
        status, _ = post(f"{fast.http_url}/tokenize", {"model": LLM_NAME, "messages": messages})
        assert status == 200
        lines = perf_lines(fast)
        tokenized = [line for line in lines if "tokenize (fastokens)" in line]
        rendered = [line for line in lines if "chat_template" in line]
        assert len(tokenized) >= len(texts) and rendered, lines
        assert all('thread="tritium-preprocess-' in line and "pooled=true" in line for line in tokenized + rendered), lines
        assert len([line for line in perf_lines(plain) if "tokenize (byte-level BPE)" in line]) >= len(texts), perf_lines(plain)
        assert not perf_lines(reference)
    finally:
        for server in servers:
            finish_server(server)


def test_without_a_pool_debug_perf_times_steps_where_they_run(monkeypatch):
    monkeypatch.setenv("DYN_DEBUG_PERF", "1")
    server = start_server("--engine", "mock")
    try:
        assert post(f"{server.http_url}/tokenize", {"model": "mock-llm", "prompt": "hello there"})[0] == 200
        lines = perf_lines(server)
        assert lines and all("pooled=false" in line and "tritium-preprocess" not in line for line in lines), lines
    finally:
        finish_server(server)


def test_the_books_table_of_dynamos_options_matches_the_server():
    """Every option the book's table (docs/src/distributed/dynamo-options.md) says Tritium takes is in
    `tritium serve --help` and every variable it names is read; the ones it says are not yet taken are
    refused."""
    section = (REPO / "docs" / "src" / "distributed" / "dynamo-options.md").read_text()
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Dynamo option")]
    rows = [row for row in rows if len(row) == 3 and not row[0].startswith("|---")]
    assert len(rows) >= 35, len(rows)
    help_text = subprocess.run([str(tritium_bin()), "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    aliases = (REPO / "server" / "src" / "config" / "env_alias.rs").read_text()
    for options, variables, behaviour in rows:
        flags = [flag for flag in re.findall(r"--[a-z0-9-]+", options) if not flag.endswith("-")]
        for flag in flags:
            if behaviour.startswith("not yet"):
                assert f"{flag} " not in help_text and f"{flag}\n" not in help_text, f"{flag} is said not to be taken"
            else:
                assert re.search(rf"{re.escape(flag)}[ ,=<\]\n]", help_text), f"{flag} is said to be taken but is not in --help"
        for variable in re.findall(r"`((?:DYN|ETCD|NATS)_[A-Z_]+[A-Z])`", options + variables + behaviour):
            assert f"env: {variable}" in help_text or f'"{variable}"' in aliases, f"{variable} is read by no option"


# Every variable the frontend reads for a Dynamo option, with a value it accepts.
VARIABLES = {
    "DYN_HTTP_HOST": ("http-host", "127.0.0.1"),
    "DYN_HTTP_PORT": ("http-port", "8123"),
    "DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS": ("exit-timeout-secs", "7"),
    "DYN_HTTP_BODY_LIMIT_MB": ("http-body-limit-mb", "9"),
    "DYN_TLS_CERT_PATH": ("tls-cert-path", "/c.pem"),
    "DYN_TLS_KEY_PATH": ("tls-key-path", "/k.pem"),
    "DYN_TLS_CLIENT_CA_CERT_PATH": ("tls-client-ca-cert-path", "/ca.pem"),
    "DYN_ROUTER_MODE": ("router-mode", "power-of-two"),
    "DYN_ENCODER_CUDA_TO_CPU_RATIO": ("non-cpu-to-cpu-ratio", "4"),
    "DYN_ROUTER_LOAD_AWARE": ("load-aware", "false"),
    "DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT": ("router-kv-overlap-score-credit", "0.5"),
    "DYN_ROUTER_TEMPERATURE": ("router-temperature", "0.25"),
    "DYN_ROUTER_USE_KV_EVENTS": ("router-kv-events", "0"),
    "DYN_ROUTER_TTL_SECS": ("router-ttl-secs", "30"),
    "DYN_ROUTER_REPLICA_SYNC": ("router-replica-sync", "true"),
    "DYN_ROUTER_EVENT_THREADS": ("router-event-threads", "2"),
    "DYN_ROUTER_SNAPSHOT_THRESHOLD": ("router-snapshot-threshold", "500"),
    "DYN_ROUTER_RESET_STATES": ("router-reset-states", "true"),
    "DYN_ROUTER_PREFILL_LOAD_MODEL": ("router-prefill-load-model", "none"),
    "DYN_AIS_BACKEND": ("ais-backend", "vllm"),
    "DYN_ROUTER_TRACK_ACTIVE_BLOCKS": ("router-track-active-blocks", "false"),
    "DYN_ROUTER_TRACK_OUTPUT_BLOCKS": ("router-track-output-blocks", "true"),
    "DYN_ROUTER_ASSUME_KV_REUSE": ("router-assume-kv-reuse", "0"),
    "DYN_ROUTER_TRACK_PREFILL_TOKENS": ("router-track-prefill-tokens", "1"),
    "DYN_ROUTER_PREFILL_LOAD_SCALE": ("router-prefill-load-scale", "1.5"),
    "DYN_MIGRATION_LIMIT": ("migration-limit", "2"),
    "DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD": ("active-decode-blocks-threshold", "0.9"),
    "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD": ("active-prefill-tokens-threshold", "100"),
    "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD_FRAC": ("active-prefill-tokens-threshold-frac", "0.5"),
    "DYN_ADMISSION_CONTROL": ("admission-control", "none"),
    "DYN_DECODE_FALLBACK": ("decode-fallback", "false"),
    "DYN_ROUTER_QUEUE_THRESHOLD": ("router-queue-threshold", "0.5"),
    "DYN_ROUTER_SESSION_AFFINITY_TTL_SECS": ("router-session-affinity-ttl-secs", "600"),
    "DYN_ROUTER_SESSION_AFFINITY_MODE": ("router-session-affinity-mode", "soft"),
    "DYN_ROUTER_QUEUE_POLICY": ("router-queue-policy", "wspt"),
    "DYN_NAMESPACE": ("namespace", "blue"),
    "DYN_NAMESPACE_PREFIX": ("namespace-prefix", "bl"),
    "DYN_MODEL_NAME": ("model-name", "m"),
    "DYN_MODEL_PATH": ("model-path", "/m.gguf"),
    "DYN_KV_CACHE_BLOCK_SIZE": ("kv-cache-block-size", "32"),
    "DYN_DISCOVERY_BACKEND": ("discovery-backend", "file"),
    "DYN_FILE_KV": ("discovery-dir", "/kv"),
    "ETCD_ENDPOINTS": ("etcd-endpoints", "http://e:2379"),
    "DYN_EVENT_PLANE": ("event-plane", "nats"),
    "DYN_EVENT_PLANE_HOST": ("event-plane-host", "127.0.0.1"),
    "DYN_TCP_MAX_MESSAGE_SIZE": ("tcp-max-message-size", "1048576"),
    "NATS_SERVER": ("nats-url", "nats://n:4222"),
    "DYN_REQUEST_PLANE": ("request-plane", "tcp"),
    "DYN_KSERVE_GRPC_SERVER": ("kserve-grpc-server", "true"),
    "DYN_GRPC_METRICS_PORT": ("metrics-port", "8788"),
    "DYN_METRICS_PREFIX": ("metrics-prefix", "edge"),
    "DYN_DUMP_CONFIG_TO": None,
    "DYN_ENABLE_ANTHROPIC_API": ("enable-anthropic-api", "1"),
    "DYN_CHAT_PROCESSOR": ("dyn-chat-processor", "dynamo"),
    "DYN_DEBUG_PERF": ("dyn-debug-perf", "true"),
    "DYN_PREPROCESS_WORKERS": ("dyn-preprocess-workers", "3"),
    "DYN_TOKENIZER": ("tokenizer", "fastokens"),
    "DYN_TOKENIZER_FALLBACK": ("tokenizer-fallback", "false"),
    "DYN_TOKENIZER_CACHE": ("tokenizer-cache", "0"),
    "DYN_TOKENIZER_CACHE_BYTES": ("tokenizer-cache-bytes", "1048576"),
    "DYN_TOKENIZER_CACHE_EXTEND": ("tokenizer-cache-extend", "0"),
    "DYN_INTERACTIVE": ("interactive", "false"),
    "DYN_RUNTIME_NUM_WORKER_THREADS": ("num-worker-threads", "3"),
    "DYN_RUNTIME_MAX_BLOCKING_THREADS": ("max-blocking-threads", "64"),
}


def dump_with(tmp_path, env: dict[str, str], *flags: str) -> dict:
    """The options `tritium serve FLAGS` resolves under `env` (the dump is written before it starts,
    so the server's own fate does not matter)."""
    dump = tmp_path / "dump.json"
    dump.unlink(missing_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_")) and k not in ("ETCD_ENDPOINTS", "NATS_SERVER")}
    proc = subprocess.Popen([str(tritium_bin()), "serve", *flags], env={**base, **env, "DYN_DUMP_CONFIG_TO": str(dump)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: dump.is_file() and dump.stat().st_size > 0, 30, "the dump")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    return json.loads(dump.read_text())["options"]


def test_every_variable_is_read_and_a_flag_beats_it(tmp_path):
    env = {name: option[1] for name, option in VARIABLES.items() if option}
    options = dump_with(tmp_path, env)
    for name, option in VARIABLES.items():
        if option is None:
            continue
        key, value = option
        got = options[key]
        expected = [value] if key in ("model-name", "model-path", "etcd-endpoints") else value
        assert got["source"] == "environment" and got["env"] == name and got["value"] == expected, (name, got)
    flags = dump_with(tmp_path, env, "--router-mode", "kv", "--no-router-kv-events", "--namespace", "green", "--http-port", "9")
    assert flags["router-mode"] == {"value": "kv", "source": "command_line", "env": "DYN_ROUTER_MODE"}
    assert flags["no-router-kv-events"]["source"] == "command_line"
    assert flags["namespace"]["value"] == "green" and flags["http-port"]["value"] == "9"
    # Tritium's earlier variable still sets an option, and Dynamo's beats it.
    old = dump_with(tmp_path, {"TRITIUM_NAMESPACE": "old"})
    assert old["namespace"] == {"value": "old", "source": "environment", "env": "TRITIUM_NAMESPACE"}
    both = dump_with(tmp_path, {"TRITIUM_NAMESPACE": "old", "DYN_NAMESPACE": "new"})
    assert both["namespace"]["value"] == "new"


def runtime_sizes(server: TritiumServer) -> tuple[int, int]:
    """The worker and blocking thread counts the server's runtime was built with (its start log
    reads them off the built runtime)."""
    found = re.search(r"runtime: (\d+) worker threads, at most (\d+) blocking threads", server.stderr())
    assert found, server.stderr()[-2000:]
    return int(found[1]), int(found[2])


def test_a_workers_runtime_is_sized_by_the_same_variables_and_flags(tmp_path):
    env = {"DYN_RUNTIME_NUM_WORKER_THREADS": "1", "DYN_RUNTIME_MAX_BLOCKING_THREADS": "9"}
    worker = start_worker("--discovery", "file", "--discovery-dir", str(tmp_path), "--max-blocking-threads", "5", env=env)
    try:
        assert runtime_sizes(worker) == (1, 5)
    finally:
        worker.stop()
        worker.stderr_path.unlink(missing_ok=True)


def test_the_runtimes_threads_come_from_dynamos_variables_and_a_flag_beats_them(monkeypatch):
    monkeypatch.setenv("DYN_RUNTIME_NUM_WORKER_THREADS", "1")
    monkeypatch.setenv("DYN_RUNTIME_MAX_BLOCKING_THREADS", "7")
    server = serve_on_grpc_fd("--allow-http", "false", "--allow-metrics", "false")
    try:
        assert runtime_sizes(server) == (1, 7)
        assert grpcclient.InferenceServerClient(server.url).is_server_ready()
    finally:
        finish_server(server)
    server = serve_on_grpc_fd("--allow-http", "false", "--allow-metrics", "false", "--num-worker-threads", "3")
    try:
        assert runtime_sizes(server) == (3, 7)
        assert grpcclient.InferenceServerClient(server.url).is_server_ready()
    finally:
        finish_server(server)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--router-mode", "xyz"], ["round-robin", "power-of-two", "least-loaded", "kv", "direct", "device-aware-weighted"]),
        (["--non-cpu-to-cpu-ratio", "0"], ["--non-cpu-to-cpu-ratio must be at least 1"]),
        (["--router-temperature", "-1"], ["--router-temperature must be a finite number >= 0"]),
        (["--router-kv-overlap-score-credit", "2"], ["--router-kv-overlap-score-credit must be in [0, 1]"]),
        (["--router-ttl-secs", "0"], ["--router-ttl-secs must be in"]),
        (["--router-prefill-load-scale", "-2"], ["--router-prefill-load-scale must be a finite number >= 0"]),
        (["--admission-control", "strict"], ["token-capacity", "none"]),
        (["--router-replica-sync"], ["--event-plane nats"]),
        (["--router-prefill-load-model", "aic"], ["performance database"]),
        (["--aic-backend", "vllm"], ["--ais-backend configures --router-prefill-load-model ais"]),
        (["--router-queue-policy", "xyz"], ["fcfs", "wspt", "lcfs"]),
        (["--router-queue-threshold", "-1"], ["--router-queue-threshold must be a number >= 0"]),
        (["--active-prefill-tokens-threshold", "many"], ["is not a token count (or None)"]),
        (["--event-plane", "zmq"], ["--event-plane zmq finds publishers through discovery"]),
        (["--request-plane", "nats"], ["--request-plane nats needs --nats-url (or NATS_SERVER)"]),
        (["--dyn-chat-processor", "vllm"], ["vLLM", "'dynamo'"]),
        (["--tokenizer", "basetenkenizer"], ["default, fastokens or tokenizers"]),
        (["--tokenizer-word-cache-entries", "16777217"], ["--tokenizer-word-cache-entries", "0..=16777216"]),
        (["--tokenizer", "sentencepiece"], ["default", "fastokens"]),
        (["--load-aware=perhaps"], ["--load-aware"]),
        (["--discovery-backend", "etcd"], ["needs --etcd-endpoints (or ETCD_ENDPOINTS)"]),
        (["--event-plane", "nats"], ["needs --nats-url (or NATS_SERVER)"]),
        (["--tls-cert-path", "/c.pem"], ["--tls-key-path"]),
        (["--dyn-preprocess-workers", "100000"], ["--dyn-preprocess-workers must be at most"]),
        (["--router-session-affinity-ttl-secs", "0"], ["--router-session-affinity-ttl-secs must be between 1 and 31536000"]),
        (["--router-session-affinity-ttl-secs", "31536001"], ["must be between 1 and 31536000"]),
        (["--router-session-affinity-mode", "sticky"], ["hard", "soft"]),
        (["--num-worker-threads", "0"], ["--num-worker-threads", "not in 1..=4096"]),
        (["--max-blocking-threads", "5000"], ["--max-blocking-threads", "not in 1..=4096"]),
    ],
)
def test_bad_values_are_refused_at_start_naming_what_is_allowed(args, fragments):
    failure = start_failure(*args)
    for fragment in fragments:
        assert fragment in failure, (args, fragment, failure[-2000:])


def test_interactive_from_its_variable_and_no_interactive_beating_it(monkeypatch):
    """DYN_INTERACTIVE=true opens the terminal chat, whose end of input stops the server;
    --no-interactive wins over the variable: no chat, and closing stdin changes nothing."""
    monkeypatch.setenv("DYN_INTERACTIVE", "true")
    chatting = start_server("--engine", "mock", stdin=subprocess.PIPE)
    try:
        wait_until(lambda: any("Chatting with mock-llm" in line for line in chatting.stdout_lines), 30, "the chat's greeting")
        assert chatting.proc.stdin is not None
        chatting.proc.stdin.close()
        assert chatting.proc.wait(timeout=30) == 0, "the end of input ends the session and the server"
    finally:
        chatting.stop()
        chatting.stderr_path.unlink(missing_ok=True)
    quiet = start_server("--engine", "mock", "--no-interactive", stdin=subprocess.PIPE)
    try:
        assert quiet.proc.stdin is not None
        quiet.proc.stdin.close()
        # Served after stdin closed: the process did not take it as the end of a session.
        assert post(f"{quiet.http_url}/v1/completions", {"model": "mock-llm", "prompt": "hi", "max_tokens": 2})[0] == 200
        assert quiet.proc.poll() is None
        assert not any("Chatting with" in line for line in quiet.stdout_lines), quiet.stdout_lines
    finally:
        finish_server(quiet)


@pytest.mark.llm  # model_paths() needs both models
@pytest.mark.embedding
def test_tokenizer_fallback_serves_a_tokenizer_fastokens_cannot_load_and_no_fallback_refuses_it():
    """MiniLM's WordPiece tokenizer is one fastokens does not load: with the fallback (the
    default) the model tokenizes with tokenizers, ids equal to a server without fastokens; with
    --no-tokenizer-fallback its requests fail, naming the option."""
    _, minilm = model_paths()
    model = ["--model-path", str(minilm), "--model-name", "minilm"]
    fallback = start_server(*model, "--tokenizer", "fastokens", timeout=LLM_START_TIMEOUT)
    strict = start_server(*model, "--tokenizer", "fastokens", "--no-tokenizer-fallback", timeout=LLM_START_TIMEOUT)
    plain = start_server(*model, timeout=LLM_START_TIMEOUT)
    try:
        body = {"model": "minilm", "input": ["Tokenizers differ, ids must not.", "naïve café 日本語"]}
        status, answer = post(f"{fallback.http_url}/v1/embeddings", body)
        assert status == 200, answer
        expected = post(f"{plain.http_url}/v1/embeddings", body)[1]
        assert [d["embedding"] for d in answer["data"]] == [d["embedding"] for d in expected["data"]]
        assert answer["usage"] == expected["usage"], "the same tokens"
        assert "fastokens cannot load this tokenizer" in fallback.stderr()
        status, error = post(f"{strict.http_url}/v1/embeddings", body)
        assert status >= 400 and "--tokenizer-fallback would use tokenizers" in json.dumps(error), (status, error)
    finally:
        for server in (fallback, strict, plain):
            finish_server(server)
