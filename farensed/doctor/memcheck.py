"""The doctor's memory plan line: the predicted peak of a step against this machine's memory, and the knob to turn
first when it does not fit (farensed/doctor/memplan.py does the arithmetic)."""

from __future__ import annotations

import copy
from pathlib import Path

from farensed.doctor.check import INFO, OK, WARN, Check
from farensed.doctor.lengths import data_lengths
from farensed.doctor.memplan import MAX_DIM, ModelShape, StepShape, model_shape, plan, step_shape, validation_beside
from farensed.i18n import _
from farensed.storage.procs import usable_cores
from farensed.units import size as gb

SAFETY = 0.9  # plan within this share of the limit: the OS, the data loader and the allocator's cache need room
TILE = 1024  # the ce_chunk the doctor suggests (bench/RESULTS.md: where tiles pay on the CPU measured)


def memory_limit(probe: dict) -> tuple[int | None, str]:
    """The GPU's recommended working set (Apple silicon), else the machine's RAM."""
    working = probe.get("info", {}).get("max_recommended_working_set_size")
    if isinstance(working, (int, float)) and working > 0:
        return int(working), _("recomendados para a GPU")
    try:
        import psutil

        return int(psutil.virtual_memory().total), _("de RAM")
    except Exception:  # no psutil reading: no comparison, the plan alone
        return None, ""


def _changed(spec, **changes):
    other = copy.deepcopy(spec)
    for key, value in changes.items():
        if key == "lora.layers":
            other.lora.layers = value
        else:
            setattr(other, key, value)
    return other


def _batch_split(batch_size: int, world: int) -> int | None:
    """The smallest k > 1 that divides the batch into k accumulated parts, each still a multiple of the hosts (the
    effective batch stays batch_size exactly); None when there is none (batch 1, or a prime batch over its hosts)."""
    return next((k for k in range(2, batch_size + 1) if batch_size % k == 0 and (batch_size // k) % world == 0), None)


def knobs(spec, model: ModelShape, world: int = 1) -> list[tuple[str, object]]:
    """Changes that shrink a step, cheapest for the result first: the first two change no number of the training;
    grad_checkpoint costs compute; a smaller batch keeps the effective batch through grad_accumulation; fewer
    adapted layers or a shorter max_seq_length change what is trained."""
    out: list[tuple[str, object]] = []
    if not spec.counted_loss and not spec.pack:
        out.append(("counted_loss: true", _changed(spec, counted_loss=True)))
    if not spec.ce_chunk:  # tiles need the counted loss (engine/runner.py: without it, mlx-lm's loss): both said
        text = f"ce_chunk: {TILE}" if spec.counted_loss else f"counted_loss: true, ce_chunk: {TILE}"
        out.append((text, _changed(spec, counted_loss=True, ce_chunk=TILE)))
    if not spec.grad_checkpoint:
        out.append(("grad_checkpoint: true", _changed(spec, grad_checkpoint=True)))
    if split := _batch_split(spec.batch_size, world):
        smaller, accumulation = spec.batch_size // split, spec.grad_accumulation * split
        text = f"batch_size: {smaller}, grad_accumulation: {accumulation}"
        out.append((text, _changed(spec, batch_size=smaller, grad_accumulation=accumulation)))
    layers = model.layers if spec.lora.layers == -1 else min(spec.lora.layers, model.layers)
    if layers > 1:
        out.append((f"lora.layers: {layers // 2}", _changed(spec, **{"lora.layers": layers // 2})))
    if spec.max_seq_length > 256:
        out.append(
            (f"max_seq_length: {spec.max_seq_length // 2}", _changed(spec, max_seq_length=spec.max_seq_length // 2))
        )
    return out


def validates_beside(spec, probe: dict, world: int) -> bool:
    """Whether the run's validations may sit beside its steps: MLX on the CPU with a core to spare, one host, the
    automatic validation batch (engine/validation.py: background_possible)."""
    device = str(probe.get("device", ""))
    return "cpu" in device and world == 1 and spec.val_batch_size is None and usable_cores() >= 2


def peak(spec, model: ModelShape, step: StepShape, beside: bool) -> dict[str, float]:
    """The plan of a step (`total`), and what a background validation's batch may add beside it (`validation`, at
    most: the two peaks meeting); `worst` is what must fit."""
    parts = plan(spec, model, step)
    parts["validation"] = validation_beside(spec, model, step) if beside else 0.0
    parts["worst"] = parts["total"] + parts["validation"]
    return parts


def first_knob(
    spec, model: ModelShape, reshape, limit: float, world: int = 1, beside: bool = False
) -> tuple[str, float] | None:
    """The cheapest single change whose plan fits `limit`, with its predicted peak; None when none does alone."""
    for text, other in knobs(spec, model, world):
        total = peak(other, model, reshape(other), beside)["worst"]
        if total <= limit:
            return text, total
    return None


def check_memory_plan(spec, model_dir: Path, train_file: Path, probe: dict, world: int = 1) -> Check:
    """One line: the predicted peak per step, what it is made of, whether it fits, and the knob to turn first."""
    model = model_shape(model_dir)
    if model is None:
        text = _(
            "{path}: o plano precisa de um config.json com hidden_size, num_attention_heads, num_hidden_layers, "
            "intermediate_size e vocab_size inteiros de 1 a {most}"
        ).format(path=model_dir, most=MAX_DIM)
        return Check("memory_plan", INFO, text)
    lengths = data_lengths(train_file, model_dir, spec.mask_prompt, spec.max_seq_length)

    def reshape(other) -> StepShape:
        clipped = [(min(n, other.max_seq_length), o) for n, o in lengths.longest]
        return step_shape(other, clipped, lengths.counted_share, world, lengths.total_tokens)

    step = reshape(spec)
    beside = validates_beside(spec, probe, world)
    parts = peak(spec, model, step, beside)
    source = _("tokens contados") if lengths.source == "tokenizer" else _("tokens estimados pelos caracteres")
    detail = _(
        "≈ {total} por step (pesos {weights}, treino {trainable}, ativações {activations}, logits {logits}); "
        "batch mais largo {rows}×{width} tokens, {counted} contados pela loss ({source})"
    ).format(
        total=gb(parts["total"]),
        weights=gb(parts["weights"]),
        trainable=gb(parts["trainable"]),
        activations=gb(sum(parts[k] for k in ("layers", "attention", "frozen", "transient", "fixed"))),
        logits=gb(parts["head"]),
        rows=step.rows,
        width=step.width - 1,
        counted=step.counted,
        source=source,
    )
    if beside:
        detail += _("; uma validação ao lado (CPU) junta-lhe até {val}").format(val=gb(parts["validation"]))
    data = {"parts": parts, "step": step.__dict__, "lengths_source": lengths.source}
    limit, what = memory_limit(probe)
    if limit is None:
        return Check("memory_plan", OK, detail, data=data)
    data["limit_bytes"] = limit
    detail += _("; limite {limit} {what}").format(limit=gb(limit), what=what)
    if parts["worst"] <= SAFETY * limit:
        return Check("memory_plan", OK, detail, data=data)
    knob = first_knob(spec, model, reshape, SAFETY * limit, world, beside)
    if knob is None:
        fix = _("não cabe com uma só mudança: reduza max_seq_length e batch_size e ligue grad_checkpoint")
    else:
        fix = _("mude primeiro {knob} (≈ {total})").format(knob=knob[0], total=gb(knob[1]))
        data["knob"] = knob[0]
    return Check("memory_plan", WARN, detail, fix, data=data)
