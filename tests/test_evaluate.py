"""Evaluation: F1/EM against hand-computed cases, and a real evaluation of real adapters."""

from __future__ import annotations

import math
import signal
import statistics

import orjson
import pytest
from click.testing import CliRunner

from farensed.analysis.textmetrics import exact_match, normalise_tokens, token_f1
from farensed.cli.main import cli
from tests.helpers import TEST_SPEC, run_cli, start_cli, wait_for, write_spec


@pytest.mark.parametrize(
    "prediction,reference,f1",
    [
        ("the cat sat", "the cat sat", 1.0),
        ("Denver Broncos", "Denver Broncos", 1.0),
        ("the Denver Broncos!", "Denver broncos", 1.0),  # case, article, punctuation
        ("Broncos", "Denver Broncos", 2 * (1.0 * 0.5) / 1.5),
        ("Carolina Panthers", "Denver Broncos", 0.0),
        ("a b c d", "a b x y", 1 / 3),  # 'a' is an article: {b,c,d} vs {b,x,y} → P=R=1/3
        ("Sé de Faro", "se de faro", 1.0),  # accents
        ("O museu abre às 10h", "O Museu abre as 10h.", 1.0),
        # "às" loses its accent and is then an article: reference = museu abre 10h e fecha 18h → P=1, R=1/2
        ("museu abre 10h", "O museu abre às 10h e fecha às 18h", 2 * 1 * 0.5 / 1.5),
        ("", "", 1.0),
        ("", "algo", 0.0),
    ],
)
def test_token_f1_hand_computed(prediction, reference, f1):
    assert token_f1(prediction, reference) == pytest.approx(f1)


def test_exact_match_and_normalisation():
    assert normalise_tokens("Às 10h-18h, na Sé!") == ["10h", "18h", "na", "se"]  # "às" → "as", an article
    assert exact_match("A Sé de Faro.", "sé de faro") == 1.0
    assert exact_match("Sé de Faro", "Sé de Lagos") == 0.0
    assert normalise_tokens("um uma uns umas the an o os as") == []


