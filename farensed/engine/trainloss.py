"""The training loss on counted positions: the output projection and the cross-entropy run only where the loss counts.

mlx-lm's `default_loss` projects every position onto the vocabulary (positions x vocabulary logits, and their
gradient), then multiplies the masked prompt and the padding by zero. Here the hidden states of the counted
positions (the completion: from the prompt offset to the length, exactly `default_loss`'s mask) are gathered
first, so the projection, the cross-entropy and their backward pass see only those. The gathered positions are
padded (weight 0) to one size per batch width, the most any batch of that width counts rounded up to a multiple of
BUCKET: the compiled step sees no shape beyond those the widths already make (a size per batch would double them on
chat data, bench/RESULTS.md). The loss and its gradients are `default_loss`'s up to float rounding
(tests/test_trainloss.py), so it does not join the resume fingerprint.

The shortcut needs a model that is a body then a plain projection (engine/valloss.py: `_head`); `check()` keeps it
only if it reproduces the full forward on a sample of the first batch, else the full logits are gathered instead
(same batches, same numbers, no memory saved). With `ce_chunk` the cross-entropy runs over the vocabulary in tiles
(engine/chunkce.py); unset, `auto_chunk` decides from the vocabulary.
"""

from __future__ import annotations

import numpy as np

from farensed.engine.batching import TrainBatches
from farensed.engine.valloss import AGREE, CHECK_POSITIONS, _head, counted_index

BUCKET = 64  # gathered positions are padded to a multiple of this


