#!/usr/bin/env bash
# Create or refresh .venv with the pinned test dependencies from tests/python/requirements.txt.
#
# Skips all work when .venv/.requirements.stamp matches the hash of the requirements file and the
# interpreter; otherwise installs exactly the pinned set (recreating the venv if it is unusable).
# Environment: PYTHON (interpreter to build the venv from; default python3.11, else python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
req="$repo/tests/python/requirements.txt"
stamp="$venv/.requirements.stamp"

log() { printf 'setup-python: %s\n' "$*" >&2; }

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi

want="$( { sha256sum "$req" | cut -d' ' -f1; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import sys' 2>/dev/null \
    && [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]]; then
    log "up to date ($venv)"
    exit 0
fi

make_venv() {
    "$python" -m venv "$venv"
}

if ! [[ -x "$venv/bin/python" ]] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    log "creating $venv with $python"
    rm -rf "$venv"
    if ! make_venv 2>/dev/null; then
        # Debian splits ensurepip into python3-venv; install it once if we are allowed to.
        rm -rf "$venv"
        if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
            log "python venv module unusable; installing python3-venv with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null \
                || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
            make_venv
        else
            log "cannot create a venv with $python (install python3-venv)"
            exit 1
        fi
    fi
fi

log "installing pinned requirements into $venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$venv/bin/python" -m pip install -q --no-input -r "$req"
"$venv/bin/python" -m pip check >/dev/null || { "$venv/bin/python" -m pip check >&2; exit 1; }
# Fail early if the pinned protobuf runtime cannot load tritonclient's generated descriptors.
"$venv/bin/python" -c 'import tritonclient.grpc.service_pb2, grpc_tools.protoc' \
    || { log "tritonclient pb2 files do not import with the pinned protobuf"; exit 1; }
[[ -x "$venv/bin/grpcurl" ]] || { log "grpcurl missing from $venv/bin"; exit 1; }
echo "$want" >"$stamp"
log "done"
