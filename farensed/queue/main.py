"""`farensed [--home DIR]`: the queue daemon in the foreground (what launchd and systemd run)."""

from __future__ import annotations

import logging
import sys

import click

from farensed.errors import FarenseError
from farensed.workspace import Workspace


def configure_logging() -> None:
    """One timestamped line per event on stdout (launchd/systemd keep it; `farensectl daemon` tails it)."""
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S", stream=sys.stdout
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", envvar="FARENSE_HOME", help="Workspace root (default: $FARENSE_HOME, else the current directory)."
)
@click.option("--burst", is_flag=True, help="Exit once no job is left to run.")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between checks of the running child.")
@click.option("--rescan", type=float, default=5.0, show_default=True, help="Seconds between rescans of jobs/pending/.")
@click.option(
    "--min-available-mb",
    type=float,
    envvar="FARENSE_MIN_AVAILABLE_MB",
    help="Memory guard: checkpoint-stop the job when available memory falls below this [env FARENSE_MIN_AVAILABLE_MB].",
)
@click.option(
    "--stop-timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the child's checkpoint."
)
@click.option(
    "--recovery-backoff",
    envvar="FARENSE_RECOVERY_BACKOFF",
    default="10,30,120,300,600",
    show_default=True,
    help="Seconds to wait before restarting a lost child, per recovery; the last is the cap "
    "[env FARENSE_RECOVERY_BACKOFF].",
)
@click.version_option(package_name="farense")
def cli(home, burst, poll, rescan, min_available_mb, stop_timeout, recovery_backoff):
    """The farense queue daemon in the foreground: watch jobs/, run one job at a time, survive every crash."""
    from farensed.queue.backoff import parse_schedule
    from farensed.queue.daemon import Daemon

    try:
        schedule = parse_schedule(recovery_backoff)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--recovery-backoff") from None
    configure_logging()
    daemon = Daemon(
        Workspace.at(home),
        poll_interval=poll,
        rescan_interval=rescan,
        min_available_mb=min_available_mb,
        stop_timeout=stop_timeout,
        recovery_backoff=schedule,
    )
    try:
        sys.exit(daemon.work(burst=burst))
    except FarenseError as exc:
        click.echo(f"farensed: {exc}", err=True)
        sys.exit(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="farensed")


if __name__ == "__main__":
    main()
