#!/usr/bin/env bash
# End to end against Hugging Face transformers + PEFT, side by side in one run
# (inference-worker/benches/vs_transformers.rs): the same GGUF model, the same LoRA adapters
# (many in the mix), the same requests and batch size, on the CPU and, when there is one, on the
# GPU. Installs the Python side from PyPI when it is missing. Prints a Markdown table for
# docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/fetch-models.sh
if ! python3 -c "import torch, transformers, peft, gguf" 2>/dev/null; then
	python3 -m pip install --quiet torch transformers peft gguf numpy
fi
LD_LIBRARY_PATH="$(scripts/fetch-nvrtc.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
cargo bench --locked --workspace --bench vs_transformers
