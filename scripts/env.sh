# Sourced by the other scripts: one cargo target directory, outside the clone, shared by the
# node, the wasm runtime and the tests, so a warm machine does not rebuild the world.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/openledger/target}"
if [ -f "$HOME/.cargo/env" ]; then
	# shellcheck disable=SC1091
	. "$HOME/.cargo/env"
fi
