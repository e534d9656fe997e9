#!/usr/bin/env python3
"""The baseline of inference-worker/benches/embeddings.rs, which runs it: sentence-transformers
embedding the same texts with the same model folder on the CPU.

`encode` with its own batching (inputs sorted by length, `batch` a batch), in float32, with as
many torch threads as the worker's CPU threads. The texts are embedded `repeats` times after
one warm-up pass; only those passes are timed, each on its own, and the fastest is reported.

    python3 scripts/reference/st_throughput.py INPUT.json

INPUT.json: {"model": folder, "texts": [...], "batch": n, "repeats": n, "threads": n,
             "single": n (texts embedded one call each, also timed)}
Prints one JSON object: {"seconds", "single_seconds", "torch", "sentence_transformers",
"threads"}.
"""
import json
import sys
import time

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def main():
    spec = json.load(open(sys.argv[1]))
    torch.set_num_threads(spec["threads"])
    model = SentenceTransformer(spec["model"], device="cpu")
    model.eval()
    texts = spec["texts"]
    with torch.inference_mode():
        model.encode(texts, batch_size=spec["batch"])
        best = float("inf")
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            model.encode(texts, batch_size=spec["batch"])
            best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        for text in texts[: spec["single"]]:
            model.encode([text], batch_size=1)
        single = time.perf_counter() - start
    json.dump(
        {
            "seconds": best,
            "single_seconds": single,
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "threads": torch.get_num_threads(),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
