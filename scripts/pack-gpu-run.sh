#!/usr/bin/env bash
# Packs what a lent GPU machine needs to run the GPU checks and benchmarks, for the `device`
# tool's machines: they have the NVIDIA driver, CUDA 13 with NVRTC and PyTorch, but no Rust, no
# network, and take at most 64 MiB of files per call. So the binaries are built here (x86-64)
# and the model travels in parts, in folders git ignores:
#   .gpu/bin      the GPU kernel checks, the GPU decoder/engine test and the three GPU benches,
#                 and the `gguf` wheel transformers needs to read the model;
#   .gpu/m1..m3   SmolLM2-135M-Instruct.Q4_1.gguf in three parts (files carried in one call stay
#                 on a warm machine for the next).
# Then prints the commands for `run` (carry the folders they name). With --rehearse it runs those
# commands here instead, on the CUDA emulator with the benches' dry runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/fetch-models.sh >/dev/null
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
rm -rf .gpu
mkdir -p .gpu/bin .gpu/m1 .gpu/m2 .gpu/m3

# The executable cargo built for a target (the last one it reports).
build() {
	local name=$1
	shift
	cargo "$@" --locked --no-run --message-format=json |
		python3 -c 'import json, sys
exes = [m["executable"] for m in map(json.loads, sys.stdin)
        if m.get("reason") == "compiler-artifact" and m.get("executable")]
print(exes[-1])' |
		{ read -r exe && cp "$exe" ".gpu/bin/$name" && strip ".gpu/bin/$name"; }
}
build kernels-gpu-checks test --release -p openledger-kernels --test gpu
build kernels-gpu-bench bench -p openledger-kernels --bench gpu
build gpu-engine test --release -p openledger-inference-worker --test gpu_engine
build multi-adapter bench -p openledger-inference-worker --bench multi_adapter
build vs-transformers bench -p openledger-inference-worker --bench vs_transformers
# transformers reads GGUF files with the `gguf` package, which the device image lacks.
python3 -m pip download --quiet --no-deps --only-binary=:all: -d .gpu/bin gguf==0.19.0
split -n 3 -d "${OPENLEDGER_MODELS:-$HOME/.cache/openledger/models}/SmolLM2-135M-Instruct.Q4_1.gguf" \
	.gpu/part-
mv .gpu/part-00 .gpu/m1/ && mv .gpu/part-01 .gpu/m2/ && mv .gpu/part-02 .gpu/m3/
du -sh .gpu/bin .gpu/m1 .gpu/m2 .gpu/m3

# What each device call runs, as scripts that travel in .gpu/bin. setup.sh (sourced): NVRTC under
# the names cudarc loads (libnvrtc.so or .so.12; CUDA 13 images name it libnvrtc.so.13), found
# under $OPENLEDGER_NVRTC_SEARCH (default /).
cat >.gpu/bin/setup.sh <<'SETUP'
mkdir -p /tmp/lib
for l in $(find "${OPENLEDGER_NVRTC_SEARCH:-/}" \( -path /proc -o -path /sys \) -prune -o \( -name "libnvrtc.so*" -o -name "libnvrtc-builtins.so*" \) -print 2>/dev/null); do
	ln -sf "$l" /tmp/lib/
	ln -sf "$l" "/tmp/lib/$(basename "$l" | sed 's/\.so\..*/.so/')"
done
export LD_LIBRARY_PATH=/tmp/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} OPENLEDGER_REQUIRE_NVRTC=1 OPENLEDGER_REQUIRE_GPU=1
chmod +x .gpu/bin/*
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv || true
SETUP
cat >.gpu/bin/call1.sh <<'CALL'
set -euo pipefail
. .gpu/bin/setup.sh
.gpu/bin/kernels-gpu-checks
.gpu/bin/kernels-gpu-bench --bench
CALL
model="${OPENLEDGER_MODELS:-$HOME/.cache/openledger/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
cat >.gpu/bin/call3.sh <<CALL
set -euo pipefail
. .gpu/bin/setup.sh
mkdir -p /tmp/models
cat .gpu/m1/* .gpu/m2/* .gpu/m3/* >/tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf
echo "$(sha256sum "$model" | cut -d' ' -f1)  /tmp/models/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum --check
export OPENLEDGER_MODELS=/tmp/models
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/bin/*.whl
export PYTHONPATH=/tmp/site
.gpu/bin/gpu-engine
.gpu/bin/multi-adapter --gpu-only
.gpu/bin/vs-transformers --gpu-only
CALL

if [ "${1:-}" = "--rehearse" ]; then
	# The same calls here, from the repository root as on the device, on the CUDA emulator, with
	# every bench in its dry run (toy sizes): shows the packed binaries and scripts run end to end
	# before a lent GPU's minutes are spent on them. Nothing it prints is a measurement.
	emulator="$(scripts/build-cuda-emulator.sh)"
	nvrtc="$(scripts/fetch-nvrtc.sh)"
	for call in call1 call3; do
		echo "== rehearsing $call on the CUDA emulator"
		env LD_LIBRARY_PATH="$emulator" OPENLEDGER_BENCH_DRY_RUN=1 OPENLEDGER_NVRTC_SEARCH="$nvrtc" \
			bash ".gpu/bin/$call.sh"
	done
	echo "rehearsal passed"
	exit 0
fi

cat <<EOF

Device calls (run each with the carry shown; the machine must stay warm between them):
1. carry [".gpu/bin", ".gpu/m1"]:
   bash .gpu/bin/call1.sh
2. carry [".gpu/m2"] (and check that call 1's folders stayed):
   ls -la .gpu/bin .gpu/m1 .gpu/m2
3. carry [".gpu/m3"]:
   bash .gpu/bin/call3.sh
EOF
