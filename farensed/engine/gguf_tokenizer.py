"""A GGUF's tokenizer as a Hugging Face fast tokenizer: SentencePiece vocabularies through transformers' maintained
GGUF converter, byte-level BPE from its tokens, merges and types; BOS/EOS rules and the chat template from the
metadata."""

from __future__ import annotations

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_support import DIGITS_PRE, LLAMA3_PRE, QWEN2_PRE

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def _split(pattern: str, byte_level):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"), byte_level])


def _pre_tokenizer(pre):
    from tokenizers import pre_tokenizers

    if pre in LLAMA3_PRE:
        return _split(LLAMA3_SPLIT, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    if pre in QWEN2_PRE:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        return _split(PRETOKENIZE_REGEX, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _byte_level(metadata: dict):
    """Byte-level BPE (gpt2): llama.cpp's pre-tokenizer rules, the file's merges, its special and added tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"]]
    pre = metadata.get("tokenizer.ggml.pre")
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, ignore_merges=pre in LLAMA3_PRE
    )
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED])
    return tok


def _converter():
    """transformers' GGUF tokenizer converter and its key names (moved between transformers releases)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )
    except ImportError:
        try:
            from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
        except ImportError:
            raise SpecError(
                _(
                    "o tokenizer SentencePiece de um GGUF precisa do conversor GGUF do transformers (pip install -U transformers)"
                )
            ) from None
    return GGUF_TOKENIZER_MAPPING["tokenizer"], convert_gguf_tokenizer


def _sentencepiece(metadata: dict):
    """SentencePiece (`llama`: Llama 2, Mistral, TinyLlama…): transformers' converter, byte fallback included."""
    from tokenizers import pre_tokenizers

    renames, convert = _converter()
    fields = {name: metadata[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in metadata}
    tok, _extra = convert(str(metadata.get("general.architecture", "llama")), fields)
    if metadata.get("tokenizer.ggml.add_space_prefix") is False:  # llama.cpp honours it; the converter does not
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=False)
    return tok


def _token(metadata: dict, key: str) -> str | None:
    tokens = metadata["tokenizer.ggml.tokens"]
    index = metadata.get(f"tokenizer.ggml.{key}")
    return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None


def _post_processor(metadata: dict, sentencepiece: bool):
    """BOS/EOS as llama.cpp adds them: the file's flags; without one, BOS for SentencePiece, none for BPE."""
    from tokenizers import processors

    bos, eos = _token(metadata, "bos_token_id"), _token(metadata, "eos_token_id")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", sentencepiece)) and bos is not None
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    steps = [] if sentencepiece else [processors.ByteLevel(trim_offsets=False)]
    if add_bos or add_eos:
        single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
        special = {}
        if add_bos:
            special[bos] = metadata["tokenizer.ggml.bos_token_id"]
        if add_eos:
            special[eos] = metadata["tokenizer.ggml.eos_token_id"]
        steps.append(processors.TemplateProcessing(single=single, special_tokens=list(special.items())))
    return processors.Sequence(steps)


def build_tokenizer(metadata: dict):
    """A PreTrainedTokenizerFast equal to the GGUF's: vocabulary, merges, special tokens, BOS rule, chat template."""
    from transformers import PreTrainedTokenizerFast

    sentencepiece = metadata.get("tokenizer.ggml.model") == "llama"
    tok = _sentencepiece(metadata) if sentencepiece else _byte_level(metadata)
    tok.post_processor = _post_processor(metadata, sentencepiece)
    eos = _token(metadata, "eos_token_id")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=_token(metadata, "bos_token_id"),
        eos_token=eos,
        unk_token=_token(metadata, "unknown_token_id"),
        pad_token=_token(metadata, "padding_token_id") or eos,
    )
    if metadata.get("tokenizer.chat_template"):
        fast.chat_template = metadata["tokenizer.chat_template"]
    return fast
