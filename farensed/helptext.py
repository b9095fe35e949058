"""--help in the user's language, for farensectl and farensed: the commands' help and Click's own messages (usage,
errors, `Options`) through the Portuguese help catalog (farensed/locale/pt/LC_MESSAGES/farense-help.po; English is
how they are written).

`python -m farensed.cli.helpcatalog update|compile` keeps that catalog (cli/helpcatalog.py).
"""

from __future__ import annotations

import gettext
import sys

import click

from farensed import i18n
from farensed.i18n import _


def route_click_messages() -> None:
    """Click translates its messages through the stdlib's global gettext domain (each module binds
    `gettext.gettext` as `_`), which follows LANGUAGE/LANG, not FARENSE_LANG, and has no Portuguese: send them to
    farense's catalog instead. A Click that binds them otherwise keeps its English."""
    for name, module in list(sys.modules.items()):
        if name != "click" and not name.startswith("click."):
            continue
        if getattr(module, "_", None) is gettext.gettext:
            module._ = i18n.click_gettext
        if getattr(module, "ngettext", None) is gettext.ngettext:
            module.ngettext = i18n.click_ngettext


def texts(command: click.Command) -> list[tuple[object, str]]:
    """The help-bearing objects of a command and its parameters, with the attribute that holds the text."""
    found = [(command, attr) for attr in ("help", "short_help", "epilog")]
    return found + [(param, "help") for param in command.params if isinstance(param, click.Option)]


def written(obj, attr: str):
    """A help text or word as written (English), kept aside on the object the first time it is translated."""
    return obj.__dict__.setdefault(f"_farense_{attr}", getattr(obj, attr, None))


def walk(command: click.Command):
    yield command
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            yield from walk(sub)


# Words shown as they are: metavars (Click's, and the options' own: `--refresh SECONDS`) and value types' names
# (`--home DIRECTORY`, "not a valid integer"); an argument's metavar (SPEC, RUN) is named in the help: kept
WORDS = ("[OPTIONS]", "COMMAND [ARGS]...", "integer", "float", "text", "boolean", "directory", "file", "path")
WORDS += ("integer range", "float range", "required", "SECONDS", "TIME")


def _words(command: click.Command) -> list[tuple[object, str]]:
    found = [(command, "options_metavar")]
    if isinstance(command, click.Group):
        found.append((command, "subcommand_metavar"))
    found += [(param, "metavar") for param in command.params if isinstance(param, click.Option) and param.metavar]
    return found + [(param.type, "name") for param in command.params if isinstance(param.type, click.ParamType)]


def localize(root: click.Command, lang: str | None = None) -> None:
    """Set every command's help to the language (from the English as written, kept aside the first time)."""
    route_click_messages()
    lang = lang or i18n.language()
    words = i18n.help_translations(lang)
    for command in walk(root):
        for obj, attr in texts(command):
            setattr(obj, attr, i18n.help_text(written(obj, attr), lang))
        for obj, attr in _words(command):  # a value type may be shared (click.INT): kept aside once all the same
            if isinstance(word := written(obj, attr), str):
                setattr(obj, attr, words.gettext(word))
        if hasattr(command, "_help_option"):
            command._help_option = None  # Click caches its --help option with the text of its first language


def version_option(package: str = "farense"):
    """Click's --version, its words said when asked (Click's own decorator fixes them when the module loads)."""

    def say(ctx: click.Context, _param, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        from importlib.metadata import version

        said = i18n.click_gettext("%(prog)s, version %(version)s")
        click.echo(said % {"prog": ctx.find_root().info_name, "version": version(package)})
        ctx.exit()

    return click.option(
        "--version", is_flag=True, expose_value=False, is_eager=True, callback=say, help="Show the version and exit."
    )


class OneLineUsageError(click.UsageError):
    """A usage error as one short line on stderr, its value made safe, with where to find the help (Click's own
    prints the usage, a hint and the error on three lines, and echoes a value whole)."""

    def __init__(self, exc: click.UsageError):
        super().__init__(exc.format_message(), exc.ctx)
        self.exit_code = exc.exit_code

    def show(self, file=None) -> None:
        from farensed.errors import error_line
        from farensed.terminal import safe

        hint = f" ({_('ajuda: {command} -h').format(command=self.ctx.command_path)})" if self.ctx else ""
        click.echo(safe(error_line(self.format_message()), 300) + safe(hint, 100), err=True, file=file)


class OneLineErrors:
    """For a Click command or group: its usage errors (and its subcommands') as `OneLineUsageError`."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # the help itself, asked for by giving nothing
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, OneLineUsageError):
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc) from None