@pytest.fixture
def evaluated(reference_run, fresh_copy):
    ws = fresh_copy(reference_run, "ev")
    write_spec(ws, dict(TEST_SPEC, evaluate=True))
    proc = run_cli(ws, "run", str(ws / "job.json"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Treino já terminado" in proc.stdout and "Avaliação (" in proc.stdout
    return ws


def test_evaluation_writes_every_file_and_the_numbers_recompute(evaluated):
    run = evaluated / "checkpoints_qlora/t"
    for name in ("evaluation_report.json", "evaluation_summary.csv", "evaluation_f1.png", "evaluation_loss.png"):
        assert (run / name).is_file(), name
    report = orjson.loads((run / "evaluation_report.json").read_bytes())
    examples = report["examples"]
    assert len(examples) == report["config"]["examples"] == 52
    for tag in ("adapters", "base"):
        f1 = [e[tag]["f1"] for e in examples]
        assert report[tag]["f1_mean"] == pytest.approx(statistics.fmean(f1))
        assert report[tag]["f1_median"] == pytest.approx(statistics.median(f1))
        assert report[tag]["em_mean"] == pytest.approx(statistics.fmean(e[tag]["em"] for e in examples))
        assert report[tag]["perplexity"] == pytest.approx(math.exp(statistics.fmean(e[tag]["loss"] for e in examples)))
        for e in examples[:10]:
            assert e[tag]["f1"] == pytest.approx(token_f1(e[tag]["prediction"], e["reference"]))
    assert report["adapters"]["f1_mean"] > report["base"]["f1_mean"]
    assert report["adapters"]["loss_mean"] < report["base"]["loss_mean"]
    csv = (run / "evaluation_summary.csv").read_text().splitlines()
    assert csv[0] == "metric,adapters,base,uplift" and csv[1].startswith("f1_mean,")


def test_killed_evaluation_resumes_where_it_stopped(evaluated, fresh_copy, reference_run):
    run = evaluated / "checkpoints_qlora/t"
    expected = orjson.loads((run / "evaluation_report.json").read_bytes())
    ws = fresh_copy(reference_run, "ev2")
    write_spec(ws, dict(TEST_SPEC, evaluate=True))
    progress = ws / "checkpoints_qlora/t/evaluation_progress.jsonl"
    proc = start_cli(ws, "run", str(ws / "job.json"))
    wait_for(lambda: progress.exists() and progress.read_bytes().count(b"\n") >= 20, proc=proc, interval=0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = [orjson.loads(line) for line in progress.read_bytes().splitlines()[1:] if line.endswith(b"}")]
    assert 0 < len(kept) < 104
    result = run_cli(ws, "run", str(ws / "job.json"))
    assert result.returncode == 0
    lines = progress.read_bytes().splitlines()[1:]
    assert len(lines) == 104  # 52 examples x (base, adapters): nothing done twice
    assert [orjson.loads(line) for line in lines[: len(kept)]] == kept
    report = orjson.loads((ws / "checkpoints_qlora/t/evaluation_report.json").read_bytes())
    assert report["examples"] == expected["examples"]


def test_sigterm_during_evaluation_stops_resumably_and_the_next_run_finishes_it(evaluated, fresh_copy, reference_run):
    """A stop (cancel, memory guard, window end) after training is honoured: exit 75, evaluation resumed later."""
    expected = orjson.loads((evaluated / "checkpoints_qlora/t/evaluation_report.json").read_bytes())
    ws = fresh_copy(reference_run, "ev3")
    write_spec(ws, dict(TEST_SPEC, evaluate=True))
    progress = ws / "checkpoints_qlora/t/evaluation_progress.jsonl"
    proc = start_cli(ws, "run", str(ws / "job.json"))
    wait_for(lambda: progress.exists() and progress.read_bytes().count(b"\n") >= 10, proc=proc, interval=0.005)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 75
    assert not (ws / "checkpoints_qlora/t/evaluation_report.json").exists()
    kept = progress.read_bytes().count(b"\n") - 1
    assert 0 < kept < 104
    assert run_cli(ws, "run", str(ws / "job.json")).returncode == 0
    assert progress.read_bytes().count(b"\n") - 1 == 104  # nothing evaluated twice
    report = orjson.loads((ws / "checkpoints_qlora/t/evaluation_report.json").read_bytes())
    assert report["examples"] == expected["examples"]


def test_eval_bad_input_is_one_line(workspace):
    from farensed.queue.jobs import Queue
    from farensed.storage.workspace import Workspace

    spec = write_spec(workspace, TEST_SPEC)
    job = Queue(Workspace(workspace)).submit(spec)
    result = CliRunner().invoke(cli, ["eval", str(job.id)])
    assert result.exit_code == 1 and "job sem adapters para avaliar" in result.output
    assert len(result.output.strip().splitlines()) == 1
    (workspace / "checkpoints_qlora/t/adapters").mkdir(parents=True)
    (workspace / "checkpoints_qlora/t/adapters/adapters.safetensors").write_bytes(b"x")
    (workspace / "text.jsonl").write_bytes(b'{"text": "ola"}\n')
    text_spec = dict(TEST_SPEC, data={"train": "data/demo/train.jsonl", "valid": "text.jsonl"})
    (workspace / "jobs" / str(job.id) / "spec.json").write_bytes(orjson.dumps(text_spec))
    result = CliRunner().invoke(cli, ["eval", str(job.id)])
    assert result.exit_code == 2 and "text.jsonl:1: formato 'text' não tem referências" in result.output


def test_compare_shows_f1_and_em_of_evaluated_jobs(reference_run, fresh_copy):
    from farensed.queue.jobs import Queue
    from farensed.storage.workspace import Workspace

    ws = fresh_copy(reference_run, "cmp")
    q = Queue(Workspace(ws))
    for name in ("a", "b"):
        spec = dict(TEST_SPEC, name=name, epochs=1, eval_every=40, save_every=40, evaluate=True)
        q.submit(write_spec(ws, spec, f"{name}.json"))
        assert run_cli(ws, "run", str(ws / f"{name}.json")).returncode == 0
    table = orjson.loads(CliRunner().invoke(cli, ["--home", str(ws), "compare", "1", "2", "--json"]).stdout)
    for col in table["jobs"]:
        report = orjson.loads((ws / "checkpoints_qlora" / col["name"] / "evaluation_report.json").read_bytes())
        assert col["f1"] == report["adapters"]["f1_mean"] and col["exact_match"] == report["adapters"]["em_mean"]
    assert "F1" in CliRunner().invoke(cli, ["--home", str(ws), "compare", "1", "2"]).output
