#!/usr/bin/env bash
# Runs a command in a private network namespace with only the loopback interface up: Dynamo's
# processes bind 0.0.0.0, which must not reach the machine's network (needs root, or user
# namespaces: `unshare -rn`).
set -euo pipefail
if [[ "$(id -u)" == 0 ]]; then
    exec unshare -n -- sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
exec unshare -rn -- sh -c 'ip link set lo up && exec "$@"' sh "$@"
