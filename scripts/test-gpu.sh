#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: everything that needs one, in one run, with the output to
# paste into docs/BENCHMARKS.md and the kernels issue.
#   1. every CUDA kernel against its CPU reference over many shapes (kernels/tests/gpu);
#   2. the kernel decoder on the GPU against the same decoder on the CPU references, on the
#      real model with adapters (inference-worker/tests/gpu_engine.rs);
#   3. the GPU benchmarks (kernels/benches/gpu.rs): GEMV and paged-attention bandwidth against
#      the device's peak, 1 vs 1,000 adapters, adapter upload, sparse vs dense;
#   4. the engine over the GPU kernel decoder, end to end: throughput with 1, 100 and 1,000
#      adapters in the mix against the base model alone (inference-worker/benches/multi_adapter.rs).
# Needs the NVIDIA driver (libcuda); NVRTC comes from PyPI (scripts/fetch-nvrtc.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/fetch-models.sh
LD_LIBRARY_PATH="$(scripts/fetch-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
	--format=csv || true
cargo test --release --locked --workspace --test gpu --test gpu_engine
cargo bench --locked --workspace --bench gpu
# The engine over the GPU kernel decoder with 1, 100 and 1,000 adapters against the base model.
cargo bench --locked --workspace --bench multi_adapter -- --gpu-only
