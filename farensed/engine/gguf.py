"""GGUF → MLX: import a llama.cpp/Ollama model file into an mlx-lm model folder (quantized blocks kept quantized).

mx.load reads Q4_0/Q4_1/Q8_0 tensors as MLX affine-quantized (uint32 weight + float16 scales/biases, group 32)
and F32/F16 as floats; this module renames them to mlx-lm's Llama names, undoes llama.cpp's Q/K row permutation,
writes config.json (with per-module quantization bits), the tokenizer and chat template from the metadata, and
`farense_gguf.json` (the source's sha256) last, all in a temp folder that is fsynced and renamed into place.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections import Counter
from pathlib import Path

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_header import QUANT_TYPES, ROPE_FREQS, GgufInfo, check_supported, mlx_name, read_header
from farensed.storage.atomic import atomic_write_json, fsync_dir, move_aside, read_json

MARKER = "farense_gguf.json"
GROUP_SIZE = 32  # every GGUF block type MLX keeps quantized packs 32 weights per scale
CACHE_SUFFIX = ".mlx"


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The file's sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_gguf_path(path: Path) -> bool:
    """A spec `model` naming a .gguf file (rather than an mlx-lm model folder)."""
    return Path(path).suffix.lower() == ".gguf"


def _unpermute(w, n_head: int):
    """llama.cpp stores q/k rows interleaved per head (for its rope); put them back in Hugging Face order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


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


def convert_weights(info: GgufInfo) -> tuple[dict, dict, list | None]:
    """mx.load the GGUF: (mlx-lm weights, {quantized module: bits}, rope_freqs or None)."""
    import mlx.core as mx

    tensors = mx.load(str(info.path))
    heads = int(info.arch_key("attention.head_count"))
    kv_heads = int(info.arch_key("attention.head_count_kv", heads))
    weights, bits = {}, {}
    rope_freqs = tensors[ROPE_FREQS].tolist() if ROPE_FREQS in tensors else None
    for gname, t in info.tensors.items():
        if gname == ROPE_FREQS:
            continue
        name = mlx_name(gname)
        module, suffix = name.rsplit(".", 1)
        if t.ggml_type in QUANT_TYPES:
            prefix = gname.rsplit(".", 1)[0]
            parts = {s: tensors[f"{prefix}.{s}"] for s in ("weight", "scales", "biases")}
            bits[module] = parts["weight"].shape[-1] * 32 // (parts["scales"].shape[-1] * GROUP_SIZE)
        else:
            parts = {suffix: tensors[gname]}
        n_head = heads if ".attn_q." in gname else kv_heads if ".attn_k." in gname else 0
        for s, value in parts.items():
            weights[f"{module}.{s}"] = _unpermute(value, n_head) if n_head else value
    mx.eval(weights)
    return weights, bits, rope_freqs


