#!/usr/bin/env bash
# Builds qvdc and starts a local sandbox: three control-plane nodes and three host agents
# on loopback. Ctrl-C stops everything. Pass extra flags to `qvdc dev` (e.g. --hosts 5).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo build --workspace --bins
[ "$(id -u)" -eq 0 ] || echo "dev: not root: host agents run in their own user and mount namespaces (unshare -Urm); networks need root" >&2
echo "qvctl is at $(pwd)/target/debug/qvctl; add it to PATH with: export PATH=\"$(pwd)/target/debug:\$PATH\""
exec target/debug/qvdc dev --dir "${QVDC_DEV_DIR:-$(pwd)/qvdc-dev}" "$@"
