"""Packed python environments, with the real tritonclient over gRPC: a model whose EXECUTION_ENV_PATH names
`$$TRITON_MODEL_DIRECTORY/env.tar.gz` (a venv made here, `tar czf`'d, then deleted) runs its stub under that
environment's interpreter, unpacked once into the server's cache folder (named after the archive's sha256) and
shared by a second model holding the same archive; an archive with a `..` entry fails only its own model's load,
and the bounds of `--backend-config=python,packed-env-max-*` are enforced.

The venv reaches numpy through a `.pth` file naming the test interpreter's site-packages, and holds two hard-linked
files, which tarfile (as conda-pack) writes as a file and a hard-link entry: the second unpacks as a copy.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import shutil
import sys
import tarfile
import textwrap
import venv

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import expect_error

pytestmark = pytest.mark.python_backend

CONFIG = """
    name: "{name}"
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN", data_type: TYPE_INT32, dims: [ -1 ] } ]
    output [ { name: "WHERE", data_type: TYPE_STRING, dims: [ 3 ] } ]
    parameters { key: "EXECUTION_ENV_PATH" value { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
"""

# WHERE: the stub's sys.prefix, sys.executable and the numpy it imported.
MODEL = """
    import sys

    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            where = np.array([sys.prefix.encode(), sys.executable.encode(), np.__file__.encode()], dtype=np.object_)
            return [pb_utils.InferenceResponse([pb_utils.Tensor("WHERE", where)]) for _ in requests]
"""


LINKED = ("bin/linked_a", "bin/linked_b")


def packed_venv(work: pathlib.Path) -> bytes:
    """A venv without pip that imports numpy from this interpreter's site-packages, as a .tar.gz; LINKED share an
    inode."""
    env = work / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "numpy_from_tests.pth").write_text(str(pathlib.Path(np.__file__).parent.parent) + "\n")
    (env / LINKED[0]).write_text("#!/bin/sh\necho linked\n")
    os.chmod(env / LINKED[0], 0o755)
    os.link(env / LINKED[0], env / LINKED[1])
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as archive:
        archive.add(env, arcname=".")
    shutil.rmtree(env)
    with tarfile.open(fileobj=io.BytesIO(data.getvalue())) as archive:
        links = [(m.name, m.linkname) for m in archive.getmembers() if m.islnk()]
    assert links == [(f"./{LINKED[1]}", f"./{LINKED[0]}")], links
    return data.getvalue()


def packed_model(repo: pathlib.Path, name: str, archive: bytes) -> pathlib.Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(CONFIG.replace("{name}", name)))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(MODEL))
    (model_dir / "env.tar.gz").write_bytes(archive)
    return model_dir


def where(client, model: str) -> list[str]:
    data = np.array([1], dtype=np.int32)
    tensor = grpcclient.InferInput("IN", list(data.shape), "INT32")
    tensor.set_data_from_numpy(data)
    return [value.decode() for value in client.infer(model, [tensor]).as_numpy("WHERE")]


@pytest.fixture
def cache_parent(tmp_path, monkeypatch) -> pathlib.Path:
    """The server's temp folder (the cache's parent), private to the test."""
    parent = tmp_path / "tmp"
    parent.mkdir()
    monkeypatch.setenv("TMPDIR", str(parent))
    return parent


def serve(start_tritium, repo: pathlib.Path, *extra: str):
    return start_tritium("--model-repository", str(repo), "--python-interpreter", sys.executable,
                         "--model-control-mode", "explicit", *extra)  # fmt: skip


def test_a_packed_environment_is_unpacked_once_and_runs_the_stub(start_tritium, tmp_path, cache_parent):
    archive = packed_venv(tmp_path)
    repo = tmp_path / "models"
    packed_model(repo, "packed", archive)
    packed_model(repo, "packed_too", archive)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("../evil"), io.BytesIO(b""))
    packed_model(repo, "packed_evil", evil.getvalue())
    server = serve(start_tritium, repo)
    client = grpcclient.InferenceServerClient(server.url)

    client.load_model("packed")
    prefix, executable, numpy_file = where(client, "packed")
    cache = cache_parent / f"tritium-python-envs-{os.getuid()}"
    unpacked = cache / hashlib.sha256(archive).hexdigest()
    assert os.path.realpath(prefix) == os.path.realpath(unpacked), prefix
    assert pathlib.Path(executable) == pathlib.Path(prefix) / "bin" / "python3", executable
    assert pathlib.Path(numpy_file) == pathlib.Path(np.__file__), "numpy through the venv's .pth file"
    first, second = (unpacked / name for name in LINKED)
    assert second.read_bytes() == first.read_bytes() == b"#!/bin/sh\necho linked\n"
    assert os.access(second, os.X_OK) and not second.is_symlink(), "the hard link unpacked as a copy of the file"
    assert second.stat().st_ino != first.stat().st_ino and second.stat().st_nlink == 1

    client.load_model("packed_too")
    assert where(client, "packed_too")[0] == prefix, "the same archive is unpacked once"
    assert sorted(p.name for p in cache.iterdir()) == [unpacked.name], "no partial folders left"

    error = expect_error("INTERNAL", "entry \"../evil\" has a '..' component", client.load_model, "packed_evil")
    assert "EXECUTION_ENV_PATH" in str(error) and "packed_evil/env.tar.gz" in str(error), error
    assert not (repo / "evil").exists() and not (cache / "evil").exists()
    assert where(client, "packed")[0] == prefix, "other models are unaffected"


def test_the_packed_environment_bounds_come_from_backend_config(start_tritium, tmp_path, cache_parent):
    packed_model(tmp_path / "models", "packed", packed_venv(tmp_path))
    server = serve(start_tritium, tmp_path / "models", "--backend-config", "python,packed-env-max-entries=5")
    client = grpcclient.InferenceServerClient(server.url)
    expect_error("INTERNAL", "it has more than 5 entries (--backend-config=python,packed-env-max-entries)",
                 client.load_model, "packed")  # fmt: skip
    assert not client.is_model_ready("packed")
