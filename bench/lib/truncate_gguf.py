"""Writes a copy of a llama-architecture GGUF with only its first K transformer blocks: a draft
model with the same tokenizer, embeddings, output norm and head (self-speculative decoding by layer
skipping). Only the block count and the tensor table change; tensor bytes are copied as they are.

    python bench/lib/truncate_gguf.py MODEL.gguf OUT.gguf K
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

# GGUF value types: their struct format, or None for strings and arrays.
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return value

    def string(self) -> bytes:
        length = self.take("Q")
        value = self.data[self.at : self.at + length]
        self.at += length
        return value

    def value(self, kind: int):
        """The value's raw bytes (to copy) and, for scalars, the value itself."""
        start = self.at
        parsed = None
        if kind in SCALARS:
            parsed = self.take(SCALARS[kind])
        elif kind == STRING:
            parsed = self.string()
        elif kind == ARRAY:
            item_kind, count = self.take("I"), self.take("Q")
            for _ in range(count):
                self.value(item_kind)
        else:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.data[start : self.at], parsed


def pad(length: int, alignment: int) -> int:
    return (alignment - length % alignment) % alignment


def truncate(source: Path, target: Path, keep: int) -> None:
    data = source.read_bytes()
    reader = Reader(data)
    if data[:4] != b"GGUF":
        raise ValueError(f"{source} is not a GGUF file")
    reader.at = 4
    version, tensor_count, kv_count = reader.take("I"), reader.take("Q"), reader.take("Q")
    kvs: list[tuple[bytes, int, bytes]] = []
    alignment = DEFAULT_ALIGNMENT
    block_key = None
    for _ in range(kv_count):
        key = reader.string()
        kind = reader.take("I")
        raw, parsed = reader.value(kind)
        if key == b"general.alignment":
            alignment = parsed
        if key.endswith(b".block_count"):
            block_key = key
            if keep >= parsed:
                raise ValueError(f"the model has {parsed} blocks; keep fewer")
            raw = struct.pack("<" + SCALARS[kind], keep)
        kvs.append((key, kind, raw))
    if block_key is None:
        raise ValueError("no *.block_count key: not a transformer GGUF this script knows")
    tensors = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = reader.take("I")
        shape = [reader.take("Q") for _ in range(dims)]
        kind, offset = reader.take("I"), reader.take("Q")
        tensors.append((name, shape, kind, offset))
    data_start = reader.at + pad(reader.at, alignment)
    ends = sorted(offset for *_, offset in tensors)[1:] + [len(data) - data_start]
    size_of = {offset: end - offset for offset, end in zip(sorted(offset for *_, offset in tensors), ends)}
    block = re.compile(rb"^blk\.(\d+)\.")
    kept = [t for t in tensors if not (m := block.match(t[0])) or int(m.group(1)) < keep]

    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", version, len(kept), len(kvs))
    for key, kind, raw in kvs:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", kind) + raw
    offset = 0
    for name, shape, kind, old in kept:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape) + struct.pack("<IQ", kind, offset)
        offset += size_of[old] + pad(size_of[old], alignment)
    out += bytes(pad(len(out), alignment))
    for _, _, _, old in kept:
        size = size_of[old]
        out += data[data_start + old : data_start + old + size] + bytes(pad(size, alignment))
    target.write_bytes(bytes(out))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    truncate(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
