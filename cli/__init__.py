"""farensectl: the thin Click front end (parse, call the library, print). Installed as `farensed.cli`.

Modules import the library lazily inside commands, so `farensectl --help` never pays for mlx.
"""
