"""LoRA adapter files for the tests, written here without the gguf or safetensors packages: a GGUF adapter as
llama.cpp's converter writes them (GGUF v3: `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` as
float32, F32 tensors `blk.N.<target>.weight.lora_a` of ggml shape [in, rank] and `.lora_b` of [rank, out]) and a PEFT
folder (`adapter_config.json`, `adapter_model.safetensors`). The weights come from a seeded generator, so the
recorder (`fixtures/lora/record.py`) and the tests write the same adapter."""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np

# SmolLM2-135M: hidden 576, 9 heads and 3 KV heads of 64, MLP 1536, 30 layers.
SMOLLM2 = {"layers": 30, "hidden": 576, "kv": 192, "mlp": 1536}
GGUF_TARGETS = {"attn_q": ("hidden", "hidden"), "attn_v": ("hidden", "kv"), "ffn_down": ("mlp", "hidden")}
RANK = 8
ALPHA = 16.0


def pairs(seed: int, rank: int = RANK, scale: float = 0.02, dims: dict = SMOLLM2):
    """(layer, target, A [rank, in], B [out, rank]) for every layer and GGUF target, from `seed`."""
    rng = np.random.default_rng(seed)
    for layer in range(dims["layers"]):
        for target, (fan_in, fan_out) in GGUF_TARGETS.items():
            a = rng.standard_normal((rank, dims[fan_in])).astype(np.float32) * scale
            b = rng.standard_normal((dims[fan_out], rank)).astype(np.float32) * scale
            yield layer, target, a, b


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf_adapter(path: pathlib.Path, seed: int, architecture: str = "llama", rank: int = RANK,
                       scale: float = 0.02) -> pathlib.Path:
    tensors = []
    for layer, target, a, b in pairs(seed, rank, scale):
        tensors.append((f"blk.{layer}.{target}.weight.lora_a", a))
        tensors.append((f"blk.{layer}.{target}.weight.lora_b", b))
    metadata = [
        ("general.architecture", 8, _string(architecture)),
        ("general.type", 8, _string("adapter")),
        ("adapter.type", 8, _string("lora")),
        ("adapter.lora.alpha", 6, struct.pack("<f", ALPHA)),
    ]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, kind, value in metadata:
        out += _string(key) + struct.pack("<I", kind) + value
    offset = 0
    for name, array in tensors:
        # ggml's dimensions run fastest first: numpy's shape reversed; type 0 is F32.
        out += _string(name) + struct.pack("<I", array.ndim) + struct.pack(f"<{array.ndim}Q", *reversed(array.shape))
        out += struct.pack("<IQ", 0, offset)
        offset += -(-array.nbytes // 32) * 32
    out += b"\0" * (-len(out) % 32)
    for _, array in tensors:
        data = array.tobytes()
        out += data + b"\0" * (-len(data) % 32)
    path.write_bytes(bytes(out))
    return path


PEFT_MODULES = {"attn_q": "self_attn.q_proj", "attn_v": "self_attn.v_proj", "ffn_down": "mlp.down_proj"}


def write_peft(folder: pathlib.Path, seed: int, rank: int = RANK) -> pathlib.Path:
    """The same kind of adapter as a PEFT folder (F32 safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer, target, a, b in pairs(seed, rank):
        prefix = f"base_model.model.model.layers.{layer}.{PEFT_MODULES[target]}"
        tensors[f"{prefix}.lora_A.weight"] = a
        tensors[f"{prefix}.lora_B.weight"] = b
    header, offset = {}, 0
    for name, array in tensors.items():
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(folder / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for array in tensors.values():
            f.write(array.tobytes())
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": ALPHA, "bias": "none", "task_type": "CAUSAL_LM",
              "target_modules": ["q_proj", "v_proj", "down_proj"]}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder
