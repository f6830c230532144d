#!/usr/bin/env bash
# Create or refresh .tools/dynamo-venv: Dynamo 1.6.1 (its runtime, mocker, frontend and Python API) for the
# interoperability tests in tests/python/dynamo_interop. Skips all work when the stamp matches the requirements.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.tools/dynamo-venv"
req="$repo/tests/python/dynamo_interop/requirements.txt"
stamp="$venv/.requirements.stamp"
version=1.6.1
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

want="$( { sha256sum "$req" | cut -d' ' -f1; echo "$version"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup-dynamo: up to date ($venv)" >&2
    exit 0
fi
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r "$req"
"${pip[@]}" --no-deps "ai-dynamo-runtime==$version" "ai-dynamo==$version"
"$venv/bin/python" -c 'import dynamo.llm, dynamo.runtime' >/dev/null
echo "$want" > "$stamp"
echo "setup-dynamo: installed Dynamo $version into $venv" >&2
