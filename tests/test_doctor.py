"""farensectl doctor: the pre-training checklist on a real workspace (tiny model, demo data), no training."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.doctor.machine import parse_pmset, sleep_check_macos
from tests.helpers import TEST_SPEC, child_env, spec_with, write_spec

# `pmset -g` and `pmset -g batt` as recorded on a MacBook Pro on mains power.
PMSET = """System-wide power settings:
Currently in use:
 standby              1
 Sleep On Power Button 1
 hibernatefile        /var/vm/sleepimage
 powernap             1
 networkoversleep     0
 disksleep            10
 sleep                1 (sleep prevented by caffeinate, powerd)
 hibernatemode        3
 ttyskeepawake        1
 displaysleep         10
 tcpkeepalive         1
 lowpowermode         0
 womp                 1
"""
BATT_AC = "Now drawing from 'AC Power'\n -InternalBattery-0 (id=1234)\t100%; charged; 0:00 remaining present: true\n"
BATT_BATTERY = "Now drawing from 'Battery Power'\n -InternalBattery-0 (id=1234)\t81%; discharging; 5:10 remaining\n"


def doctor(root, *args):
    return CliRunner().invoke(cli, ["--home", str(root), "doctor", *args])


def lines_named(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if f" {name}: " in line]


def test_a_good_spec_passes_every_check(spec_workspace):
    result = doctor(spec_workspace, str(write_spec(spec_workspace, TEST_SPEC)))
    assert result.exit_code == 0, result.output
    assert "❌" not in result.output
    for name in ("python", "pacotes", "mlx", "disco", "serviço", "memória", "spec", "modelo", "tokenizer"):
        assert lines_named(result.output, name), f"{name} em falta:\n{result.output}"
    assert lines_named(result.output, "data.train")[0].startswith("✅")
    assert "160 exemplos, formato messages" in result.output
    assert "40 steps por época × 2 épocas = 80 steps" in result.output
    assert "sem run anterior com este modelo" in result.output  # nothing measured yet: no estimate invented


def test_a_missing_model_fails_with_its_path_and_the_fix(spec_workspace):
    spec = write_spec(spec_workspace, spec_with(model="models/mistral-7b-4bit"), "v2.json")
    result = doctor(spec_workspace, str(spec))
    assert result.exit_code == 1, result.output
    (line,) = lines_named(result.output, "modelo")
    assert (
        line.startswith("❌")
        and str(spec_workspace / "models/mistral-7b-4bit") in line
        and "→ coloque o modelo" in line
    )
    assert lines_named(result.output, "data.train")[0].startswith("✅")  # the other inputs are still checked


def test_bad_data_and_a_bad_spec_fail_on_their_line(spec_workspace):
    bad_line = spec_workspace / "bad.jsonl"
    bad_line.write_text('{"messages": [{"role": "user", "content": "olá"}]}\n{"texto": 1}\n')
    result = doctor(
        spec_workspace, str(write_spec(spec_workspace, spec_with(data={"train": "bad.jsonl", "valid": "bad.jsonl"})))
    )
    assert result.exit_code == 1
    assert lines_named(result.output, "data.train")[0].startswith(f"❌ data.train: {bad_line}:2: formato desconhecido")
    result = doctor(spec_workspace, str(write_spec(spec_workspace, spec_with(epocs=3), "typo.json")))
    assert result.exit_code == 1 and "epocs" in lines_named(result.output, "spec")[0]


def test_json_is_one_document_with_every_check(spec_workspace, monkeypatch):
    workspace = spec_workspace
    spec = str(write_spec(workspace, spec_with(model="models/absent")))
    result = doctor(workspace, spec, "--json")
    assert result.exit_code == 1
    report = orjson.loads(result.output)
    assert report["ok"] is False and report["failed"] == 1
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["model"]["status"] == "fail" and by_name["model"]["fix"]
    assert by_name["disk"]["data"]["free_bytes"] > 0
    assert by_name["mlx"]["data"]["device"].startswith(("Device(cpu", "Device(gpu"))
    assert {"python", "packages", "service", "sleep", "hf_cache", "data.train", "data.valid"} <= set(by_name)
    monkeypatch.setenv("FARENSE_LANG", "en")  # a script's keys do not move with the language; the words do
    english = orjson.loads(doctor(workspace, spec, "--json").output)
    assert [c["name"] for c in english["checks"]] == [c["name"] for c in report["checks"]]
    assert english["checks"][0]["detail"] == report["checks"][0]["detail"]  # python: no words to translate


def test_estimates_come_from_a_similar_earlier_run(workspace):
    def recorded_run(name, max_seq_length, step_s, peak_gb, **more):
        run = workspace / "checkpoints_qlora" / name
        run.mkdir(parents=True)
        fingerprint = {"model": TEST_SPEC["model"], "max_seq_length": max_seq_length, "batch_size": 2, **more}
        (run / "training_state.json").write_bytes(orjson.dumps({"step": 10, "fingerprint": fingerprint}))
        records = [{"step": s, "elapsed_s": s * step_s, "peak_memory_gb": peak_gb, "loss": 1.0} for s in range(1, 11)]
        (run / "training_metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))

    recorded_run("v1", max_seq_length=128, step_s=0.5, peak_gb=1.5)  # same model and max_seq_length, batch_size 2
    recorded_run("longer", max_seq_length=2048, step_s=9.0, peak_gb=30.0)  # not similar: ignored
    recorded_run("packed", max_seq_length=128, step_s=7.0, peak_gb=20.0, pack=True)  # other steps: ignored
    result = doctor(workspace, str(write_spec(workspace, TEST_SPEC)), "--json")  # batch_size 4: 40 steps × 2 epochs
    assert result.exit_code == 0, result.output
    by_name = {c["name"]: c for c in orjson.loads(result.output)["checks"]}
    assert by_name["time"]["data"]["seconds"] == pytest.approx(0.5 * 2 * 80)  # s/step × batch ratio × steps
    assert "medidos em v1, batch_size 2 nessa run" in by_name["time"]["detail"]
    peak = by_name["memory_per_step"]["data"]["peak_memory_gb"]
    assert 2.9 < peak < 3.0  # the weights (a few MB) once, what grows with the batch twice


def test_macos_sleep_settings_read_from_pmset():
    assert parse_pmset(PMSET)["sleep"] == "1" and parse_pmset(PMSET)["lowpowermode"] == "0"
    on_ac = sleep_check_macos(PMSET, BATT_AC)
    assert on_ac.status == "ok" and "repouso após 1 min" in on_ac.detail and "caffeinate -i -s" in on_ac.detail
    on_battery = sleep_check_macos(PMSET, BATT_BATTERY)
    assert on_battery.status == "warn" and on_battery.fix == "ligue o carregador para uma run longa"
    low_power = sleep_check_macos(PMSET.replace("lowpowermode         0", "lowpowermode         1"), BATT_AC)
    assert low_power.status == "warn" and "baixo consumo" in low_power.detail


def test_the_doctor_probes_mlx_without_importing_it(spec_workspace):
    code = (
        "import sys, json\nfrom click.testing import CliRunner\nfrom farensed.cli.main import cli\n"
        f"r = CliRunner().invoke(cli, ['--home', {str(spec_workspace)!r}, 'doctor', '--json'])\n"
        "print(json.dumps({'mlx': sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'transformers')),"
        " 'device': [c for c in json.loads(r.output)['checks'] if c['name'] == 'mlx'][0]['data'].get('device')}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert found["mlx"] == [] and found["device"]


def test_the_memory_plan_sizes_the_widest_batch_the_engine_will_build(workspace, tiny_model):
    """The doctor's plan (no mlx) tokenizes the data as the engine does: same widest batch, same counted positions."""
    import numpy as np
    from mlx_lm.utils import load_tokenizer

    from farensed.engine.data import length_sorted_batches, padded_width, tokenize_file
    from farensed.engine.valloss import counted_index

    result = CliRunner().invoke(
        cli, ["--home", str(workspace), "doctor", "--json", str(write_spec(workspace, TEST_SPEC))]
    )
    (planned,) = [c for c in orjson.loads(result.output)["checks"] if c["name"] == "memory_plan"]
    assert planned["status"] == "ok" and planned["data"]["lengths_source"] == "tokenizer"
    data = tokenize_file(workspace / TEST_SPEC["data"]["train"], load_tokenizer(tiny_model), 128)
    widest = max(length_sorted_batches(data, 4, drop_last=True), key=lambda g: max(len(data.tokens[i]) for i in g))
    width = padded_width(max(len(data.tokens[i]) for i in widest), 128)
    lengths = np.array([[data.offsets[i], min(len(data.tokens[i]), 128)] for i in widest])
    step = planned["data"]["step"]
    assert (step["rows"], step["width"]) == (4, width)
    assert step["counted"] == len(counted_index(lengths, width))
    parts = planned["data"]["parts"]
    step_parts = {k: v for k, v in parts.items() if k not in ("total", "validation", "worst")}
    assert parts["total"] == pytest.approx(sum(step_parts.values()))  # the step; a validation beside it, apart
    assert parts["worst"] == pytest.approx(parts["total"] + parts["validation"])


