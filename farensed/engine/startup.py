"""Start-up facts the seed asks you to check by hand: the device and memory, and free disk for the checkpoints."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from farensed.errors import FarenseError, SpecError
from farensed.i18n import _
from farensed.terminal import safe
from farensed.units import size as gb

MARGIN_MB = 256  # besides the checkpoints: metrics, summaries, plots, evaluation (override: $FARENSE_DISK_MARGIN_MB)


def device_line() -> str:
    """`Dispositivo: gpu (Apple M2 Max, 64.0 GB) | memória: …` or `Dispositivo: cpu (…)`."""
    import mlx.core as mx
    import psutil

    kind = "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"
    try:
        info = mx.device_info()
    except Exception:  # noqa: BLE001 - an older mlx or a back end without it: say what we know
        info = {}
    name = info.get("device_name") or info.get("architecture") or "?"
    gpu_mem = f", {gb(info['memory_size'])}" if kind == "gpu" and info.get("memory_size") else ""
    vm = psutil.virtual_memory()
    return _("Dispositivo: {kind} ({name}{gpu_mem}) | memória: {free} livres de {total}").format(
        kind=kind, name=name, gpu_mem=gpu_mem, free=gb(vm.available), total=gb(vm.total)
    )


def checkpoint_bytes(trainable_bytes: int) -> int:
    """One checkpoint: the adapters plus Adam's two moments of the same size, plus its JSON files."""
    return 3 * trainable_bytes + 1_000_000


def disk_margin_mb() -> float:
    """$FARENSE_DISK_MARGIN_MB (0 to 10^9), else MARGIN_MB; anything else is said in one line (SpecError)."""
    text = os.environ.get("FARENSE_DISK_MARGIN_MB")
    if text is None or not text.strip():
        return MARGIN_MB
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1e9:  # NaN fails this too
        raise SpecError(
            _("FARENSE_DISK_MARGIN_MB={value}: precisa de um número de MB entre 0 e 1000000000").format(
                value=safe(text, 30)
            )
        )
    return value


def disk_needed(trainable_bytes: int, keep: int) -> int:
    """keep_checkpoints checkpoints, one more being written, best adapters and output/, plus the margin."""
    margin = disk_margin_mb() * 1e6
    return int((keep + 1) * checkpoint_bytes(trainable_bytes) + 2 * trainable_bytes + margin)


def check_disk(folder: Path, trainable_bytes: int, keep: int) -> str:
    """Raise one clear line when the disk holding `folder` lacks room for the run; else describe the room."""
    where = Path(folder)
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    need = disk_needed(trainable_bytes, keep)
    if free < need:
        raise FarenseError(
            _(
                "espaço em disco insuficiente em {where}: {free} livres, são precisos ~{needed} ({keep} checkpoints de {checkpoint_size} + margem); liberte espaço ou baixe keep_checkpoints"
            ).format(
                where=where,
                free=gb(free),
                needed=gb(need),
                keep=keep,
                checkpoint_size=gb(checkpoint_bytes(trainable_bytes)),
            )
        )
    return _("Disco: {free} livres em {where} (precisos ~{needed} para {keep} checkpoints + margem)").format(
        free=gb(free), where=where, needed=gb(need), keep=keep
    )


def trainable_bytes(model) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters()))
