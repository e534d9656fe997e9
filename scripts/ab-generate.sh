#!/usr/bin/env bash
# A/B of two builds of the worker on one real generation: `openledger-worker generate` on
# SmolLM2-135M-Instruct (chat prompt, greedy, 200 tokens, model load included), the two
# binaries alternating RUNS times each (default 6), then each one's median wall, user and system
# seconds and the ratio of the medians. Fails if the two generate different tokens.
# AB_PROMPT_FILE (a file whose text is the user's message) and AB_MAX_TOKENS change the prompt
# and the token count: a long prompt and few tokens time the prefill, the batched product.
#
#   scripts/ab-generate.sh OLD_BINARY NEW_BINARY [RUNS]
#
# (Build the old one first and copy it aside: for example `git stash`, `cargo build --release
# -p openledger-inference-worker --bin openledger-worker`, copy target/release/openledger-worker,
# `git stash pop`, build again.)
set -euo pipefail
if [ $# -lt 2 ]; then
	sed -n '2,13p' "$0" >&2
	exit 2
fi
old="$(realpath "$1")" new="$(realpath "$2")" runs="${3:-6}"
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
model="${OPENLEDGER_MODELS:-$HOME/.cache/openledger/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

prompt="Tell me a long story about a dragon."
if [ -n "${AB_PROMPT_FILE:-}" ]; then
	prompt="$(cat "$AB_PROMPT_FILE")"
fi
max_tokens="${AB_MAX_TOKENS:-200}"

run() { # label binary → one line "label wall user sys" on stdout, tokens in $work/label.json
	/usr/bin/time -f "$1 %e %U %S" -o "$work/time" "$2" generate --model "$model" \
		--prompt "$prompt" --chat --max-tokens "$max_tokens" --json \
		>"$work/$1.json" 2>/dev/null
	cat "$work/time"
}

for _ in $(seq "$runs"); do
	run old "$old"
	run new "$new"
done | tee "$work/runs"

python3 - "$work" <<'EOF'
import json, statistics, sys
work = sys.argv[1]
tokens = {w: json.load(open(f"{work}/{w}.json"))["tokens"] for w in ("old", "new")}
if tokens["old"] != tokens["new"]:
    sys.exit("the two binaries generate different tokens")
runs = {"old": [], "new": []}
for line in open(f"{work}/runs"):
    label, *times = line.split()
    runs[label].append([float(t) for t in times])
med = {w: [statistics.median(r[i] for r in v) for i in range(3)] for w, v in runs.items()}
print(f"\n{len(runs['old'])} runs each, {len(tokens['new'])} tokens, the same from both")
print("| build | wall s (median) | user s | sys s |")
print("|---|---|---|---|")
for w in ("old", "new"):
    print(f"| {w} | {med[w][0]:.2f} | {med[w][1]:.2f} | {med[w][2]:.2f} |")
print(f"new / old speed (median wall): {med['old'][0] / med['new'][0]:.2f}x")
EOF
