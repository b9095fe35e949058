"""farensectl: submit, watch and analyse QLoRA fine-tuning jobs (the thin CLI over farensed)."""

from __future__ import annotations

import sys

import click

from farensed.errors import FarenseError


class FarenseGroup(click.Group):
    """A click group that turns library errors into one line on stderr and their exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FarenseError as exc:
            err = click.ClickException(str(exc))
            err.exit_code = exc.exit_code
            raise err from None


@click.group(cls=FarenseGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), envvar="FARENSE_HOME",
              help="Workspace root (default: $FARENSE_HOME, else the current directory).")
@click.version_option(package_name="farense")
@click.pass_context
def cli(ctx, home):
    """Fine-tune LLMs with QLoRA on MLX: a queue daemon, exact resume, gap analysis.

    \b
    Example:
      farensectl demo
      farensectl submit jobs/examples/v2.json && farensectl tail
    """
    ctx.obj = {"home": home}


def home_of(ctx) -> str | None:
    return ctx.find_root().obj["home"]


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Start over; the old run folder is moved aside, never deleted.")
@click.pass_context
def run(ctx, spec, fresh):
    """Train SPEC in the foreground, no daemon (same engine, same files).

    Re-running a spec whose training_state.json exists resumes it exactly.
    Exit code 75 means: interrupted by a signal, resumable.

    \b
    Example:
      farensectl run jobs/examples/v2.json
    """
    from farensed.runner import run_spec

    sys.exit(run_spec(spec, home_of(ctx), fresh=fresh))


@cli.command()
@click.option("--prepare", is_flag=True, help="Only build the tiny model, the demo data and demo.json.")
@click.pass_context
def demo(ctx, prepare):
    """Build a tiny model and data, train jobs/examples/demo.json, show the gap analysis.

    \b
    Example:
      farensectl demo --prepare && farensectl submit jobs/examples/demo.json
    """
    from farensed.demo import prepare as prepare_demo
    from farensed.runner import configure_environment, run_spec
    from farensed.workspace import Workspace

    configure_environment()
    ws = Workspace.at(home_of(ctx))
    spec_path = prepare_demo(ws, log=click.echo)
    if not prepare:
        code = run_spec(spec_path, ws.root, fresh=True)
        sys.exit(code)


def main() -> None:
    cli(prog_name="farensectl")


if __name__ == "__main__":
    main()
