#!/usr/bin/env bash
# Tritium side by side with the real Triton and the limit server (a bare tonic echo), measured with the real
# perf_analyzer in one run on this machine; writes bench/results/<UTC date>-<hostname>.md and prints its path.
#
#   bash bench/run.sh                      # full run (about 25 min on 2 cores)
#   QUICK=1 bash bench/run.sh              # smoke test: short windows, one round
#   ROWS=identity-sync,4MiB ROUNDS=3 bash bench/run.sh
#
# Installs what it needs first (idempotent, stamped): .venv + perf_analyzer 2.60.0 (scripts/), Triton 2.51.0
# from nvidia-pytriton 0.7.0 in .tools/triton-venv (bench/lib/install-triton.sh), and release builds of
# `tritium` and `limit-server`. Every process it starts is stopped on exit, failure or Ctrl-C.
# Environment: ROUNDS, QUICK, ROWS, WINDOW_MS, PA_MEM_CAP_GIB, PA_TIMEOUT, PA_LARGE_TIMEOUT (see bench/README.md).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
logs="$(mktemp -d -t tritium-bench-setup.XXXXXX)"
trap 'rm -rf "$logs"' EXIT

say() { printf 'bench: %s\n' "$*"; }

# Run a setup step quietly; on failure show the end of its output and stop.
step() {
    local name="$1"
    shift
    if ! "$@" >"$logs/$name.log" 2>&1; then
        say "$name failed:"
        tail -n 30 "$logs/$name.log" >&2
        exit 1
    fi
}

say "installing pinned tools (perf_analyzer 2.60.0, Triton 2.51.0 from nvidia-pytriton 0.7.0)"
step setup-python bash scripts/setup-python.sh
step install-perf-analyzer bash scripts/install-perf-analyzer.sh
step install-triton bash bench/lib/install-triton.sh

target="${CARGO_TARGET_DIR:-$repo/target}"
say "building release tritium"
step build-tritium cargo build --release --quiet -p tritium-server --bin tritium
export TRITIUM_BIN="$target/release/tritium"

export LIMIT_BIN="" LIMIT_MISSING=""
if [[ -f bench/src/bin/limit-server.rs ]]; then
    say "building release limit-server"
    if cargo build --release --quiet -p tritium-bench --bin limit-server >"$logs/build-limit.log" 2>&1; then
        LIMIT_BIN="$target/release/limit-server"
    else
        say "limit-server does not build; the limit column is skipped:"
        tail -n 15 "$logs/build-limit.log" >&2
        LIMIT_MISSING="limit-server did not build (cargo build -p tritium-bench --bin limit-server failed)"
    fi
else
    LIMIT_MISSING="bench/src/bin/limit-server.rs does not exist yet"
    say "no limit-server yet; the limit column is skipped"
fi

# Versions for the report (read-only git: GIT_OPTIONAL_LOCKS=0 keeps `git status` from touching the index).
rev="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(GIT_OPTIONAL_LOCKS=0 git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then rev="$rev (with uncommitted changes)"; fi
pkg_version() { "$1" -c "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null || echo "?"; }
BENCH_VERSIONS="$(printf '{"tritium": "%s", "pytriton": "%s", "perf_analyzer": "%s", "rustc": "%s"}' \
    "$rev" "$(pkg_version .tools/triton-venv/bin/python nvidia-pytriton)" \
    "$(pkg_version .venv/bin/python perf-analyzer)" "$(rustc -V 2>/dev/null || echo 'rustc ?')")"
export BENCH_VERSIONS

# shellcheck source=lib/triton-env.sh
source bench/lib/triton-env.sh

rm -rf "$logs"
trap - EXIT
# The driver owns every server and perf_analyzer it starts (each in its own session) and stops them all on
# exit, error, SIGTERM or Ctrl-C.
exec .venv/bin/python bench/lib/bench.py
