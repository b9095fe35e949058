"""What `mlx_lm lora` builds before its loop, built with mlx-lm's own helpers: fine-tune type, optimizer, schedule.

Exact resume needs nothing special here: the optimizer's whole state (moments, `step`, and the scheduled
`learning_rate`, a function of `step`) is a tree of arrays that the trainer saves and restores as it is.
"""

from __future__ import annotations

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.terminal import excerpt

# mlx_lm/lora.py train_model(): optimizer name -> mlx.optimizers class
OPTIMIZER_CLASSES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "adafactor": "Adafactor", "muon": "Muon"}


def learning_rate(spec, check_only: bool = False):
    """A constant learning rate, or mlx-lm's schedule (mlx_lm.tuner.utils.build_schedule) from `lr_schedule`.

    `check_only`: the same calls on mlx.optimizers' schedulers without importing mlx-lm (whose tuner utilities
    import transformers, ~1.5 s): what `submit` runs to refuse a wrong schedule at once. tests/test_fast_optim.py
    checks that it gives mlx-lm's learning rates.
    """
    if not spec.lr_schedule:
        return spec.learning_rate
    if check_only:
        build_schedule = schedule_without_mlx_lm
    else:
        from mlx_lm.tuner.utils import build_schedule
    try:
        return build_schedule(spec.lr_schedule)
    except (TypeError, ValueError, KeyError) as exc:
        raise SpecError(
            f"lr_schedule: {spec.lr_schedule['name']}{tuple(spec.lr_schedule['arguments'])}: {exc}"
        ) from None


def schedule_without_mlx_lm(config: dict):
    """mlx_lm.tuner.utils.build_schedule's calls (scheduler, optional linear warmup joined before it), on
    mlx.optimizers alone."""
    import mlx.optimizers as optim

    arguments = config["arguments"]
    schedule = getattr(optim.schedulers, config["name"])(*arguments)
    if warmup := config.get("warmup", 0):
        ramp = optim.schedulers.linear_schedule(config.get("warmup_init", 0.0), arguments[0], warmup)
        return optim.schedulers.join_schedules([ramp, schedule], [warmup + 1])
    return schedule


def build_optimizer(spec, check_only: bool = False):
    """The spec's optimizer with its `optimizer_config` entry passed through, as mlx-lm does (`check_only`: for
    submit's check, the schedule built without importing mlx-lm)."""
    import mlx.optimizers as optim

    cls = getattr(optim, OPTIMIZER_CLASSES[spec.optimizer])
    kwargs = (spec.optimizer_config or {}).get(spec.optimizer, {})
    lr = learning_rate(spec, check_only)
    try:
        return cls(learning_rate=lr, **kwargs)
    except TypeError as exc:
        raise SpecError(f"optimizer_config.{spec.optimizer}: {exc}") from None


def apply_fine_tune_type(model, spec, ws, say) -> None:
    """Freeze the base, then add LoRA/DoRA adapters or unfreeze the last layers (full); optionally load adapters."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    layers = spec.lora.layers
    if layers > len(model.layers):
        say(
            _("ℹ  lora.layers = {layers} > {n_layers} camadas do modelo: todas são adaptadas").format(
                layers=layers, n_layers=len(model.layers)
            )
        )
    mx.random.seed(spec.seed)  # the adapters' initial weights
    model.freeze()
    if spec.fine_tune_type == "full":
        for layer in model.layers[-max(layers, 0) :] if layers != -1 else model.layers:
            layer.unfreeze()
    else:
        config = {"rank": spec.lora.rank, "scale": spec.lora.scale, "dropout": spec.lora.dropout}
        if spec.lora.keys:
            config["keys"] = spec.lora.keys
        linear_to_lora_layers(model, layers, config, use_dora=spec.fine_tune_type == "dora")
    if not tree_flatten(model.trainable_parameters()):  # keys that name no layer: MLX's grad would fail on nothing
        names = linear_names(model)
        raise SpecError(
            _("lora.keys {keys}: nenhuma camada do modelo tem esses nomes (por exemplo: {names})").format(
                keys=excerpt(spec.lora.keys), names=", ".join(names[:6])
            )
        )
    if spec.resume_adapter_file:
        path = ws.resolve(spec.resume_adapter_file)
        say(_("A carregar adapters iniciais de {path}").format(path=path))
        model.load_weights(str(path), strict=False)


def linear_names(model) -> list[str]:
    """The linear layers of a transformer block as lora.keys names them (self_attn.q_proj, mlp.down_proj, …)."""
    import mlx.nn as nn

    found = model.layers[0].named_modules()
    return sorted(name for name, m in found if isinstance(m, (nn.Linear, nn.QuantizedLinear)) and name)


def enable_grad_checkpoint(model) -> None:
    """Activation checkpointing on every transformer block, with mlx-lm's trainer helper (once per process)."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    cls = type(model.layers[0])
    if not getattr(cls, "_farense_checkpointed", False):  # the helper patches the class; never wrap it twice
        grad_checkpoint(model.layers[0])
        cls._farense_checkpointed = True


def set_wired_limit() -> None:
    """On Apple GPUs, wire the recommended working set as `mlx_lm lora` does; nothing elsewhere."""
    import mlx.core as mx

    if mx.metal.is_available():
        from mlx_lm.utils import maybe_set_recommended_wired_limit

        maybe_set_recommended_wired_limit()


def clear_cache(threshold: int) -> None:
    """mlx-lm's clear_cache_threshold: free the allocator cache once it grows past `threshold` bytes."""
    if threshold:
        from mlx_lm.tuner.trainer import _clear_cache

        _clear_cache(threshold)
