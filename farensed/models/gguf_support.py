"""Which GGUF files farense imports, and what each tensor becomes in MLX (no mlx, no numpy: spec checks use it)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_header import GgufInfo, TensorInfo, read_header, shown

GROUP_SIZE = 32  # MLX affine groups; every block farense keeps quantized holds a whole number of them


@dataclass(frozen=True)
class MlxForm:
    """What a GGUF tensor becomes in MLX: affine `bits` at group 32, or a float `dtype`; exact or not."""

    bits: int | None = None
    dtype: str | None = None
    exact: bool = True

    def describe(self) -> str:
        if self.bits is None:
            return str(self.dtype)
        return _("{bits} bits, grupo {group}").format(bits=self.bits, group=GROUP_SIZE)


# ggml type -> MLX. Exact: the block's values are an MLX affine group's (d·q + m, q on the same bits), or a float.
# Q6_K: 16-value sub-blocks with their own scales, and MLX groups start at 32, so two sub-blocks share one group:
# 8 bits on the group's range is the nearest faithful choice (its error is measured and shown).
MLX_FORMS = {
    "F32": MlxForm(dtype="float32"),
    "F16": MlxForm(dtype="float16"),
    "BF16": MlxForm(dtype="bfloat16"),
    "Q4_0": MlxForm(bits=4),
    "Q4_1": MlxForm(bits=4),
    "Q5_0": MlxForm(bits=5),
    "Q5_1": MlxForm(bits=5),
    "Q8_0": MlxForm(bits=8),
    "Q4_K": MlxForm(bits=4),
    "Q5_K": MlxForm(bits=5),
    "Q6_K": MlxForm(bits=8, exact=False),
}
FLOAT32 = MlxForm(dtype="float32")


def mlx_form(t: TensorInfo) -> MlxForm:
    """What one tensor becomes: a matrix keeps its type's form; a vector (norm, bias) of any type becomes float32."""
    form = MLX_FORMS[t.type_name]
    return form if form.bits is None or len(t.shape) == 2 else FLOAT32


ARCHITECTURES = ("llama", "mistral", "qwen2")  # decoder-only Llama family; qwen2 = llama + q/k/v biases, NEOX rope
MLX_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # the mlx-lm model each one becomes
PERMUTED_QK = ("llama", "mistral")  # llama.cpp interleaves their q/k rows for its rope; qwen2 is stored as is
TOKENIZERS = ("gpt2", "llama")  # byte-level BPE with merges; SentencePiece
# tokenizer.ggml.pre: how text is split before byte-level BPE
GPT2_PRE = ("default", "gpt-2", "gpt2")
DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell")  # every digit its own piece, then GPT-2's split
LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe", "dbrx", "falcon3")
QWEN2_PRE = ("qwen2", "deepseek-r1-qwen")
BPE_PRE = GPT2_PRE + DIGITS_PRE + LLAMA3_PRE + QWEN2_PRE

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
_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.(weight|bias)")
_TOP_RE = re.compile(r"([a-z_]+)\.(weight|bias)")
# the block biases of mlx-lm's models: qwen2 always on q/k/v; llama all or none per kind (attention_bias, mlp_bias)
QWEN2_BIASES = ("attn_q", "attn_k", "attn_v")
LLAMA_BIASES = (("attn_q", "attn_k", "attn_v", "attn_output"), ("ffn_gate", "ffn_up", "ffn_down"))


def mlx_name(gguf_name: str) -> str | None:
    """The mlx-lm parameter name for a llama.cpp tensor name (None if it is not a Llama-family tensor)."""
    m = _BLOCK_RE.fullmatch(gguf_name)
    if m and m.group(2) in BLOCK_TENSORS:
        return f"model.layers.{m.group(1)}.{BLOCK_TENSORS[m.group(2)]}.{m.group(3)}"
    m = _TOP_RE.fullmatch(gguf_name)
    if m and m.group(1) in TOP_TENSORS:
        return f"{TOP_TENSORS[m.group(1)]}.{m.group(2)}"
    return None


def _refuse(info: GgufInfo, message: str, **values) -> SpecError:
    return SpecError(f"{info.path}: " + message.format(**values))