DAMAGED_RUN_FILES = {
    "state-list": ("training_state.json", b"[]"),
    "fingerprint-text": ("training_state.json", b'{"fingerprint": "abc"}'),
    "model-number": ("training_state.json", b'{"fingerprint": {"max_seq_length": 128, "model": 5}}'),
    "batch-text": (
        "training_state.json",
        b'{"fingerprint": {"max_seq_length": 128, "model": "models/tiny-mistral-4bit", "batch_size": "4"}}',
    ),
    "elapsed-text": ("training_metrics.jsonl", b'{"step": 2, "elapsed_s": "abc", "peak_memory_gb": "x"}\n'),
    "finished-text": ("training_state.json", b'{"finished": "no", "step": [1, 2]}'),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_RUN_FILES))
def test_another_run_s_damaged_files_never_break_the_doctor(spec_workspace, case):
    """Every run folder in the workspace is read for estimates: a hand-edited one is skipped or read as unknown."""
    name, content = DAMAGED_RUN_FILES[case]
    other = spec_workspace / "checkpoints_qlora" / "other"
    other.mkdir(parents=True)
    (other / "training_state.json").write_bytes(
        b'{"fingerprint": {"max_seq_length": 128, "model": "models/tiny-mistral-4bit", "batch_size": 2}}'
    )
    (other / "training_metrics.jsonl").write_bytes(b'{"step": 2, "elapsed_s": 1.0}\n')
    (other / name).write_bytes(content)
    if case == "finished-text":  # the spec's own run folder, hand-edited
        other.rename(spec_workspace / "checkpoints_qlora" / TEST_SPEC["name"])
    result = doctor(spec_workspace, "--json", str(write_spec(spec_workspace, dict(TEST_SPEC, max_seq_length=128))))
    checks = {c["name"]: c for c in orjson.loads(result.output)["checks"]}
    assert result.exit_code == 0 and "Traceback" not in result.output
    details = " ".join(c["detail"] for c in checks.values())
    assert "[1, 2]" not in details and "terminou" not in details  # "no" is not true; a list is no step


