"""The spec keys of mlx_lm lora's options: each bad value is one line, exit 2, nothing written."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.spec.jobspec import parse_spec
from tests.helpers import TEST_SPEC
from tests.test_spec import _set, snapshot


def _iters(value):
    def mutate(spec, ws):
        del spec["epochs"]
        spec["iters"] = value

    return mutate


BAD_OPTIONS = [
    ("unknown-optimizer", _set("optimizer", "adamx"), "optimizer: 'adamx' desconhecido (quis dizer 'adam'?)"),
    ("unknown-fine-tune-type", _set("fine_tune_type", "qlora"), "fine_tune_type: 'qlora' desconhecido"),
    ("schedule-no-arguments", _set("lr_schedule", {"name": "cosine_decay"}), "lr_schedule: 'arguments' deve ser"),
    ("schedule-no-name", _set("lr_schedule", {"arguments": [1e-3, 10]}), "lr_schedule: falta 'name'"),
    ("schedule-unknown", _set("lr_schedule", {"name": "cosine", "arguments": [1]}), "quis dizer 'cosine_decay'?"),
    ("schedule-key", _set("lr_schedule", {"name": "step_decay", "arguments": [1], "warmpu": 3}), "quis dizer 'warmup'"),
    ("alpha-and-scale", _set("lora.scale", 20.0), "dê só uma de 'lora.alpha' e 'lora.scale', não as duas"),
    ("epochs-and-iters", _set("iters", 100), "dê só uma de 'epochs' e 'iters', não as duas"),
    ("iters-zero", _iters(0), "iters = 0 fora do intervalo"),
    ("optimizer-config-name", _set("optimizer_config", {"adamw2": {}}), "optimizer_config: 'adamw2' desconhecido"),
    ("optimizer-config-args", _set("optimizer_config", {"adamw": 1}), "optimizer_config.adamw: deve ser um objeto"),
    ("fuse-string", _set("fuse", "sim"), "fuse: deve ser true/false ou"),
    ("fuse-key", _set("fuse", {"dequantise": True}), "quis dizer 'dequantize'?"),
    ("keys-empty", _set("lora.keys", []), "lora.keys: deve ser uma lista de nomes"),
    ("val-batches-zero", _set("val_batches", 0), "val_batches = 0 fora do intervalo"),
    ("grad-checkpoint-string", _set("grad_checkpoint", "yes"), "grad_checkpoint: deve ser true/false"),
    ("mask-prompt-number", _set("mask_prompt", 1), "mask_prompt: deve ser true/false"),
    ("resume-adapter-missing", _set("resume_adapter_file", "nada.safetensors"), "resume_adapter_file não encontrado"),
    ("full-on-quantized", _set("fine_tune_type", "full"), "fine_tune_type 'full' precisa de um modelo não quantizado"),
]


@pytest.mark.parametrize("case,mutate,expected", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_option_is_one_line_exit_2_and_changes_nothing(spec_workspace, case, mutate, expected):
    spec = dict(TEST_SPEC, lora=dict(TEST_SPEC["lora"]))
    mutate(spec, spec_workspace)
    path = spec_workspace / "bad.json"
    path.write_bytes(orjson.dumps(spec))
    before = snapshot(spec_workspace)
    for command in ("run", "submit"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.output
        assert snapshot(spec_workspace) == before


def test_scale_replaces_alpha_and_new_keys_enter_the_fingerprint_only_when_set():
    base = {k: v for k, v in TEST_SPEC.items() if k != "epochs"}
    plain = parse_spec(dict(TEST_SPEC))
    assert plain.lora.scale == 16 / 4 and plain.fine_tune_type == "lora" and plain.mask_prompt is True
    assert "optimizer" not in plain.resume_fingerprint() and "scale" not in plain.resume_fingerprint()["lora"]
    spec = parse_spec(
        dict(base, iters=30, lora={"rank": 4, "scale": 20.0, "keys": ["self_attn.q_proj"]}, optimizer="sgd")
    )
    assert (spec.lora.alpha, spec.lora.scale, spec.iters) == (None, 20.0, 30)
    fingerprint = spec.resume_fingerprint()
    assert fingerprint["optimizer"] == "sgd" and fingerprint["lora"]["keys"] == ["self_attn.q_proj"]


@pytest.mark.parametrize(
    "keys,expected",
    [
        ({"optimizer": "sgd", "optimizer_config": {"sgd": {"mommentum": 0.9}}}, "optimizer_config.sgd: "),
        ({"lr_schedule": {"name": "cosine_decay", "arguments": [1e-3, 10, 0, 1, 2]}}, "lr_schedule: cosine_decay"),
    ],
)
def test_wrong_optimizer_or_schedule_arguments_are_one_line_before_anything_runs(spec_workspace, keys, expected):
    path = spec_workspace / "bad.json"
    path.write_bytes(orjson.dumps(dict(TEST_SPEC, **keys)))
    before = snapshot(spec_workspace)
    for command in ("run", "submit"):
        result = CliRunner().invoke(cli, [command, str(path)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.output
        assert snapshot(spec_workspace) == before
