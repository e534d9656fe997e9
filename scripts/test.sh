#!/usr/bin/env bash
# Runs every test: formatting, the runtime's unit tests and the node's end-to-end tests
# (a --dev node taking a subxt transfer; four --chain local validators surviving an outage;
# @polkadot/api registering DataNets and prompts and reading them back).
# Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

cargo fmt --all -- --check
# The @polkadot/api client that node/tests/registry_client.rs drives, at its locked versions.
npm ci --prefix scripts/registry-client --no-audit --no-fund
cargo test --release --locked --workspace
