#!/usr/bin/env bash
# etcd and NATS for the distributed tests and Redis for the response-cache tests: Debian bookworm's
# etcd-server, nats-server and redis-server (with redis-tools, which holds its binary, and the two
# libraries it needs that a base system lacks), fetched through a private apt state (no root,
# nothing system-wide) and unpacked into .tools/services.
# scripts/test.sh puts .tools/services/bin first on PATH. The tests start their own instances.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
root="$tools/services"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
debs=(etcd-server nats-server redis-server redis-tools libjemalloc2 liblzf1)
stamp="$root/.installed"
want="${debs[*]} bookworm mirror=$mirror"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$root/bin/etcd" && -x "$root/bin/nats-server" \
  && -x "$root/bin/redis-server" ]]; then
  echo "etcd, nats-server and redis-server: already in $root/bin"
  exit 0
fi

apt_dir="$tools/apt-services"
rm -rf "$apt_dir" "$root"
mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" "$apt_dir/empty.d" "$root/bin"
: >"$apt_dir/status"
echo "deb [signed-by=$keyring] $mirror bookworm main" >"$apt_dir/sources.list"
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
apt-get "${apt_opts[@]}" -qq update >/dev/null
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "${debs[@]}" >/dev/null)
for deb in "$apt_dir"/debs/*.deb; do
  dpkg-deb -x "$deb" "$root/pkg"
done
rm -rf "$apt_dir"
# Both are static Go binaries.
ln -sfn "$root/pkg/usr/bin/etcd" "$root/bin/etcd"
ln -sfn "$root/pkg/usr/sbin/nats-server" "$root/bin/nats-server"
# redis-server needs libjemalloc and liblzf, unpacked beside it: a wrapper finds them. It runs the
# package's redis-server link, whose name makes the multi-call binary a server.
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
  "$root/pkg/usr/lib/x86_64-linux-gnu" "$root/pkg/usr/bin/redis-server" >"$root/bin/redis-server"
chmod +x "$root/bin/redis-server"
# sed reads to the end: with `head -1`, etcd could get SIGPIPE writing its later lines and pipefail
# failed the whole install (exit 141).
"$root/bin/etcd" --version | sed -n 1p
"$root/bin/nats-server" --version
"$root/bin/redis-server" --version
echo "$want" >"$stamp"
