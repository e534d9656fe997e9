#!/usr/bin/env bash
# Runs every test: formatting, the runtime's unit tests and the node's end-to-end tests
# (a --dev node taking a subxt transfer; four --chain local validators surviving an outage).
# Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

cargo fmt --all -- --check
cargo test --release --locked --workspace
