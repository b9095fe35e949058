"""Sequence packing: several examples per row, each one attending only to itself, positions restarting per example.

The examples of an epoch are packed first-fit decreasing into rows of `max_seq_length` tokens: the longest first,
each into the first row with room. Ties in length are broken by a permutation drawn from (seed, epoch), and the rows
are shuffled by (seed, epoch): the order is a pure function of (seed, epoch) from any start position (exact resume
fast-forwards by arithmetic). First-fit decreasing only looks at the lengths, so every epoch has the same number of
rows and steps. A batch is `batch_size` rows (the last one filled with empty rows, weighted 0).

Inside a row, the attention mask is block-diagonal and causal (no token sees another example) and the rotary
positions restart at 0 for each example, so an example's logits are those it has alone. Each example contributes
exactly the targets mlx-lm's `default_loss` counts for it unpacked (its completion, and the padding id after its
last token when it was not truncated): packing changes which examples share a step, never what one contributes.
The model runs its own layers; a stand-in for the KV cache hands each layer the mask and the per-token positions.
Only mlx-lm's `llama` models (Llama, Mistral, SmolLM, ...) are packed: others are refused with one line.
"""

from __future__ import annotations

import numpy as np

from farensed.engine.data import PAD_TO, TokenizedSet
from farensed.engine.trainloss import CountedLoss, gather_plan
from farensed.errors import SpecError
from farensed.i18n import _
from farensed.spec.options import PACKED_ARCHITECTURES

PAD_SEGMENT = -1  # padding attends to padding only (never an empty softmax row)


