"""GGUF files for tests, written with llama.cpp's own `gguf` package (GGUFWriter, gguf.quants.quantize).

`gguf` cannot quantize K-quants; it dequantizes them, so the K-quant blocks are encoded here (any valid block will
do) and every reference value comes from `gguf.quants.dequantize`, never from farense's decoder. `write_gguf` is a
raw writer for the malformed headers GGUFWriter refuses to write.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 10, 12, 13, 14, 30
ALIGN = 32


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype("<f2").reshape(-1, 1).view(np.uint8)


def _k_scale_bytes(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per block → ggml's 12 bytes (the inverse of get_scale_min_k4)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    d = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    m = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    md = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return np.concatenate([d, m, md], axis=1)


def _q45_k(x: np.ndarray, bits: int) -> np.ndarray:
    """(n, 256) floats → Q4_K / Q5_K blocks: per 32-value sub-block a 6-bit scale and min under fp16 d, dmin."""
    sub = x.reshape(-1, 8, 32).astype(np.float32)
    lo, hi = np.minimum(sub.min(axis=2), 0), sub.max(axis=2)
    top = 2**bits - 1
    d = (hi - lo).max(axis=1) / top / 63
    dmin = (-lo).max(axis=1) / 63
    d16, dmin16 = d.astype(np.float16).astype(np.float32), dmin.astype(np.float16).astype(np.float32)
    sc = np.clip(
        np.rint(np.divide((hi - lo) / top, d16[:, None], where=d16[:, None] > 0, out=np.zeros_like(hi))), 0, 63
    )
    mn = np.clip(np.rint(np.divide(-lo, dmin16[:, None], where=dmin16[:, None] > 0, out=np.zeros_like(lo))), 0, 63)
    step, low = d16[:, None] * sc, dmin16[:, None] * mn
    q = np.divide(sub + low[..., None], step[..., None], where=step[..., None] > 0, out=np.zeros_like(sub))
    q = np.clip(np.rint(q), 0, top).astype(np.uint8)
    chunks = q & 0x0F
    qs = (chunks[:, 0::2] | (chunks[:, 1::2] << 4)).reshape(-1, 128)
    head = [_f16_bytes(d16), _f16_bytes(dmin16), _k_scale_bytes(sc, mn)]
    if bits == 4:
        return np.concatenate([*head, qs], axis=1)
    qh = np.zeros((len(q), 32), np.uint8)
    for i in range(8):
        qh |= ((q[:, i] >> 4) & 1) << i
    return np.concatenate([*head, qh, qs], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    """(n, 256) floats → Q6_K blocks: 16 sub-blocks of 16 with int8 scales under an fp16 d, q on 6 bits."""
    sub = x.reshape(-1, 16, 16).astype(np.float32)
    scale = np.abs(sub).max(axis=2) / 31
    d = scale.max(axis=1) / 127
    d16 = d.astype(np.float16).astype(np.float32)
    sc = np.clip(np.rint(np.divide(scale, d16[:, None], where=d16[:, None] > 0, out=np.zeros_like(scale))), -128, 127)
    step = d16[:, None] * sc
    q = np.divide(sub, step[..., None], where=step[..., None] > 0, out=np.zeros_like(sub))
    q = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(-1, 2, 128)
    low, high = q & 0x0F, q >> 4
    ql = (low[:, :, :64] | (low[:, :, 64:] << 4)).reshape(-1, 128)
    qh = sum(high[:, :, s * 32 : (s + 1) * 32] << (2 * s) for s in range(4)).astype(np.uint8).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d16)], axis=1)


def encode(x: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """(what GGUFWriter stores for `x` as ggml type `kind`, the values llama.cpp's gguf package dequantizes it to)."""
    import gguf
    from gguf.quants import dequantize, quantize

    qtype = gguf.GGMLQuantizationType(kind)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if kind in (Q4_K, Q5_K, Q6_K):
        blocks = _q6_k(x.reshape(-1, 256)) if kind == Q6_K else _q45_k(x.reshape(-1, 256), 4 if kind == Q4_K else 5)
        raw = blocks.reshape(x.shape[0], -1) if x.ndim == 2 else blocks.reshape(-1)
    else:
        raw = quantize(x, qtype)
    return raw, dequantize(raw, qtype).reshape(x.shape).astype(np.float32)


def write_with_gguf(path: Path, metadata: dict, tensors: list[tuple[str, np.ndarray, int]]) -> Path:
    """A GGUF written by llama.cpp's GGUFWriter: metadata {key: value} and (name, stored array, ggml type)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), metadata["general.architecture"])
    for key, value in metadata.items():
        if key == "general.architecture":
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, array, kind in tensors:
        writer.add_tensor(name, array, raw_dtype=None if kind in (F32, F16) else gguf.GGMLQuantizationType(kind))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


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


def header_bytes(metadata: dict, tensors: list[tuple[str, tuple, int, bytes]]) -> tuple[bytes, list[bytes]]:
    """A raw GGUF v3 header (padded to the data section) and the tensors' padded data blobs."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, v in metadata.items():
        kind, data = _value(v)
        out += _string(key) + struct.pack("<I", kind) + data
    offset, blobs = 0, []
    for name, shape, ggml_type, data in tensors:
        dims = list(reversed(shape))
        out += _string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)
        blobs.append(data + b"\0" * (-len(data) % ALIGN))
        offset += len(blobs[-1])
    out += b"\0" * (-len(out) % ALIGN)
    return bytes(out), blobs


