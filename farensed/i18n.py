"""Console and error language: Portuguese (the seed's wording, which are the msgids) or English, via gettext."""

from __future__ import annotations

import ast
import contextlib
import gettext
import inspect
import os
import re
import sys
from pathlib import Path

DOMAIN = "farense"
LOCALEDIR = Path(__file__).parent / "locale"
PO_FILE = LOCALEDIR / "en" / "LC_MESSAGES" / f"{DOMAIN}.po"
MO_FILE = PO_FILE.with_suffix(".mo")
LANGUAGES = ("pt", "en")

# --help and Click's own messages are written in English (Click's msgids are): their catalog is Portuguese
HELP_DOMAIN = "farense-help"
HELP_PO = LOCALEDIR / "pt" / "LC_MESSAGES" / f"{HELP_DOMAIN}.po"
HELP_MO = HELP_PO.with_suffix(".mo")

_catalogs: dict[str, gettext.NullTranslations] = {}
_warned: set[str] = set()
_speaking: list[str] = []  # `speaking(lang)` blocks, innermost last


def _from_value(value: str) -> str:
    return "pt" if value.strip().lower().startswith("pt") else "en"


@contextlib.contextmanager
def speaking(lang: str):
    """Everything said inside in `lang`, whatever the environment (the CLI reference is written in English)."""
    _speaking.append(lang)
    try:
        yield
    finally:
        _speaking.pop()


def language() -> str:
    """pt or en: FARENSE_LANG (pt|en), else the POSIX locale (LC_ALL, LC_MESSAGES, LANG; pt* → pt), else en."""
    if _speaking:
        return _speaking[-1]
    chosen = os.environ.get("FARENSE_LANG", "").strip()
    if chosen:
        lang = chosen.lower()[:2]
        if lang in LANGUAGES:
            return lang
        if chosen not in _warned:  # a typo must not break a run: said once per process, English used
            _warned.add(chosen)
            shown = repr(chosen[:20])  # repr: escapes made visible, and never the value whole
            print(f"farense: FARENSE_LANG={shown} not supported (pt|en); using en", file=sys.stderr)
        return "en"
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            return _from_value(value)
    return "en"


def translations(lang: str | None = None) -> gettext.NullTranslations:
    """The catalog of a language, loaded once per process (Portuguese: the msgids themselves)."""
    lang = lang or language()
    if lang not in _catalogs:
        if lang == "pt":
            _catalogs[lang] = gettext.NullTranslations()
        else:
            _catalogs[lang] = gettext.translation(DOMAIN, LOCALEDIR, languages=[lang], fallback=True)
    return _catalogs[lang]


def _(message: str) -> str:
    """A user-facing message in the current language (resolved at call time)."""
    return translations().gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """A message with a count, in the current language."""
    return translations().ngettext(singular, plural, n)


def grouped(number: float, decimals: int = 0) -> str:
    """A number with its thousands grouped as the reader writes them: 12 288 in Portuguese (a no-break space), 12,288
    in English."""
    text = f"{number:,.{decimals}f}"
    return text.replace(",", "\u00a0") if language() == "pt" else text


def help_translations(lang: str | None = None) -> gettext.NullTranslations:
    """The catalog of --help and Click's messages in a language (English: the msgids themselves)."""
    lang = lang or language()
    key = f"{HELP_DOMAIN}-{lang}"
    if key not in _catalogs:
        if lang == "pt":
            _catalogs[key] = gettext.translation(HELP_DOMAIN, LOCALEDIR, languages=["pt"], fallback=True)
        else:
            _catalogs[key] = gettext.NullTranslations()
    return _catalogs[key]


def _paragraphs(text: str) -> list[tuple[str, str | None]]:
    """A help text's paragraphs, each with its msgid: the paragraph on one line (Click rewraps it), or for a
    verbatim block (Click's `\\b`: examples) only its heading (`Example:`); None where nothing is to translate."""
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        lines = para.split("\n")
        if lines[0].strip() == "\b":
            heading = lines[1].strip() if len(lines) > 1 and lines[1].strip().endswith(":") else None
            out.append((para, heading))
        else:
            out.append((para, " ".join(para.split()) or None))
    return out


def help_msgids(text: str) -> list[str]:
    """What the help catalog holds of one help text (see `help_text`)."""
    return [msgid for _para, msgid in _paragraphs(text) if msgid]


