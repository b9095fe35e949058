"""farensectl entry point: the group and every command module registered on it."""

from __future__ import annotations

from farensed.cli import daemon, doctor, inspect, jobs, model, overnight, runs, spec, train  # noqa: F401 - each module registers its commands on `cli`
from farensed.cli.app import cli


def main() -> None:
    from farensed.storage.workspace import private_by_default

    private_by_default()
    cli(prog_name="farensectl")


if __name__ == "__main__":
    main()
