"""farensectl daemon start|stop|status|install|uninstall."""

from __future__ import annotations

import sys

import click

from farensed.cli.app import cli, print_json, workspace
from farensed.i18n import _

NOT_RUNNING = 3  # LSB: "program is not running"


@cli.group()
def daemon():
    """Manage farensed: a LaunchAgent (macOS), a systemd user unit (Linux), or a background process.

    \b
    Example:
      farensectl daemon install && farensectl daemon status
    """


@daemon.command()
def start():
    """Start farensed (through launchd/systemd when installed)."""
    from farensed.queue import service

    click.echo(service.start(workspace()))


@daemon.command()
def stop():
    """Stop farensed; the running job checkpoints and resumes at the next start."""
    from farensed.queue import service

    click.echo(service.stop(workspace()))


@daemon.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def daemon_status(as_json):
    """Is farensed running, with which pid and service manager.

    Exit code 0 when farensed is running, 3 when it is not (as LSB init scripts' `status`).
    """
    from farensed.queue import service

    info = service.status(workspace())
    if as_json:
        print_json(info)
    else:
        state = _("a correr (pid {pid})").format(pid=info["pid"]) if info["running"] else _("parado")
        click.echo(
            _("farensed {state}; gestor: {manager}; instalado: {installed}").format(
                state=state,
                manager=service.manager_label(info["manager"]),
                installed=_("sim") if info["installed"] else _("não"),
            )
        )
        if info["manager"] == "process":
            from farensed.queue.service import persistence_hint

            click.echo(_("⚠  Sem gestor de serviços aqui: farensed não volta depois de reiniciar a máquina."))
            click.echo(persistence_hint(workspace()))
    if not info["running"]:
        sys.exit(NOT_RUNNING)


@daemon.command()
def install():
    """Render the service file with absolute paths and load it (launchctl / systemctl --user)."""
    from farensed.queue import service

    click.echo(service.install(workspace()))


@daemon.command()
def uninstall():
    """Unload and remove the service file; stop farensed."""
    from farensed.queue import service

    click.echo(service.uninstall(workspace()))