def bucket(count: int, step: int = BUCKET) -> int:
    """`count` rounded up to a multiple of `step` (at least one step)."""
    return max(step, -(-count // step) * step)


def gather_plan(index: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The flat positions to gather, padded to `size` (default: the bucket) with position 0, and their weights
    (1 counted, 0 padding)."""
    size = bucket(len(index)) if size is None else size
    padded = np.zeros(size, np.int32)
    padded[: len(index)] = index
    weight = np.zeros(size, np.float32)
    weight[: len(index)] = 1.0
    return padded, weight


def sizes_per_width(plans: list[tuple[int, int]]) -> dict[int, int]:
    """Gathered positions per batch width: the most any batch of that width counts, bucketed. One gathered size
    per width adds no compiled shape to the ones the widths already make (bench/RESULTS.md: the compile count)."""
    sizes: dict[int, int] = {}
    for width, count in plans:
        sizes[width] = max(sizes.get(width, 0), count)
    return {width: bucket(count) for width, count in sizes.items()}


class CountedBatches(TrainBatches):
    """TrainBatches whose batches are `(tokens, index, weight)`: the flat (row x target) positions the loss counts."""

    def __init__(self, data, spec, rank: int = 0, size: int = 1):
        import mlx.core as mx

        super().__init__(data, spec, rank, size)
        plans = [counted_index(np.array(lengths), tokens.shape[1]) for tokens, lengths in self.arrays]
        sizes = sizes_per_width([(tokens.shape[1], len(p)) for (tokens, _), p in zip(self.arrays, plans)])
        self.arrays = [
            (tokens, *(mx.array(a) for a in gather_plan(p, sizes[tokens.shape[1]])))
            for (tokens, _), p in zip(self.arrays, plans)
        ]


def head_module(model):
    """The module whose rows are the vocabulary: `lm_head`, or the embedding when it is tied (None: neither)."""
    if _head(model) is None:
        return None
    tied = getattr(getattr(model, "args", None), "tie_word_embeddings", False) or not hasattr(model, "lm_head")
    return model.model.embed_tokens if tied else model.lm_head


def counted_cross_entropy(hidden, targets, index, weight, head, tiled=None, tile: int = 0):
    """Sum of the cross-entropy over the gathered positions, and their count. `hidden` is (positions, dims) flat."""
    import mlx.core as mx
    import mlx.nn as nn

    gathered, picked = hidden[index], targets[index]
    if tiled is not None:
        from farensed.engine.chunkce import chunked_cross_entropy

        ce = chunked_cross_entropy(tiled, gathered, picked, tile)
    else:
        ce = nn.losses.cross_entropy(head(gathered), picked)
    return (ce.astype(mx.float32) * weight).sum(), weight.sum()


class CountedLoss:
    """`loss(model, tokens, index, weight) -> (loss, tokens)`: mlx-lm's contract, on the gathered positions only."""

    def __init__(self, ce_chunk: int = 0):
        self.ce_chunk = ce_chunk
        self.shortcut = True  # body + head on the gathered positions; False: the full logits, gathered

    def __call__(self, model, tokens, index, weight):
        inputs, targets = tokens[:, :-1], tokens[:, 1:].reshape(-1)
        return self.finish(model, self.forward(model, inputs), targets, index, weight)

    def forward(self, model, inputs, **kwargs):
        """The hidden states (shortcut) or the logits (full forward), flattened to (positions, features)."""
        out = _head(model)[0](inputs, **kwargs) if self.shortcut else model(inputs, **kwargs)
        return out.reshape(-1, out.shape[-1])

    def finish(self, model, flat, targets, index, weight):
        """The mean cross-entropy over the counted positions of `flat` (hidden states, or logits)."""
        if self.shortcut:
            head = _head(model)[1]
            tiled = self._tiled(model)
            total, count = counted_cross_entropy(flat, targets, index, weight, head, tiled, self.ce_chunk)
        else:
            total, count = counted_cross_entropy(flat, targets, index, weight, lambda x: x)
        return total / count, count

    def _tiled(self, model):
        if not self.ce_chunk:
            return None
        from farensed.engine.chunkce import TiledHead

        return TiledHead(head_module(model))

    def sample(self, batch, positions: int = CHECK_POSITIONS) -> tuple:
        """The first row's first `positions` targets of `batch`, all counted: what `check` compares on (small, so
        the full logits it needs never approach a step's memory)."""
        import mlx.core as mx

        tokens = batch[0][:1, : positions + 1]
        n = tokens.shape[1] - 1
        return tokens, mx.arange(n, dtype=mx.int32), mx.ones((n,), mx.float32)

    def check(self, model, batch) -> None:
        """Keep the shortcut only if the model is body + plain head and it gives the full forward's loss on a
        sample of `batch` (forward only, in eval mode: no dropout mask is drawn, the run's RNG is untouched)."""
        import mlx.core as mx

        if self.ce_chunk is None:
            self.ce_chunk = auto_chunk(model)
        if self.ce_chunk and not _tileable(model):
            self.ce_chunk = 0  # a head that cannot be cut in rows (a bias, a custom layer): the plain cross-entropy
        if _head(model) is None:
            self.shortcut = False
            return
        was_training = model.training
        model.eval()
        sample = self.sample(batch)
        try:
            full = _with(self, False)(model, *sample)[0]
            short = _with(self, True)(model, *sample)[0]
            mx.eval(full, short)
            self.shortcut = abs(full.item() - short.item()) <= AGREE * abs(full.item())
        except Exception:  # an architecture whose body does not take the tokens alone: the full forward it is
            self.shortcut = False
        finally:
            model.train(was_training)


def auto_chunk(model) -> int:
    """What `ce_chunk: null` means for this model: tiles of DEFAULT_TILE rows when the vocabulary holds more than two
    (SmolLM2's 49,152: the step's peak above the weights fell from 137 MB to 49 MB, bench/RESULTS.md), else none (a
    small vocabulary's logits are small, and the tiles' second projection would only cost time)."""
    from farensed.engine.chunkce import DEFAULT_TILE

    module = head_module(model)
    vocab = module["weight"].shape[0] if module is not None else 0
    return DEFAULT_TILE if vocab > 2 * DEFAULT_TILE else 0


def _tileable(model) -> bool:
    from farensed.engine.chunkce import TiledHead

    try:
        TiledHead(head_module(model))
    except TypeError:
        return False
    return True


def _with(loss: CountedLoss, shortcut: bool) -> CountedLoss:
    clone = object.__new__(type(loss))
    clone.__dict__.update(loss.__dict__, shortcut=shortcut)
    return clone
