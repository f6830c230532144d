"""Fixtures for the end-to-end suite (see helpers.py for how the server is started).

- `tritium`: one module-scoped server over the built-in repository (identity, identity_batch, add_sub, repeat, dense,
  accumulate, add_sub_twice).
- `client`: a tritonclient.grpc client for `tritium`, closed after each test.
- `start_tritium`: factory `start_tritium(*args, timeout=60)` -> TritiumServer; every server it starts is
  stopped at the end of the test. Pass e.g. `"--model-repository", str(repo)`.
- `model_repo`: an empty temporary repository directory; fill it with `helpers.write_model`.
- `venv`: a fresh virtual environment with the `tritium` package built from ./python (package_env.py), once a session.
- `llm_server`: one module-scoped server with the real models from `scripts/fetch-models.sh`: the SmolLM2 GGUF
  as `smollm2` (LLM) and all-MiniLM-L6-v2 as `minilm` (embeddings). `model_paths()` gives the two paths.

Markers (registered in pytest.ini): `pytest_collection_modifyitems` below gives each test the markers of the fixtures
it uses (`helpers.needs(...)` on the fixture: `llm_server` here, `venv` in package_env.py, `nats_events` in
dynamo_cluster.py, `agent_server` in agent_clients.py, and fixtures of single test files). A need that is not a
fixture (a test that calls `model_paths()` or starts etcd itself) is marked in its file.
"""

from __future__ import annotations

import functools
import os
import pathlib
import subprocess
import sys

import pytest
import tritonclient.grpc as grpcclient

from helpers import DEFAULT_START_TIMEOUT, NEEDS_ATTRIBUTE, REPO, TritiumServer, finish_server, needs, start_server
from package_env import venv  # noqa: F401 - the Python package's fresh environment, a session fixture

LLM_NAME = "smollm2"
EMBED_NAME = "minilm"
# Loading a GGUF and a safetensors model in a debug build takes longer than the built-in repository.
LLM_START_TIMEOUT = 240.0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets the markers its fixtures need (`helpers.needs`), through every fixture it uses, before `-m`
    selects: a test that uses `llm_server` is `llm` and `embedding` without saying so."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        have = {mark.name for mark in item.iter_markers()}
        for name in item.fixturenames:
            for fixturedef in info.name2fixturedefs.get(name, ()):
                for marker in getattr(fixturedef.func, NEEDS_ATTRIBUTE, ()):
                    if marker not in have:
                        item.add_marker(getattr(pytest.mark, marker))
                        have.add(marker)


@pytest.fixture(scope="module")
def tritium():
    """The default server (built-in repository), shared by the tests of one module, with system
    shared memory turned on (the server's own default is off) for the shared-memory tests."""
    server = start_server("--allow-shared-memory")
    yield server
    finish_server(server)


@pytest.fixture
def client(tritium):
    c = grpcclient.InferenceServerClient(url=tritium.url)
    yield c
    c.close()


@pytest.fixture
def start_tritium():
    """Factory: `start_tritium("--model-repository", dir, ...)`; stops every server at teardown."""
    started: list[TritiumServer] = []

    def start(*args: str, timeout: float = DEFAULT_START_TIMEOUT) -> TritiumServer:
        server = start_server(*args, timeout=timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        finish_server(server)


@pytest.fixture
def model_repo(tmp_path: pathlib.Path) -> pathlib.Path:
    repo = tmp_path / "models"
    repo.mkdir()
    return repo


@functools.cache
def model_paths() -> tuple[pathlib.Path, pathlib.Path]:
    """(SmolLM2 GGUF file, MiniLM folder), from the two lines `scripts/fetch-models.sh` prints. The script is
    idempotent (it checks the hashes and downloads only what is missing); it runs once per test session."""
    script = REPO / "scripts" / "fetch-models.sh"
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
        env={**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)},
    )
    if proc.returncode != 0:
        pytest.fail(f"{script} exited with status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    if len(lines) != 2:
        pytest.fail(f"{script} printed {lines!r}, expected two paths (GGUF file, MiniLM folder)")
    gguf, minilm = (pathlib.Path(line) for line in lines)
    if not gguf.is_file() or not minilm.is_dir():
        pytest.fail(f"{script} printed {gguf} and {minilm}, but they are not a file and a folder")
    return gguf, minilm


@pytest.fixture(scope="module")
@needs("llm", "embedding")
def llm_server():
    """`tritium serve` with the real LLM (`smollm2`) and embedder (`minilm`), shared by the tests of one module."""
    gguf, minilm = model_paths()
    server = start_server(
        "--model-path", str(gguf), "--model-name", LLM_NAME,
        "--model-path", str(minilm), "--model-name", EMBED_NAME,
        timeout=LLM_START_TIMEOUT,
    )
    yield server
    finish_server(server)
