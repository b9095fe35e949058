"""GGUF files without mlx: read the header (metadata, tensor names and types) and say whether farense imports it."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from farensed.errors import SpecError
from farensed.i18n import _

MAGIC = b"GGUF"
# ggml tensor types by id (llama.cpp's ggml.h), for messages
GGML_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
FLOAT_TYPES = {0: "F32", 1: "F16"}
QUANT_TYPES = {2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}  # the ones mx.load returns MLX-quantized (group 32)
SUPPORTED_TYPES = {**FLOAT_TYPES, **QUANT_TYPES}
ARCHITECTURES = ("llama", "mistral")  # decoder-only Llama family: same tensors, same block
TOKENIZERS = ("gpt2",)  # byte-level BPE with merges (SmolLM, Llama 3, …)
# tokenizer.ggml.pre: how text is split before BPE
GPT2_PRE = ("default", "gpt-2", "gpt2")
DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell")  # every digit its own piece, then GPT-2's split
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3")

# llama.cpp block tensor -> mlx-lm module (model.layers.N.<module>)
BLOCK_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors for Llama 3.1+ rope scaling
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_TOP_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class TensorInfo:
    """One tensor as the header lists it: name, shape in MLX order (rows first), ggml type."""

    name: str
    shape: tuple
    ggml_type: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, f"tipo {self.ggml_type}")


@dataclass
class GgufInfo:
    """A GGUF file's header: metadata (plain Python values) and its tensors."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def arch_key(self, key: str, default=None):
        """A `<architecture>.<key>` metadata value."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def type_counts(self) -> dict:
        """How many tensors of each ggml type, e.g. {'Q4_1': 210, 'F32': 61}."""
        counts: dict = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts


class _Reader:
    def __init__(self, fh, path: Path):
        self.fh, self.path = fh, path

    def take(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise SpecError(_("{path}: ficheiro GGUF truncado (cabeçalho incompleto)").format(path=self.path))
        return data

    def scalar(self, kind: int):
        fmt = _SCALARS[kind]
        value = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return _shortest_f32(value) if kind == 6 else value

    def string(self) -> str:
        return self.take(self.scalar(10)).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, count = self.scalar(4), self.scalar(10)
            if inner in _SCALARS:
                fmt = _SCALARS[inner]
                return list(struct.unpack(f"<{count}{fmt[1]}", self.take(count * struct.calcsize(fmt))))
            return [self.value(inner) for _ in range(count)]
        if kind not in _SCALARS:
            raise SpecError(
                _("{path}: cabeçalho GGUF com tipo de valor desconhecido ({kind})").format(path=self.path, kind=kind)
            )
        return self.scalar(kind)


def _shortest_f32(value: float) -> float:
    """A float32 as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
            return candidate
    return value


def is_gguf(path: Path) -> bool:
    """A file whose first bytes are the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def read_header(path: Path) -> GgufInfo:
    """Parse a GGUF header (v2/v3): metadata and tensor infos, no tensor data."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(_("{path}: ficheiro GGUF não encontrado").format(path=path))
    with open(path, "rb") as fh:
        r = _Reader(fh, path)
        if r.take(4) != MAGIC:
            raise SpecError(_("{path}: não é um ficheiro GGUF (falta a assinatura 'GGUF')").format(path=path))
        version = r.scalar(4)
        if version not in (2, 3):
            raise SpecError(
                _("{path}: versão GGUF {version} não suportada (suportadas: 2, 3)").format(path=path, version=version)
            )
        n_tensors, n_kv = r.scalar(10), r.scalar(10)
        info = GgufInfo(path=path, version=version)
        for _kv in range(n_kv):
            key = r.string()
            info.metadata[key] = r.value(r.scalar(4))
        for _tensor in range(n_tensors):
            name = r.string()
            dims = [r.scalar(10) for _ in range(r.scalar(4))]
            ggml_type = r.scalar(4)
            r.scalar(10)  # offset into the data section
            info.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type)
    return info


