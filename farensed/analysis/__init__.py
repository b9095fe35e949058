"""Reading a run's files: metrics, the overfitting gap, the live monitor, plots, success criteria, comparisons,
text metrics.

No mlx here: every command that only reads a run stays fast. May import core, `storage` and `spec`; what joins runs
with the queue's jobs lives in `farensed.views`.
"""
