#!/usr/bin/env bash
# Install the real perf_analyzer 2.60.0 (C++ binary from the PyPI wheel) into .venv, plus Debian trixie's
# libc6/libstdc++6/libgcc-s1 unpacked into .tools/trixie-root (never installed system-wide), so that
# scripts/perf_analyzer can run it on bookworm through trixie's dynamic loader. `--shared-memory system`
# also dlopens an unversioned libcudart.so (no GPU is needed): it comes from PyPI's nvidia-cuda-runtime-cu12
# and is linked as .tools/cuda-lib/libcudart.so.
# Recipe: /work/shared/reference/peers.md. Idempotent: .tools/perf_analyzer.stamp records what was done.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
tools="$repo/.tools"
root="$tools/trixie-root"
stamp="$tools/perf_analyzer.stamp"
version="2.60.0"
cudart="nvidia-cuda-runtime-cu12==12.9.79"
debs=(libc6 libstdc++6 libgcc-s1)
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

log() { printf 'install-perf-analyzer: %s\n' "$*" >&2; }

want="perf-analyzer==$version $cudart debs=${debs[*]} mirror=$mirror"

# True when the wrapper runs the binary and it prints its usage text.
works() {
    local out
    [[ -e "$tools/cuda-lib/libcudart.so" ]] || return 1
    out="$("$repo/scripts/perf_analyzer" 2>&1 || true)"
    grep -q -- '--concurrency-range' <<<"$out"
}

if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && works; then
    log "up to date"
    exit 0
fi

[[ -x "$venv/bin/python" ]] || { log "no venv at $venv; run scripts/setup-python.sh first"; exit 1; }
mkdir -p "$tools"

# 1. The wheel is tagged manylinux_2_38; pip on glibc 2.36 would only see a placeholder, so fetch it for
#    that platform explicitly and install a copy under a manylinux_2_28 name without dependencies.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
bin="$site/perf_analyzer/bin/perf_analyzer"
installed="$("$venv/bin/python" -m pip show perf-analyzer 2>/dev/null || true)"
if ! [[ -x "$bin" ]] || ! grep -qx "Version: $version" <<<"$installed"; then
    dl="$tools/dl"
    rm -rf "$dl"
    mkdir -p "$dl"
    log "downloading perf-analyzer==$version wheel"
    "$venv/bin/python" -m pip download -q --no-deps --only-binary=:all: \
        --platform manylinux_2_38_x86_64 "perf-analyzer==$version" -d "$dl"
    whl="$(ls "$dl"/perf_analyzer-"$version"-*manylinux_2_38_x86_64*.whl | head -n1)"
    renamed="$dl/$(basename "$whl" | sed 's/manylinux_2_38_x86_64/manylinux_2_28_x86_64/g')"
    cp "$whl" "$renamed"
    "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$renamed"
    rm -rf "$dl"
fi
[[ -x "$bin" ]] || { log "perf_analyzer binary not found at $bin"; exit 1; }

"$venv/bin/python" -m pip install -q --no-deps "$cudart"
cudart_so="$site/nvidia/cuda_runtime/lib/libcudart.so.12"
[[ -f "$cudart_so" ]] || { log "libcudart.so.12 not found at $cudart_so"; exit 1; }
mkdir -p "$tools/cuda-lib"
ln -sfn "$cudart_so" "$tools/cuda-lib/libcudart.so"

# 2. Trixie's C and C++ runtimes through a private apt state, cache and source list.
apt_dir="$tools/apt"
rm -rf "$apt_dir"
mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$apt_dir/empty.d"
: >"$apt_dir/status"
echo "deb [signed-by=$keyring] $mirror trixie main" >"$apt_dir/sources.list"
apt_opts=(
    -o "Dir::State=$apt_dir/state"
    -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/empty.d"
    -o "Dir::Etc::Preferences=$apt_dir/preferences"
    -o "Dir::Etc::PreferencesParts=$apt_dir/empty.d"
    -o "APT::Architecture=amd64"
    -o "APT::Architectures=amd64"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
)
log "fetching trixie ${debs[*]}"
# A mirror being synced can serve an index naming versions it no longer (or not yet) holds: the
# update and the download are tried again from scratch, three times at most.
for try in 1 2 3; do
    rm -rf "$apt_dir/state/lists" "$apt_dir/debs"/*.deb
    mkdir -p "$apt_dir/state/lists/partial"
    if apt-get "${apt_opts[@]}" -qq update >/dev/null \
        && (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "${debs[@]}" >/dev/null); then
        break
    fi
    [[ $try == 3 ]] && { log "could not fetch ${debs[*]} from $mirror"; exit 1; }
    log "fetching failed (try $try of 3); trying again"
    sleep $((try * 10))
done
rm -rf "$root"
mkdir -p "$root"
for deb in "$apt_dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$root"
done
rm -rf "$apt_dir"
[[ -x "$root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ]] || { log "trixie loader missing in $root"; exit 1; }

works || { log "perf_analyzer does not run:"; "$repo/scripts/perf_analyzer" 2>&1 | tail -n 20 >&2; exit 1; }
echo "$want" >"$stamp"
log "done ($bin)"
