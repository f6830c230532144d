#!/usr/bin/env bash
# Azurite, the Azure Storage emulator (npm), for tests/python/config/test_cloud_repository.py: installed with the
# machine's npm into .tools/emulators. The S3 and GCS emulators (moto's server, gcp-storage-emulator) are PyPI
# packages pinned in tests/python/requirements.txt. The tests start their own instances on ephemeral ports.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$repo/.tools/emulators"
version="3.37.0"
stamp="$root/.installed"
want="azurite@$version"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$root/node_modules/.bin/azurite-blob" ]]; then
  echo "azurite: already in $root"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "install-emulators.sh: npm is needed to install azurite (Node.js 20 or later)" >&2
  exit 1
fi

rm -rf "$root"
mkdir -p "$root"
(cd "$root" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error "$want" >/dev/null)
"$root/node_modules/.bin/azurite-blob" --version
echo "$want" >"$stamp"
