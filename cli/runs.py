"""farensectl check, and what every reader shares: RUN resolved one way (a job id, a run name, a run folder)."""

from __future__ import annotations

import sys

import click

from farensed.cli.app import cli, print_json, workspace
from farensed.i18n import _

RUN_HELP = (
    "RUN is a job id (all digits), a run name (checkpoints_qlora/<name>) or a path to a run folder (anything with "
    "a '/'); a metrics-only folder (just training_metrics.json, e.g. a backup) is read-only. An all-digit RUN is "
    "always a job id: "
    "name a run called '2' by its folder, checkpoints_qlora/2."
)
RUN_DEFAULT = " Default: the running job, else the latest."


def with_run_help(f=None, *, default: bool = True):
    """Insert the one rule for naming a run into a reader's --help, before its example (and the default RUN, for
    the readers whose RUN is optional)."""

    def insert(f):
        text = RUN_HELP + (RUN_DEFAULT if default else "")
        doc = f.__doc__ or ""
        head, sep, example = doc.partition("\n    \b\n    Example")
        f.__doc__ = f"{head.rstrip()}\n\n    {text}\n{sep}{example}" if sep else f"{doc}\n\n    {text}"
        return f

    return insert(f) if f is not None else insert


def resolve_run(ref):
    from farensed.views.runref import resolve

    return resolve(workspace(), ref)


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option(
    "--success", "criteria", metavar="JSON", help="Criteria as JSON instead of the spec's, e.g. '{\"gap_max\": 0.15}'."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_run_help
def check(ref, criteria, as_json):
    """Check a run against its success criteria: one line per criterion, exit 0 only if all pass.

    The criteria are the spec's `success` key (loss_drop, val_improves, gap_max, f1_min), else the defaults
    (loss_drop 0.6, val_improves, gap_max 0.15, f1_min 0.93).

    \b
    Example:
      farensectl check 3 && echo "V2 passed"
    """
    import orjson

    from farensed.analysis.success import criteria_of, format_verdicts, verdicts
    from farensed.errors import SpecError

    run = resolve_run(ref)
    if criteria:
        try:
            from farensed.spec.jobspec import parse_success

            chosen = parse_success(orjson.loads(criteria), "--success")
        except orjson.JSONDecodeError as exc:
            from farensed.spec.decode import parser_reason

            raise SpecError(
                _("--success: JSON inválido na coluna {colno}: {msg}").format(
                    colno=exc.colno, msg=parser_reason(exc.msg)
                )
            ) from None
        own = True
    else:
        chosen, own = criteria_of(run.spec_dict())
    evaluable = not run.seed_era and run.spec_dict() is not None  # what `farensectl eval` can evaluate
    items = verdicts(chosen, run.records(), run.read("evaluation_report.json"), evaluable)
    passed = all(v.passed for v in items)
    if as_json:
        print_json(
            {
                "run": run.label,
                "run_dir": str(run.run_dir),
                "passed": passed,
                "criteria": chosen,
                "from_spec": own,
                "verdicts": [v.to_dict() for v in items],
            }
        )
    else:
        click.echo(run.heading())
        if not own:
            click.echo(_("(sem 'success' na spec: critérios por omissão)"))
        click.echo(format_verdicts(items))
    sys.exit(0 if passed else 1)
