"""The queue and its daemon: jobs/ on disk, job states, farensed's loop, the training child, the service files.

Never imports mlx (a test checks it): the daemon stays small and survives a crashing trainer. The child
(`farensed.queue.child`) is the one door into the engine, imported only in the child process.
May import core, `storage`, `models`, `spec` and `analysis`; see docs/ARCHITECTURE.md for the job state machine.
"""
