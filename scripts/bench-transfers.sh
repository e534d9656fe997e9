#!/usr/bin/env bash
# Measures how many plain balance transfers per second a --dev node includes (the chain
# baseline in docs/BENCHMARKS.md). Uses the same build as the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh

cargo test --release --locked --workspace --test transfer_throughput -- --ignored --nocapture
