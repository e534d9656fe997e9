#!/usr/bin/env python3
"""Reference log-probabilities of Hugging Face transformers for the worker's attribution tests.

Loads SmolLM2-135M-Instruct from the same GGUF file the worker serves (transformers dequantizes
it to float32) and builds, as `openledger_inference_worker::attribution::SourcedPrompt` does,
a chat prompt with source documents in its system message: the template rendered with a
marker where the sources go, the text before it, each source's block and the text after it
tokenized on their own. For a fixed answer it records the answer's log-probability (the sum
over its tokens, teacher-forced) under the prompt with every source and with each source left
out, so the Rust test checks the prompt's tokens and the scores leave-one-out is made of.

    pip install torch transformers gguf accelerate numpy
    scripts/reference/hf_attribution.py > inference-worker/tests/fixtures/hf_attribution.json
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = os.environ.get("OPENLEDGER_MODELS", os.path.expanduser("~/.cache/openledger/models"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREAMBLE = "Answer using the following sources."
MARKER = "\u0001SOURCES\u0001"

CASES = [
    {
        "messages": [{"role": "user", "content": "What is the access code of DataNet Alpha?"}],
        "sources": [
            {"id": "rec-1", "text": "DataNet Beta collects weather readings from 40 stations."},
            {"id": "rec-2", "title": "Alpha", "text": "The access code of DataNet Alpha is BLUE-HERON-42."},
            {"id": "rec-3", "text": "Curators review every record within two days."},
        ],
        "answer": "The access code of DataNet Alpha is BLUE-HERON-42.",
    },
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Who curates the medical DataNet?"},
        ],
        "sources": [
            {"text": "The medical DataNet is curated by Dr. Amara Okafor."},
            {"text": "Rewards are paid in OPEN every epoch."},
        ],
        "answer": "Dr. Amara Okafor.",
    },
]


def block(index, source):
    if source.get("title") is not None:
        return f"\n[{index + 1}] {source['title']}\n{source['text']}\n"
    return f"\n[{index + 1}] {source['text']}\n"


def answer_logprob(model, prompt, answer):
    ids = prompt + answer
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], -1)
    start = len(prompt) - 1
    return float(sum(logprobs[start + i, t] for i, t in enumerate(answer)))


def main():
    tokenizer = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    cases = []
    for case in CASES:
        messages = [dict(m) for m in case["messages"]]
        if messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{PREAMBLE}{MARKER}"
        else:
            messages.insert(0, {"role": "system", "content": f"{PREAMBLE}{MARKER}"})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        head, tail = text.split(MARKER)
        head, tail = encode(head), encode(tail)
        blocks = [encode(block(i, s)) for i, s in enumerate(case["sources"])]
        answer = encode(case["answer"])
        n = len(blocks)
        masks = [[True] * n] + [[j != i for j in range(n)] for i in range(n)]
        scores = []
        for keep in masks:
            prompt = head + [t for b, k in zip(blocks, keep) if k for t in b] + tail
            scores.append(answer_logprob(model, prompt, answer))
        cases.append(
            {
                "messages": case["messages"],
                "sources": case["sources"],
                "answer": case["answer"],
                "head": head,
                "sources_tokens": blocks,
                "tail": tail,
                "answer_tokens": answer,
                "masks": masks,
                "answer_logprobs": scores,
            }
        )
    json.dump(
        {
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
            "float32 on CPU",
            "cases": cases,
        },
        sys.stdout,
        ensure_ascii=False,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
