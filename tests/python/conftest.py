"""Fixtures for the end-to-end suite (see helpers.py for how the server is started).

- `tritium`: one module-scoped server over the built-in repository (identity, identity_batch, add_sub, repeat).
- `client`: a tritonclient.grpc client for `tritium`, closed after each test.
- `start_tritium`: factory `start_tritium(*args, timeout=60)` -> TritiumServer; every server it starts is
  stopped at the end of the test. Pass e.g. `"--model-repository", str(repo)`.
- `model_repo`: an empty temporary repository directory; fill it with `helpers.write_model`.
"""

from __future__ import annotations

import pathlib

import pytest
import tritonclient.grpc as grpcclient

from helpers import DEFAULT_START_TIMEOUT, TritiumServer, finish_server, start_server


@pytest.fixture(scope="module")
def tritium():
    """The default server (built-in repository), shared by the tests of one module."""
    server = start_server()
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
