#!/usr/bin/env bash
# Generates pallet weights with the node's own `benchmark pallet` command (frame-benchmarking
# v2). Builds the node with the `runtime-benchmarks` feature into its own target directory, so
# the everyday build and the tests are left alone.
#
#   scripts/benchmark-weights.sh                  # every OpenLedger pallet, into its weights.rs
#   scripts/benchmark-weights.sh --list           # list the runtime's benchmarks
#   scripts/benchmark-weights.sh PALLET OUTPUT    # one pallet, e.g. pallet_balances /tmp/w.rs
#
# STEPS and REPEAT (default 50 and 20) set the sampling.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
export CARGO_TARGET_DIR="$CARGO_TARGET_DIR-benchmarks"

cargo build --release --locked -p openledger-node --features runtime-benchmarks
node="$CARGO_TARGET_DIR/release/openledger-node"
wasm="$CARGO_TARGET_DIR/release/wbuild/openledger-runtime/openledger_runtime.compact.compressed.wasm"

run() {
	"$node" benchmark pallet --runtime "$wasm" --genesis-builder-preset development "$@"
}

bench() {
	local pallet="$1" output="$2" template=()
	case "$output" in
	pallets/*) template=(--template scripts/weight-template.hbs --header scripts/weight-header.txt) ;;
	esac
	run --pallet "$pallet" --extrinsic '*' --steps "${STEPS:-50}" --repeat "${REPEAT:-20}" \
		"${template[@]}" --output "$output"
}

case "${1:-}" in
--list) run --list ;;
"")
	for dir in pallets/*/; do
		crate="$(basename "$dir")"
		[ -f "$dir/src/benchmarking.rs" ] || continue
		bench "pallet_${crate//-/_}" "${dir%/}/src/weights.rs"
	done
	;;
*) bench "$1" "$2" ;;
esac
