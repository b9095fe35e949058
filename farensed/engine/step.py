"""One training micro-step, compiled, and what makes it repeatable.

The step is built after every piece of state has been restored (mx.compile captures the model's and the
optimizer's state as they are then). Dropout draws from an RNG re-seeded from (seed, step[, rank]) before each
micro-step, so no RNG state has to be saved and a resumed run draws the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np


def step_seed(seed: int, step: int, rank: int | None = None) -> int:
    """The RNG seed of one micro-step (dropout masks), independent of how the run was interrupted."""
    entropy = [seed, step] if rank is None else [seed, step, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass(frozen=True)
class StepPlace:
    """Where a micro-step sits: its epoch and index in the epoch, its place in the accumulation group, and whether
    the optimizer updates after it (end of a group, of an epoch, or of the whole budget)."""

    epoch: int
    index: int
    in_group: int  # 1..grad_accumulation
    boundary: bool
    last: bool


def place(step: int, steps_per_epoch: int, grad_accumulation: int, total_steps: int) -> StepPlace:
    """The place of micro-step `step` (0-based): groups restart at every epoch's start."""
    epoch, index = divmod(step, steps_per_epoch)
    in_group = index % grad_accumulation + 1
    last = step + 1 == total_steps  # an `iters` budget may end mid-epoch
    boundary = in_group == grad_accumulation or index + 1 == steps_per_epoch or last
    return StepPlace(epoch, index, in_group, boundary, last)


def build_micro_step(model, optimizer, loss, world, grad_checkpoint: bool = False):
    """The compiled micro-step `(batch, prev_grad, do_update, micro_steps) -> (loss, tokens, grad)`, and the state
    it carries (model, optimizer, RNG) for `mx.eval`. `loss(model, *batch) -> (loss, tokens)` is mlx-lm's contract."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.nn.utils import average_gradients
    from mlx.utils import tree_map

    if grad_checkpoint:
        from farensed.engine.optim import enable_grad_checkpoint

        enable_grad_checkpoint(model)
    loss_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def micro_step(batch, prev_grad, do_update, micro_steps):
        (value, toks), grad = loss_and_grad(model, *batch)
        if prev_grad is not None:
            grad = tree_map(lambda x, y: x + y, grad, prev_grad)
        if do_update:
            grad = average_gradients(grad)
            if micro_steps > 1:
                grad = tree_map(lambda x: x / micro_steps, grad)
            optimizer.update(model, grad)
            grad = None
        return value, toks, grad

    def run(batch, prev_grad, where: StepPlace, seed: int, step: int, rank: int | None):
        """One micro-step at `where`: re-seed dropout, step, average the loss over ranks, evaluate everything."""
        mx.random.seed(step_seed(seed, step, rank))
        value, toks, grad = micro_step(batch, prev_grad, where.boundary, where.in_group)
        if world.size > 1:  # the global batch's loss, token-weighted over ranks
            loss_sum, toks = world.all_sum(mx.stack([value * toks, toks.astype(mx.float32)]))
            value = loss_sum / toks
        mx.eval(state, value, toks, grad)
        return value.item(), int(toks.item()), grad

    return run
