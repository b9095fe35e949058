"""Validation batching and the counted positions, without a model (seconds)."""

from __future__ import annotations

import numpy as np

from farensed.engine.data import TokenizedSet, padded_width, validation_batches
from farensed.engine.valloss import counted_index


def lengths_set(lengths: list[int]) -> TokenizedSet:
    return TokenizedSet([[1] * n for n in lengths], [n // 2 for n in lengths], 0)


def test_automatic_batches_hold_every_example_once_length_sorted_within_the_token_budget():
    rng = np.random.default_rng(0)
    data = lengths_set([int(n) for n in rng.integers(5, 300, size=97)])
    budget = 2 * 4 * padded_width(300, 2048)
    batches = validation_batches(data, 2048, None, budget)
    assert sorted(i for b in batches for i in b) == list(range(97))
    flat = [len(data.tokens[i]) for b in batches for i in b]
    assert flat == sorted(flat)
    widths = [padded_width(max(len(data.tokens[i]) for i in b), 2048) for b in batches]
    assert all(len(b) * w <= budget for b, w in zip(batches, widths))
    assert max(map(len, batches)) > 8  # short examples pack many to a batch


def test_explicit_rows_and_an_example_wider_than_the_budget():
    data = lengths_set([10, 20, 30, 40, 50])
    assert [len(b) for b in validation_batches(data, 2048, 2, 0)] == [2, 2, 1]
    assert [len(b) for b in validation_batches(data, 2048, None, 1)] == [1, 1, 1, 1, 1]  # never an empty batch


def test_counted_index_is_default_loss_mask():
    import mlx.core as mx

    lengths = np.array([[3, 10], [0, 17], [5, 5], [2, 24]], np.int32)  # (prompt offset, length); width 25
    width = 25
    steps = mx.arange(1, width)
    lm = mx.array(lengths)
    mask = mx.logical_and(steps >= lm[:, 0:1], steps <= lm[:, 1:])  # mlx_lm.tuner.trainer.default_loss
    assert counted_index(lengths, width).tolist() == np.flatnonzero(np.array(mask)).tolist()
