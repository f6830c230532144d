#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server, the peer of bench/kv_cache.py's cached-prefix rows: PyPI's
# llama-cpp-python[server], which pip builds from source (llama.cpp vendored) into .tools/llamacpp-venv.
# A native build dies on this VM with a general-protection fault in the AMX code, so the CPU features are
# named instead of detected. Prints the venv's python. Idempotent (.tools/llamacpp.stamp); about 15 minutes
# on 2 cores the first time.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.tools/llamacpp-venv"
stamp="$repo/.tools/llamacpp.stamp"
version="0.3.16"
cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
want="llama-cpp-python[server]==$version $cmake_args"

log() { printf 'install-llama-cpp: %s\n' "$*" >&2; }

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    log "up to date"
    echo "$venv/bin/python"
    exit 0
fi
mkdir -p "$repo/.tools"
python3 -m venv "$venv"
log "building llama-cpp-python $version from source (CMAKE_ARGS=$cmake_args)"
CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/pip" install --quiet --no-cache-dir "llama-cpp-python[server]==$version" >&2
"$venv/bin/python" -c "import llama_cpp.server"
echo "$want" >"$stamp"
echo "$venv/bin/python"
