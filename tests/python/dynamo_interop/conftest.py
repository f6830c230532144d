"""Fixtures of the Dynamo interoperability tests (see deployment.py): every test file here is
marked `dynamo` (its `pytestmark`), and runs only in a private network namespace with Dynamo
1.6.1 installed."""

from __future__ import annotations

import subprocess

import pytest

from deployment import DYNAMO_PYTHON, HERE, Deployment, check_private_network


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A Hugging Face folder Dynamo's workers load (tokenizer, template, config; no weights)."""
    check_private_network()
    folder = tmp_path_factory.mktemp("tiny-model")
    subprocess.run([str(DYNAMO_PYTHON), str(HERE / "tiny_model.py"), str(folder)], check=True, timeout=120)
    return folder


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model):
    deployment = Deployment(tmp_path_factory.mktemp("dynamo"), tiny_model)
    yield deployment
    deployment.stop()
