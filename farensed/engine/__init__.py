"""The training engine: the resumable QLoRA loop, checkpoints, resume, data, evaluation, scale-out.

Runs only in a training process (`farensectl run`, the daemon's child, a distributed rank): this is the one
subpackage that imports mlx and mlx-lm, always inside functions, so importing a module here stays cheap.
May import core, `storage`, `models`, `spec` and `analysis`; never the queue (collaborators such as `--fresh`'s
start-over come in as parameters).
See docs/ARCHITECTURE.md for the exact-resume recipe.
"""
