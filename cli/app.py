"""The farensectl Click group and the helpers every command shares."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import orjson

from farensed.errors import FarenseError, error_line
from farensed.helptext import OneLineErrors, version_option
from farensed.i18n import _


class FarenseGroup(OneLineErrors, click.Group):
    """A click group that turns library errors and usage errors into one line on stderr (`Erro: …` / `Error: …`)
    and their exit code."""

    def main(self, *args, **kwargs):
        from farensed.helptext import localize

        localize(self)  # --help and Click's own messages in the user's language, decided at each invocation
        return super().main(*args, **kwargs)

    def invoke(self, ctx):
        from farensed.terminal import safe

        try:
            return super().invoke(ctx)
        except FarenseError as exc:
            click.echo(safe(error_line(exc), 500), err=True)  # a value from a user's file never reaches it raw or whole
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            raise
        except OSError as exc:  # a file the command needs cannot be read or written: one line, never a traceback
            where = f"{safe(exc.filename, 200)}: " if exc.filename else ""
            click.echo(safe(error_line(f"{where}{exc.strerror or exc}"), 300), err=True)
            ctx.exit(1)
        except RuntimeError as exc:  # pathlib's resolve() of a path that loops (a link to itself in a hand edit)
            if not str(exc).startswith("Symlink loop from "):
                raise
            where = str(exc).removeprefix("Symlink loop from ").strip("'")
            click.echo(
                safe(error_line(_("{path}: os links simbólicos formam um ciclo").format(path=where)), 300), err=True
            )
            ctx.exit(1)


def output_file(path: Path, option: str = "--output") -> Path:
    """A file a command is asked to write: new, or a regular file it may replace, in a folder that exists (a device,
    FIFO or folder there is never replaced by the rename; a mistyped folder is never made)."""
    from farensed.storage.regular import kind_of
    from farensed.terminal import safe

    path = Path(path)
    shown = safe(path, 200)
    try:
        kind = kind_of(os.stat(path).st_mode)
    except FileNotFoundError:
        kind = None
    except OSError as exc:
        raise click.BadParameter(f"{shown}: {exc.strerror}", param_hint=option) from None
    if kind is not None:
        raise click.BadParameter(_("{path} é {kind}: não o substituo").format(path=shown, kind=kind), param_hint=option)
    if not path.parent.is_dir():
        raise click.BadParameter(
            _("a pasta {folder} não existe").format(folder=safe(path.parent, 200)), param_hint=option
        )
    return path


class JobId(click.ParamType):
    """A job id as the queue spells it: ASCII digits, no sign, no leading zero (`int()` would take ' 1', '01', '٣')."""

    name = "id"

    def convert(self, value, param, ctx):
        from farensed.queue.job import job_id_of
        from farensed.terminal import safe

        if isinstance(value, int) and not isinstance(value, bool):
            return value
        job_id = job_id_of(str(value))
        if job_id is None:
            self.fail(_("{value} não é o número de um job").format(value=safe(repr(str(value)), 40)), param, ctx)
        return job_id


JOB_ID = JobId()


@click.group(cls=FarenseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="FARENSE_HOME",
    help="Workspace root (default: $FARENSE_HOME, else the current directory).",
)
@version_option()
@click.pass_context
def cli(ctx, home):
    """Fine-tune LLMs with QLoRA on MLX: a queue daemon, exact resume, gap analysis.

    \b
    Example:
      farensectl demo
      farensectl submit jobs/examples/v2.json && farensectl tail
    """
    # transformers (tokenizers, chat templates: doctor, submit) says "PyTorch was not found" in English on its first
    # import; farense never uses PyTorch, so the advice is noise in either language (and breaks --json on stdout+err)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    ctx.obj = {"home": home}


def workspace(ctx=None):
    from farensed.storage.workspace import Workspace
    from farensed.terminal import safe

    ctx = ctx or click.get_current_context()
    obj = ctx.find_root().obj
    ws = Workspace.at(obj["home"])
    if not ws.root.exists() and not obj.get("said_new"):  # nothing silent: a mistyped --home makes a new folder
        obj["said_new"] = True
        click.echo(_("farense: {root} não existia: espaço de trabalho novo").format(root=safe(ws.root, 300)), err=True)
    return ws


def queue(ctx=None):
    from farensed.queue.jobs import Queue

    return Queue(workspace(ctx))


def print_json(obj) -> None:
    click.echo(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())


def colour_band(text: str, band: str | None) -> str:
    """Colour a gap band on a TTY (click strips it elsewhere)."""
    from farensed.analysis.gap import colour

    return click.style(text, fg=colour(band)) if sys.stdout.isatty() else text


def fmt_number(value, spec=".4f") -> str:
    """A number for a table cell; '-' when there is none."""
    return "-" if value is None else format(value, spec)


def record_line(record, best, first) -> str:
    """One metrics record as `tail` prints it (the band coloured on a terminal)."""
    from farensed.analysis.monitor import format_record

    return format_record(record, best, first, colour=colour_band)


def failure_lines(job) -> str:
    """A failed job's reason in one line, then where its whole log is."""
    from farensed.i18n import _
    from farensed.terminal import safe
    from farensed.views.status import error_reason

    return "\n".join(
        [
            _("erro: {reason}").format(reason=safe(error_reason(job.error), 400)),
            _("log completo: farensectl logs {id}").format(id=job.id),
        ]
    )
