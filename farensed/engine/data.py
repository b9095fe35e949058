"""Tokenized datasets and deterministic batches: the data order is a pure function of (seed, epoch)."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farensed.jsonl import read_jsonl

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


def collate(data: TokenizedSet, indices: list[int], max_seq_length: int):
    """Pad a batch to a multiple of PAD_TO (+1 for the shifted targets); lengths as (offset, length)."""
    import mlx.core as mx

    rows = len(indices)
    lengths = [min(len(data.tokens[i]), max_seq_length) for i in indices]
    width = min(1 + PAD_TO * ((max(lengths) + PAD_TO - 1) // PAD_TO), max_seq_length)
    arr = np.zeros((rows, width), np.int32)
    pairs = np.zeros((rows, 2), np.int32)
    for row, (i, n) in enumerate(zip(indices, lengths)):
        arr[row, :n] = data.tokens[i][:n]
        pairs[row] = (data.offsets[i], n)
    return mx.array(arr), mx.array(pairs)
