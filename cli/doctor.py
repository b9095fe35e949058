"""farensectl doctor [SPEC] [--json]."""

from __future__ import annotations

import click

from farensed.cli.app import cli, print_json, workspace


@cli.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def doctor(ctx, spec, as_json):
    """Check this machine (and SPEC) before training: one line per check, with how to fix it.

    Exit code 0 when nothing failed (❌), 1 otherwise.

    \b
    Example:
      farensectl doctor jobs/examples/v2.json
    """
    from farensed.doctor import format_check, run_checks, summary

    checks = run_checks(workspace(), spec)
    report = summary(checks, spec)
    if as_json:
        print_json(report)
    else:
        for check in checks:
            click.echo(format_check(check))
    ctx.exit(0 if report["ok"] else 1)
