"""farensectl spec --from: a spec (or an mlx_lm lora YAML config) as the farense JSON spec it means."""

from __future__ import annotations

from pathlib import Path

import click

from farensed.cli.app import cli, print_json


@cli.command(name="spec")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(dir_okay=False),
    help="An mlx_lm lora YAML config (or a JSON spec) to translate and validate.",
)
def spec_cmd(source):
    """Print the farense JSON spec equivalent to an mlx_lm lora config.

    Keys the YAML leaves out take mlx_lm lora's defaults, as they would there.
    The result is validated like any spec; save it and edit it, or submit
    the YAML itself.

    \b
    Example:
      farensectl spec --from lora_config.yaml > jobs/mine.json
    """
    from farensed.spec.jobspec import parse_spec
    from farensed.spec.load import read_spec_file

    raw = read_spec_file(Path(source))
    parse_spec(raw, str(source))
    print_json(raw)
