"""An mlx-lm config.json from a GGUF's metadata: llama/mistral as mlx-lm's llama, qwen2 as its qwen2, bits per
module, and Llama 3.1+'s rope_freqs read back as the `llama3` rope scaling."""

from __future__ import annotations

import math
from collections import Counter

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_header import GgufInfo
from farensed.models.gguf_support import GROUP_SIZE, ROPE_FREQS

# Llama 3.1+'s rope scaling other than the factor (llama.cpp bakes it into rope_freqs; every release uses these)
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_rope_freqs(base: float, dim: int, factor: float, low: float, high: float, context: int) -> list[float]:
    """llama.cpp's rope_freqs for Llama 3 rope scaling (the divisor of each rotary frequency)."""
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def rope_scaling_from_freqs(info: GgufInfo, freqs: list[float], base: float, dim: int) -> dict | None:
    """mlx-lm's `llama3` rope_scaling that reproduces a GGUF's rope_freqs (refused if none does)."""
    factor = max(freqs)
    if factor == 1.0:
        return None
    p = LLAMA3_ROPE
    expected = llama3_rope_freqs(
        base, dim, factor, p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"]
    )
    if len(freqs) != len(expected) or not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(freqs, expected)):
        raise SpecError(
            _("{path}: {tensor} não corresponde ao rope 'llama3' (factor {factor:g}, 1, 4, 8192)").format(
                path=info.path, tensor=ROPE_FREQS, factor=factor
            )
        )
    return {"rope_type": "llama3", "factor": factor, **p}


def _architecture(info: GgufInfo, head_dim: int) -> dict:
    if info.architecture == "qwen2":  # mlx-lm's qwen2: q/k/v biases, head_dim = hidden / heads
        return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "head_dim": head_dim,
        "attention_bias": "blk.0.attn_q.bias" in info.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in info.tensors,
    }


def build_config(info: GgufInfo, bits: dict, rope_freqs: list | None = None) -> dict:
    """mlx-lm's config from the GGUF metadata (per-module bits where they differ from the common width)."""
    md, arch = info.metadata, info.arch_key
    heads = int(arch("attention.head_count"))
    hidden = int(arch("embedding_length"))
    head_dim = int(arch("attention.key_length", arch("rope.dimension_count", hidden // heads)))
    config = {
        **_architecture(info, head_dim),
        "hidden_size": hidden,
        "num_hidden_layers": int(arch("block_count")),
        "intermediate_size": int(arch("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(arch("attention.head_count_kv", heads)),
        "rms_norm_eps": float(arch("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(arch("rope.freq_base", 10000.0)),
        "rope_traditional": False,  # llama's q/k rows were put back in Hugging Face order; qwen2's never moved
        "max_position_embeddings": int(arch("context_length", 4096)),
        "vocab_size": int(info.tensors["token_embd.weight"].shape[0]),
        "tie_word_embeddings": "output.weight" not in info.tensors,
    }
    if arch("rope.scaling.type") == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": float(arch("rope.scaling.factor", 1.0))}
    elif rope_freqs and (scaling := rope_scaling_from_freqs(info, rope_freqs, config["rope_theta"], head_dim)):
        config["rope_scaling"] = scaling
    for key in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{key}" in md:
            config[key] = int(md[f"tokenizer.ggml.{key}"])
    if bits:
        common = Counter(bits.values()).most_common(1)[0][0]
        quant = {"group_size": GROUP_SIZE, "bits": common, "mode": "affine"}
        quant.update({m: {"group_size": GROUP_SIZE, "bits": b} for m, b in sorted(bits.items()) if b != common})
        config["quantization"] = config["quantization_config"] = quant
    return config
