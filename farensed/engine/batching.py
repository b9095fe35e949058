"""The batches of a run, fixed once: training batches in an order that is a pure function of (seed, epoch), and the
validation batches over the fixed validation subset.

`TrainBatches` is what the trainer iterates (its `iterate_batches` collaborator, as mlx-lm's trainer takes one):
`steps_per_epoch`, and `epoch(e, start)` yielding `(index, batch)` from any position, so a resume fast-forwards by
arithmetic. A batch is the tuple the loss takes after the model (`loss(model, *batch)`).
"""

from __future__ import annotations

from collections.abc import Iterator

from farensed.engine.data import (
    VAL_TOKEN_FACTOR,
    TokenizedSet,
    collate,
    epoch_order,
    length_sorted_batches,
    padded_width,
    validation_batches,
)


class TrainBatches:
    """Length-sorted training batches (each padded and converted once); this rank's rows of every global batch."""

    def __init__(self, data: TokenizedSet, spec, rank: int = 0, size: int = 1):
        self.seed = spec.seed
        groups = length_sorted_batches(data, spec.batch_size, drop_last=True)
        self.steps_per_epoch = len(groups)
        widest = max(padded_width(max(len(data.tokens[i]) for i in g), spec.max_seq_length) for g in groups)
        self.tokens_per_batch = len(groups[0][rank::size]) * widest  # this rank's largest batch, padded
        self.arrays = [collate(data, g[rank::size], spec.max_seq_length) for g in groups]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, tuple]]:
        """The batches of one epoch from position `start`, in the epoch's order."""
        order = epoch_order(self.steps_per_epoch, self.seed, epoch)
        for index in range(start, self.steps_per_epoch):
            yield index, self.arrays[order[index]]


def validation_subset(data: TokenizedSet, spec) -> TokenizedSet:
    """The fixed validation examples: `val_samples` first ones, then mlx-lm's `val_batches` (the shortest N batches)."""
    n_valid = len(data) if spec.val_samples is None else min(spec.val_samples, len(data))
    chosen = list(range(n_valid))
    if spec.val_batches and spec.val_batches > 0:
        # mlx-lm's `val_batches` N: its first N length-sorted batches of batch_size, the shortest N x batch_size
        chosen = sorted(chosen, key=lambda i: (len(data.tokens[i]), i))[: spec.val_batches * spec.batch_size]
        chosen.sort()
    return TokenizedSet([data.tokens[i] for i in chosen], [data.offsets[i] for i in chosen], 0)


def validation_arrays(
    data: TokenizedSet, spec, train: TrainBatches, rank: int = 0, size: int = 1, split: int = 1
) -> list:
    """This rank's share of the validation batches: forward only, so larger than training's (engine/data.py).
    `split` batches are evaluated at once (engine/validation.py): each gets that share of the token budget, so
    validation holds no more memory at once than one batch of the whole budget would."""
    subset = validation_subset(data, spec)
    checkpointed = getattr(spec, "grad_checkpoint", False)  # saves less in training: no more tokens than it
    budget = train.tokens_per_batch * (1 if checkpointed else VAL_TOKEN_FACTOR) // max(split, 1)
    batches = validation_batches(subset, spec.max_seq_length, spec.val_batch_size, token_budget=budget)
    return [collate(subset, b, spec.max_seq_length) for i, b in enumerate(batches) if i % size == rank]
