"""The fresh virtual environment the `tritium` Python package's tests run in, shared by every module that
needs it (test_python_package.py, test_pytriton_compat.py, test_python_worker.py, test_python_processes.py
and the ones after them): conftest.py exposes its `venv` fixture to all of them.

`venv` is session-scoped: the package (a cdylib linking the whole server, minutes on 2 cores) is built and
installed once per pytest run, however many modules use it. Its build is bounded by its own subprocess
timeouts (BUILD_TIMEOUT), not by a test's: the package tests mark themselves with `PACKAGE_TEST_TIMEOUT`
(`func_only`), so a test that hangs fails in minutes while the fixture's long build is charged to no test.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from helpers import REPO, needs

PACKAGE = REPO / "python"
# Building the package links the whole server once more (a cdylib): minutes on 2 cores.
BUILD_TIMEOUT = 1500
# What one package test may take, its fixtures' setup not counted (pytest-timeout's func_only).
PACKAGE_TEST_TIMEOUT = pytest.mark.timeout(300, func_only=True)


def pin(text: str, name: str) -> str:
    """The exact version `name` is pinned to in a requirements text (`name==X`)."""
    match = re.search(rf"^{re.escape(name)}==([\w.]+)", text, re.MULTILINE)
    assert match, f"no {name} pin"
    return match.group(1)


def build_env(venv: pathlib.Path) -> dict:
    """The environment pip and maturin run in: the venv first on PATH, the workspace's debug profile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # The workspace's debug profile and target folder: the package reuses what `cargo build` built.
    env["MATURIN_PEP517_ARGS"] = "--profile dev"
    env["CARGO_BUILD_JOBS"] = "2"
    return env


def run(cmd: list, env: dict, timeout: float, cwd=REPO) -> str:
    """Runs `cmd`; its stdout, or the test fails with its output's tail."""
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(map(str, cmd))}` failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}")
    return done.stdout


def python(venv: pathlib.Path) -> str:
    """The fresh environment's interpreter."""
    return str(venv / "bin/python")


def clean_env() -> dict:
    """The environment the package's scripts run in: no TRITIUM_ settings of the suite leak into them."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TRITIUM_", "DYN_GRPC_", "PYTHONPATH"))}


def clean_copy(destination: pathlib.Path) -> pathlib.Path:
    """The repository as a clone of it has it: the files git tracks and the new ones it does not ignore,
    as they are in the working tree (so a developer's uncommitted change is what gets tested), and none
    of the ignored ones (target/, .venv/, .tools/, caches) that a clone would not have."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True, timeout=120).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is gone from the copy too
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="session")
@needs("package", "slow")
def venv(tmp_path_factory) -> pathlib.Path:
    """A fresh virtual environment with numpy and the package installed by `pip install ./python` from a clean
    copy of the repository."""
    root = tmp_path_factory.mktemp("package-venv")
    clone = clean_copy(tmp_path_factory.mktemp("package-clone"))
    interpreter = shutil.which("python3.11") or sys.executable
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    run([interpreter, "-m", "venv", str(root)], base_env, 300)
    env = build_env(root)
    numpy_pin = pin((REPO / "tests/python/requirements.txt").read_text(), "numpy")
    maturin_pin = re.search(r'"maturin==([\w.]+)"', (PACKAGE / "pyproject.toml").read_text()).group(1)
    pip = [python(root), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run([*pip, f"numpy=={numpy_pin}", f"maturin=={maturin_pin}"], env, 600)
    # The workspace's target folder: the copy's build reuses the dependencies `cargo build` compiled.
    env["CARGO_TARGET_DIR"] = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    # A user's command, build isolation and all: pip fetches the pyproject's maturin and builds.
    run([*pip, "./python"], env, BUILD_TIMEOUT, cwd=clone)
    return root
