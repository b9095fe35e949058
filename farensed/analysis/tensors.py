"""Describing and checking safetensors files without mlx: headers only (the daemon and CLI never import mlx)."""

from __future__ import annotations

import math
from pathlib import Path

from farensed.i18n import _


def describe(path: Path) -> dict | None:
    """Tensor count, parameter count and size of a safetensors file, from its header; None if it is absent.

    Raises ValueError for a file that exists but is not readable safetensors (torn or damaged).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="numpy") as st:
            shapes = {key: st.get_slice(key).get_shape() for key in st.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError) as exc:
        raise ValueError(_("{path}: safetensors ilegível ({exc})").format(path=path, exc=exc)) from None
    return {
        "path": str(path),
        "tensors": len(shapes),
        "parameters": sum(math.prod(shape) for shape in shapes.values()),
        "bytes": path.stat().st_size,
    }


def describe_adapters(folder: Path) -> dict | None:
    """`describe` for a folder's adapters.safetensors; a damaged file is reported, not raised."""
    try:
        return describe(Path(folder) / "adapters.safetensors")
    except ValueError as exc:
        return {"path": str(Path(folder) / "adapters.safetensors"), "error": str(exc)}
