"""Waking the daemon at once: a datagram on jobs/.wake.sock (watchdog's inotify buffer adds ~0.5 s)."""

from __future__ import annotations

import os
import select
import socket
import threading
from pathlib import Path

from farensed.i18n import _

SOCKET_NAME = ".wake.sock"


def nudge(jobs: Path) -> None:
    """Tell a listening daemon that the queue changed (nothing happens if none listens)."""
    path = str(Path(jobs) / SOCKET_NAME)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"1", path)
    except OSError:
        pass


class Waker:
    """wait(timeout) returns early when nudged; falls back to a thread event where sockets cannot bind."""

    def __init__(self, jobs: Path):
        self.path = Path(jobs) / SOCKET_NAME
        self.event = threading.Event()
        self.sock = None
        try:
            if self.path.is_socket():
                self.path.unlink()  # a stale socket of a dead daemon (we hold the queue's daemon lock)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(self.path))
            sock.setblocking(False)
            self.sock = sock
        except OSError:  # e.g. a path longer than AF_UNIX allows: watchdog and polling still work
            self.sock = None

    def set(self) -> None:
        self.event.set()
        if self.sock is not None:
            nudge(self.path.parent)

    def wait(self, timeout: float) -> bool:
        """True when woken (by a nudge or set()) before the timeout."""
        if self.sock is None:
            woken = self.event.wait(timeout)
        else:
            ready, _, _ = select.select([self.sock], [], [], 0 if self.event.is_set() else timeout)
            woken = bool(ready) or self.event.is_set()
            while ready:
                try:
                    self.sock.recv(64)
                except BlockingIOError:
                    break
        self.event.clear()
        return woken

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass


READS = frozenset({"opened", "closed_no_write"})  # watchdog's events of a file read, not changed


def watch_folder(folder: Path, waker: Waker, log=None):
    """A watchdog observer that wakes the daemon on any change in `folder` (a file dropped into jobs/pending/); None
    when the system refuses one (e.g. its inotify limit): the daemon's periodic rescan still finds every file."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Changed(FileSystemEventHandler):
        def on_any_event(self, event):
            # Not opened/closed_no_write: the daemon's own read of a file would wake it again, a loop at full speed
            # for any file that stays (a failure, a file set aside later).
            if event.event_type not in READS:
                waker.set()

    observer = Observer()
    try:
        observer.schedule(Changed(), str(folder), recursive=False)
        observer.daemon = True
        observer.start()
    except OSError as exc:
        if log is not None:
            log(_("sem vigia de ficheiros ({error}): jobs/pending/ é lido a cada poucos segundos").format(error=exc))
        return None
    return observer
