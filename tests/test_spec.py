"""The job spec: V2 defaults, and a battery of bad specs, each rejected with one line naming the problem."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from farensed.analysis.success import SEED_CRITERIA
from farensed.cli.main import cli
from farensed.spec.jobspec import JobSpec, LoraConfig, parse_not_before, parse_spec
from farensed.spec.load import load_spec
from farensed.storage.workspace import Workspace
from tests.helpers import TEST_SPEC

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_seeds_v2():
    spec = parse_spec({"name": "x", "model": "m", "data": {"train": "a", "valid": "b"}})
    assert spec.lora == LoraConfig(rank=6, alpha=16.0, dropout=0.08, layers=16)
    assert (spec.batch_size, spec.grad_accumulation, spec.learning_rate, spec.epochs) == (2, 4, 2e-4, 3)
    assert (spec.early_stopping.patience, spec.early_stopping.min_delta) == (5, 0.001)
    assert (spec.eval_every, spec.save_every, spec.keep_checkpoints, spec.evaluate) == (50, 200, 3, True)
    assert spec.max_recoveries == 10 and spec.priority == 0 and spec.after == []


def test_examples_v1_v2_show_the_seeds_differences():
    ws = Workspace(REPO)
    v1 = load_spec(REPO / "jobs/examples/v1.json", ws, check_files=False)
    v2 = load_spec(REPO / "jobs/examples/v2.json", ws, check_files=False)
    assert (v1.lora.rank, v1.lora.dropout, v1.batch_size, v1.learning_rate, v1.early_stopping) == (
        8,
        0.0,
        4,
        5e-4,
        None,
    )
    assert (v2.lora.rank, v2.lora.dropout, v2.batch_size, v2.learning_rate) == (6, 0.08, 2, 2e-4)
    assert v2.early_stopping.patience == 5
    default = parse_spec({"name": v2.name, "model": v2.model, "data": orjson.loads(orjson.dumps(v2.data.__dict__))})
    assert isinstance(default, JobSpec) and default == dataclasses.replace(v2, success=None)
    assert dataclasses.asdict(v2.success) == SEED_CRITERIA  # v2.json carries the seed's success criteria


def test_not_before_hh_mm_means_the_next_such_time():
    import datetime as dt

    now = dt.datetime(2026, 11, 25, 22, 0, tzinfo=dt.UTC)
    assert parse_not_before("23:30", now) == now.replace(hour=23, minute=30)
    assert parse_not_before("01:00", now) == dt.datetime(2026, 11, 26, 1, 0, tzinfo=dt.UTC)


def _set(path, value):
    def mutate(spec, ws):
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return mutate


def _drop(path):
    def mutate(spec, ws):
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node[key]
        del node[keys[-1]]

    return mutate


def _broken_model(*missing):
    def mutate(spec, ws):
        src = ws / "models/tiny-mistral-4bit"
        dst = ws / "models/broken"
        shutil.copytree(src, dst)
        for pattern in missing:
            for f in dst.glob(pattern):
                f.unlink()
        spec["model"] = "models/broken"

    return mutate


def _data_file(content: bytes):
    def mutate(spec, ws):
        (ws / "data/bad.jsonl").write_bytes(content)
        spec["data"]["train"] = "data/bad.jsonl"

    return mutate


GOOD_LINE = orjson.dumps({"text": "olá Faro"}) + b"\n"

BAD_SPECS = [
    ("unknown-key", _set("lerning_rate", 1e-4), "chave desconhecida 'lerning_rate' (quis dizer 'learning_rate'?)"),
    ("unknown-nested-key", _set("lora.rnak", 4), "lora: chave desconhecida 'rnak' (quis dizer 'rank'?)"),
    ("unknown-es-key", _set("early_stopping.patiense", 4), "quis dizer 'patience'"),
    ("missing-model", _drop("model"), "falta a chave obrigatória 'model'"),
    ("missing-valid", _drop("data.valid"), "falta a chave obrigatória 'data.valid'"),
    ("rank-zero", _set("lora.rank", 0), "lora.rank = 0 fora do intervalo (1 ≤ rank ≤ 4096)"),
    ("rank-string", _set("lora.rank", "6"), "lora.rank: deve ser inteiro"),
    ("dropout-one", _set("lora.dropout", 1.0), "lora.dropout = 1.0 fora do intervalo"),
    ("dropout-negative", _set("lora.dropout", -0.1), "lora.dropout = -0.1 fora do intervalo"),
    ("alpha-negative", _set("lora.alpha", -1), "lora.alpha = -1.0 fora do intervalo"),
    ("lr-zero", _set("learning_rate", 0), "learning_rate = 0.0 fora do intervalo"),
    ("batch-bool", _set("batch_size", True), "batch_size: deve ser inteiro"),
    ("epochs-zero", _set("epochs", 0), "epochs = 0 fora do intervalo"),
    ("seed-negative", _set("seed", -1), "seed = -1 fora do intervalo"),
    ("seq-too-short", _set("max_seq_length", 4), "max_seq_length = 4 fora do intervalo"),
    ("keep-zero", _set("keep_checkpoints", 0), "keep_checkpoints = 0 fora do intervalo"),
    ("save-not-multiple", _set("save_every", 7), "save_every = 7 deve ser múltiplo de grad_accumulation (2)"),
    ("patience-zero", _set("early_stopping.patience", 0), "early_stopping.patience = 0 fora do intervalo"),
    ("min-delta-negative", _set("early_stopping.min_delta", -1), "early_stopping.min_delta = -1.0 fora do intervalo"),
    ("es-number", _set("early_stopping", 5), "early_stopping: deve ser um objeto JSON"),
    ("evaluate-string", _set("evaluate", "yes"), "evaluate: deve ser true/false"),
    ("name-path", _set("name", "../x"), "name '../x' deve usar só letras"),
    ("not-before", _set("not_before", "amanhã"), "not_before 'amanhã' não é hora ISO nem HH:MM"),
    ("after-string", _set("after", ["3"]), "after[0] deve ser o id"),
    ("distributed-empty", _set("distributed", {}), "distributed precisa de 'hosts' ou 'hostfile'"),
    ("model-missing", _set("model", "models/nada"), "pasta do modelo não encontrada"),
    ("model-no-config", _broken_model("config.json"), "não tem config.json"),
    ("model-no-weights", _broken_model("*.safetensors"), "não tem pesos (model*.safetensors"),
    ("model-no-tokenizer", _broken_model("tokenizer.json"), "não tem tokenizer"),
    ("train-missing", _set("data.train", "data/nao.jsonl"), "data.train: ficheiro de dados não encontrado"),
    ("train-empty", _data_file(b"\n"), "data.train: ficheiro de dados vazio"),
    ("data-not-json", _data_file(GOOD_LINE * 2 + b"{oops\n"), "data/bad.jsonl:3: linha não é JSON válido"),
    ("data-unknown-format", _data_file(GOOD_LINE + b'{"pergunta": "x"}\n'), "data/bad.jsonl:2: formato desconhecido"),
    ("data-messages-not-list", _data_file(b'{"messages": "x"}\n'), "data/bad.jsonl:1: 'messages' deve ser uma lista"),
    ("data-prompt-no-completion", _data_file(b'{"prompt": "x"}\n'), "data/bad.jsonl:1: 'completion' deve ser texto"),
    ("data-mixed-formats", _data_file(GOOD_LINE + b'{"prompt": "a", "completion": "b"}\n'), "bad.jsonl:2: formato"),
]


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


@pytest.mark.parametrize("case,mutate,expected", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_one_line_naming_the_problem_and_changes_nothing(spec_workspace, case, mutate, expected):
    spec = copy.deepcopy(TEST_SPEC)
    mutate(spec, spec_workspace)
    path = spec_workspace / "bad.json"
    path.write_bytes(orjson.dumps(spec))
    before = snapshot(spec_workspace)
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert snapshot(spec_workspace) == before


def test_malformed_json_names_line_and_column(spec_workspace):
    path = spec_workspace / "bad.json"
    path.write_text('{\n  "name": "x",\n  "model": "m",,\n}')
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2
    assert f"{path}: JSON inválido na linha 3" in result.output and "coluna" in result.output


def test_spec_that_is_not_an_object(spec_workspace):
    path = spec_workspace / "bad.json"
    path.write_text("[1, 2]")
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2 and "deve ser um objeto JSON" in result.output


def test_relative_paths_resolve_against_the_workspace_root(spec_workspace, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = spec_workspace / "good.json"
    path.write_bytes(orjson.dumps(TEST_SPEC))
    spec = load_spec(path, Workspace.at(str(spec_workspace)))
    assert spec.model == "models/tiny-mistral-4bit"


def test_to_dict_parses_back_to_the_same_spec():
    """The run folder's spec.json (what `eval RUN` and continuation read) round-trips, iters and scale included."""
    base = {"name": "x", "model": "m", "data": {"train": "a", "valid": "b"}}
    for extra in ({}, {"iters": 50}, {"lora": {"scale": 4.0}}, {"epochs": 2, "lora": {"alpha": 8}}):
        spec = parse_spec({**base, **extra})
        assert parse_spec(spec.to_dict()) == spec, extra