def first_fit_decreasing(lengths: list[int], capacity: int, seed: int, epoch: int) -> list[list[int]]:
    """Rows of example indices, each summing to at most `capacity` tokens, in an order drawn from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch, 0x7061636B])  # "pack": apart from the unpacked batch order's draws
    tie = rng.permutation(len(lengths))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], tie[i]))
    room = np.empty(0, np.int64)
    rows: list[list[int]] = []
    for i in order:
        fits = np.flatnonzero(room >= lengths[i])
        if fits.size:
            rows[fits[0]].append(i)
            room[fits[0]] -= lengths[i]
        else:
            rows.append([i])
            room = np.append(room, capacity - lengths[i])
    return [rows[k] for k in rng.permutation(len(rows))]


def packed_row(data: TokenizedSet, row: list[int], max_seq_length: int, width: int) -> tuple:
    """One row: tokens, targets, positions, segments and the counted positions (flat in the row) of its examples."""
    tokens, targets = np.zeros(width, np.int32), np.zeros(width, np.int32)
    positions, segments = np.zeros(width, np.int32), np.full(width, PAD_SEGMENT, np.int32)
    counted, start = [], 0
    for segment, i in enumerate(row):
        n = min(len(data.tokens[i]), max_seq_length)
        ids = np.asarray(data.tokens[i][:n], np.int32)
        tokens[start : start + n] = ids
        targets[start : start + n - 1] = ids[1:]  # and 0 after the last token, as default_loss counts it
        positions[start : start + n] = np.arange(n)
        segments[start : start + n] = segment
        last = n - 1 if n < max_seq_length else n - 2  # a truncated example has no target after its last token
        first = max(data.offsets[i] - 1, 0)
        counted.extend(range(start + first, start + last + 1))
        start += n
    return tokens, targets, positions, segments, np.asarray(counted, np.int64)


class PackedBatches:
    """The iterate_batches collaborator for packing: `(inputs, targets, positions, segments, index, weight)`."""

    def __init__(self, data: TokenizedSet, spec, rank: int = 0, size: int = 1):
        self.data, self.seed, self.rank, self.size = data, spec.seed, rank, size
        self.rows_per_batch, self.max_seq_length = spec.batch_size, spec.max_seq_length
        self.lengths = [min(len(t), spec.max_seq_length) for t in data.tokens]
        rows = first_fit_decreasing(self.lengths, spec.max_seq_length, self.seed, 0)
        self.steps_per_epoch = -(-len(rows) // spec.batch_size)
        self.tokens_per_batch = len(range(rank, spec.batch_size, size)) * _width(spec.max_seq_length)
        self.summary = self._summary(rows, spec)

    def epoch(self, epoch: int, start: int = 0):
        """The packed batches of one epoch from position `start`."""
        rows = first_fit_decreasing(self.lengths, self.max_seq_length, self.seed, epoch)
        for index in range(start, self.steps_per_epoch):
            group = rows[index * self.rows_per_batch : (index + 1) * self.rows_per_batch]
            group += [[]] * (self.rows_per_batch - len(group))  # empty rows: every rank gets its share
            yield index, self.collate(group[self.rank :: self.size])

    def collate(self, rows: list[list[int]]) -> tuple:
        import mlx.core as mx

        fill = max([sum(self.lengths[i] for i in row) for row in rows] + [1])
        width = min(_width(fill), _width(self.max_seq_length))
        built = [packed_row(self.data, row, self.max_seq_length, width) for row in rows]
        index = np.concatenate([r * width + b[4] for r, b in enumerate(built)]).astype(np.int32)
        arrays = [mx.array(np.stack([b[k] for b in built])) for k in range(4)]
        return (*arrays, *(mx.array(a) for a in gather_plan(index)))

    def _summary(self, rows: list[list[int]], spec) -> dict:
        """Epoch 0's padding, packed and as length-sorted batches of `batch_size` would pad it (the banner's line)."""
        from farensed.engine.data import length_sorted_batches, padded_width

        tokens = sum(self.lengths)
        plain = sum(
            len(g) * padded_width(max(self.lengths[i] for i in g), spec.max_seq_length)
            for g in length_sorted_batches(self.data, spec.batch_size, drop_last=True)
        )
        packed = 0
        for k in range(self.steps_per_epoch):
            group = rows[k * spec.batch_size : (k + 1) * spec.batch_size]
            fill = max(sum(self.lengths[i] for i in row) for row in group)
            packed += spec.batch_size * min(_width(fill), _width(spec.max_seq_length))
        return {
            "examples": len(self.lengths),
            "rows": len(rows),
            "steps": self.steps_per_epoch,
            "tokens": tokens,
            "padded_plain": plain,
            "padded_packed": packed,
        }

    def banner_line(self) -> str:
        s = self.summary
        return _(
            "Packing: {examples} exemplos em {rows} linhas de até {capacity} tokens ({steps} steps por época); "
            "padding {plain:.0%} → {packed:.0%} das posições calculadas"
        ).format(
            examples=s["examples"],
            rows=s["rows"],
            capacity=self.max_seq_length,
            steps=s["steps"],
            plain=1 - s["tokens"] / max(s["padded_plain"], 1),
            packed=1 - s["tokens"] / max(s["padded_packed"], 1),
        )


def _width(fill: int) -> int:
    return PAD_TO * -(-fill // PAD_TO)


class _PackedCache:
    """What an mlx-lm llama layer reads from its KV cache, standing in for one: the per-token rotary positions
    (`offset`) and the block-diagonal causal mask (`make_mask`); keys and values pass through unchanged."""

    def __init__(self, positions, mask):
        self.offset, self.mask = positions, mask

    def make_mask(self, n, return_array=False, window_size=None):
        return self.mask

    def update_and_fetch(self, keys, values):
        return keys, values


class TokenRoPE:
    """A layer's rotary embedding applied at per-token positions: each token becomes a one-token sequence at its own
    offset (mx.fast.rope takes one offset per batch row), so any mlx-lm RoPE variant keeps its frequencies."""

    def __init__(self, rope):
        self.rope = rope

    def __call__(self, x, offset=0):
        import mlx.core as mx

        if not (isinstance(offset, mx.array) and offset.ndim == 2):
            return self.rope(x, offset=offset)
        batch, heads, length, dims = x.shape
        y = x.transpose(0, 2, 1, 3).reshape(batch * length, heads, 1, dims)
        y = self.rope(y, offset=offset.reshape(-1))
        return y.reshape(batch, length, heads, dims).transpose(0, 2, 1, 3)


def enable_packing(model) -> None:
    """Refuse a model packing cannot keep exact; give its attention layers per-token positions (once)."""
    import mlx_lm.models.llama as llama

    body = getattr(model, "model", None)
    kind = getattr(getattr(model, "args", None), "model_type", "?")
    layer_types = set(getattr(body, "layer_types", None) or ["full_attention"])
    if not isinstance(body, llama.LlamaModel) or layer_types != {"full_attention"}:
        raise SpecError(
            _("pack: a arquitetura '{model_type}' não é suportada (só {supported}); use pack: false").format(
                model_type=str(kind)[:40], supported=", ".join(PACKED_ARCHITECTURES)
            )
        )
    for layer in body.layers:
        if not isinstance(layer.self_attn.rope, TokenRoPE):
            layer.self_attn.rope = TokenRoPE(layer.self_attn.rope)


class PackedLoss(CountedLoss):
    """`loss(model, inputs, targets, positions, segments, index, weight) -> (loss, tokens)` over packed rows."""

    def __call__(self, model, inputs, targets, positions, segments, index, weight):
        import mlx.core as mx

        width = inputs.shape[1]
        causal = mx.arange(width)[:, None] >= mx.arange(width)[None, :]
        mask = (segments[:, None, :, None] == segments[:, None, None, :]) & causal
        caches = [_PackedCache(positions, mask)] * len(model.model.layers)
        flat = self.forward(model, inputs, cache=caches)
        return self.finish(model, flat, targets.reshape(-1), index, weight)

    def sample(self, batch, positions: int = 64) -> tuple:
        """The first row's first `positions` tokens as one packed row (its own segments and positions kept)."""
        import mlx.core as mx

        inputs, targets, rope_positions, segments = (a[:1, :positions] for a in batch[:4])
        n = inputs.shape[1]
        return inputs, targets, rope_positions, segments, mx.arange(n, dtype=mx.int32), mx.ones((n,), mx.float32)

    def check(self, model, batch) -> None:
        enable_packing(model)
        super().check(model, batch)