@pytest.mark.parametrize("change", [{"quantization": "4"}, {"quantization": [4]}, {"num_hidden_layers": "2"}])
def test_a_model_config_of_odd_types_is_described_not_a_traceback(spec_workspace, change):
    import shutil

    model = spec_workspace / "models" / "tiny-mistral-4bit"
    cached = model.resolve()
    model.unlink()  # a link to the session's cached model: edit a copy, never the cache
    shutil.copytree(cached, model)
    config_path = model / "config.json"
    config_path.write_bytes(orjson.dumps(dict(orjson.loads(config_path.read_bytes()), **change)))
    result = doctor(spec_workspace, str(write_spec(spec_workspace, TEST_SPEC)))
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert lines_named(result.output, "modelo"), result.output


def test_an_unreadable_hostfile_fails_the_distributed_check_as_submit_refuses_it(spec_workspace):
    import os

    os.mkfifo(spec_workspace / "hosts.txt")
    spec = write_spec(spec_workspace, spec_with(distributed={"hostfile": "hosts.txt"}))
    result = doctor(spec_workspace, "--json", str(spec))
    (check,) = [c for c in orjson.loads(result.output)["checks"] if c["name"] == "distributed"]
    assert result.exit_code == 1 and check["status"] == "fail" and "FIFO" in check["detail"], result.output


def test_the_steps_line_of_a_packed_spec_says_the_run_makes_fewer(spec_workspace):
    result = doctor(spec_workspace, "--json", str(write_spec(spec_workspace, spec_with(pack=True))))
    (steps,) = [c for c in orjson.loads(result.output)["checks"] if c["name"] == "steps"]
    assert "com pack: true são menos" in steps["detail"], result.output
