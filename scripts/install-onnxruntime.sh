#!/usr/bin/env bash
# Install the ONNX Runtime C library for the onnxruntime backend into .tools/onnxruntime/lib, taken from the
# pinned PyPI wheel onnxruntime==1.31.1 (CPU): `pip download` only, never installed into a venv; the wheel's
# sha256 is checked, then onnxruntime/capi/libonnxruntime.so.1.31.1 is unpacked with the two usual names
#   .tools/onnxruntime/lib/libonnxruntime.so.1  -> libonnxruntime.so.1.31.1   (its SONAME)
#   .tools/onnxruntime/lib/libonnxruntime.so    -> libonnxruntime.so.1.31.1   (what ORT_DYLIB_PATH names)
# The library needs only glibc, libstdc++ and libgcc_s (readelf -d: no NEEDED entry from the wheel).
# The wheel's libonnxruntime_providers_shared.so serves only the shared-library execution providers
# (CUDA, TensorRT, OpenVINO), none of which the CPU wheel has, so it is left out; so is the Python extension.
# Recipe: /work/shared/reference/peers.md ("ONNX Runtime"). Idempotent: .tools/onnxruntime.stamp records
# what was done. Prints the library's path as its last line (the only line on stdout; logs go to stderr).
# Environment: PYTHON (interpreter whose pip downloads the wheel; default python3.11, else python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
dest="$tools/onnxruntime"
lib_dir="$dest/lib"
stamp="$tools/onnxruntime.stamp"
version="1.31.1"
# The CPython 3.11 manylinux_2_28 x86_64 wheel, asked for by tag so the file (and its hash) does not depend
# on the interpreter that downloads it; the C library inside is the same for every Python version.
wheel="onnxruntime-$version-cp311-cp311-manylinux_2_28_x86_64.whl"
wheel_sha256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
lib_name="libonnxruntime.so.$version"
lib_sha256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"
lib="$lib_dir/libonnxruntime.so"

log() { printf 'install-onnxruntime: %s\n' "$*" >&2; }

python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi

want="onnxruntime==$version wheel=$wheel sha256=$wheel_sha256"

check() { echo "$1  $2" | sha256sum --check --status; }

# True when both links point at the pinned library and it loads and reports the pinned version.
works() {
    [[ -f "$lib_dir/$lib_name" ]] && check "$lib_sha256" "$lib_dir/$lib_name" || return 1
    [[ "$(readlink "$lib")" == "$lib_name" && "$(readlink "$lib_dir/libonnxruntime.so.1")" == "$lib_name" ]] || return 1
    [[ "$(ort_version "$lib")" == "$version" ]]
}

# OrtGetApiBase()->GetVersionString(), through ctypes: proves the library loads with this system's glibc.
ort_version() {
    "$python" - "$1" <<'EOF' 2>/dev/null
import ctypes, sys

class OrtApiBase(ctypes.Structure):
    _fields_ = [("GetApi", ctypes.c_void_p), ("GetVersionString", ctypes.CFUNCTYPE(ctypes.c_char_p))]

get_api_base = ctypes.CDLL(sys.argv[1]).OrtGetApiBase
get_api_base.restype = ctypes.POINTER(OrtApiBase)
print(get_api_base().contents.GetVersionString().decode())
EOF
}

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && works; then
    log "up to date"
    echo "$lib"
    exit 0
fi

dl="$(mktemp -d "${TMPDIR:-/tmp}/tritium-onnxruntime.XXXXXX")"
trap 'rm -rf "$dl"' EXIT

log "downloading the onnxruntime==$version wheel"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip download -q --no-input --no-deps --only-binary=:all: \
    --implementation cp --python-version 3.11 --abi cp311 --platform manylinux_2_28_x86_64 \
    -d "$dl" "onnxruntime==$version" >&2
[[ -f "$dl/$wheel" ]] || { log "expected $wheel, got: $(ls "$dl")"; exit 1; }
check "$wheel_sha256" "$dl/$wheel" || { log "sha256 mismatch for $wheel: $(sha256sum "$dl/$wheel" | cut -d' ' -f1)"; exit 1; }

"$python" - "$dl/$wheel" "onnxruntime/capi/$lib_name" "$dl/$lib_name" <<'EOF'
import shutil, sys, zipfile

wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
check "$lib_sha256" "$dl/$lib_name" || { log "sha256 mismatch for $lib_name from $wheel"; exit 1; }

rm -rf "$dest"
mkdir -p "$lib_dir"
install -m 0755 "$dl/$lib_name" "$lib_dir/$lib_name"
ln -sfn "$lib_name" "$lib_dir/libonnxruntime.so.1"
ln -sfn "$lib_name" "$lib"

works || { log "$lib does not load or does not report version $version"; exit 1; }
echo "$want" >"$stamp"
log "done ($lib)"
echo "$lib"
