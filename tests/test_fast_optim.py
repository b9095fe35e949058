"""Every optimizer and schedule mlx_lm lora offers survives a save/restore of its state bit for bit (no model)."""

from __future__ import annotations

import pytest

from farensed.engine.optim import OPTIMIZER_CLASSES, build_optimizer
from farensed.errors import SpecError
from farensed.spec.jobspec import parse_spec

BASE = {"name": "t", "model": "m", "data": {"train": "a", "valid": "b"}, "learning_rate": 1e-2}
SCHEDULE = {"name": "cosine_decay", "arguments": [1e-2, 6, 1e-4], "warmup": 2, "warmup_init": 1e-4}


def _model():
    import mlx.core as mx
    import mlx.nn as nn

    mx.random.seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model, optimizer, steps):
    import mlx.core as mx
    import mlx.nn as nn

    def loss_fn(model, x, y):
        return nn.losses.mse_loss(model(x), y)

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    for step in steps:
        key = mx.random.key(step)
        x, y = mx.random.normal((6, 8), key=key), mx.random.normal((6, 4), key=mx.random.split(key)[0])
        _, grads = loss_and_grad(model, x, y)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)


@pytest.mark.parametrize("name", sorted(OPTIMIZER_CLASSES))
@pytest.mark.parametrize("schedule", [None, SCHEDULE], ids=["constant", "cosine+warmup"])
def test_optimizer_state_restores_exactly(tmp_path, name, schedule):
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    from farensed.engine.checkpoint import save_safetensors

    spec = parse_spec(dict(BASE, optimizer=name, lr_schedule=schedule))
    whole, opt = _model(), build_optimizer(spec)
    _train(whole, opt, range(8))

    half, opt = _model(), build_optimizer(spec)
    _train(half, opt, range(3))
    save_safetensors(tmp_path / "w.safetensors", dict(tree_flatten(half.parameters())))
    save_safetensors(tmp_path / "o.safetensors", dict(tree_flatten(opt.state)))
    resumed, opt = _model(), build_optimizer(spec)  # a new process would build everything again
    resumed.load_weights(str(tmp_path / "w.safetensors"))
    opt.state = tree_unflatten(list(mx.load(str(tmp_path / "o.safetensors")).items()))
    opt.init(resumed.trainable_parameters())
    _train(resumed, opt, range(3, 8))

    a, b = dict(tree_flatten(whole.parameters())), dict(tree_flatten(resumed.parameters()))
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert opt.step.item() == 8
    if schedule:  # the schedule moved on from where it was saved
        assert abs(opt.learning_rate.item() - 1e-2) > 1e-6


def test_optimizer_config_is_passed_through_and_bad_arguments_are_one_line():
    spec = parse_spec(dict(BASE, optimizer="adamw", optimizer_config={"adamw": {"weight_decay": 0.25}}))
    assert build_optimizer(spec).weight_decay == 0.25
    spec = parse_spec(dict(BASE, optimizer="sgd", optimizer_config={"sgd": {"mommentum": 0.9}}))
    with pytest.raises(SpecError, match="optimizer_config.sgd: .*mommentum"):
        build_optimizer(spec)
    spec = parse_spec(dict(BASE, lr_schedule={"name": "cosine_decay", "arguments": [1e-3, 10, 0, 5, 9]}))
    with pytest.raises(SpecError, match="lr_schedule: cosine_decay"):
        build_optimizer(spec)
    with pytest.raises(SpecError, match="lr_schedule: cosine_decay"):
        build_optimizer(spec, check_only=True)  # submit's check: the same one line


@pytest.mark.parametrize(
    "schedule",
    [
        SCHEDULE,
        {"name": "cosine_decay", "arguments": [1e-3, 20]},
        {"name": "linear_schedule", "arguments": [0.0, 1e-3, 10], "warmup": 3},
        {"name": "exponential_decay", "arguments": [1e-3, 0.9]},
        {"name": "step_decay", "arguments": [1e-3, 0.5, 4], "warmup": 2},
    ],
)
def test_submits_schedule_check_gives_mlx_lms_learning_rates(schedule):
    """The check that spares submit mlx-lm's import builds what mlx_lm.tuner.utils.build_schedule builds."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import build_schedule

    from farensed.engine.optim import schedule_without_mlx_lm

    ours, theirs = schedule_without_mlx_lm(schedule), build_schedule(schedule)
    for step in range(0, 25):
        assert ours(mx.array(step)).item() == theirs(mx.array(step)).item(), step


def test_submit_checks_a_schedule_without_importing_mlx_lm(tmp_path):
    """A YAML or JSON spec with lr_schedule: submit's check never imports mlx-lm or transformers (~1.5 s)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from farensed.engine.optim import build_optimizer\n"
        "from farensed.spec.jobspec import parse_spec\n"
        f"build_optimizer(parse_spec({dict(BASE, lr_schedule=SCHEDULE)!r}), check_only=True)\n"
        "print(sorted(m for m in ('mlx_lm', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
