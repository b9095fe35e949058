"""Language: Portuguese (the seed's wording, the msgids) or English, through the gettext catalog in farensed/locale."""

from __future__ import annotations

import functools
import string
import subprocess
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from farensed import i18n
from farensed.analysis.gap import analyse, format_analysis
from farensed.engine import console
from farensed.errors import SpecError
from farensed.spec.jobspec import parse_spec
from tests.helpers import TEST_SPEC, child_env, cli_cmd

REPO = Path(__file__).resolve().parents[1]


def fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}


@functools.cache
def used_msgids() -> dict:
    """Every message in the code (extracted once per run: two tests read it)."""
    return i18n.msgids()


def catalog():
    from babel.messages.pofile import read_po

    with i18n.PO_FILE.open("rb") as f:
        return read_po(f)


def test_committed_mo_is_the_compiled_po():
    assert i18n.compile_catalog() == i18n.MO_FILE.read_bytes(), "run: python -m farensed.i18n compile"


def _singular(msgid):
    return msgid[0] if isinstance(msgid, tuple) else msgid


def _translated(message) -> bool:
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    return all(strings)


def _pairs(message):
    """(msgid, msgstr) pairs of a message: the plural's English forms each against its Portuguese form."""
    if not isinstance(message.id, tuple):
        return [(message.id, message.string)]
    return [(message.id[0], message.string[0]), *((message.id[1], s) for s in message.string[1:])]


def test_every_message_in_the_code_has_an_english_translation():
    po = catalog()
    used = used_msgids()
    assert len(used) > 20
    missing = [
        f"{where}: {msgid!r}"
        for msgid, where in used.items()
        if _singular(msgid) not in po or not _translated(po[_singular(msgid)]) or po[_singular(msgid)].id != msgid
    ]
    assert not missing, "untranslated (python -m farensed.i18n update, then translate and compile):\n" + "\n".join(
        missing
    )
    wrong = [m.id for m in po if m.id and any(fields(a) != fields(b) for a, b in _pairs(m))]
    assert not wrong, f"English placeholders differ from the Portuguese ones: {wrong}"
    unused = [m.id for m in po if m.id and m.id not in used]
    assert not unused, f"catalog entries no code uses: {unused}"


def test_plural_forms_follow_the_count(monkeypatch):
    monkeypatch.setenv("FARENSE_LANG", "en")
    assert i18n.ngettext("{count} tentativa", "{count} tentativas", 1).format(count=1) == "1 attempt"
    assert i18n.ngettext("{count} tentativa", "{count} tentativas", 2).format(count=2) == "2 attempts"
    monkeypatch.setenv("FARENSE_LANG", "pt")
    assert i18n.ngettext("{count} tentativa", "{count} tentativas", 0).format(count=0) == "0 tentativas"


