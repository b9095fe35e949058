"""The README's day, as a new user with an English locale lives it: a real daemon, two real jobs on the tiny model,
and every command of the day — and nothing they read is in Portuguese."""

from __future__ import annotations

import html
import os
import re
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.helpers import child_env, cli_cmd, spec_with, write_spec

# The seed's vocabulary: words a Portuguese console says that an English one must not.
PORTUGUESE = {
    "época",
    "épocas",
    "melhor",
    "tentativa",
    "tentativas",
    "código",
    "recuperação",
    "recuperações",
    "iniciado",
    "parado",
    "pasta",
    "recebido",
    "treino",
    "avaliação",
    "modelo",
    "dados",
    "passos",
    "fila",
    "pausa",
    "até",
    "início",
    "duração",
    "estado",
    "nome",
    "banda",
    "sim",
    "não",
    "erro",
    "sem",
    "com",
    "de",
    "da",
    "do",
    "em",
    "para",
    "já",
    "ainda",
    "relatório",
    "manhã",
    "corrida",
    "seguir",
    "cancelar",
    "critérios",
    "sucesso",
    "perda",
    "guardado",
    "retoma",
    "retomar",
    "adotado",
    "motivo",
    "ganho",
    "exemplos",
    "média",
    "camadas",
    "pacotes",
    "disco",
    "serviço",
    "repouso",
    "memória",
    "gestor",
    "instalado",
    "EXCELENTE",
    "BOM",
    "MODERADO",
    "CRÍTICO",
    "ANÁLISE",
}
ACCENTED = re.compile(r"\b\w*[áàâãçéêíóôõú]\w*\b", re.IGNORECASE)


def portuguese_in(text: str) -> list[str]:
    words = {w.strip("'\"()[]{}.,:;!?·—-") for w in re.split(r"[\s/=|]+", text)}
    found = sorted(w for w in words if w.lower() in {p.lower() for p in PORTUGUESE} and w)
    return found + sorted(set(ACCENTED.findall(text)) - set(found))


def day_specs(root):
    """The README's V1 and V2, shrunk to the tiny model (the seed's settings otherwise: V2 with early stopping and
    success criteria)."""
    base = {"model": "models/tiny-mistral-4bit", "epochs": 1, "eval_every": 8, "save_every": 8, "evaluate": False}
    v1 = spec_with(name="v1", lora={"rank": 8, "alpha": 16, "dropout": 0.0, "layers": 2}, early_stopping=None, **base)
    v2 = spec_with(name="v2", success={"loss_drop": 0.6, "val_improves": True, "gap_max": 0.15}, **base)
    return write_spec(root, v1, "v1.json"), write_spec(root, v2, "v2.json")


@pytest.fixture
def english(monkeypatch):
    monkeypatch.setenv("FARENSE_LANG", "en")


def test_the_readme_day_in_english_says_nothing_in_portuguese(workspace, english):
    def say(*args, ok=(0,), shown=True):
        proc = subprocess.run(
            cli_cmd(workspace, *args),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode in ok, (args, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        if shown:  # what a person reads (JSON is for scripts: its values stay fixed)
            seen.append((" ".join(args), proc.stdout + proc.stderr))
        return proc.stdout

    seen: list[tuple[str, str]] = []
    v1, v2 = day_specs(workspace)
    say("daemon", "start")
    try:
        first = say("submit", str(v1)).strip()
        second = say("submit", str(v2), "--after", first).strip()
        say("list")
        say("wait", second)  # not a terminal: silent until its one final line
        assert seen[-1][1].strip() == f"job {second} (v2): done"
        say("list")
        say("tail", second, "--no-follow")
        say("gap", second)
        say("compare", first, second)
        say("status", second)
        say("check", second, ok=(0, 1))
        say("doctor", str(v2), ok=(0, 1))
        say("daemon", "status")
        say("logs", second)
        report = say("report").strip()
        seen.append(
            ("report (HTML)", html.unescape(re.sub(r"<[^>]+>|data:image/png;base64,[^\"]+", " ", open(report).read())))
        )
        say("plot", second)
        say("eval", "checkpoints_qlora_v1_backup", ok=(4,))  # an unknown run: one line, exit 4
    finally:
        say("daemon", "stop")
    seen.append(("farensed.log", (workspace / "jobs" / "farensed.log").read_text()))
    jobs = {j["name"]: j for j in orjson.loads(say("list", "--json", shown=False))["jobs"]}
    assert jobs["v1"]["state"] == jobs["v2"]["state"] == "done" and jobs["v2"]["attempts"] == 1
    assert f"job={second} event=ended state=done exit_code=0 recoveries=0 · " in seen[-1][1]  # farensed.log
    if dump := os.environ.get("FARENSE_NEWCOMER_DUMP"):  # to read the day by eye
        Path(dump).write_text("\n\n".join(f"$ {command}\n{text}" for command, text in seen))
    problems = [f"{command}: {words}" for command, text in seen if (words := portuguese_in(text))]
    assert not problems, "\n".join(problems)
