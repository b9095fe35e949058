"""The Portuguese help catalog's upkeep (a development tool): `python -m farensed.cli.helpcatalog update` adds the
commands' help paragraphs and Click's own messages that are new to farensed/locale/pt/LC_MESSAGES/farense-help.po
(translate the empty msgstr), `compile` writes its .mo; a fast test checks that every one is translated and compiled.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from farensed import i18n
from farensed.helptext import WORDS, texts, walk, written


def roots() -> list[click.Command]:
    """farensectl and farensed (the daemon's own options)."""
    from farensed.cli.main import cli
    from farensed.queue.main import cli as daemon

    return [cli, daemon]


def msgids(*commands: click.Command) -> dict[str, str]:
    """Every msgid of the help catalog: the commands' help paragraphs and Click's own messages, with where."""
    found: dict[str, str] = {}
    for command in (c for root in commands or roots() for c in walk(root)):
        for obj, attr in texts(command):
            text = written(obj, attr)
            for msgid in i18n.help_msgids(text) if text else []:
                found.setdefault(msgid, f"help/{command.name or 'farensectl'}:1")
    for word in WORDS:
        found.setdefault(word, "help/click:1")
    click_sources = sorted(Path(click.__file__).parent.glob("*.py"))
    for msgid, where in i18n.msgids(click_sources).items():
        found.setdefault(msgid, where)
    return found


def main(argv: list[str]) -> int:
    return i18n.catalog_main(argv, "farensed.cli.helpcatalog", i18n.HELP_PO, used=msgids)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
