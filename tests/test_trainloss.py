"""The smaller training step on the real tiny model: the counted-positions loss and the tiled cross-entropy give
mlx-lm's `default_loss` and its gradients; packed rows give each example what it gives alone; a packed run killed
with SIGKILL resumes to the same adapters as one never interrupted."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import (
    assert_same_adapters,
    deterministic_metrics,
    kill_at_record,
    loaded_trainer,
    run_cli,
    spec_with,
    write_spec,
)


def loss_and_grads(model, loss, batch):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    (value, count), grads = nn.value_and_grad(model, loss)(model, *batch)
    return value.item(), int(count.item()), dict(tree_flatten(grads))


def assert_close(ours, reference, rel):
    value, count, grads = ours
    ref_value, ref_count, ref_grads = reference
    assert count == ref_count
    assert value == pytest.approx(ref_value, rel=rel)
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        scale = float(abs(ref_grads[key]).max().item())
        assert float(abs(grad - ref_grads[key]).max().item()) <= rel * scale, key


def test_counted_loss_and_tiled_cross_entropy_equal_default_loss_and_its_gradients(workspace):
    from mlx_lm.tuner.trainer import default_loss

    from farensed.engine.trainloss import CountedBatches, CountedLoss

    trainer = loaded_trainer(workspace, eval_mode=True)
    counted = CountedBatches(trainer.train_set, trainer.spec)
    assert counted.steps_per_epoch == trainer.batches.steps_per_epoch
    widths = {b[0].shape[1] for b in counted.arrays}
    assert len({(b[0].shape[1], b[1].size) for b in counted.arrays}) == len(widths)  # no shape beyond the widths'
    for i in (0, len(counted.arrays) - 1):
        reference = loss_and_grads(trainer.model, default_loss, trainer.batches.arrays[i])
        shortcut = CountedLoss(0)
        shortcut.check(trainer.model, counted.arrays[i])
        assert shortcut.shortcut  # the tiny Mistral is body + plain lm_head
        assert_close(loss_and_grads(trainer.model, shortcut, counted.arrays[i]), reference, rel=1e-6)
        full = CountedLoss(0)
        full.shortcut = False  # the fallback for special heads: full logits, gathered
        assert_close(loss_and_grads(trainer.model, full, counted.arrays[i]), reference, rel=1e-6)
        tiled = CountedLoss(256)  # vocabulary 924: four tiles, the last one short
        tiled.check(trainer.model, counted.arrays[i])
        assert tiled.shortcut and tiled.ce_chunk == 256
        assert_close(loss_and_grads(trainer.model, tiled, counted.arrays[i]), reference, rel=1e-4)


def test_packed_rows_give_each_example_what_it_gives_alone(workspace):
    import mlx.core as mx

    from farensed.engine.data import collate
    from farensed.engine.packing import PackedBatches, PackedLoss, _PackedCache, first_fit_decreasing

    trainer = loaded_trainer(workspace, eval_mode=True, max_seq_length=256, pack=True)
    packed = PackedBatches(trainer.train_set, trainer.spec)
    _index, batch = next(iter(packed.epoch(0)))
    rows = first_fit_decreasing(packed.lengths, 256, trainer.spec.seed, 0)[: trainer.spec.batch_size]
    assert all(len(row) > 1 for row in rows)  # several examples share each row
    loss = PackedLoss(0)
    loss.check(trainer.model, batch)
    inputs, _targets, positions, segments, *_ = batch
    width = inputs.shape[1]
    mask = (segments[:, None, :, None] == segments[:, None, None, :]) & (
        mx.arange(width)[:, None] >= mx.arange(width)[None, :]
    )
    logits = trainer.model(inputs, cache=[_PackedCache(positions, mask)] * len(trainer.model.model.layers))
    total, count, grads = 0.0, 0, None
    from mlx_lm.tuner.trainer import default_loss

    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = packed.lengths[i]
            alone = trainer.model(mx.array([trainer.train_set.tokens[i][:n]]))
            assert mx.allclose(logits[r, start : start + n], alone[0], atol=1e-4).item()  # no token saw another example
            value, examples, example_grads = loss_and_grads(
                trainer.model, default_loss, collate(trainer.train_set, [i], 256)
            )
            total += value * examples
            count += examples
            scaled = {k: g * examples for k, g in example_grads.items()}
            grads = scaled if grads is None else {k: grads[k] + scaled[k] for k in grads}
            start += n
    reference = (total / count, count, {k: g / count for k, g in grads.items()})
    assert_close(loss_and_grads(trainer.model, loss, batch), reference, rel=1e-5)


PACKED = spec_with(max_seq_length=256, pack=True, eval_every=4, save_every=4, epochs=2)


def test_packed_run_killed_resumes_exactly_and_says_the_padding(workspace, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    from tests.conftest import make_workspace

    make_workspace(reference, (workspace / "models" / "tiny-mistral-4bit").resolve())
    proc = run_cli(reference, "run", str(write_spec(reference, PACKED)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Packing: 160 exemplos em" in proc.stdout and "padding" in proc.stdout
    spec = write_spec(workspace, PACKED)
    assert kill_at_record(workspace, spec, 4) == -signal.SIGKILL
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "A retomar de checkpoint_epoch" in proc.stdout
    run = "checkpoints_qlora/t"
    assert_same_adapters(
        reference / run / "adapters/adapters.safetensors", workspace / run / "adapters/adapters.safetensors"
    )
    assert_same_adapters(reference / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
    assert deterministic_metrics(reference / run) == deterministic_metrics(workspace / run)
    records = deterministic_metrics(workspace / run)
    assert records[-1]["loss"] < records[0]["loss"]  # it learned
