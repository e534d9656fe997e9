#!/usr/bin/env bash
# Builds the CUDA emulator (kernels/emulator/): a libcuda.so that runs the kernels of
# kernels/cuda/ on the CPU, compiled from the same sources with the host's g++. Prints the folder
# that holds it; put that folder first on LD_LIBRARY_PATH (beside NVRTC's, which still compiles
# the sources to PTX) and the crate's GPU code runs with no GPU. A build is reused until a source
# changes. Its speed means nothing: it is for correctness only.
#
#   LD_LIBRARY_PATH="$(scripts/build-cuda-emulator.sh):$(scripts/fetch-nvrtc.sh)" \
#       cargo test --release -p openledger-kernels --test gpu
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OPENLEDGER_CUDA_EMULATOR:-$HOME/.cache/openledger/cuda-emulator}"
sources=("$root"/kernels/emulator/* "$root"/kernels/cuda/*)
stamp="$(cat "${sources[@]}" "$0" | sha256sum | cut -d' ' -f1)"
if [ -f "$out/libcuda.so" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
	echo "$out"
	exit 0
fi
command -v g++ > /dev/null || { echo "build-cuda-emulator: g++ is needed" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
flags=(-std=c++17 -O2 -fPIC -fvisibility=hidden -ffp-contract=off -fno-fast-math
	-Wall -Wno-unknown-pragmas -Wno-unused-function -Wno-unused-variable -I "$root/kernels/emulator")
objects=()
# The project's kernels, and the emulator's own self-test kernels.
for cu in "$root"/kernels/cuda/*.cu "$root"/kernels/emulator/selftest.cu; do
	name="$(basename "$cu" .cu)"
	# Dynamic shared memory is the launch's buffer: `extern __shared__ T name[];` becomes a
	# pointer to it; a static `__shared__ T name[dims];` becomes EMU_SHARED (poisoned per block).
	sed -E -e 's/extern __shared__ ([A-Za-z0-9_]+) ([A-Za-z0-9_]+)\[\];/\1* \2 = reinterpret_cast<\1*>(emu::dynamic_shared());/' \
		-e 's/^([[:space:]]*)__shared__ ([A-Za-z_][A-Za-z0-9_]*) ([A-Za-z_][A-Za-z0-9_]*)((\[[^]]+\])*);/\1EMU_SHARED(\2, \3, \4);/' \
		"$cu" > "$work/$name.cu"
	if grep -n '__shared__' "$work/$name.cu" | grep -v '^[0-9]*:[[:space:]]*//'; then
		echo "build-cuda-emulator: a __shared__ declaration above is not in a form it rewrites" >&2
		exit 1
	fi
	{
		echo '#include "device.h"'
		echo "#include \"$root/kernels/cuda/common.cuh\""
		echo "#include \"$work/$name.cu\""
	} > "$work/$name.cpp"
	g++ "${flags[@]}" -c "$work/$name.cpp" -o "$work/$name.o"
	# Every extern "C" function a source defines is a kernel (helpers are C++, so mangled).
	nm -g --defined-only --format=posix "$work/$name.o" | awk '$2 == "T" && $1 !~ /^_Z/ { print $1 }' \
		| while read -r kernel; do echo "EMU_REGISTER($kernel)"; done >> "$work/$name.cpp"
	g++ "${flags[@]}" -c "$work/$name.cpp" -o "$work/$name.o"
	objects+=("$work/$name.o")
done
g++ "${flags[@]}" -c "$root/kernels/emulator/driver.cpp" -o "$work/driver.o"
mkdir -p "$out"
g++ -shared -o "$out/libcuda.so.tmp" "$work/driver.o" "${objects[@]}" -Wl,-soname,libcuda.so.1
mv "$out/libcuda.so.tmp" "$out/libcuda.so"
ln -sf libcuda.so "$out/libcuda.so.1"
echo "$stamp" > "$out/stamp"
echo "$out"
