"""A small GGUF writer for tests: llama.cpp's block formats (Q4_0, Q4_1, Q8_0) and floats, written with numpy.

`encode` returns a tensor's bytes in the file and the values llama.cpp (and MLX) dequantize them to, so a test can
build a reference model with exactly the weights the file holds.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

F32, F16, Q4_0, Q4_1, Q8_0, Q4_K = 0, 1, 2, 3, 8, 12
ALIGN = 32


def _blocks(x: np.ndarray) -> np.ndarray:
    assert x.shape[-1] % 32 == 0
    return x.astype(np.float32).reshape(-1, 32)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """llama.cpp's 4-bit layout: byte j holds weight j (low nibble) and weight j+16 (high nibble)."""
    q = q.astype(np.uint8)
    return q[:, :16] | (q[:, 16:] << 4)


def encode(x: np.ndarray, ggml_type: int) -> tuple[bytes, np.ndarray]:
    """(bytes as stored in a GGUF, the dequantized values) for one tensor."""
    if ggml_type == F32:
        v = x.astype("<f4")
        return v.tobytes(), v.astype(np.float32)
    if ggml_type == F16:
        v = x.astype("<f2")
        return v.tobytes(), v.astype(np.float32)
    b = _blocks(x)
    if ggml_type == Q8_0:
        d = np.abs(b).max(axis=1) / 127
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        q = np.round(b * inv[:, None]).astype(np.int8)
        d16 = d.astype("<f2")
        raw = np.concatenate([d16.view(np.uint8).reshape(-1, 2), q.view(np.uint8)], axis=1)
        deq = q.astype(np.float32) * d16.astype(np.float32)[:, None]
    elif ggml_type == Q4_0:
        idx = np.abs(b).argmax(axis=1)
        d = b[np.arange(len(b)), idx] / -8
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.minimum(15, (b * inv[:, None] + 8.5).astype(np.int8))
        d16 = d.astype("<f2")
        raw = np.concatenate([d16.view(np.uint8).reshape(-1, 2), _nibbles(q)], axis=1)
        deq = (q.astype(np.float32) - 8) * d16.astype(np.float32)[:, None]
    elif ggml_type == Q4_1:
        lo, hi = b.min(axis=1), b.max(axis=1)
        d = (hi - lo) / 15
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        q = np.minimum(15, ((b - lo[:, None]) * inv[:, None] + 0.5).astype(np.int8))
        d16, m16 = d.astype("<f2"), lo.astype("<f2")
        head = np.concatenate([d16.view(np.uint8).reshape(-1, 2), m16.view(np.uint8).reshape(-1, 2)], axis=1)
        raw = np.concatenate([head, _nibbles(q)], axis=1)
        deq = q.astype(np.float32) * d16.astype(np.float32)[:, None] + m16.astype(np.float32)[:, None]
    else:
        raise ValueError(f"no encoder for ggml type {ggml_type}")
    return raw.tobytes(), deq.reshape(x.shape)


def _string(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(v) -> tuple[int, bytes]:
    if isinstance(v, bool):
        return 7, struct.pack("<?", v)
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, _string(v)
    if isinstance(v, list):
        if all(isinstance(e, str) for e in v):
            return 9, struct.pack("<IQ", 8, len(v)) + b"".join(_string(e) for e in v)
        if all(isinstance(e, int) for e in v):
            return 9, struct.pack("<IQ", 5, len(v)) + struct.pack(f"<{len(v)}i", *v)
        return 9, struct.pack("<IQ", 6, len(v)) + struct.pack(f"<{len(v)}f", *v)
    raise TypeError(f"no GGUF value type for {type(v)}")


def write_gguf(path: Path, metadata: dict, tensors: list[tuple[str, tuple, int, bytes]]) -> Path:
    """Write a GGUF v3 file: metadata {key: value} and tensors (name, shape in numpy order, ggml type, bytes)."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, v in metadata.items():
        kind, data = _value(v)
        out += _string(key) + struct.pack("<I", kind) + data
    offset, blobs = 0, []
    for name, shape, ggml_type, data in tensors:
        dims = list(reversed(shape))
        out += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)
        padded = data + b"\0" * (-len(data) % ALIGN)
        blobs.append(padded)
        offset += len(padded)
    out += b"\0" * (-len(out) % ALIGN)
    for blob in blobs:
        out += blob
    Path(path).write_bytes(bytes(out))
    return Path(path)


# The tiny model's tensors as a mixed GGUF: every block type and both float types, 4- and 8-bit modules.
TINY_TYPES = {
    "token_embd": Q8_0,
    "output": Q4_0,
    "attn_q": Q4_0,
    "attn_k": Q4_1,
    "attn_v": Q8_0,
    "attn_output": F16,
    "ffn_gate": Q4_0,
    "ffn_up": Q4_1,
    "ffn_down": F32,
}


def _tokenizer_metadata(model_dir: Path) -> dict:
    import orjson

    tj = orjson.loads((model_dir / "tokenizer.json").read_bytes())
    vocab = dict(tj["model"]["vocab"])
    vocab.update({t["content"]: t["id"] for t in tj["added_tokens"]})
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {t["id"] for t in tj["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    ids = {t: i for i, t in enumerate(tokens)}
    from farensed.demo.tinymodel import CHAT_TEMPLATE

    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3 if i in special else 1 for i in range(len(tokens))],
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": ids["<s>"],
        "tokenizer.ggml.eos_token_id": ids["</s>"],
        "tokenizer.ggml.unknown_token_id": ids["<unk>"],
        "tokenizer.ggml.padding_token_id": ids["</s>"],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def tiny_gguf(model_dir: Path, path: Path, types: dict | None = None, extra: tuple = ()) -> tuple[Path, dict]:
    """Write the tiny model as a llama.cpp GGUF; return it and the float weights (HF layout) the file holds."""
    import orjson
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.gguf import permute_weights, translate_weight_names
    from mlx_lm.utils import dequantize_model

    types = types or TINY_TYPES
    config = orjson.loads((model_dir / "config.json").read_bytes())
    model, _ = load(str(model_dir))
    floats = {k: np.array(v, dtype=np.float32) for k, v in tree_flatten(dequantize_model(model).parameters())}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors, reference = [], {}
    for name, w in floats.items():
        gname = translate_weight_names(name)  # mlx-lm's own GGUF export naming
        kind = F32 if w.ndim == 1 else types[gname.split(".")[-2]]
        reference[name] = encode(w, kind)[1]  # quantization is per row: the same values, HF row order
        if "self_attn.q_proj.weight" in name:
            w = np.array(permute_weights(w, heads, heads))
        elif "self_attn.k_proj.weight" in name:
            w = np.array(permute_weights(w, heads, kv_heads))
        tensors.append((gname, w.shape, kind, encode(w, kind)[0]))
    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny-mistral",
        "llama.block_count": config["num_hidden_layers"],
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": config["hidden_size"],
        "llama.feed_forward_length": config["intermediate_size"],
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "llama.attention.layer_norm_rms_epsilon": float(config["rms_norm_eps"]),
        "llama.rope.freq_base": float(config["rope_theta"]),
        "llama.rope.dimension_count": config["hidden_size"] // heads,
        "llama.vocab_size": config["vocab_size"],
        **_tokenizer_metadata(model_dir),
    }
    return write_gguf(path, metadata, tensors + list(extra)), reference