def write_gguf(path: Path, metadata: dict, tensors: list[tuple[str, tuple, int, bytes]]) -> Path:
    """Write a GGUF v3 file by hand: metadata {key: value} and tensors (name, numpy shape, ggml type, bytes)."""
    header, blobs = header_bytes(metadata, tensors)
    Path(path).write_bytes(header + b"".join(blobs))
    return Path(path)


# The tiny model's tensors as a mixed GGUF: the block types whose rows (64 or 128 values) allow them.
TINY_TYPES = {
    "token_embd": Q8_0,
    "output": Q4_0,
    "attn_q": Q4_0,
    "attn_k": Q4_1,
    "attn_v": Q8_0,
    "attn_output": F16,
    "ffn_gate": Q5_0,
    "ffn_up": Q5_1,
    "ffn_down": F32,
}
# A Q4_K_M-like mix for the tiny model widened to 256 (K-quant rows are multiples of 256 values)
K_TYPES = {
    "token_embd": Q4_K,
    "output": Q6_K,
    "attn_q": Q4_K,
    "attn_k": Q4_K,
    "attn_v": Q6_K,
    "attn_output": Q8_0,  # its rows hold the 4 heads × 16 values: too short for a K-quant
    "ffn_gate": Q4_K,
    "ffn_up": Q5_K,
    "ffn_down": Q6_K,
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


def _float_weights(model_dir: Path) -> dict:
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    model, _ = load(str(model_dir))
    return {k: np.array(v, dtype=np.float32) for k, v in tree_flatten(dequantize_model(model).parameters())}


def _widen(floats: dict, eps: float, width: int) -> dict:
    """The tiny model with hidden and intermediate sizes zero-padded to `width`: the same function (RMSNorm over
    the wider vector is halved… so its weights are scaled by sqrt(hidden/width) and eps by hidden/width)."""
    out = {}
    for name, w in floats.items():
        hidden = floats["model.norm.weight"].shape[0]
        if w.ndim == 1:
            padded = np.zeros(width, np.float32)
            padded[: len(w)] = w * np.sqrt(hidden / width)
        else:
            rows = width if any(k in name for k in ("o_proj", "gate_proj", "up_proj", "down_proj")) else w.shape[0]
            cols = w.shape[1] if "o_proj" in name else width
            padded = np.zeros((rows, cols), np.float32)
            padded[: w.shape[0], : w.shape[1]] = w
        out[name] = padded
    return out


def tiny_gguf(model_dir: Path, path: Path, types: dict | None = None, extra: tuple = (), width: int | None = None):
    """Write the tiny model as a llama.cpp GGUF with GGUFWriter; return it and the float weights (HF layout) the
    file holds, as llama.cpp's gguf package dequantizes them. `width`: hidden and intermediate padded (K-quants)."""
    import orjson
    from mlx_lm.gguf import permute_weights, translate_weight_names

    types = types or TINY_TYPES
    config = orjson.loads((model_dir / "config.json").read_bytes())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads
    floats, eps = _float_weights(model_dir), float(config["rms_norm_eps"])
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    if width:
        floats, eps, hidden, ffn = _widen(floats, eps, width), eps * hidden / width, width, width
    tensors, reference = [], {}
    for name, w in floats.items():
        gname = translate_weight_names(name)  # mlx-lm's own GGUF export naming
        kind = F32 if w.ndim == 1 else types[gname.split(".")[-2]]
        reference[name] = encode(w, kind)[1]  # quantization is per row: the same values, HF row order
        if "self_attn.q_proj.weight" in name:
            w = np.array(permute_weights(w, heads, heads))
        elif "self_attn.k_proj.weight" in name:
            w = np.array(permute_weights(w, heads, kv_heads))
        tensors.append((gname, encode(w, kind)[0], kind))
    metadata = {
        "general.architecture": "llama",
        "general.name": "tiny-mistral",
        "llama.block_count": config["num_hidden_layers"],
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": hidden,
        "llama.feed_forward_length": ffn,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "llama.attention.key_length": head_dim,
        "llama.attention.value_length": head_dim,
        "llama.attention.layer_norm_rms_epsilon": eps,
        "llama.rope.freq_base": float(config["rope_theta"]),
        "llama.rope.dimension_count": head_dim,
        "llama.vocab_size": config["vocab_size"],
        **_tokenizer_metadata(model_dir),
    }
    return write_with_gguf(path, metadata, tensors + [(n, a, k) for n, a, k in extra]), reference


SYNTHETIC_TYPES = {  # one of every type farense imports, in a one-layer llama whose rows are 256 values
    "token_embd": Q4_K,
    "output": Q6_K,
    "attn_q": Q5_K,
    "attn_k": Q4_0,
    "attn_v": Q4_1,
    "attn_output": Q5_0,
    "ffn_gate": Q5_1,
    "ffn_up": Q8_0,
    "ffn_down": BF16,
    "attn_norm": F32,
    "ffn_norm": F16,
}


def synthetic_gguf(path: Path, md: dict, types: dict | None = None, width: int = 256, seed: int = 0):
    """A random one-layer Llama-family GGUF (GGUFWriter) with hidden and ffn `width`, 4 heads (2 KV), `md`'s
    tokenizer; qwen2 gets its q/k/v biases. Returns it and {tensor name: llama.cpp's dequantized values}."""
    types = {**SYNTHETIC_TYPES, **(types or {})}
    rng = np.random.default_rng(seed)
    arch = md["general.architecture"]
    vocab, heads, kv_heads, head_dim = len(md["tokenizer.ggml.tokens"]), 4, 2, width // 4
    shapes = {
        "attn_q": (heads * head_dim, width),
        "attn_k": (kv_heads * head_dim, width),
        "attn_v": (kv_heads * head_dim, width),
        "attn_output": (width, heads * head_dim),
        "ffn_gate": (width, width),
        "ffn_up": (width, width),
        "ffn_down": (width, width),
        "attn_norm": (width,),
        "ffn_norm": (width,),
    }
    names = {f"blk.0.{k}.weight": s for k, s in shapes.items()}
    names.update({"token_embd.weight": (vocab, width), "output.weight": (vocab, width), "output_norm.weight": (width,)})
    if arch == "qwen2":
        names.update({f"blk.0.{k}.bias": shapes[k][:1] for k in ("attn_q", "attn_k", "attn_v")})
    tensors, reference = [], {}
    for name, shape in names.items():
        values = rng.normal(0, 0.05, size=shape).astype(np.float32)
        if "norm" in name:
            values += 1.0
        kind = types.get(name.split(".")[-2], F32) if name.endswith(".weight") else F32
        raw, reference[name] = encode(values, kind)
        tensors.append((name, raw, kind))
    metadata = {
        **md,
        f"{arch}.block_count": 1,
        f"{arch}.context_length": 512,
        f"{arch}.embedding_length": width,
        f"{arch}.feed_forward_length": width,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": 1e-5,
        f"{arch}.rope.freq_base": 10000.0,
    }
    return write_with_gguf(path, metadata, tensors), reference


# A one-layer llama of width 32 in F32 (raw writer): the base the refusal and hostile-header tests alter
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "1", "2", "Ġ", "Ġab", "12"]


