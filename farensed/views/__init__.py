"""What a person reads about jobs and their runs: run references, status rows, the queue's ETA, the morning report.

Joins the queue (`farensed.queue.jobs`) with the runs' files (`farensed.analysis`); no mlx.
"""
