"""The job spec: what a user asks for, checked before anything runs.

jobspec (dataclasses with the seed's V2 defaults, ranges, one-line errors), options (mlx-lm's option keys), mlxlm
(an `mlx_lm lora` YAML config as a spec), load (reading a spec file and checking the files it names), datacheck
(model folders and JSONL data without mlx), window (training windows), hosts (a distributed spec's hosts).
Imports `farensed.storage` and `farensed.models`; no mlx.
"""
