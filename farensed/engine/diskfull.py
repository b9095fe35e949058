"""A write that fails for lack of disk space (ENOSPC, EFBIG, EDQUOT): stop with one line, keep the last checkpoint.

The checkpoint being written is removed as a whole (its temp folder never became a checkpoint), so the previous
one stays the newest valid; resuming after space is freed continues from it exactly.
"""

from __future__ import annotations

import errno
import re
from pathlib import Path

from farensed.engine.checkpoint import newest_valid
from farensed.errors import FarenseError
from farensed.i18n import _

DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(FarenseError):
    """The disk (or the process's file size limit) is full; nothing half-written is taken for valid."""

    exit_code = 1


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for lack of space, or mlx's own write failure (its C++ writer reports no errno)."""
    if isinstance(exc, OSError):
        return exc.errno in DISK_ERRNOS
    return isinstance(exc, RuntimeError) and "Unable to write" in str(exc)


def _real_name(path: Path) -> str:
    """`.x.tmp-PID` → x; a file inside a checkpoint's temp folder keeps the checkpoint's name."""
    parts = []
    for part in (Path(path).parent.name, Path(path).name):
        m = re.match(r"^\.(.+)\.tmp-\d+$", part)
        parts.append(m.group(1) if m else part)
    return "/".join(parts) if parts[0].startswith("checkpoint_") else parts[1]


def disk_full_error(exc: BaseException, run_dir: Path) -> DiskFullError:
    """The one line a user sees: what failed, which checkpoint the next run resumes from."""
    what = (
        " " + _("ao gravar {name}").format(name=_real_name(exc.filename))
        if isinstance(exc, OSError) and exc.filename
        else ""
    )
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    found = newest_valid(Path(run_dir), lambda _msg: None)
    where = (
        _("o checkpoint válido mais recente continua a ser {name}").format(name=found[0].path.name)
        if found
        else _("ainda não há checkpoint válido")
    )
    return DiskFullError(
        _("sem espaço em disco{what} ({reason}); {where}; liberte espaço e retome o treino").format(
            what=what, reason=reason, where=where
        )
    )
