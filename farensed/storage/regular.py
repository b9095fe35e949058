"""Files read as files: stat before open, regular files only, sizes bounded.

Opening a FIFO blocks until someone writes to it, and opening some devices has effects; a folder or a socket where
a file belongs gives confusing errors later. Every reader of a user's file (spec, data, model, hostfile) and of the
state files (`read_json`, the JSONL readers) goes through `open_regular`: `os.stat` first (nothing but a regular
file is ever opened), then `O_NONBLOCK` + `fstat` on what was opened (the path may have been swapped meanwhile).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from farensed.i18n import N_, _

KINDS = (
    (stat.S_ISDIR, N_("uma pasta")),
    (stat.S_ISFIFO, N_("um FIFO")),
    (stat.S_ISCHR, N_("um dispositivo de caracteres")),
    (stat.S_ISBLK, N_("um dispositivo de blocos")),
    (stat.S_ISSOCK, N_("um socket")),
)


class NotRegularFile(OSError):
    """A path that exists but is not a regular file (folder, FIFO, device, socket)."""

    def __init__(self, path, kind: str):
        super().__init__(errno.EINVAL, _("é {kind}, não um ficheiro").format(kind=kind), str(path))
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class FileTooLarge(OSError):
    """A file larger than its reader accepts."""

    def __init__(self, path, limit: int):
        super().__init__(errno.EFBIG, _("maior que {limit} bytes").format(limit=limit), str(path))
        self.limit = limit

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return next((_(name) for test, name in KINDS if test(mode)), _("um ficheiro especial"))


def check_regular(path: Path) -> os.stat_result:
    """stat (following links); NotRegularFile unless it is a regular file; FileNotFoundError if absent."""
    st = os.stat(path)
    if (kind := kind_of(st.st_mode)) is not None:
        raise NotRegularFile(path, kind)
    return st


def open_regular(path: Path) -> BinaryIO:
    """Open a regular file for reading in binary; never opens anything else, never blocks on a FIFO."""
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if (kind := kind_of(os.fstat(fd).st_mode)) is not None:  # swapped after the stat
            raise NotRegularFile(path, kind)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file; FileTooLarge past `limit` bytes (reading at most limit + 1)."""
    with open_regular(Path(path)) as fh:
        if limit is None:
            return fh.read()
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(path, limit)
    return data
