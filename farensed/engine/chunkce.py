"""Cross-entropy over the vocabulary in tiles: the full logits (positions x vocabulary) never exist at once.

The forward pass projects the hidden states on one tile of the vocabulary at a time and keeps only each tile's
log-sum-exp (positions x tiles numbers); the backward pass recomputes each tile's logits, turns them into the
softmax with the saved log-sum-exp and adds the tile's share of the hidden states' gradient. Peak memory grows
with positions x tile instead of positions x vocabulary, for one more projection in the backward pass. Pure MLX
(`mx.custom_function` with its own vjp): float and quantized heads (nn.Linear, nn.QuantizedLinear, tied
embeddings), on any device. The head's weights are frozen in every fine-tune type farense trains (LoRA, DoRA, and
`full` unfreezes transformer blocks only), so only the hidden states get a gradient.
"""

from __future__ import annotations

DEFAULT_TILE = 4096  # vocabulary rows per tile (bench/RESULTS.md, "Memory of a step": 1024 and 4096 peaked alike)


class TiledHead:
    """The output projection of a model as (weight[, scales, biases]) rows, so it can be applied one tile at a time."""

    def __init__(self, module):
        import mlx.nn as nn

        self.quantized = isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))
        if not self.quantized and not isinstance(module, (nn.Linear, nn.Embedding)):
            raise TypeError(type(module).__name__)
        if "bias" in module:
            raise TypeError("bias")  # no output projection farense trains has one; refuse rather than drop it
        self.module = module
        if self.quantized:
            self.group_size, self.bits, self.mode = module.group_size, module.bits, module.mode

    def arrays(self) -> tuple:
        m = self.module
        if not self.quantized:
            return (m["weight"],)
        return (m["weight"], m["scales"], m.get("biases"))

    def rows(self, arrays: tuple, start: int, stop: int) -> tuple:
        return tuple(None if a is None else a[start:stop] for a in arrays)

    def project(self, hidden, arrays: tuple):
        """hidden @ rows.T: the logits of these vocabulary rows."""
        return self._times(hidden, arrays, transpose=True)

    def back(self, grad_logits, arrays: tuple):
        """grad_logits @ rows: the hidden states' gradient through these rows."""
        return self._times(grad_logits, arrays, transpose=False)

    def _times(self, x, arrays: tuple, transpose: bool):
        import mlx.core as mx

        if not self.quantized:
            return x @ arrays[0].T if transpose else x @ arrays[0]
        w, scales, biases = arrays
        return mx.quantized_matmul(
            x,
            w,
            scales=scales,
            biases=biases,
            transpose=transpose,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )


def chunked_cross_entropy(head: TiledHead, hidden, targets, tile: int = DEFAULT_TILE):
    """Per-position cross-entropy of `head(hidden)` against `targets`, computed `tile` vocabulary rows at a time.

    Equals `nn.losses.cross_entropy(head(hidden), targets)` up to float rounding; `hidden` is (positions, dims)."""
    import mlx.core as mx

    arrays = head.arrays()  # read while tracing: the frozen head's arrays enter as constants, never as primals
    vocab = arrays[0].shape[0]
    bounds = [(start, min(start + tile, vocab)) for start in range(0, vocab, tile)]

    def tile_logits(hidden, a: int, b: int):
        return head.project(hidden, head.rows(arrays, a, b)).astype(mx.float32)

    def tile_target(targets, a: int, b: int):
        """Where each target falls in tile [a, b), and whether it does (the target's logit is read from the tile's
        own logits: the same numbers as the untiled projection's)."""
        local = targets - a
        return mx.clip(local, 0, b - a - 1), (local >= 0) & (local < b - a)

    @mx.custom_function
    def ce(hidden, targets):
        lses, picked = [], mx.zeros(targets.shape, mx.float32)
        for a, b in bounds:  # each tile after the previous one's reduction: few tiles of logits alive at a time
            after = hidden if not lses else mx.depends(hidden, lses[-1])
            logits = tile_logits(after, a, b)
            local, inside = tile_target(targets, a, b)
            picked = picked + mx.where(inside, mx.take_along_axis(logits, local[:, None], axis=-1)[:, 0], 0.0)
            lses.append(mx.logsumexp(logits, axis=-1))
        lse = mx.logsumexp(mx.stack(lses, axis=-1), axis=-1)
        return lse - picked, lse

    @ce.vjp
    def ce_vjp(primals, cotangents, outputs):
        hidden, targets = primals
        grad = cotangents[0].astype(mx.float32)[:, None]
        lse = outputs[1][:, None]
        dh = mx.zeros(hidden.shape, mx.float32)
        for a, b in bounds:  # recompute each tile's logits: softmax = exp(logits - lse), minus the target's one-hot
            after = mx.depends(hidden, dh)
            local, inside = tile_target(targets, a, b)
            onehot = (mx.arange(b - a)[None, :] == local[:, None]) & inside[:, None]
            probs = (mx.exp(tile_logits(after, a, b) - lse) - onehot) * grad
            dh = dh + head.back(probs.astype(hidden.dtype), head.rows(arrays, a, b)).astype(mx.float32)
        return dh.astype(hidden.dtype), mx.zeros_like(targets)

    return ce(hidden, targets)[0]