def build_config(info: GgufInfo, bits: dict, rope_freqs: list | None = None) -> dict:
    """mlx-lm's Llama config from the GGUF metadata (per-module bits where they differ from the common width)."""
    md, arch = info.metadata, info.arch_key
    heads = int(arch("attention.head_count"))
    hidden = int(arch("embedding_length"))
    head_dim = int(arch("attention.key_length", arch("rope.dimension_count", hidden // heads)))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(arch("block_count")),
        "intermediate_size": int(arch("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(arch("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(arch("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(arch("rope.freq_base", 10000.0)),
        "rope_traditional": False,  # q/k rows were put back in Hugging Face order
        "max_position_embeddings": int(arch("context_length", 4096)),
        "vocab_size": int(info.tensors["token_embd.weight"].shape[0]),
        "tie_word_embeddings": "output.weight" not in info.tensors,
        "attention_bias": "blk.0.attn_q.bias" in info.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in info.tensors,
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


def _save_weights(folder: Path, weights: dict) -> None:
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    fmt = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}, "weight_map": {}}
    for i, shard in enumerate(shards, start=1):
        name = fmt.format(i, len(shards))
        mx.save_safetensors(str(folder / name), shard, metadata={"format": "mlx"})
        index["weight_map"].update(dict.fromkeys(shard, name))
    index["weight_map"] = dict(sorted(index["weight_map"].items()))
    atomic_write_json(folder / "model.safetensors.index.json", index)


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def summary_of(info: GgufInfo, config: dict, dest: Path, digest: str) -> dict:
    """What an import produced, for the console and --json."""
    quant = config.get("quantization") or {}
    return {
        "source": str(info.path),
        "dest": str(dest),
        "sha256": digest,
        "architecture": info.architecture,
        "name": info.metadata.get("general.name"),
        "layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "heads": config["num_attention_heads"],
        "kv_heads": config["num_key_value_heads"],
        "vocab_size": config["vocab_size"],
        "tensor_types": info.type_counts(),
        "bits": quant.get("bits"),
        "bits_by_module": {k: v["bits"] for k, v in quant.items() if isinstance(v, dict)},
        "tokenizer": f"{info.metadata.get('tokenizer.ggml.model')}/{info.metadata.get('tokenizer.ggml.pre', 'default')}",
        "chat_template": bool(info.metadata.get("tokenizer.chat_template")),
    }


def imported_digest(dest: Path) -> str | None:
    """The sha256 of the GGUF a finished import in `dest` came from (None if `dest` is not one)."""
    try:
        return read_json(Path(dest) / MARKER)["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def import_gguf(src: Path, dest: Path, log=print, digest: str | None = None) -> dict:
    """Import a GGUF into the mlx-lm folder `dest` (atomically); an existing import of the same file is kept."""
    src, dest = Path(src), Path(dest)
    info = read_header(src)
    check_supported(info)
    digest = digest or sha256_of(src)
    if dest.exists():
        if imported_digest(dest) == digest:
            log(_("✅ {dest} já contém este GGUF importado (sha256 {value})").format(dest=dest, value=digest[:12]))
            return dict(read_json(dest / MARKER)["summary"], already=True)
        raise SpecError(_("{dest}: o destino já existe; escolha outra pasta ou mova-a").format(dest=dest))
    from farensed.engine.gguf_tokenizer import build_tokenizer

    log(
        _("A importar {name} ({architecture}, {items})").format(
            name=src.name,
            architecture=info.architecture,
            items=", ".join(f"{k}×{v}" for k, v in info.type_counts().items()),
        )
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted import by this pid
    tmp.mkdir()
    try:
        weights, bits, rope_freqs = convert_weights(info)
        config = build_config(info, bits, rope_freqs)
        _save_weights(tmp, weights)
        del weights
        atomic_write_json(tmp / "config.json", config)
        build_tokenizer(info.metadata).save_pretrained(str(tmp))
        summary = summary_of(info, config, dest, digest)
        stat = src.stat()
        marker = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "summary": summary}
        atomic_write_json(tmp / MARKER, marker)
        _fsync_tree(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the half-written temp folder
        raise
    fsync_dir(dest.parent)
    log(_("✅ Modelo importado: {dest}").format(dest=dest))
    return summary


def _cache_is_current(cache: Path, src: Path) -> bool:
    try:
        marker = read_json(cache / MARKER)
    except (OSError, ValueError):
        return False
    stat = src.stat()
    if marker.get("size") == stat.st_size and marker.get("mtime_ns") == stat.st_mtime_ns:
        return True
    return marker.get("sha256") == sha256_of(src)


def model_path(path: Path, log=print) -> Path:
    """The mlx-lm folder for a spec's `model`: itself, or for a .gguf its import `<file>.mlx/` (made once, reused)."""
    path = Path(path)
    if not is_gguf_path(path):
        return path
    from filelock import FileLock

    cache = path.with_name(path.name + CACHE_SUFFIX)
    try:
        with FileLock(str(path.with_name(f".{path.name}.lock"))):
            if _cache_is_current(cache, path):
                return cache
            if cache.exists():
                log(_("O GGUF mudou: a importação anterior foi guardada em {path}").format(path=move_aside(cache)))
            import_gguf(path, cache, log=log)
    except OSError as exc:  # a read-only folder, a full disk, …
        raise SpecError(
            _(
                "{path}: não foi possível importar para {name} ao lado do GGUF ({value}); use farensectl model import-gguf FILE DEST e ponha DEST no model do spec"
            ).format(path=path, name=cache.name, value=exc.strerror or exc)
        ) from None
    return cache
