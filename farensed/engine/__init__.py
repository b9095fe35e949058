"""The training engine: the resumable QLoRA loop, checkpoints, resume, data, evaluation, scale-out.

Runs only in a training process (`farensectl run`, the daemon's child, a distributed rank): this is the one
subpackage that imports mlx and mlx-lm, always inside functions, so importing a module here stays cheap.
May import the foundation (`farensed.storage.atomic`, `spec`, `console`, …) and `farensed.analysis`; never the queue.
See docs/ARCHITECTURE.md for the exact-resume recipe.
"""
