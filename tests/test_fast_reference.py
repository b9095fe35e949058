"""The CLI reference (docs/CLI.md) and README's command table are what the commands' --help says."""

from __future__ import annotations

from farensed.cli import reference


def test_docs_and_readme_table_match_the_commands():
    assert reference.main(["--check"]) == 0, "run: python -m farensed.cli.reference"


def test_every_command_and_option_is_in_the_table():
    table = reference.table()
    for name, command in reference.commands():
        row = next(line for line in table.splitlines() if line.startswith((f"| `{name} ", f"| `{name}`")))
        for param in command.params:
            hidden = getattr(param, "hidden", False)  # internal (report --time-limit, what farensed passes)
            if "--help" not in getattr(param, "opts", ()) and param.param_type_name == "option" and not hidden:
                assert max(param.opts, key=len) in row, (name, param.opts)
