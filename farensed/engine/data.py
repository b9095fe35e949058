"""Tokenized datasets and deterministic batches: the data order is a pure function of (seed, epoch)."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farensed.storage.jsonl import read_jsonl

PAD_TO = 8


@dataclass
class TokenizedSet:
    """Token ids and prompt offsets (the prompt is masked out of the loss) of one data file."""

    tokens: list[list[int]]
    offsets: list[int]
    truncated: int  # examples longer than max_seq_length

    def __len__(self) -> int:
        return len(self.tokens)


def tokenize_file(path: Path, tokenizer, max_seq_length: int, mask_prompt: bool = True) -> TokenizedSet:
    """Tokenize with mlx-lm's own dataset classes (chat, completions, text), prompt masked unless told not to."""
    from mlx_lm.tuner.datasets import create_dataset

    records = read_jsonl(path)
    dataset = create_dataset(records, tokenizer, types.SimpleNamespace(mask_prompt=mask_prompt))
    tokens, offsets = [], []
    for i in range(len(dataset)):
        toks, offset = dataset.process(dataset[i])
        tokens.append(list(toks))
        offsets.append(int(offset))
    truncated = sum(len(t) > max_seq_length for t in tokens)
    return TokenizedSet(tokens, offsets, truncated)


def counted_targets(n_tokens: int, offset: int, max_seq_length: int) -> int:
    """How many of an example's targets the loss counts (as engine/packing.py lays them out): from the end of the
    masked prompt to its last token, the last one lost when the example was cut at max_seq_length."""
    n = min(n_tokens, max_seq_length)
    last = n - 1 if n < max_seq_length else n - 2
    return max(last - max(offset - 1, 0) + 1, 0)


def silent_examples(data: TokenizedSet, max_seq_length: int) -> int:
    """Examples that give the loss nothing: the prompt fills max_seq_length."""
    return sum(counted_targets(len(t), o, max_seq_length) == 0 for t, o in zip(data.tokens, data.offsets))


def length_sorted_batches(data: TokenizedSet, batch_size: int, drop_last: bool) -> list[list[int]]:
    """Group examples of similar length (as mlx-lm does) so padding stays small."""
    order = sorted(range(len(data)), key=lambda i: (len(data.tokens[i]), i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def epoch_order(n_batches: int, seed: int, epoch: int) -> np.ndarray:
    """The batch order of one epoch, from a private generator (never numpy's global RNG)."""
    return np.random.default_rng([seed, epoch]).permutation(n_batches)


def padded_width(longest: int, max_seq_length: int) -> int:
    """The width a batch is padded to: its longest example rounded up to a multiple of PAD_TO, +1."""
    return min(1 + PAD_TO * ((min(longest, max_seq_length) + PAD_TO - 1) // PAD_TO), max_seq_length)


VAL_TOKEN_FACTOR = 2  # validation batch tokens per training batch token (the automatic rule, below)


def validation_batches(data: TokenizedSet, max_seq_length: int, rows: int | None, token_budget: int) -> list[list[int]]:
    """Forward-only batches, length-sorted: `rows` examples each when given, else as many as fit in `token_budget`.

    The automatic rule (`val_batch_size` unset): a validation batch holds at most VAL_TOKEN_FACTOR x the padded
    tokens (rows x padded width) of the largest training batch, so validation stays under the training step's peak
    memory. A training step holds what a forward pass holds plus the gradient of the logits, every layer's saved
    activations, the gradients and the optimizer state; measured here, a forward pass on twice the tokens peaked
    at 0.87-0.89x a training step's (tiny demo model; hidden 256 x 4 layers x 32k vocab), four times went over.
    With grad_checkpoint the training step keeps less, so the factor is 1. Short examples pack many to a batch.
    """
    order = sorted(range(len(data)), key=lambda i: (len(data.tokens[i]), i))
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        if current is not None:
            fits = (
                len(current) < rows
                if rows
                else (len(current) + 1) * padded_width(len(data.tokens[i]), max_seq_length) <= token_budget
            )
            if fits:
                current.append(i)
                continue
        batches.append([i])
    return batches


def collate(data: TokenizedSet, indices: list[int], max_seq_length: int):
    """Pad a batch to a multiple of PAD_TO (+1 for the shifted targets); lengths as (offset, length)."""
    import mlx.core as mx

    rows = len(indices)
    lengths = [min(len(data.tokens[i]), max_seq_length) for i in indices]
    width = padded_width(max(lengths), max_seq_length)
    arr = np.zeros((rows, width), np.int32)
    pairs = np.zeros((rows, 2), np.int32)
    for row, (i, n) in enumerate(zip(indices, lengths)):
        arr[row, :n] = data.tokens[i][:n]
        pairs[row] = (data.offsets[i], n)
    return mx.array(arr), mx.array(pairs)