def help_text(text: str | None, lang: str | None = None) -> str | None:
    """A --help text (a command's docstring, an option's help) in the language, paragraph by paragraph; a paragraph
    without a translation stays as written."""
    lang = lang or language()
    if not text or lang == "en":  # English is how it is written
        return text
    catalog = help_translations(lang)
    out = []
    for para, msgid in _paragraphs(text):
        said = catalog.gettext(msgid) if msgid else msgid
        if not msgid or said == msgid:
            out.append(para)
        elif para.startswith("\b"):
            lines = para.split("\n")
            out.append("\n".join([lines[0], said, *lines[2:]]))
        else:
            out.append(said)
    return "\n\n".join(out)


def click_gettext(message: str) -> str:
    """Click's own messages (usage, errors, `Options`) in the language: farense's catalog under Portuguese, else
    what the stdlib's gettext (Click's own route) says."""
    if language() == "pt":
        return help_translations("pt").gettext(message)
    return gettext.gettext(message)


def click_ngettext(singular: str, plural: str, n: int) -> str:
    if language() == "pt":
        return help_translations("pt").ngettext(singular, plural, n)
    return gettext.ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark a message for the catalog where it is defined (a table); translate it with _() where it is shown."""
    return message


def sources() -> list[Path]:
    """The package's code: farensed/ and the CLI (cli/ at the repository root, installed as farensed.cli)."""
    import importlib.util

    cli = Path(importlib.util.find_spec("farensed.cli").origin).parent
    return sorted(Path(__file__).parent.rglob("*.py")) + sorted(cli.rglob("*.py"))


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def msgids(files: list[Path] | None = None) -> dict[str | tuple[str, str], str]:
    """Every literal `_("...")`, `N_("...")` and `ngettext("...", "...", n)` msgid in the package's code (a plural
    as its (singular, plural) pair), with where it first appears."""
    found: dict[str | tuple[str, str], str] = {}
    for path in files if files is not None else sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            where = f"{path.parent.name}/{path.name}:{node.lineno}"
            if node.func.id in ("_", "N_") and (text := _literal(node.args[0])) is not None:
                found.setdefault(text, where)
            elif node.func.id == "ngettext" and len(node.args) >= 2:
                singular, plural = _literal(node.args[0]), _literal(node.args[1])
                if singular is not None and plural is not None:
                    found.setdefault((singular, plural), where)
    return found


def compile_catalog(po: Path = PO_FILE) -> bytes:
    """The .mo bytes of a .po file (Babel, a development dependency: extra `test`)."""
    from io import BytesIO

    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as f:
        catalog = read_po(f)
    buf = BytesIO()
    write_mo(buf, catalog)
    return buf.getvalue()


def update_catalog(po: Path = PO_FILE, used: dict | None = None) -> list[str]:
    """Add the code's new msgids (or `used`'s) to the .po (empty msgstr, to translate) and drop unused ones;
    returns the new ones."""
    from babel.messages.pofile import read_po, write_po

    with po.open("rb") as f:
        catalog = read_po(f)
    used = msgids() if used is None else used
    key = {(m[0] if isinstance(m, tuple) else m): m for m in used}  # babel keys a plural by its singular
    new = [m for m in used if (m[0] if isinstance(m, tuple) else m) not in catalog]
    for msgid in new:
        catalog.add(msgid, ("", "") if isinstance(msgid, tuple) else "", locations=[tuple(used[msgid].rsplit(":", 1))])
    for message in list(catalog):
        singular = message.id[0] if isinstance(message.id, tuple) else message.id
        if message.id and key.get(singular) != message.id:
            catalog.delete(message.id)
    with po.open("wb") as f:
        write_po(f, catalog, width=120, omit_header=False, sort_output=True, include_lineno=False)
    return new


def catalog_main(argv: list[str], program: str, po: Path, used=None) -> int:
    """`update` (the msgids in use, `used()` or the code's, into the .po) or `compile` (the .po into its .mo)."""
    if argv[:1] == ["update"]:
        new = update_catalog(po, used() if used else None)
        print(f"{po}: {len(new)} new message(s) to translate")
        return 0
    if argv[:1] == ["compile"]:
        po.with_suffix(".mo").write_bytes(compile_catalog(po))
        print(f"{po.with_suffix('.mo')} written")
        return 0
    print(f"usage: python -m {program} update|compile", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    """python -m farensed.i18n update|compile: refresh the English .po from the code, compile it to the .mo."""
    return catalog_main(argv, "farensed.i18n", PO_FILE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
