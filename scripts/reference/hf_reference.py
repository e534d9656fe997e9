#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers (+ PEFT) for the worker's correctness tests.

Loads SmolLM2-135M-Instruct from the same GGUF file the worker serves (transformers dequantizes
it to float32), builds a LoRA adapter with PEFT whose weights follow the formula of
`openledger_inference_worker::lora::synthetic` (so the Rust test can rebuild the same adapter
without Python), and records, for each prompt, with and without the adapter:

- the prompt's token ids,
- the 20 largest logits of the first generated position,
- 12 greedy tokens with the log-probability of each,
- each prompt token's log-probability given the ones before it, with the 5 most likely tokens
  at each prompt position.

    pip install torch transformers peft gguf numpy
    scripts/reference/hf_reference.py > inference-worker/tests/fixtures/hf_smollm2.json
"""

import json
import math
import os
import sys

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

MODELS = os.environ.get("OPENLEDGER_MODELS", os.path.expanduser("~/.cache/openledger/models"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is a LoRA adapter?<|im_end|>\n<|im_start|>assistant\n",
    "Data attribution 2024: 17 records, 3 curators and",
]
STEPS = 12
TOP = 20
PROMPT_TOP = 5

# The adapter: rank 8, alpha 16 by default; v_proj at rank 4; down_proj with alpha 8.
ADAPTER = {
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "k_proj", "v_proj", "down_proj"],
    "rank_pattern": {"v_proj": 4},
    "alpha_pattern": {"down_proj": 8},
    "seed": 1,
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


CHATS = [
    [{"role": "user", "content": "What is a DataNet?"}],
    [
        {"role": "system", "content": "You answer in one sentence."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
]


def synthetic(seed, layer, projection, is_b, rows, cols):
    """The same values as `lora::synthetic_value` in Rust (float64 math, stored as float32)."""
    p = PROJECTIONS.index(projection)
    m = 1.0 if is_b else 0.0
    amplitude = (0.1 if is_b else 1.0) / math.sqrt(cols)
    i = np.arange(rows, dtype=np.float64)[:, None]
    j = np.arange(cols, dtype=np.float64)[None, :]
    phase = seed * 0.618 + layer * 1.3 + p * 2.1 + m * 0.7
    return (amplitude * np.sin(phase + i * 0.37 + j * 0.11 + i * j * 0.013)).astype(np.float32)


# Tiny models of the other supported shapes, with weights from a formula (no weights to ship):
# Qwen2 (q/k/v biases, separate output head, GQA), Llama with linear RoPE scaling and
# grouped-query heads, and Mistral with a sliding window shorter than the prompt. The Rust test
# writes the same weights as a Hugging Face folder.
TINY_MODELS = {
    "qwen2": {
        "model_type": "qwen2",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 5000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    },
    "llama_scaled": {
        "model_type": "llama",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "rope_theta": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    },
    "mistral_window": {
        "model_type": "mistral",
        "vocab_size": 96,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 128,
        "sliding_window": 4,
        "tie_word_embeddings": False,
    },
}
TINY_PROMPT = [3, 17, 42, 5, 88, 13, 60]
TINY_STEPS = 6


def tiny_value(name, shape):
    """The same values as `tiny_weight` in inference-worker/tests/hf_reference.rs."""
    phase = sum((k + 1) * b for k, b in enumerate(name.encode())) % 997 * 0.01
    if name.endswith("norm.weight"):
        base, amplitude = 1.0, 0.1
    elif name.endswith(".bias"):
        base, amplitude = 0.0, 0.05
    else:
        base, amplitude = 0.0, 1.0 / math.sqrt(shape[-1])
    rows = shape[0]
    cols = shape[1] if len(shape) > 1 else 1
    i = np.arange(rows, dtype=np.float64)[:, None]
    j = np.arange(cols, dtype=np.float64)[None, :]
    values = base + amplitude * np.sin(phase + i * 0.37 + j * 0.11 + i * j * 0.013)
    return values.reshape(shape).astype(np.float32)


def tiny_models():
    from transformers import AutoConfig

    out = {}
    for name, fields in TINY_MODELS.items():
        config = AutoConfig.for_model(**fields)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(torch.from_numpy(tiny_value(key, tuple(tensor.shape))))
        model.eval()
        seq = list(TINY_PROMPT)
        tokens = []
        with torch.no_grad():
            first = model(torch.tensor([seq])).logits[0, -1].float().tolist()
            for _ in range(TINY_STEPS):
                logits = model(torch.tensor([seq])).logits[0, -1]
                token = int(torch.argmax(logits))
                tokens.append(token)
                seq.append(token)
        names = sorted(model.state_dict().keys())
        out[name] = {"config": fields, "tensors": names, "logits": first, "tokens": tokens}
    return out


def greedy(model, ids):
    tokens, logprobs, top = [], [], None
    seq = list(ids)
    with torch.no_grad():
        for step in range(STEPS):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            if step == 0:
                values, indices = torch.topk(logits, TOP)
                top = [[int(i), float(v)] for i, v in zip(indices, values)]
            token = int(torch.argmax(logits))
            logprobs.append(float(torch.log_softmax(logits, -1)[token]))
            tokens.append(token)
            seq.append(token)
    return {"top_logits": top, "tokens": tokens, "logprobs": logprobs}


def prompt_scores(model, ids):
    """Each prompt token's log-probability after the first, given the ones before it, and the
    PROMPT_TOP most likely tokens at each position (what echo with logprobs reports)."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    scores = [float(logprobs[i, t]) for i, t in enumerate(ids[1:])]
    values, indices = torch.topk(logprobs, PROMPT_TOP, dim=-1)
    top = [
        [[int(i), float(v)] for i, v in zip(row_indices, row_values)]
        for row_indices, row_values in zip(indices, values)
    ]
    return {"logprobs": scores, "top_logprobs": top}


def main():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    cases = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        base = greedy(model, ids)
        base["prompt_logprobs"] = prompt_scores(model, ids)
        cases.append({"prompt": prompt, "prompt_tokens": ids, "base": base})

    # The model's chat template (from the GGUF metadata), as transformers renders it.
    chats = []
    for messages in CHATS:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        chats.append({"messages": messages, "text": text, "prompt_tokens": ids})

    config = LoraConfig(
        r=ADAPTER["r"],
        lora_alpha=ADAPTER["lora_alpha"],
        target_modules=ADAPTER["target_modules"],
        rank_pattern=ADAPTER["rank_pattern"],
        alpha_pattern=ADAPTER["alpha_pattern"],
        lora_dropout=0.0,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_A." not in name and ".lora_B." not in name:
                continue
            layer = int(name.split(".layers.")[1].split(".")[0])
            projection = next(p for p in PROJECTIONS if f".{p}." in name)
            rows, cols = param.shape
            values = synthetic(ADAPTER["seed"], layer, projection, ".lora_B." in name, rows, cols)
            param.copy_(torch.from_numpy(values))
    peft_model.eval()
    for case in cases:
        case["adapter"] = greedy(peft_model, case["prompt_tokens"])
        case["adapter"]["prompt_logprobs"] = prompt_scores(peft_model, case["prompt_tokens"])

    json.dump(
        {
            "model": GGUF,
            "reference": f"transformers {__import__('transformers').__version__}, "
            f"peft {__import__('peft').__version__}, torch {torch.__version__}, float32 on CPU",
            "adapter": ADAPTER,
            "steps": STEPS,
            "cases": cases,
            "chats": chats,
            "tiny_prompt": TINY_PROMPT,
            "tiny_models": tiny_models(),
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
