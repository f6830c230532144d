#!/usr/bin/env bash
# etcd and NATS for the distributed tests: Debian bookworm's etcd-server and nats-server, fetched
# through a private apt state (no root, nothing system-wide) and unpacked into .tools/services.
# scripts/test.sh puts .tools/services/bin first on PATH. The tests start their own instances.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools"
root="$tools/services"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
debs=(etcd-server nats-server)
stamp="$root/.installed"
want="${debs[*]} bookworm mirror=$mirror"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$root/bin/etcd" && -x "$root/bin/nats-server" ]]; then
  echo "etcd and nats-server: already in $root/bin"
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
# sed reads to the end: with `head -1`, etcd could get SIGPIPE writing its later lines and pipefail
# failed the whole install (exit 141).
"$root/bin/etcd" --version | sed -n 1p
"$root/bin/nats-server" --version
echo "$want" >"$stamp"
