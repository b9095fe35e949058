"""--help and Click's own messages (usage, errors) in the user's language, like everything else a person reads."""

from __future__ import annotations

import subprocess

import pytest
from babel.messages.pofile import read_po
from click.testing import CliRunner

from farensed import helptext, i18n
from farensed.cli import helpcatalog
from farensed.cli.main import cli
from tests.helpers import child_env, cli_cmd

# what anyone meets in the first hour: usage, the help's frame, a typo, a missing or wrong value
SEEN_FIRST = (
    "Usage:",
    "Options",
    "Commands",
    "Error: {message}",
    "Try '{command} {option}' for help.",
    "No such command {name!r}.",
    "No such option {name!r}.",
    "Missing argument",
    "Invalid value for {param_hint}: {message}",
    "{value!r} is not a valid {number_type}.",
    "Show this message and exit.",
    "Show the version and exit.",
    "%(prog)s, version %(version)s",
    *helptext.WORDS,
)


def catalog() -> dict[str, str]:
    with i18n.HELP_PO.open("rb") as f:
        return {(m.id[0] if isinstance(m.id, tuple) else m.id): m.string for m in read_po(f) if m.id}


def words(text: str) -> str:
    return " ".join(text.split())  # as read, whatever the terminal's wrapping


def test_every_help_paragraph_and_what_click_says_first_has_a_portuguese_translation():
    ours = {m for m, where in helpcatalog.msgids().items() if not where.startswith("click/")}
    translated = catalog()
    missing = [m for m in (*ours, *SEEN_FIRST) if not translated.get(m)]
    assert not missing, "python -m farensed.cli.helpcatalog update, translate, compile:\n" + "\n".join(missing)
    assert i18n.compile_catalog(i18n.HELP_PO) == i18n.HELP_MO.read_bytes(), "python -m farensed.cli.helpcatalog compile"


@pytest.mark.parametrize(
    "path", [name.split() for name, _cmd in __import__("farensed.cli.reference").cli.reference.commands()]
)
def test_every_commands_help_is_portuguese_under_pt(path):
    result = CliRunner().invoke(cli, [*path, "--help"], env={"FARENSE_LANG": "pt"}, prog_name="farensectl")
    assert result.exit_code == 0, result.output
    text = words(result.output)
    assert text.startswith("Utilização: farensectl") and "[OPÇÕES]" in text and "Opções:" in text
    assert "Mostra esta mensagem e sai." in text
    command = cli
    for name in path:
        command = command.commands[name]
    paragraphs = i18n.help_msgids(command.__dict__.get("_farense_help") or command.help)
    for msgid in paragraphs:  # each paragraph said in Portuguese, none left in English
        said = words(catalog()[msgid])
        assert said in text and (msgid == said or msgid not in text), msgid


def test_usage_errors_and_the_version_follow_the_language_from_one_invocation_to_the_next():
    runner = CliRunner()
    typo = runner.invoke(cli, ["sbumit", "x"], env={"FARENSE_LANG": "pt"}, prog_name="farensectl")
    assert typo.exit_code == 2
    assert typo.output == "Erro: O comando 'sbumit' não existe. Quis dizer 'submit'? (ajuda: farensectl -h)\n"
    english = runner.invoke(cli, ["sbumit", "x"], env={"FARENSE_LANG": "en"}, prog_name="farensectl")
    assert english.output == "Error: No such command 'sbumit'. Did you mean 'submit'? (help: farensectl -h)\n"
    wrong = runner.invoke(cli, ["wait", "abc"], env={"FARENSE_LANG": "pt"}, prog_name="farensectl")
    assert wrong.exit_code == 2
    assert (
        wrong.output == "Erro: Valor inválido para 'ID': 'abc' não é o número de um job (ajuda: farensectl wait -h)\n"
    )
    helped = runner.invoke(cli, ["--help"], env={"FARENSE_LANG": "en"}, prog_name="farensectl")
    assert "Usage: farensectl [OPTIONS] COMMAND [ARGS]..." in helped.output
    assert "Show this message and exit." in helped.output and "Workspace root" in helped.output
    assert "Mostra" not in helped.output and "Utilização" not in helped.output  # nothing left from the pt call
    version = runner.invoke(cli, ["--version"], env={"FARENSE_LANG": "pt"}, prog_name="farensectl")
    assert version.exit_code == 0 and ", versão " in version.output


def test_a_terminal_user_reads_the_help_in_portuguese_from_the_posix_locale(isolated_home):
    env = {k: v for k, v in child_env().items() if k not in ("FARENSE_LANG", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = "pt_PT.UTF-8"
    proc = subprocess.run(cli_cmd(isolated_home, "list", "--jsn"), capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "Erro: A opção '--jsn' não existe. Quis dizer '--json'? (ajuda: farensectl list -h)\n"


def test_the_cli_reference_stays_english_whatever_the_language():
    from farensed.cli import reference

    with i18n.speaking("pt"):
        assert reference.main(["--check"]) == 0  # docs/CLI.md and README's table: as written
    assert i18n.language() == "pt"  # conftest's, back after the block


def test_the_daemons_own_help_and_errors_follow_the_language(isolated_home):
    import sys

    env = dict(child_env(), FARENSE_LANG="pt")
    daemon = [sys.executable, "-m", "farensed.queue.main"]
    helped = subprocess.run([*daemon, "--help"], capture_output=True, text=True, env=env, timeout=60)
    text = words(helped.stdout)
    assert helped.returncode == 0 and text.startswith("Utilização: farensed [OPÇÕES]")
    assert "O daemon da fila do farense em primeiro plano" in text and "--stall-minutes INTERVALO DE DECIMAIS" in text
    typo = subprocess.run([*daemon, "--hom", "x"], capture_output=True, text=True, env=env, timeout=60)
    assert typo.returncode == 2
    assert typo.stderr == "Erro: A opção '--hom' não existe. Quis dizer '--home'? (ajuda: farensed -h)\n"
