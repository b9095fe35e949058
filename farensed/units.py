"""Sizes for a person: one way everywhere (the doctor, the trainer's start-up lines, `model info`)."""

from __future__ import annotations

GB = 2**30  # memory and disk as macOS shows memory: 16 GB of RAM is 2^34 bytes


def size(n_bytes: float) -> str:
    """`1.2 GB` from a tenth of a GB up, else `340 MB`, `12 KB`, `512 bytes` (never `0 MB` for a small file)."""
    if n_bytes >= 0.1 * GB:
        return f"{n_bytes / GB:.1f} GB"
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.0f} {unit}"
    return f"{max(int(n_bytes), 0)} bytes"
