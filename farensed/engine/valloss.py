"""The validation loss, forward only and compiled: the same number as mlx-lm's `default_loss`, computed cheaper.

Only the positions the loss counts (the completion after the masked prompt, before the padding) go through the
output projection and the cross-entropy; the model's body still reads every token. For chat data about half the
positions are prompt, and the output projection is the largest matrix of a small model (vocabulary x hidden), so
this skips much of the work. The shortcut is used only where the model is `body` then a plain `lm_head` (or tied
embeddings), and only after it reproduced `default_loss` on the first batch; otherwise the full forward runs.
"""

from __future__ import annotations

from functools import partial

import numpy as np

CHECK_POSITIONS = 64  # positions the shortcut is checked on
AGREE = 1e-4  # relative: float rounding is ~1e-7; a model with a special head (soft-capping, scaling) differs far more


def counted_index(lengths: np.ndarray, width: int) -> np.ndarray:
    """Flat (row x target position) indices where default_loss's mask is true: offset <= step <= length."""
    steps = np.arange(1, width)  # the targets are batch[:, 1:]
    mask = (steps[None, :] >= lengths[:, :1]) & (steps[None, :] <= lengths[:, 1:])
    return np.flatnonzero(mask).astype(np.int32)


def _head(model):
    """(body, head) when the model is a transformer body followed by a plain output projection, else None."""
    body = getattr(model, "model", None)
    if body is None:
        return None
    if getattr(getattr(model, "args", None), "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        embed = getattr(body, "embed_tokens", None)
        return (body, embed.as_linear) if embed is not None and hasattr(embed, "as_linear") else None
    return body, model.lm_head


class ValidationLoss:
    """Compiled forward-only loss sums of the validation batches: `(loss x tokens, tokens)` per batch."""

    def __init__(self, model, batches: list):
        import mlx.core as mx

        self.model = model
        self.index = [mx.array(counted_index(np.array(lengths), batch.shape[1])) for batch, lengths in batches]
        self.full = self._compile_full()
        self.counted = self._compile_counted() if _head(model) else None
        self.checked = False

    def _compile_full(self):
        import mlx.core as mx
        from mlx_lm.tuner.trainer import default_loss

        model = self.model

        @partial(mx.compile, inputs=model.state)
        def full(batch, lengths):
            loss, toks = default_loss(model, batch, lengths)
            return loss * toks, toks.astype(mx.float32)

        return full

    def _compile_counted(self):
        import mlx.core as mx
        import mlx.nn as nn

        model = self.model
        body, head = _head(model)

        @partial(mx.compile, inputs=model.state)
        def counted(batch, index):
            hidden = body(batch[:, :-1])
            hidden = hidden.reshape(-1, hidden.shape[-1])[index]
            targets = batch[:, 1:].reshape(-1)[index]
            ce = nn.losses.cross_entropy(head(hidden), targets)
            return ce.astype(mx.float32).sum(), mx.array(index.size, mx.float32)

        return counted

    def __call__(self, i: int, batch, lengths):
        """The loss sum and token count of validation batch `i` (the model in eval mode)."""
        import mlx.core as mx

        if self.index[i].size == 0:  # every example truncated inside its prompt: nothing to count (not NaN)
            return mx.array(0.0), mx.array(0.0)
        if self.counted is not None and not self.checked:
            self._check(i, batch, lengths)
        if self.counted is None:
            return self.full(batch, lengths)
        return self.counted(batch, self.index[i])

    def _check(self, i: int, batch, lengths) -> None:
        """Keep the shortcut only if it reproduces default_loss on a sample of this batch (its first row's first
        CHECK_POSITIONS targets, all counted: the full logits of a whole batch would be the run's memory peak)."""
        import mlx.core as mx

        self.checked = True
        tokens = batch[:1, : CHECK_POSITIONS + 1]
        n = tokens.shape[1] - 1
        try:
            a, b = self.full(tokens, mx.array([[0, n]])), self.counted(tokens, mx.arange(n, dtype=mx.int32))
            mx.eval(a, b)
            same = abs(a[0].item() - b[0].item()) <= AGREE * abs(a[0].item()) and a[1].item() == b[1].item()
        except Exception:  # an architecture whose body does not take tokens alone: the full forward it is
            same = False
        if not same:
            self.counted = None
