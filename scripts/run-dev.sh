#!/usr/bin/env bash
# The main job: builds everything, then runs a development chain (Alice authors and finalizes
# 6-second blocks; RPC on ws://127.0.0.1:9944, Prometheus on 9615; state in a temporary
# directory) and an inference worker serving the real model (SmolLM2-135M-Instruct, fetched and
# checked by scripts/fetch-models.sh) over HTTP on http://127.0.0.1:8080 (OpenAI's completions
# and chat completions API; every PEFT adapter folder under $OPENLEDGER_ADAPTERS, if set, is
# served as a model of its own name; all-MiniLM-L6-v2's sentence embeddings on /v1/embeddings,
# and retrieval over the accepted records of DataNet 0 on the dev chain, whose contents it reads
# from $OPENLEDGER_CONTENT, default ~/.cache/openledger/content: `openledger-worker content-hash
# --store DIR FILE` puts a file there and prints the hash and size to contribute).
# Ctrl-C stops both; if either stops, the other is stopped.
#
# Extra arguments go to the node, e.g. `scripts/run-dev.sh --rpc-port 9955` (then set
# OPENLEDGER_CHAIN=ws://127.0.0.1:9955 for the worker); OPENLEDGER_WORKER_LISTEN moves the
# worker (default 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/env.sh
scripts/fetch-models.sh

# The same build as the tests (all targets, one feature set), so the two commands share it.
cargo build --release --locked --workspace --all-targets

content="${OPENLEDGER_CONTENT:-$HOME/.cache/openledger/content}"
mkdir -p "$content"
worker_args=(serve
	--model "${OPENLEDGER_MODELS:-$HOME/.cache/openledger/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
	--embedding-model "${OPENLEDGER_MODELS:-$HOME/.cache/openledger/models}/all-MiniLM-L6-v2"
	--chain "${OPENLEDGER_CHAIN:-ws://127.0.0.1:9944}" --datanet 0
	--content-dir "$content"
	--listen "${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}")
if [ -n "${OPENLEDGER_ADAPTERS:-}" ]; then
	worker_args+=(--adapters "$OPENLEDGER_ADAPTERS")
fi

pids=()
stop() {
	trap - EXIT INT TERM
	kill "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$CARGO_TARGET_DIR/release/openledger-node" --dev --tmp --rpc-cors all "$@" &
pids+=($!)
"$CARGO_TARGET_DIR/release/openledger-worker" "${worker_args[@]}" &
pids+=($!)
cat >&2 <<EOF
openledger: the dev chain on ws://127.0.0.1:9944 and the worker on
http://${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}, for example:
  curl -s http://${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}/v1/completions -H 'content-type: application/json' \\
    -d '{"prompt": "The capital of France is", "max_tokens": 16, "temperature": 0}'
  curl -s http://${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}/v1/embeddings -H 'content-type: application/json' \\
    -d '{"input": ["a DataNet record", "another one"]}'
The worker serves DataNet 0's accepted records. Create it in polkadot.js Apps (Developer >
Extrinsics > dataNets > createDatanet, curation Open), then store a record's content and
contribute it (dataNets > contribute, DataNet 0, with the content_hash and size printed):
  echo 'The access code of DataNet Alpha is BLUE-HERON-42.' > record.txt
  $CARGO_TARGET_DIR/release/openledger-worker content-hash --store $content record.txt
Once finalized it is served (curl -s http://${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}/v1/datanets):
  curl -s http://${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"messages": [{"role": "user", "content": "What is the access code of DataNet Alpha?"}],
         "retrieval": {"top_k": 1}, "attribution": {"method": "leave_one_out"}, "temperature": 0}'
It serves adapters registered on chain too. Register the served model as base model 0 (Sudo >
adapters > registerBaseModel: SmolLM2-135M-Instruct, llama,
0xb179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53, Q4_1, 8192, Apache-2.0),
store a PEFT LoRA adapter of it and register it with the content_hash printed (adapters >
registerAdapter: a name, base model 0, the hash, its rank and target modules as in its
adapter_config.json, the modules in the order Q K V O Gate Up Down, a URI, a price):
  $CARGO_TARGET_DIR/release/openledger-worker content-hash --adapter MY_ADAPTER_FOLDER --store $content
Once finalized, a request names it by its id:
  curl -s http://${OPENLEDGER_WORKER_LISTEN:-127.0.0.1:8080}/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "chain:0", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}'
EOF
# Until either stops (then the trap stops the other).
set +e
wait -n
status=$?
exit "$status"
