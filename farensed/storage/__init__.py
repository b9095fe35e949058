"""Storage: what every other part stands on — durable files, the workspace, process identity, the run lock.

atomic (temp → fsync → rename → fsync dir; nothing deleted, `move_aside`), jsonl, digest, exitfile (how a
training process ended), workspace (the root and its folders), procs (pid + start time), runlock (one trainer per
run). Imports only `farensed.errors` and `farensed.i18n`.
"""