def metadata(**changes) -> dict:
    md = {
        "general.architecture": "llama",
        "llama.block_count": 1,
        "llama.embedding_length": 32,
        "llama.feed_forward_length": 32,
        "llama.attention.head_count": 2,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(TOKENS) - 3),
        "tokenizer.ggml.merges": ["a b", "Ġ ab", "1 2"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


def qwen2_metadata(**changes) -> dict:
    md = {k.replace("llama.", "qwen2."): v for k, v in metadata(**changes).items()}
    return dict(md, **{"general.architecture": "qwen2", "tokenizer.ggml.pre": "qwen2"})


BLOCK = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm")


def tensors(odd_type: int | None = None, biases: tuple = ()) -> list:
    out = [("token_embd.weight", (len(TOKENS), 32), F32, np.zeros((len(TOKENS), 32), "<f4").tobytes())]
    out += [("output_norm.weight", (32,), F32, np.ones(32, "<f4").tobytes())]
    for name in BLOCK:
        shape = (32,) if "norm" in name else (32, 32)
        out.append((f"blk.0.{name}.weight", shape, F32, np.zeros(shape, "<f4").tobytes()))
    out += [(f"blk.0.{name}.bias", (32,), F32, np.zeros(32, "<f4").tobytes()) for name in biases]
    if odd_type == Q2_K:  # a K-quant farense does not import: 84 bytes per 256 weights
        out[2] = ("blk.0.attn_q.weight", (32, 256), Q2_K, b"\0" * (32 * 84))
    return out
