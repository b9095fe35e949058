"""report_to in a spec and in an mlx_lm lora YAML: accepted as mlx-lm has it, validated in one line (no model)."""

from __future__ import annotations

import pytest

from farensed.errors import SpecError
from farensed.spec.jobspec import parse_spec
from farensed.spec.mlxlm import to_spec

BASE = {"name": "t", "model": "m", "data": {"train": "a", "valid": "b"}}


def test_report_to_and_project_name_are_spec_keys_outside_the_fingerprint():
    spec = parse_spec(dict(BASE, report_to="wandb", project_name="faro"))
    assert (spec.report_to, spec.project_name) == ("wandb", "faro")
    assert spec.resume_fingerprint() == parse_spec(BASE).resume_fingerprint()  # reporting changes no weight
    with pytest.raises(SpecError, match="report_to: 'swanlab' desconhecido.*wandb"):
        parse_spec(dict(BASE, report_to="wandb,swanlab"))


def test_an_mlx_lm_yaml_with_report_to_wandb_is_accepted():
    config = {"model": "m", "data": "data/demo", "report_to": "wandb", "project_name": "faro"}
    spec = parse_spec(to_spec(config, "cfg.yaml", "cfg"))
    assert (spec.report_to, spec.project_name, spec.iters) == ("wandb", "faro", 1000)


def test_a_missing_wandb_is_one_line_with_the_fix():
    """Checked with the spec's files (submit, a file dropped into jobs/pending/), before any job waits for it."""
    import importlib.util

    from farensed.spec.options import check_report_installed

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(SpecError, match=r"job.yaml: report_to: wandb .*pip install 'farense\[wandb\]'"):
        check_report_installed("wandb", "job.yaml")