def _check_model(info: GgufInfo) -> None:
    arch = info.architecture
    if arch not in ARCHITECTURES:
        raise _refuse(
            info,
            _(
                "arquitetura '{arch}' não suportada; suportadas: {items} (família Llama; qwen3, phi3, gemma, falcon, gpt2, mamba e as restantes são recusadas)"
            ),
            arch=shown(arch),
            items=", ".join(ARCHITECTURES),
        )
    if not isinstance(info.arch_key("expert_count") or 0, int) or (info.arch_key("expert_count") or 0) > 0:
        raise _refuse(info, _("modelo de mistura de especialistas (MoE, {arch}.expert_count) não suportado"), arch=arch)
    scaling = info.arch_key("rope.scaling.type")
    if scaling not in (None, "none", "linear"):
        raise _refuse(
            info,
            _("{arch}.rope.scaling.type '{scaling}' não suportado (suportados: none, linear)"),
            arch=arch,
            scaling=shown(scaling),
        )
    for key in ("block_count", "embedding_length", "feed_forward_length", "attention.head_count"):
        value = info.arch_key(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 20:
            raise _refuse(info, _("ficheiro GGUF incompleto: falta {what}"), what=f"{arch}.{key}")
    for key in ("attention.key_length", "rope.dimension_count", "context_length"):
        value = info.arch_key(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 24:
            raise _refuse(info, _("{arch}.{key} {value} inválido"), arch=arch, key=key, value=shown(value))
    for key in ("rope.freq_base", "attention.layer_norm_rms_epsilon", "rope.scaling.factor"):
        value = info.arch_key(key, 1.0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
            raise _refuse(info, _("{arch}.{key} {value} inválido"), arch=arch, key=key, value=shown(value))
    heads, hidden = info.arch_key("attention.head_count"), info.arch_key("embedding_length")
    kv_heads = info.arch_key("attention.head_count_kv", heads)
    if not isinstance(kv_heads, int) or not 0 < kv_heads <= heads or heads % kv_heads:
        key = "attention.head_count_kv"
        raise _refuse(info, _("{arch}.{key} {value} inválido"), arch=arch, key=key, value=shown(kv_heads))
    if arch == "qwen2" and info.arch_key("attention.key_length", hidden // heads) != hidden // heads:
        raise _refuse(info, _("qwen2 com head_dim diferente de hidden/cabeças não suportado"))


def bias_tensors(info: GgufInfo) -> tuple:
    """The block tensors that have a bias in the mlx-lm model this file becomes."""
    if info.architecture == "qwen2":
        return QWEN2_BIASES
    return tuple(n for kind in LLAMA_BIASES if f"blk.0.{kind[0]}.bias" in info.tensors for n in kind)


def _check_tensors(info: GgufInfo) -> None:
    arch = info.architecture
    for t in info.tensors.values():
        if t.name == ROPE_FREQS and t.type_name == "F32":
            continue  # Llama 3.1+ rope scaling: read back into config.json's rope_scaling at import
        if mlx_name(t.name) is None:
            raise _refuse(info, _("tensor '{name}' fora da arquitetura Llama suportada"), name=shown(t.name))
        if t.type_name not in MLX_FORMS:
            raise _refuse(
                info,
                _(
                    "quantização {type_name} (tensor {name}) não suportada; suportadas: {names} (converta com llama-quantize para Q4_K_M, Q5_K_M ou Q8_0, ou use pesos F16)"
                ),
                type_name=t.type_name,
                name=shown(t.name),
                names=", ".join(MLX_FORMS),
            )
    layers = info.arch_key("block_count")
    biases = [f"blk.{i}.{n}.bias" for i in range(layers) for n in bias_tensors(info)]
    missing = [f"blk.{i}.{n}.weight" for i in range(layers) for n in BLOCK_TENSORS] + biases
    missing = [n for n in missing + ["token_embd.weight", "output_norm.weight"] if n not in info.tensors]
    if missing:
        raise _refuse(info, _("ficheiro GGUF incompleto: falta {what}"), what=f"tensor {missing[0]}")
    allowed = set(biases)
    extra = [n for n in info.tensors if n.endswith(".bias") and n not in allowed]
    if extra:
        raise _refuse(info, _("tensor '{name}' fora da arquitetura {arch} do mlx-lm"), name=shown(extra[0]), arch=arch)


def _expected_shapes(info: GgufInfo) -> dict:
    """The shape mlx-lm's model gives each tensor (rows first), from the metadata."""
    a = info.arch_key
    hidden, heads, ffn = a("embedding_length"), a("attention.head_count"), a("feed_forward_length")
    head_dim = a("attention.key_length", a("rope.dimension_count", hidden // heads))
    q, kv = heads * head_dim, a("attention.head_count_kv", heads) * head_dim
    vocab = info.tensors["token_embd.weight"].shape[0]
    block = {"attn_q": (q, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden), "attn_output": (hidden, q)}
    block.update(ffn_gate=(ffn, hidden), ffn_up=(ffn, hidden), ffn_down=(hidden, ffn))
    block.update(attn_norm=(hidden,), ffn_norm=(hidden,))
    shapes = {"token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(a("block_count")):
        shapes.update({f"blk.{i}.{n}.weight": shape for n, shape in block.items()})
        shapes.update({f"blk.{i}.{n}.bias": block[n][:1] for n in bias_tensors(info)})
    return shapes


def _check_shapes(info: GgufInfo) -> None:
    """Every tensor has the shape the metadata implies (else mlx-lm would fail to load it, at run time)."""
    for name, shape in _expected_shapes(info).items():
        t = info.tensors.get(name)
        if t is not None and t.shape != shape:
            raise _refuse(
                info,
                _("tensor '{name}' com forma {shape}; os metadados pedem {expected}"),
                name=name,
                shape=t.shape,
                expected=shape,
            )
    if len(info.metadata["tokenizer.ggml.tokens"]) > info.tensors["token_embd.weight"].shape[0]:
        raise _refuse(info, _("o vocabulário tem mais tokens do que linhas em token_embd.weight"))


def _check_tokenizer(info: GgufInfo) -> None:
    md = info.metadata
    tok, pre = md.get("tokenizer.ggml.model"), md.get("tokenizer.ggml.pre", "default")
    tokens = md.get("tokenizer.ggml.tokens")
    if tok not in TOKENIZERS or not isinstance(tokens, list) or not tokens:
        raise _refuse(
            info,
            _(
                "tokenizer.ggml.model '{tok}' não suportado; suportados: 'gpt2' (BPE byte-level com merges) e 'llama' (SentencePiece)"
            ),
            tok=shown(tok),
        )
    for key in ("tokens", "merges"):
        values = md.get(f"tokenizer.ggml.{key}", [])
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _refuse(info, _("tokenizer.ggml.{key} deve ser uma lista de textos"), key=key)
    if not isinstance(md.get("tokenizer.chat_template", ""), str):
        raise _refuse(info, _("tokenizer.chat_template deve ser texto"))
    if tok == "gpt2" and "tokenizer.ggml.merges" not in md:
        raise _refuse(info, _("ficheiro GGUF incompleto: falta {what}"), what="tokenizer.ggml.merges")
    if tok == "llama" and "tokenizer.ggml.scores" not in md and "tokenizer.ggml.merges" not in md:
        raise _refuse(info, _("ficheiro GGUF incompleto: falta {what}"), what="tokenizer.ggml.scores")
    if tok == "gpt2" and pre not in BPE_PRE:
        raise _refuse(
            info,
            _("tokenizer.ggml.pre '{pre}' não suportado; suportados: {names}"),
            pre=shown(pre),
            names=", ".join(BPE_PRE),
        )
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        value = md.get(f"tokenizer.ggml.{key}")
        if value is not None and not (isinstance(value, int) and 0 <= value < len(tokens)):
            raise _refuse(info, _("tokenizer.ggml.{key} {value} fora do vocabulário"), key=key, value=shown(value))


def check_supported(info: GgufInfo) -> None:
    """Refuse, in one line, a GGUF farense cannot import faithfully (architecture, tensor type, tokenizer, rope)."""
    _check_model(info)
    _check_tensors(info)
    _check_tokenizer(info)
    _check_shapes(info)


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


TEMPLATED_FORMATS = ("messages", "prompt/completion")  # data formats mlx-lm lays out with the chat template


def check_chat_template(info: GgufInfo, formats: set, label: str) -> None:
    """`messages` and prompt/completion data need a chat template; a GGUF carries it in its metadata or not at all."""
    templated = sorted(formats & set(TEMPLATED_FORMATS))
    if templated and not info.metadata.get("tokenizer.chat_template"):
        raise SpecError(
            _(
                "{label}: {path} não tem chat template (tokenizer.chat_template) e os dados são '{data_format}', que o "
                "mlx-lm formata com ele; use o GGUF -Instruct do mesmo modelo (traz o template), converta os dados "
                "para text, ou importe-o (farensectl model import-gguf), junte um chat_template ao "
                "tokenizer_config.json da pasta e ponha essa pasta no model"
            ).format(label=label, path=info.path, data_format=templated[0])
        )


def imported_config(info: GgufInfo) -> dict:
    """What the imported folder's config.json will say that submit-time checks need, read from the header alone:
    its mlx-lm `model_type`, and `quantization` when any matrix stays quantized."""
    config = {"model_type": MLX_MODEL_TYPES.get(info.architecture, info.architecture)}
    if any(t.type_name in MLX_FORMS and mlx_form(t).bits is not None for t in info.tensors.values()):
        config["quantization"] = True
    return config
