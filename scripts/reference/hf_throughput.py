#!/usr/bin/env python3
"""The baseline of inference-worker/benches/vs_transformers.rs, which runs it: Hugging Face
transformers + PEFT serving the same requests with the same LoRA adapters in the mix.

The model is loaded from the same GGUF file the worker serves (transformers dequantizes it), every
adapter of the mix is loaded into one PeftModel, and the requests are served in order in batches
of `batch` with PEFT's mixed-adapter batches (`generate(..., adapter_names=[...])`, one adapter
per row, `__base__` for none), left-padded, greedy. Only generation is timed (not loading).

    python3 scripts/reference/hf_throughput.py INPUT.json

INPUT.json: {"gguf": path, "adapters_dir": path, "batch": n, "device": "cpu" | "cuda",
             "dtype": "float32" | "bfloat16",
             "requests": [{"prompt": text, "adapter": name or null, "max_tokens": n}, ...]}
Prints one JSON object: {"seconds", "generated", "load_seconds", "torch", "transformers",
"peft", "threads", "device"}; "generated" counts each row's new tokens up to and including its
first end-of-sequence token (what the worker returns), not the padding after it.
"""
import json
import os
import sys
import time

import peft
import torch
import transformers
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    device = spec["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch has no CUDA device here")
    dtype = getattr(torch, spec.get("dtype", "float32"))
    folder, name = os.path.split(spec["gguf"])
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    names = sorted({r["adapter"] for r in spec["requests"] if r["adapter"]})
    if names:
        model = PeftModel.from_pretrained(
            model, os.path.join(spec["adapters_dir"], names[0]), adapter_name=names[0]
        )
        for adapter in names[1:]:
            model.load_adapter(os.path.join(spec["adapters_dir"], adapter), adapter_name=adapter)
    model = model.to(device).eval()
    load_seconds = time.perf_counter() - started

    requests = spec["requests"]
    batch = spec["batch"]
    eos = tokenizer.eos_token_id
    generated = 0
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with torch.inference_mode():
        for at in range(0, len(requests), batch):
            rows = requests[at : at + batch]
            inputs = tokenizer(
                [r["prompt"] for r in rows],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(device)
            kwargs = {}
            if names:
                kwargs["adapter_names"] = [r["adapter"] or "__base__" for r in rows]
            out = model.generate(
                **inputs,
                max_new_tokens=max(r["max_tokens"] for r in rows),
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                **kwargs,
            )
            new = out[:, inputs["input_ids"].shape[1] :].tolist()
            for row, tokens in zip(rows, new):
                tokens = tokens[: row["max_tokens"]]
                if eos in tokens:
                    tokens = tokens[: tokens.index(eos) + 1]
                generated += len(tokens)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "generated": generated,
                "load_seconds": load_seconds,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "threads": torch.get_num_threads(),
                "device": device,
            }
        )
    )


if __name__ == "__main__":
    main()
