#!/usr/bin/env python3
"""Reference sentence embeddings of sentence-transformers for the worker's embedding tests.

Loads all-MiniLM-L6-v2 from the same folder the worker serves (scripts/fetch-models.sh) with
sentence-transformers (its modules.json: BERT, mean pooling, L2 normalization; its
sentence_bert_config.json: inputs truncated at 256 tokens) on CPU, and records for each text
its token ids and its embedding.

    pip install torch sentence-transformers
    scripts/reference/st_embeddings.py > inference-worker/tests/fixtures/st_minilm.json
"""

import json
import os
import sys

import torch
from sentence_transformers import SentenceTransformer

MODELS = os.environ.get("OPENLEDGER_MODELS", os.path.expanduser("~/.cache/openledger/models"))
FOLDER = "all-MiniLM-L6-v2"

LONG = (
    "DataNets are community datasets: contributors add records with a content hash, a URI and "
    "metadata, curators accept or reject them, and accepted contributions earn a share of the "
    "rewards whenever a model trained or grounded on them answers a request. "
)
TEXTS = [
    "The capital of France is Paris.",
    "Paris is the capital and largest city of France.",
    "A LoRA adapter fine-tunes a few low-rank matrices beside a frozen base model.",
    "",
    "Café déjà vu — naïve façade; 東京の天気は晴れ。 Ünïcödé 🚀 and emoji",
    "  Data   attribution\t2024:\n17 records, 3 curators!  ",
    # About 170 tokens: past the 128 that the folder's tokenizer.json pads and truncates to.
    LONG * 3,
    # Past the model's 256: sentence-transformers keeps the first 256 tokens.
    LONG * 7,
]


def main():
    torch.manual_seed(0)
    model = SentenceTransformer(os.path.join(MODELS, FOLDER), device="cpu")
    model.eval()
    tokens = model.tokenizer(TEXTS, truncation=True, max_length=model.max_seq_length)["input_ids"]
    embeddings = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    records = []
    for i, text in enumerate(TEXTS):
        embedding = [float(f"{x:.8g}") for x in embeddings[i].tolist()]
        records.append({"text": text, "tokens": tokens[i], "embedding": embedding})
    head = {
        "model": FOLDER,
        "max_seq_length": model.max_seq_length,
        "dimensions": len(records[0]["embedding"]),
    }
    # One record a line: a reviewable diff when the reference changes.
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    body = json.dumps(head, ensure_ascii=False)[:-1]
    sys.stdout.write(body + ', "records": [\n' + ",\n".join(lines) + "\n]}\n")


if __name__ == "__main__":
    main()
