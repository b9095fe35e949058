"""The training data's token lengths as the engine will see them, without mlx: what sizes a step.

A step's memory is set by its widest batch (length-sorted batches: the `batch_size` longest examples) and by how
many of its positions the loss counts (the completion after the masked prompt). The longest examples by characters
are tokenized exactly as mlx-lm's dataset classes do (the model's Hugging Face tokenizer and chat template, through
transformers); the share the loss counts comes from a sample. Without a tokenizer the lengths are estimated from the
characters (CHARS_PER_TOKEN) and said to be.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

CHARS_PER_TOKEN = 3.5  # a rough average for BPE vocabularies on English/Portuguese text
LONGEST = 64  # examples tokenized exactly among the longest by characters
SAMPLE = 256  # examples tokenized for the counted share
MAX_LINE = 16 << 20  # a data line larger than this is not read here (datacheck refuses it before training)


@dataclass
class DataLengths:
    """Token lengths of the longest examples, (length, prompt offset) each, longest first; the share of all
    positions the loss counts; the number of examples; how the lengths were found ('tokenizer' or 'estimate')."""

    longest: list[tuple[int, int]]
    counted_share: float
    examples: int
    total_tokens: int
    source: str


def _records(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as f:
        for line in f:
            if line.strip() and len(line) <= MAX_LINE:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
    return records


def _parts(record: dict) -> tuple[list | None, str, str]:
    """(messages for the chat template or None, prompt text, completion text) of one mlx-lm record."""
    if isinstance(record.get("messages"), list):
        messages = [m for m in record["messages"] if isinstance(m, dict)]
        prompt = " ".join(str(m.get("content", "")) for m in messages[:-1])
        return messages, prompt, str(messages[-1].get("content", "")) if messages else ""
    if "prompt" in record:
        prompt, completion = str(record.get("prompt", "")), str(record.get("completion", ""))
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], prompt, completion
    return None, "", str(record.get("text", ""))


def _tokenizer(model_dir: Path | None):
    if model_dir is None or not (Path(model_dir) / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception:  # any tokenizer transformers cannot load here: the estimate instead
        return None


def _tokens(tokenizer, record: dict, mask_prompt: bool) -> tuple[int, int]:
    """(length, prompt offset) as mlx-lm's ChatDataset / CompletionsDataset / TextDataset produce them."""
    messages, _prompt, text = _parts(record)
    if messages is None:
        ids = tokenizer.encode(text)
        return len(ids) + (ids[-1:] != [tokenizer.eos_token_id]), 0
    length = len(tokenizer.apply_chat_template(messages, return_dict=False))
    if not mask_prompt:
        return length, 0
    generation = messages[-1].get("role") == "assistant"
    offset = len(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=generation, return_dict=False))
    return length, offset


def _estimate(record: dict, mask_prompt: bool) -> tuple[int, int]:
    messages, prompt, completion = _parts(record)
    overhead = 6 * len(messages or [])  # role markers of a chat template
    prompt_tokens = int(len(prompt) / CHARS_PER_TOKEN) + overhead
    total = prompt_tokens + int(len(completion) / CHARS_PER_TOKEN) + 2
    return total, prompt_tokens if mask_prompt and messages is not None else 0


def data_lengths(train_file: Path, model_dir: Path | None, mask_prompt: bool, max_seq_length: int) -> DataLengths:
    """The lengths that size a step of this data (truncated to max_seq_length, as the trainer truncates)."""
    records = _records(train_file)
    by_chars = sorted(range(len(records)), key=lambda i: -len(orjson.dumps(records[i])))
    tokenizer = _tokenizer(model_dir)
    measure = (lambda r: _tokens(tokenizer, r, mask_prompt)) if tokenizer else (lambda r: _estimate(r, mask_prompt))
    longest = sorted((measure(records[i]) for i in by_chars[:LONGEST]), reverse=True)
    step = max(1, len(records) // SAMPLE)
    sample = [measure(records[i]) for i in range(0, len(records), step)]
    clipped = [(min(n, max_seq_length), o) for n, o in longest]
    counted = sum(max(0, min(n, max_seq_length) - o) for n, o in sample)
    tokens = sum(min(n, max_seq_length) for n, _o in sample)
    total = int(tokens * len(records) / max(len(sample), 1))
    return DataLengths(clipped, counted / max(tokens, 1), len(records), total, "tokenizer" if tokenizer else "estimate")
