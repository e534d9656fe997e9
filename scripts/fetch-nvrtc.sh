#!/usr/bin/env bash
# Fetches NVIDIA's runtime CUDA compiler (NVRTC) from PyPI, checks its sha256 and unpacks its
# libraries under $OPENLEDGER_NVRTC (default $HOME/.cache/openledger/nvrtc), then prints the
# folder to put on LD_LIBRARY_PATH. NVRTC needs no GPU: with it the kernels in kernels/cuda/
# are compiled in every test run, so a CUDA syntax or type error is caught on any machine.
#
#   nvidia-cuda-nvrtc-cu12==12.9.86 (NVIDIA CUDA Toolkit EULA; redistributable runtime library)
set -euo pipefail
version=12.9.86
wheel=nvidia_cuda_nvrtc_cu12-$version-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl
sha256=210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4
dir="${OPENLEDGER_NVRTC:-$HOME/.cache/openledger/nvrtc}/$version"
lib="$dir/nvidia/cuda_nvrtc/lib"
if [ ! -f "$lib/libnvrtc.so.12" ] || [ ! -f "$lib/libnvrtc-builtins.so.12.9" ]; then
	mkdir -p "$dir"
	cd "$dir"
	if ! echo "$sha256  $wheel" | sha256sum --check --status 2>/dev/null; then
		echo "downloading nvidia-cuda-nvrtc-cu12==$version from PyPI" >&2
		rm -f "$wheel"
		python3 -m pip download --no-deps --progress-bar on --only-binary :all: \
			--platform manylinux2010_x86_64 -d . "nvidia-cuda-nvrtc-cu12==$version" >&2
		echo "$sha256  $wheel" | sha256sum --check >&2
	fi
	python3 -m zipfile -e "$wheel" .
	rm -f "$wheel"
fi
echo "$lib"
