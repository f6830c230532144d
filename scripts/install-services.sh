#!/usr/bin/env bash
# etcd and NATS for the distributed tests, from Debian (packages etcd-server and nats-server).
# The tests start their own instances on 127.0.0.1; the packages' system services are not used.
set -euo pipefail

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if [ ${#missing[@]} -eq 0 ]; then
  echo "etcd $(etcd --version | head -1 | awk '{print $3}'), nats-server $(nats-server --version | awk '{print $2}'): already installed"
  exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install ${missing[*]} (Debian) as root, or give this user sudo" >&2; exit 1; }
  as_root=(sudo -n)
fi
# RUNLEVEL=1 keeps invoke-rc.d from starting the packages' system services.
export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed ${missing[*]}"