@pytest.mark.parametrize(
    ("env", "lang"),
    [
        ({"FARENSE_LANG": "en", "LANG": "pt_PT.UTF-8"}, "en"),
        ({"FARENSE_LANG": "pt"}, "pt"),
        ({"LC_ALL": "pt_BR.UTF-8", "LANG": "en_US.UTF-8"}, "pt"),
        ({"LC_MESSAGES": "de_DE.UTF-8", "LANG": "pt_PT.UTF-8"}, "en"),
        ({"LANG": "pt_PT.UTF-8"}, "pt"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({}, "en"),
        ({"FARENSE_LANG": "klingon", "LANG": "pt_PT.UTF-8"}, "en"),
    ],
)
def test_language_from_farense_lang_then_the_posix_locale(monkeypatch, env, lang):
    for var in ("FARENSE_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert i18n.language() == lang


def messages() -> str:
    spec = parse_spec(TEST_SPEC)
    stopper = SimpleNamespace(patience=5, wait=2, best_epoch=0, best_step=16, best_val_loss=1.23456)
    records = [
        {"step": 8, "epoch": 0, "train_loss": 2.0, "val_loss": 2.1, "gap": 0.1, "band": "BOM"},
        {"step": 16, "epoch": 0, "train_loss": 1.5, "val_loss": 1.7, "gap": 0.2, "band": "MODERADO"},
    ]
    return "\n".join(
        [
            console.banner(spec),
            console.epoch_header(0, 3),
            console.validation_block(16, 1.7, 0.2, "MODERADO", False, stopper),
            console.early_stop_block(stopper),
            format_analysis(analyse(records)),
        ]
    )


def test_console_in_english(monkeypatch):
    monkeypatch.setenv("FARENSE_LANG", "en")
    text = messages()
    for line in [
        "CONFIGURATION - t",
        "LoRA Alpha: 16 (layers: 2)",
        "Batch Size: 4 (gradient accumulation: 2)",
        "Epochs: 2",
        "Early Stopping: Patience=5, Min Delta=0.001",
        "Epoch 1/3",
        "Validation analysis:",
        "  ⚠  Moderate overfitting (gap=0.2000)",
        "  ℹ  No improvement (2/5)",
        "  EARLY STOPPING TRIGGERED!",
        "   Best model: Epoch 1, Step 16",
        "Training ended by Early Stopping",
        "FINAL OVERFITTING ANALYSIS",
        "Status: ⚠ MODERATE (gap < 0.30, at the best model: step 16, gap 0.2000)",  # JSON keeps MODERADO
        "Mean gap: 0.1500",
    ]:
        assert line in text.splitlines(), line
    assert "Época" not in text and "Sem melhoria" not in text and "médio" not in text


def test_console_in_portuguese_as_the_seed(monkeypatch):
    monkeypatch.setenv("FARENSE_LANG", "pt")
    text = messages()
    for line in [
        "LoRA Alpha: 16 (camadas: 2)",
        "Batch Size: 4 (acumulação de gradientes: 2)",
        "Épocas: 2",
        "Época 1/3",
        "Análise de Validação:",
        "  ⚠  Overfitting moderado (gap=0.2000)",
        "  ℹ  Sem melhoria (2/5)",
        "  EARLY STOPPING ATIVADO!",
        "   Sem melhoria por 5 validações consecutivas",
        "   Melhor modelo: Época 1, Step 16",
        "Treino terminado por Early Stopping",
        "ANÁLISE FINAL DE OVERFITTING",
        "Status: ⚠ MODERADO (gap < 0.30, no melhor modelo: step 16, gap 0.2000)",
        "Gap médio: 0.1500",
    ]:
        assert line in text.splitlines(), line


@pytest.mark.parametrize(
    ("lang", "unknown", "wrong_type"),
    [
        (
            "en",
            "spec: unknown key 'lerning_rate' (did you mean 'learning_rate'?)",
            "spec: batch_size: must be an integer, not '4'",
        ),
        (
            "pt",
            "spec: chave desconhecida 'lerning_rate' (quis dizer 'learning_rate'?)",
            "spec: batch_size: deve ser inteiro, não '4'",
        ),
    ],
)
def test_spec_errors_in_the_chosen_language(monkeypatch, lang, unknown, wrong_type):
    monkeypatch.setenv("FARENSE_LANG", lang)
    with pytest.raises(SpecError) as err:
        parse_spec({**TEST_SPEC, "lerning_rate": 1e-3})
    assert str(err.value) == unknown
    with pytest.raises(SpecError) as err:
        parse_spec({**TEST_SPEC, "batch_size": "4"})
    assert str(err.value) == wrong_type


def test_catalog_ships_in_the_wheel():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "locale/*/LC_MESSAGES/*" in config["farensed"]
    assert i18n.MO_FILE.is_file() and i18n.PO_FILE.is_file()


@pytest.mark.parametrize(("lang", "line"), [("en", "Error: job 7 does not exist"), ("pt", "Erro: job 7 não existe")])
def test_cli_process_speaks_the_chosen_language(isolated_home, lang, line):
    env = child_env()
    env["FARENSE_LANG"] = lang
    proc = subprocess.run(cli_cmd(isolated_home, "status", "7"), capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 4 and proc.stderr.strip() == line


def test_messages_carry_no_layout_and_name_their_placeholders():
    """Layout (newlines, indentation) stays outside the msgids; placeholders say what they hold (no {value2}, {get})."""
    import re

    vague = re.compile(r"\{(?:[a-z_]+[2-9]|value\d|get|decode|x|s|v)(?=[:}!])")  # {gb2}, {value2}, {get}: say what
    for msgid, where in used_msgids().items():
        for text in msgid if isinstance(msgid, tuple) else (msgid,):
            assert text == text.strip(" \n") and "\n" not in text, (where, text)
            assert not vague.search(text), (where, text)


@pytest.mark.parametrize(
    ("decoder", "text", "pt", "en"),
    [
        (
            "json",
            b'{"a": 1 "b": 2}',
            "carácter inesperado; esperava-se ',' ou '}'",
            "unexpected character; expected ','",
        ),
        ("json", b'{"a": 1,}', "vírgula a mais antes do fecho", "trailing comma before the closing bracket"),
        ("json", b'{"a": ', "o texto acaba a meio", "the text ends midway"),
        ("json", b"{a: 1}", "esperava-se uma chave entre aspas", "expected a key in double quotes"),
        ("yaml", b"a: [1, 2", "o texto acaba a meio; esperava-se ',' ou ']'", "the text ends midway; expected ','"),
        ("yaml", b"a: b: c", "'chave: valor' onde não pode estar", "'key: value' where it cannot be"),
        ("yaml", b'a: "x', "o texto acaba a meio (falta fechar algo)", "the text ends midway (something is not"),
    ],
)
def test_a_malformed_spec_is_explained_in_the_chosen_language(monkeypatch, decoder, text, pt, en):
    """The parser's reason (orjson's, PyYAML's) in the reader's language, with the file and the line."""
    from farensed.errors import SpecError
    from farensed.spec import decode

    for lang, said in (("pt", pt), ("en", en)):
        monkeypatch.setenv("FARENSE_LANG", lang)
        with pytest.raises(SpecError) as raised:
            getattr(decode, f"decode_{decoder}")(text, f"spec.{decoder}")
        assert said in str(raised.value) and f"spec.{decoder}" in str(raised.value)
        assert ("linha 1" if lang == "pt" else "line 1") in str(raised.value)


def test_counts_are_grouped_as_the_reader_writes_them(monkeypatch):
    from farensed.analysis.monitor import format_record
    from farensed.i18n import grouped, ngettext

    record = {"step": 10, "epoch": 0, "loss": 1.5, "tokens_per_second": 12288.4}
    for lang, sep, word in (("pt", "\u00a0", "parâmetros"), ("en", ",", "parameters")):
        monkeypatch.setenv("FARENSE_LANG", lang)
        assert (
            ngettext("{count} parâmetro", "{count} parâmetros", 12288).format(count=grouped(12288))
            == f"12{sep}288 {word}"
        )
        assert f"12{sep}288 tok/s" in format_record(record, None)


def test_an_unknown_farense_lang_is_said_once_short_and_escaped(monkeypatch, capsys):
    from farensed import i18n

    monkeypatch.setenv("FARENSE_LANG", "\x1b]52;c;" + "x" * 5000)
    assert i18n.language() == "en" and i18n.language() == "en"
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and len(said) < 120 and "\x1b" not in said
