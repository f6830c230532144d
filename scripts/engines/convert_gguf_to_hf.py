"""Convert a llama-architecture GGUF (here SmolLM2-135M-Instruct Q4_1) into a Hugging Face folder that vLLM loads.

Usage: python convert_gguf_to_hf.py MODEL.gguf OUTDIR

vLLM 0.32 cannot load a GGUF on the CPU, so transformers' GGUF reader dequantizes the weights (to F32, undoing
llama.cpp's Q/K row permutation) and this script writes them out itself: `save_pretrained` refuses a model that
transformers marks as GGUF-quantized. Needs the `gguf` and `accelerate` packages next to transformers.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    gguf_file, out_dir = os.path.abspath(argv[1]), os.path.abspath(argv[2])

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(gguf_file), os.path.basename(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()

    # A sanity check that the dequantized weights and the tokenizer agree: greedy next token of a known prompt.
    prompt_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        next_id = int(model(prompt_ids).logits[0, -1].argmax())
    next_text = tokenizer.decode([next_id])
    if next_text != " Paris":
        print(f"convert: unexpected greedy continuation {next_text!r} (id {next_id})", file=sys.stderr)
        return 1

    config = model.config
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors = {}
    for key, value in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue  # shares storage with model.embed_tokens.weight; safetensors refuses shared tensors
        tensors[key] = value.detach().to(torch.float32).contiguous()

    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})

    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    # The config derived from GGUF metadata names no architecture; vLLM would then pick the headless LlamaModel.
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)

    print(f"convert: wrote {len(tensors)} tensors to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
