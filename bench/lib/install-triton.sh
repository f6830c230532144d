#!/usr/bin/env bash
# Install the real Triton (tritonserver 2.51.0, bundled in PyPI nvidia-pytriton==0.7.0) into its own venv,
# .tools/triton-venv, and lay out a backend directory (.tools/triton-backends: the python backend plus the
# Python 3.11 stub) as /work/shared/reference/peers.md describes. Prints nothing but progress on stderr.
# Idempotent: .tools/triton.stamp records what was installed; a second run only checks that the binary starts.
#
# The venv is built from the interpreter whose libpython Triton's python backend will embed (pyenv's 3.11 on
# these machines: Debian's 3.11.2 breaks model load), so bench/lib/triton-env.sh can point LD_LIBRARY_PATH at
# that interpreter's LIBDIR. Environment: TRITON_PYTHON (default: pyenv's python3.11, else python3.11).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="$repo/.tools"
venv="$tools/triton-venv"
backends="$tools/triton-backends"
stamp="$tools/triton.stamp"
pkg="nvidia-pytriton==0.7.0"

log() { printf 'install-triton: %s\n' "$*" >&2; }

python="${TRITON_PYTHON:-}"
if [[ -z "$python" ]]; then
    if command -v pyenv >/dev/null 2>&1 && p="$(pyenv prefix 3.11 2>/dev/null || true)" && [[ -x "$p/bin/python3.11" ]]; then
        python="$p/bin/python3.11"
    elif [[ -x "$HOME/.pyenv/versions/3.11.7/bin/python3.11" ]]; then
        python="$HOME/.pyenv/versions/3.11.7/bin/python3.11"
    else
        python="$(command -v python3.11 || true)"
    fi
fi
[[ -n "$python" ]] || { log "no python3.11 found (set TRITON_PYTHON)"; exit 1; }
pyver="$("$python" -c 'import sys; print(sys.version.split()[0])')"
want="$pkg numpy python=$pyver"

works() {
    [[ -x "$venv/bin/python" ]] || return 1
    [[ -f "$backends/python/libtriton_python.so" ]] || return 1
    [[ -x "$backends/python/triton_python_backend_stub" ]] || return 1
    # shellcheck source=triton-env.sh
    # --help exits non-zero; it works when it prints its usage (all shared libraries resolved).
    local out
    out="$(source "$repo/bench/lib/triton-env.sh" \
        && LD_LIBRARY_PATH="$TRITON_LD_LIBRARY_PATH" PATH="$TRITON_PATH" "$TRITONSERVER" --help 2>&1 || true)"
    grep -q -- '--model-repository' <<<"$out"
}

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && works; then
    log "up to date"
    exit 0
fi

mkdir -p "$tools"
if ! [[ -x "$venv/bin/python" ]] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    log "creating $venv with $python ($pyver)"
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
log "installing $pkg (large wheel, first time only)"
"$venv/bin/python" -m pip install -q --no-input "$pkg" numpy

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ts="$site/pytriton/tritonserver"
[[ -x "$ts/bin/tritonserver" ]] || { log "tritonserver not found at $ts/bin/tritonserver"; exit 1; }
stub="$ts/python_backend_stubs/3.11/triton_python_backend_stub"
[[ -f "$stub" ]] || { log "python 3.11 backend stub not found at $stub"; exit 1; }

rm -rf "$backends"
mkdir -p "$backends"
cp -r "$ts/backends/python" "$backends/python"
cp "$stub" "$backends/python/triton_python_backend_stub"
chmod +x "$backends/python/triton_python_backend_stub"

if ! works; then
    log "tritonserver does not start:"
    ( source "$repo/bench/lib/triton-env.sh" \
        && LD_LIBRARY_PATH="$TRITON_LD_LIBRARY_PATH" PATH="$TRITON_PATH" "$TRITONSERVER" --help 2>&1 | tail -n 20 >&2 ) || true
    exit 1
fi
echo "$want" >"$stamp"
log "done"
