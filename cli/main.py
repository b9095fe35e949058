"""farensectl entry point: the group and every command module registered on it."""

from __future__ import annotations

from farensed.cli import daemon, doctor, inspect, jobs, model, overnight, runs, spec, train  # noqa: F401 - each module registers its commands on `cli`
from farensed.cli.app import cli


def main() -> None:
    import os

    from farensed.storage.workspace import private_by_default

    private_by_default()
    # transformers (tokenizers, chat templates: doctor, submit) says "PyTorch was not found" in English on every
    # import; farense never uses PyTorch, so its advice is noise in either language
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    cli(prog_name="farensectl")


if __name__ == "__main__":
    main()
