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

DEFAULT_TILE = 8192  # vocabulary rows per tile (measured: bench/RESULTS.md, "Memory of a step")


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
        import mlx.core as mx

        if not self.quantized:
            return hidden @ arrays[0].T
        w, scales, biases = arrays
        return mx.quantized_matmul(
            hidden,
            w,
            scales=scales,
            biases=biases,
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )

    def back(self, grad_logits, arrays: tuple):
        """grad_logits @ rows: the hidden states' gradient through these rows."""
        import mlx.core as mx

        if not self.quantized:
            return grad_logits @ arrays[0]
        w, scales, biases = arrays
        return mx.quantized_matmul(
            grad_logits,
            w,
            scales=scales,
            biases=biases,
            transpose=False,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )

    def gather(self, arrays: tuple, index):
        """The float rows `index` of the weight (the targets' rows)."""
        import mlx.core as mx

        if not self.quantized:
            return arrays[0][index]
        w, scales, biases = arrays
        return mx.dequantize(
            w[index],
            scales[index],
            None if biases is None else biases[index],
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )


def chunked_cross_entropy(head: TiledHead, hidden, targets, tile: int = DEFAULT_TILE):
    """Per-position cross-entropy of `head(hidden)` against `targets`, computed `tile` vocabulary rows at a time.

    Equals `nn.losses.cross_entropy(head(hidden), targets)` up to float rounding; `hidden` is (positions, dims)."""
    import mlx.core as mx

    arrays = head.arrays()
    vocab = arrays[0].shape[0]
    bounds = [(start, min(start + tile, vocab)) for start in range(0, vocab, tile)]
    present = tuple(a for a in arrays if a is not None)

    def unpack(flat: tuple) -> tuple:
        it = iter(flat)
        return tuple(None if a is None else next(it) for a in arrays)

    @mx.custom_function
    def ce(hidden, targets, *weights):
        full = unpack(weights)
        h32 = hidden.astype(mx.float32)
        lses = []
        for a, b in bounds:  # each tile after the previous one's reduction: one tile of logits alive at a time
            after = hidden if not lses else mx.depends(hidden, lses[-1])
            lses.append(mx.logsumexp(head.project(after, head.rows(full, a, b)).astype(mx.float32), axis=-1))
        lse = mx.logsumexp(mx.stack(lses, axis=-1), axis=-1)
        picked = (h32 * head.gather(full, targets).astype(mx.float32)).sum(-1)
        return lse - picked, lse

    @ce.vjp
    def ce_vjp(primals, cotangents, outputs):
        hidden, targets, *weights = primals
        full = unpack(tuple(weights))
        grad = cotangents[0].astype(mx.float32)[:, None]
        lse = outputs[1][:, None]
        dh = -grad * head.gather(full, targets).astype(mx.float32)
        for a, b in bounds:  # recompute each tile's logits: softmax = exp(logits - lse)
            rows = head.rows(full, a, b)
            after = mx.depends(hidden, dh)
            probs = mx.exp(head.project(after, rows).astype(mx.float32) - lse) * grad
            dh = dh + head.back(probs.astype(hidden.dtype), rows).astype(mx.float32)
        return (dh.astype(hidden.dtype), mx.zeros_like(targets), *(mx.zeros_like(w) for w in weights))

    return ce(hidden, targets, *present)[0]
