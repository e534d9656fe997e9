#!/usr/bin/env bash
# Benchmarks the inference worker on the real model, side by side in one run: prefill and decode
# tokens/s against candle-transformers' quantized Llama, decode with a LoRA adapter against the
# base model, and an adapter's cold load (inference-worker/benches/engine.rs); throughput with 1,
# 100 and 1,000 adapters in the mix against the base model alone (benches/multi_adapter.rs);
# structured output (a JSON schema, JSON mode) against unconstrained generation
# (benches/structured_output.rs); sentence embeddings against sentence-transformers
# (benches/embeddings.rs; installs torch and sentence-transformers when missing); attribution's
# scoring of the answer only against scoring whole prompts (benches/attribution.rs).
# Prints Markdown tables for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/fetch-models.sh

if ! python3 -c "import torch, sentence_transformers" 2>/dev/null; then
	python3 -m pip install --quiet torch sentence-transformers
fi
cargo bench --locked --workspace --bench engine --bench multi_adapter --bench structured_output \
	--bench embeddings --bench attribution
