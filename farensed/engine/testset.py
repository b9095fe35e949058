"""`data.test` evaluated once training ends: loss and perplexity, as `mlx_lm lora --test` reports them.

The adapters evaluated are the job's result (the best ones, output/<name>/). The result file test_results.json
is written once; a run killed before it exists evaluates again when resumed.
"""

from __future__ import annotations

import math

from farensed.engine import console
from farensed.engine.data import TokenizedSet, collate, length_sorted_batches, tokenize_file
from farensed.engine.loading import tokenizer_of
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_json

RESULT_NAME = "test_results.json"


def test_loss(model, data: TokenizedSet, batch_size: int, max_seq_length: int, max_batches: int = -1) -> float:
    """Token-weighted mean loss over fixed, length-sorted batches (no randomness)."""
    import mlx.core as mx
    from mlx_lm.tuner.trainer import default_loss

    batches = length_sorted_batches(data, batch_size, drop_last=False)
    if max_batches > 0:
        batches = batches[:max_batches]
    model.eval()
    total, ntoks = mx.array(0.0), mx.array(0.0)
    for indices in batches:
        loss, toks = default_loss(model, *collate(data, indices, max_seq_length))
        total, ntoks = total + loss * toks, ntoks + toks
        mx.eval(total, ntoks)
    return (total / ntoks).item()


def evaluate_test_set(trainer) -> dict:
    """Load the best adapters into the trainer's model, evaluate data.test, write test_results.json."""
    spec, run_dir = trainer.spec, trainer.run_dir
    target = run_dir / RESULT_NAME
    if target.exists():
        from farensed.storage.atomic import read_json

        return read_json(target)
    console.say("\n" + _("A avaliar o conjunto de teste (data.test)..."))
    trainer.model.load_weights(str(run_dir / "adapters" / "adapters.safetensors"), strict=False)
    data = tokenize_file(
        trainer.ws.resolve(spec.data.test),
        tokenizer_of(trainer.model_path, trainer.model_config),
        spec.max_seq_length,
        spec.mask_prompt,
    )
    loss = test_loss(trainer.model, data, spec.batch_size, spec.max_seq_length, spec.test_batches)
    result = {"test_loss": loss, "test_ppl": math.exp(loss), "examples": len(data), "adapters": "best"}
    atomic_write_json(target, result)
    console.say(f"Test loss {loss:.3f}, Test ppl {result['test_ppl']:.3f}.")
    return result
