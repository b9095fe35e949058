"""farensectl entry point: the group and every command module registered on it."""

from __future__ import annotations

from . import daemon, jobs, train  # noqa: F401 - each module registers its commands on `cli`
from .app import cli


def main() -> None:
    cli(prog_name="farensectl")


if __name__ == "__main__":
    main()
