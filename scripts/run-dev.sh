#!/usr/bin/env bash
# The main job: builds the node and starts a development chain (Alice authors and finalizes,
# 6-second blocks; RPC on ws://127.0.0.1:9944, Prometheus on 9615). Extra arguments go to the
# node, e.g. `scripts/run-dev.sh --rpc-port 9955`. State is kept in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

# The same build as the tests (all targets, one feature set), so the two commands share it.
cargo build --release --locked --workspace --all-targets
exec "$CARGO_TARGET_DIR/release/openledger-node" --dev --tmp --rpc-cors all "$@"
