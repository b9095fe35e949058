"""Which targets an example gives the loss: the arithmetic the start-up check uses equals the packed layout's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from farensed.engine.data import TokenizedSet, counted_targets, silent_examples
from farensed.engine.packing import packed_row


@given(st.integers(2, 80), st.integers(0, 90), st.integers(8, 64))
def test_counted_targets_equal_the_packed_rows_counted_positions(n, offset, max_seq_length):
    data = TokenizedSet([list(range(1, n + 1))], [min(offset, n)], 0)
    counted = packed_row(data, [0], max_seq_length, max_seq_length)[4]
    assert counted_targets(n, min(offset, n), max_seq_length) == len(counted)


def test_an_example_whose_prompt_fills_max_seq_length_is_silent():
    data = TokenizedSet([list(range(40)), list(range(10))], [30, 4], 0)
    assert silent_examples(data, 16) == 1 and silent_examples(data, 64) == 0