def mlx_name(gguf_name: str) -> str | None:
    """The mlx-lm parameter name for a llama.cpp tensor name (None if it is not a Llama tensor)."""
    m = _BLOCK_RE.match(gguf_name)
    if m and m.group(2) in BLOCK_TENSORS:
        return f"model.layers.{m.group(1)}.{BLOCK_TENSORS[m.group(2)]}.{m.group(3)}"
    m = _TOP_RE.match(gguf_name)
    if m and m.group(1) in TOP_TENSORS:
        return f"{TOP_TENSORS[m.group(1)]}.{m.group(2)}"
    return None


def check_supported(info: GgufInfo) -> None:
    """Refuse, in one line, a GGUF farense cannot import faithfully (architecture, tensor type, tokenizer, rope)."""
    path = info.path
    arch = info.architecture
    if arch not in ARCHITECTURES:
        raise SpecError(
            _(
                "{path}: arquitetura '{arch}' não suportada; suportadas: {items} (família Llama; qwen2, qwen3, phi3, gemma, falcon, gpt2, mamba e as restantes são recusadas)"
            ).format(path=path, arch=arch, items=", ".join(ARCHITECTURES))
        )
    if (info.arch_key("expert_count") or 0) > 0:
        raise SpecError(
            _("{path}: modelo de mistura de especialistas (MoE, {arch}.expert_count) não suportado").format(
                path=path, arch=arch
            )
        )
    scaling = info.arch_key("rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise SpecError(
            _("{path}: {arch}.rope.scaling.type '{scaling}' não suportado (suportados: none, linear)").format(
                path=path, arch=arch, scaling=scaling
            )
        )
    for t in info.tensors.values():
        if t.name == ROPE_FREQS and t.ggml_type == 0:
            continue  # Llama 3.1+ rope scaling: read back into config.json's rope_scaling at import
        if mlx_name(t.name) is None:
            raise SpecError(
                _("{path}: tensor '{name}' fora da arquitetura Llama suportada").format(path=path, name=t.name)
            )
        if t.ggml_type not in SUPPORTED_TYPES:
            names = ", ".join(SUPPORTED_TYPES.values())
            raise SpecError(
                _(
                    "{path}: quantização {type_name} (tensor {name}) não suportada; suportadas: {names} (converta com llama-quantize para Q8_0/Q4_0 ou use pesos F16)"
                ).format(path=path, type_name=t.type_name, name=t.name, names=names)
            )
    layers = info.arch_key("block_count")
    missing = [f"blk.{i}.{n}.weight" for i in range(layers or 0) for n in BLOCK_TENSORS]
    missing = [n for n in missing + ["token_embd.weight", "output_norm.weight"] if n not in info.tensors]
    if layers is None or missing:
        what = f"{arch}.block_count" if layers is None else f"tensor {missing[0]}"
        raise SpecError(_("{path}: ficheiro GGUF incompleto: falta {what}").format(path=path, what=what))
    tok = info.metadata.get("tokenizer.ggml.model")
    if tok not in TOKENIZERS or "tokenizer.ggml.merges" not in info.metadata:
        raise SpecError(
            _(
                "{path}: tokenizer.ggml.model '{tok}' não suportado; suportado: BPE byte-level com merges ('gpt2'); um tokenizer SentencePiece ('llama') não é reconstruído"
            ).format(path=path, tok=tok)
        )
    pre = info.metadata.get("tokenizer.ggml.pre", "default")
    if pre not in GPT2_PRE + DIGITS_PRE + LLAMA3_PRE:
        names = ", ".join(GPT2_PRE + DIGITS_PRE + LLAMA3_PRE)
        raise SpecError(
            _("{path}: tokenizer.ggml.pre '{pre}' não suportado; suportados: {names}").format(
                path=path, pre=pre, names=names
            )
        )


def check_gguf_file(path: Path, label: str) -> GgufInfo:
    """Spec validation of a `model` that names a .gguf file: it exists and farense can import it."""
    if not Path(path).is_file():
        raise SpecError(_("{label}: ficheiro GGUF não encontrado: {path}").format(label=label, path=path))
    try:
        info = read_header(path)
        check_supported(info)
    except SpecError as exc:
        raise SpecError(f"{label}: {exc}") from None
    return info
