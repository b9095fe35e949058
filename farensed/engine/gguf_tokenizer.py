"""A GGUF's tokenizer rebuilt as a Hugging Face fast tokenizer: byte-level BPE from its tokens, merges and types."""

from __future__ import annotations

from farensed.models.gguf_header import DIGITS_PRE, LLAMA3_PRE

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types


def _pre_tokenizer(pre):
    from tokenizers import Regex, pre_tokenizers

    if pre in LLAMA3_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def _token(metadata: dict, key: str) -> str | None:
    tokens = metadata["tokenizer.ggml.tokens"]
    index = metadata.get(f"tokenizer.ggml.{key}")
    return tokens[index] if index is not None and 0 <= index < len(tokens) else None


def build_tokenizer(metadata: dict):
    """A PreTrainedTokenizerFast equal to the GGUF's: vocabulary, merges, special tokens, BOS rule, chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

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
    steps = [processors.ByteLevel(trim_offsets=False)]
    bos, eos = _token(metadata, "bos_token_id"), _token(metadata, "eos_token_id")
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
        special = [(t, tokens.index(t)) for t in {bos if add_bos else None, eos if add_eos else None} if t]
        steps.append(processors.TemplateProcessing(single=single, special_tokens=special))
    tok.post_processor = processors.Sequence(steps)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=_token(metadata, "unknown_token_id"),
        pad_token=_token(metadata, "padding_token_id") or eos,
    )
    if metadata.get("tokenizer.chat_template"):
        fast.chat_template = metadata["tokenizer.chat_template"]
    return fast
