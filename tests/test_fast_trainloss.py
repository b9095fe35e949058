"""The smaller step's arithmetic, without a model: the tiled cross-entropy on random heads, the gathered-position
buckets, first-fit-decreasing packing and what a packed row counts, the spec keys."""

from __future__ import annotations

import numpy as np
import pytest

from farensed.engine.data import TokenizedSet, padded_width
from farensed.engine.packing import first_fit_decreasing, packed_row
from farensed.engine.trainloss import bucket, gather_plan, sizes_per_width
from farensed.engine.valloss import counted_index
from farensed.errors import SpecError
from farensed.spec.jobspec import parse_spec
from tests.helpers import spec_with


@pytest.mark.parametrize("quantized", [False, True])
def test_tiled_cross_entropy_equals_the_plain_one_and_its_gradient(quantized):
    import mlx.core as mx
    import mlx.nn as nn

    from farensed.engine.chunkce import TiledHead, chunked_cross_entropy

    mx.random.seed(3)
    head = nn.Linear(64, 1000, bias=False)
    if quantized:
        head = nn.QuantizedLinear.from_linear(head, group_size=32, bits=4)
    hidden, targets = mx.random.normal((40, 64)), mx.random.randint(0, 1000, (40,))
    weight = (mx.arange(40) % 3 != 0).astype(mx.float32)  # some positions weighted out, as the buckets' padding

    def plain(h):
        return (nn.losses.cross_entropy(head(h), targets) * weight).sum()

    def tiled(h):
        return (chunked_cross_entropy(TiledHead(head), h, targets, tile=256) * weight).sum()  # 4 tiles, last short

    (v1, g1), (v2, g2) = mx.value_and_grad(plain)(hidden), mx.value_and_grad(tiled)(hidden)
    assert v2.item() == pytest.approx(v1.item(), rel=1e-6)
    assert mx.allclose(g2, g1, rtol=1e-4, atol=1e-6).item()
    compiled = mx.compile(mx.value_and_grad(tiled))(hidden)
    assert compiled[0].item() == pytest.approx(v1.item(), rel=1e-6)


def test_a_head_with_a_bias_is_not_tiled():
    import mlx.nn as nn

    from farensed.engine.chunkce import TiledHead

    with pytest.raises(TypeError):
        TiledHead(nn.Linear(8, 16, bias=True))


def test_gathered_positions_are_bucketed_one_size_per_width():
    assert [bucket(n) for n in (0, 1, 64, 65, 200)] == [64, 64, 64, 128, 256]
    index, weight = gather_plan(np.array([3, 5, 9], np.int32), 8)
    assert index.tolist() == [3, 5, 9, 0, 0, 0, 0, 0] and weight.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert gather_plan(np.arange(70, dtype=np.int32))[0].size == 128
    assert sizes_per_width([(65, 40), (65, 100), (129, 130), (65, 3)]) == {65: 128, 129: 192}


def test_first_fit_decreasing_packs_every_example_once_within_capacity_the_same_rows_every_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, 300).tolist()
    epochs = [first_fit_decreasing(lengths, 128, seed=7, epoch=e) for e in range(3)]
    for rows in epochs:
        assert sorted(i for row in rows for i in row) == list(range(300))
        assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len({len(rows) for rows in epochs}) == 1  # first-fit decreasing sees only the lengths
    assert epochs[0] != epochs[1]  # the order (and ties) change with the epoch
    assert first_fit_decreasing(lengths, 128, seed=7, epoch=1) == epochs[1]  # a pure function of (seed, epoch)
    assert sum(lengths) / (len(epochs[0]) * 128) > 0.9  # rows come out nearly full


@pytest.mark.parametrize("max_seq_length", [64, 40])
def test_a_packed_row_counts_what_default_loss_counts_for_each_example_alone(max_seq_length):
    rng = np.random.default_rng(1)
    tokens = [rng.integers(3, 500, n).tolist() for n in (17, 40, 9, 52)]
    data = TokenizedSet(tokens, [5, 30, 0, 12], 0)
    row = [1, 0, 2]  # 40 + 17 + 9 tokens (or truncated to 40)
    width = 8 * -(-sum(min(len(tokens[i]), max_seq_length) for i in row) // 8)
    ids, targets, positions, segments, counted = packed_row(data, row, max_seq_length, width)
    start = 0
    for segment, i in enumerate(row):
        n = min(len(tokens[i]), max_seq_length)
        alone_width = padded_width(n, max_seq_length)
        batch = np.zeros(alone_width, np.int64)
        batch[:n] = tokens[i][:n]
        alone = counted_index(np.array([[data.offsets[i], n]]), alone_width)  # default_loss's positions
        mine = [p - start for p in counted if start <= p < start + n]
        assert mine == alone.tolist()
        assert [targets[start + p] for p in mine] == [batch[t + 1] for t in alone]
        assert positions[start : start + n].tolist() == list(range(n))
        assert set(segments[start : start + n].tolist()) == {segment}
        start += n
    assert set(segments[start:].tolist()) <= {-1}  # padding is its own segment


def test_spec_keys_of_the_step_and_what_joins_the_fingerprint():
    spec = parse_spec(spec_with())
    assert (spec.counted_loss, spec.ce_chunk, spec.pack) == (True, None, False)
    base = spec.resume_fingerprint()
    assert parse_spec(spec_with(counted_loss=False)).resume_fingerprint() == base  # float rounding only
    assert parse_spec(spec_with(ce_chunk=4096)).resume_fingerprint() == base
    with pytest.raises(SpecError, match="ce_chunk = 4096 precisa de counted_loss = true"):
        parse_spec(spec_with(counted_loss=False, ce_chunk=4096))  # mlx-lm's own loss has no tiles: never silent
    assert parse_spec(spec_with(pack=True)).resume_fingerprint() == dict(base, pack=True)  # other batches
    with pytest.raises(SpecError, match="pack = true precisa de counted_loss = true"):
        parse_spec(spec_with(pack=True, counted_loss=False))
    with pytest.raises(SpecError, match=r"ce_chunk = 100 fora do intervalo"):
        parse_spec(spec_with(ce_chunk=100))
    with pytest.raises(SpecError, match="pack: deve ser true/false"):
        parse_spec(spec_with(pack="yes"))
