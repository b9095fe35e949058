"""`farensed [--home DIR]`: the queue daemon in the foreground (what launchd and systemd run)."""

from __future__ import annotations

import logging
import math
import sys

import click

from farensed.errors import FarenseError
from farensed.helptext import OneLineErrors, version_option
from farensed.i18n import _
from farensed.queue.stall import DEFAULT_MINUTES, MIN_MINUTES
from farensed.storage.workspace import Workspace, private_by_default
from farensed.terminal import SafeFormatter, safe


def configure_logging() -> None:
    """One timestamped line per event on stdout (launchd/systemd keep it; `farensectl daemon` tails it); every
    message made one safe line (a file name cannot forge a line or send escapes to whoever reads the log)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(SafeFormatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


class FiniteRange(click.FloatRange):
    """Click's FloatRange without NaN, which it lets through (every comparison with NaN is false)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(_("não é um número"), param, ctx)
        return number


class FarensedCommand(OneLineErrors, click.Command):
    """farensed's command: usage errors (a bad option or FARENSE_* value) as one short line."""


@click.command(cls=FarensedCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home", envvar="FARENSE_HOME", help="Workspace root (default: $FARENSE_HOME, else the current directory)."
)
@click.option("--burst", is_flag=True, help="Exit once no job is left to run.")
@click.option(
    "--poll",
    type=FiniteRange(0.05, 3600),
    default=0.5,
    show_default=True,
    help="Seconds between checks of the running child.",
)
@click.option(
    "--rescan",
    type=FiniteRange(0.05, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between rescans of jobs/pending/.",
)
@click.option(
    "--memory-guard/--no-memory-guard",
    default=True,
    envvar="FARENSE_MEMORY_GUARD",
    show_default=True,
    help="Checkpoint-stop the job under memory pressure and hold it until pressure falls [env FARENSE_MEMORY_GUARD].",
)
@click.option(
    "--pressure-stop",
    type=click.Choice(["warn", "critical"]),
    default="critical",
    envvar="FARENSE_PRESSURE_STOP",
    show_default=True,
    help="macOS: the kern.memorystatus_vm_pressure_level that stops the job [env FARENSE_PRESSURE_STOP].",
)
@click.option(
    "--psi-full-stop",
    type=FiniteRange(0, 100, min_open=True),
    default=20.0,
    envvar="FARENSE_PSI_FULL_STOP",
    show_default=True,
    help="Linux: stop when PSI memory 'full avg10' reaches this percent [env FARENSE_PSI_FULL_STOP].",
)
@click.option(
    "--psi-some-stop",
    type=FiniteRange(0, 100, min_open=True),
    default=60.0,
    envvar="FARENSE_PSI_SOME_STOP",
    show_default=True,
    help="Linux: stop when PSI memory 'some avg10' reaches this percent [env FARENSE_PSI_SOME_STOP].",
)
@click.option(
    "--min-available-mb",
    type=FiniteRange(0, 10**9),
    envvar="FARENSE_MIN_AVAILABLE_MB",
    help="Available-memory floor where the kernel gives no pressure level (Linux; default 5% of RAM, 512-4096 MB) "
    "[env FARENSE_MIN_AVAILABLE_MB].",
)
@click.option(
    "--stop-timeout",
    type=FiniteRange(1, 86400),
    default=300.0,
    show_default=True,
    help="Seconds to wait for the child's checkpoint.",
)
@click.option(
    "--window",
    envvar="FARENSE_WINDOW",
    callback=lambda ctx, param, value: _check_window(value),
    help="Default training window for jobs without one, e.g. 23:00-07:00 [env FARENSE_WINDOW].",
)
@click.option(
    "--battery-min",
    type=FiniteRange(0, 100),
    default=30.0,
    show_default=True,
    envvar="FARENSE_BATTERY_MIN",
    help="On battery below this %, checkpoint-stop and wait for mains power; 0 turns it off [env FARENSE_BATTERY_MIN].",
)
@click.option(
    "--recovery-backoff",
    envvar="FARENSE_RECOVERY_BACKOFF",
    default="10,30,120,300,600",
    show_default=True,
    help="Seconds to wait before restarting a lost child, per recovery; the last is the cap "
    "[env FARENSE_RECOVERY_BACKOFF].",
)
@click.option(
    "--stall-minutes",
    type=FiniteRange(0, 7 * 24 * 60),
    default=DEFAULT_MINUTES,
    envvar="FARENSE_STALL_MINUTES",
    callback=lambda ctx, param, value: _check_stall(value),
    show_default=True,
    help="Stop a job whose child writes nothing (log, run folder) for this long, and fail it with the reason; "
    "0 turns it off [env FARENSE_STALL_MINUTES].",
)
@version_option()
def cli(
    home,
    burst,
    poll,
    rescan,
    memory_guard,
    pressure_stop,
    psi_full_stop,
    psi_some_stop,
    min_available_mb,
    stop_timeout,
    window,
    battery_min,
    recovery_backoff,
    stall_minutes,
):
    """The farense queue daemon in the foreground: watch jobs/, run one job at a time, survive every crash."""
    from farensed.queue.backoff import parse_schedule
    from farensed.queue.daemon import Daemon
    from farensed.queue.overnight import Overnight
    from farensed.queue.pressure import MemoryGuard, Thresholds

    try:
        schedule = parse_schedule(recovery_backoff)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--recovery-backoff") from None
    private_by_default()  # the children inherit it: every run folder, output and report is 0600/0700
    configure_logging()
    ws = Workspace.at(home)
    log = logging.getLogger("farensed").info
    guard = MemoryGuard(
        Thresholds(
            enabled=memory_guard,
            macos_stop_level={"warn": 2, "critical": 4}[pressure_stop],
            psi_full_stop=psi_full_stop,
            psi_some_stop=psi_some_stop,
            min_available_mb=min_available_mb,
        )
    )
    log(guard.describe())
    try:
        daemon = Daemon(
            ws,
            poll_interval=poll,
            rescan_interval=rescan,
            memory_guard=guard,
            stop_timeout=stop_timeout,
            overnight=Overnight(ws, window=window, battery_min=battery_min, log=log),
            recovery_backoff=schedule,
            stall_minutes=stall_minutes,
        )
        sys.exit(daemon.work(burst=burst))
    except FarenseError as exc:
        click.echo(f"farensed: {safe(exc, 2000)}", err=True)
        sys.exit(exc.exit_code)


def _check_stall(value: float) -> float:
    if 0 < value < MIN_MINUTES:  # a few seconds would stop every job
        raise click.BadParameter(
            _("{value} não serve: 0 (desligado) ou pelo menos {least} minutos").format(value=value, least=MIN_MINUTES),
            param_hint="--stall-minutes",
        )
    return value


def _check_window(value: str | None) -> str | None:
    if value:
        from farensed.spec.window import parse_windows

        try:
            parse_windows(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--window") from None
    return value


def main(argv: list[str] | None = None) -> None:
    from farensed.helptext import localize

    localize(cli)  # its --help and usage errors in the user's language, as farensectl's
    cli.main(args=argv, prog_name="farensed")


if __name__ == "__main__":
    main()
