"""Reading runs: metrics files, the seed's overfitting gap, the live monitor, reports, plots, text metrics.

No mlx here: every command that only reads a run stays fast. May import the foundation and, for views over
jobs (`report`), `farensed.queue.jobs`.
"""
