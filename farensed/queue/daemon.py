"""farensed: watch jobs/, run one job at a time in a child process, survive every crash.

The daemon never imports mlx: training runs in `python -m farensed.child`, in its own session, so the daemon
stays small, and a daemon killed with -9 leaves its child training; the next daemon adopts it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from farensed import EXIT_RESUMABLE
from farensed.atomic import atomic_write_json, read_json
from farensed.errors import QueueError
from farensed.exitfile import EXIT_FILE
from farensed.jsonl import tail_lines
from farensed.queue.child import FRESH_DONE
from farensed.queue.jobs import Job, JobStatus, Queue, now_iso
from farensed.queue.keepawake import keep_awake, notify, release
from farensed.queue.overnight import Overnight
from farensed.queue.pressure import Action, MemoryGuard
from farensed.queue.procs import create_time, process_alive, signal_group
from farensed.queue.wake import Waker
from farensed.workspace import Workspace

PID_FILE = "daemon.pid"
MEMORY_HOLD = "memória sob pressão"  # how the memory guard's holds begin (job.held)


def daemon_pid(ws: Workspace) -> int | None:
    """The pid of the live daemon of this queue, if any."""
    try:
        info = read_json(ws.jobs / PID_FILE)
    except (OSError, ValueError):
        return None
    return info["pid"] if process_alive(info.get("pid"), info.get("create_time")) else None


def last_lines(path: Path, n: int = 10) -> str:
    """The last `n` non-blank lines of a log, each as its last progress-bar redraw (after the final \\r)."""
    lines = [line.split(b"\r")[-1].decode(errors="replace") for line in tail_lines(path, 4 * n)]
    return "\n".join([line for line in lines if line.strip()][-n:])


@dataclass
class Running:
    """The child being watched: our own Popen, or a process adopted from an earlier daemon."""

    job_id: int
    pid: int
    popen: subprocess.Popen | None = None
    awake: subprocess.Popen | None = None

    def exit_status(self) -> tuple[bool, int | None]:
        """(finished, return code if known)."""
        if self.popen is not None:
            rc = self.popen.poll()
            return rc is not None, rc
        return not process_alive(self.pid, None), None


class Daemon:
    """The worker loop; `work(burst=True)` returns once nothing is left to run (for tests)."""

    def __init__(
        self,
        ws: Workspace,
        poll_interval: float = 0.5,
        rescan_interval: float = 5.0,
        memory_guard: MemoryGuard | None = None,
        stop_timeout: float = 300.0,
        log: logging.Logger | None = None,
        overnight: Overnight | None = None,
    ):
        self.ws, self.queue = ws, Queue(ws)
        self.poll_interval, self.rescan_interval = poll_interval, rescan_interval
        self.memory_guard, self.stop_timeout = memory_guard or MemoryGuard(), stop_timeout
        self.singleton = FileLock(str(ws.jobs / ".daemon.lock"))
        self.current: Running | None = None
        self.stopping = False
        self.waker: Waker | None = None
        self.logger = log or logging.getLogger("farensed")
        self.overnight = overnight or Overnight(ws, log=self.log)  # windows, power, queue pause, morning report

    def log(self, msg: str) -> None:
        self.logger.info(msg)

    # ---- start-up ------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Exactly one daemon per queue."""
        try:
            self.singleton.acquire(timeout=0)
        except Timeout:
            raise QueueError(f"farensed já está a correr nesta fila (pid {daemon_pid(self.ws) or '?'})") from None
        atomic_write_json(
            self.ws.jobs / PID_FILE,
            {
                "pid": os.getpid(),
                "create_time": create_time(os.getpid()),
                "started_at": now_iso(),
                "home": str(self.ws.root),
            },
        )

    def recover(self) -> None:
        """Adopt a running job whose exact process is alive; settle one whose process is gone."""
        for job in self.queue.jobs():
            if job.status is not JobStatus.RUNNING:
                continue
            if process_alive(job.pid, job.pid_create_time):
                self.log(f"job {job.id} ({job.name}): processo {job.pid} vivo, adotado")
                self.current = Running(job.id, job.pid, awake=keep_awake(job.pid, self.log))
            else:
                self.settle(job.id, self.queue.read_exit(job.id))

    # ---- one job ---------------------------------------------------------------------------------------
    def start(self, job: Job) -> None:
        job_dir = self.queue.job_dir(job.id)
        exit_file = job_dir / EXIT_FILE
        if exit_file.exists():
            os.replace(exit_file, job_dir / "exit.prev.json")
        fresh = job.fresh and not (job_dir / FRESH_DONE).exists()  # until the child has started over
        job = self.queue.update(
            job.id,
            state=JobStatus.RUNNING.value,
            attempts=job.attempts + 1,
            started_at=now_iso(),
            ended_at=None,
            exit_code=None,
            error=None,
        )
        log = open(self.queue.log_path(job.id), "ab")
        log.write(f"\n=== farensed: job {job.id}, tentativa {job.attempts}, {now_iso()} ===\n".encode())
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        popen = subprocess.Popen(
            [sys.executable, "-m", "farensed.queue.child", "--home", str(self.ws.root), "--job-dir", str(job_dir)]
            + (["--fresh"] if fresh else []),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.ws.root,
            env=env,
            start_new_session=True,  # own process group: survives the daemon, gets signals only from us
        )
        log.close()
        self.queue.update(job.id, pid=popen.pid, pid_create_time=create_time(popen.pid))
        self.current = Running(job.id, popen.pid, popen, keep_awake(popen.pid, self.log))
        self.log(f"job {job.id} ({job.name}) iniciado, pid {popen.pid}")

    def settle(self, job_id: int, code: int | None) -> Job:
        """Record how a child ended: done, back to pending (resumable or lost), failed or cancelled."""
        job = self.queue.get(job_id)
        changes = {"pid": None, "pid_create_time": None, "exit_code": code}
        if code is None:
            recoveries = job.recoveries + 1
            if recoveries > job.max_recoveries:
                changes.update(
                    state=JobStatus.FAILED.value,
                    recoveries=recoveries,
                    ended_at=now_iso(),
                    error=f"processo perdido {recoveries} vezes (max_recoveries={job.max_recoveries})",
                )
            else:
                changes.update(
                    state=JobStatus.PENDING.value,
                    recoveries=recoveries,
                    error="processo de treino perdido; retoma do último checkpoint",
                )
        elif code == 0:
            changes.update(state=JobStatus.DONE.value, ended_at=now_iso(), error=None)
        elif code == EXIT_RESUMABLE and job.cancel_requested:
            changes.update(state=JobStatus.CANCELLED.value, ended_at=now_iso(), error="cancelado")
        elif code == EXIT_RESUMABLE:
            changes.update(state=JobStatus.PENDING.value, error=None)
        else:
            changes.update(
                state=JobStatus.FAILED.value,
                ended_at=now_iso(),
                error=last_lines(self.queue.log_path(job_id)) or f"código de saída {code}",
            )
        job = self.queue.update(job_id, **changes)
        self.log(f"job {job_id} ({job.name}): {job.state} (código {code}, recuperações {job.recoveries})")
        if job.status.terminal:
            notify("farense", f"job {job_id} ({job.name}): {job.state}")
        return job

    def poll_current(self) -> None:
        run = self.current
        finished, rc = run.exit_status()
        if not finished:
            return
        release(run.awake)
        code = self.queue.read_exit(run.job_id)
        if code is None and rc is not None and rc > 0:
            code = rc  # failed on its own without exit.json (e.g. could not start Python)
        if code is None:
            signal_group(run.pid, signal.SIGKILL)  # ranks orphaned by a killed launcher must not train on
        self.current = None
        self.settle(run.job_id, code)

    def signal_child(self, sig: int) -> None:
        signal_group(self.current.pid, sig)

    # ---- memory guard ----------------------------------------------------------------------------------
    def guard_memory(self) -> bool:
        """False while memory pressure forbids starting a job: checkpoint-stop the child and hold its job."""
        held = [job for job in self.queue.jobs() if job.held and job.held.startswith(MEMORY_HOLD)]
        verdict = self.memory_guard.check(holding=bool(held))
        if verdict.action is Action.RELEASE:
            for job in held:
                self.queue.update(job.id, held=None)
                self.log(f"job {job.id}: memória recuperada ({verdict.detail}), volta à fila")
        elif verdict.action is Action.STOP and self.current is not None:
            if not self.queue.get(self.current.job_id).held:
                reason = f"{MEMORY_HOLD} (sinal: {verdict.signal}; {verdict.detail})"
                self.queue.update(self.current.job_id, held=reason)
                self.log(f"job {self.current.job_id}: {reason}; a parar com checkpoint")
                with open(self.queue.log_path(self.current.job_id), "ab") as fh:
                    fh.write(f"\n=== farensed: {reason}; a parar com checkpoint ===\n".encode())
                self.signal_child(signal.SIGTERM)
        return verdict.may_start

    # ---- the loop --------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.stopping = True
        if self.waker is not None:
            self.waker.set()

    def _watch(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        daemon = self

        class Inbox(FileSystemEventHandler):
            def on_any_event(self, event):
                daemon.waker.set()

        observer = Observer()
        observer.schedule(Inbox(), str(self.queue.inbox), recursive=False)
        observer.daemon = True
        observer.start()
        return observer

    def work(self, burst: bool = False) -> int:
        """Run until SIGTERM/SIGINT (or, with burst, until nothing is left to run); return the exit code."""
        self.acquire()
        self.waker = Waker(self.ws.jobs)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.log(f"farensed a vigiar {self.queue.inbox} (pid {os.getpid()})")
        observer = self._watch()
        try:
            self.recover()
            last_scan, woken = 0.0, True
            while not self.stopping:
                if woken or time.monotonic() - last_scan >= self.rescan_interval:
                    last_scan = time.monotonic()
                    for job in self.queue.ingest_inbox():
                        self.log(f"job {job.id} ({job.name}) recebido de jobs/pending/{job.source}")
                if self.current is not None:
                    self.poll_current()
                memory_ok = self.guard_memory()
                allowed = self.overnight.tick(self)  # may stop the current job; None: nothing new may start
                if self.current is None and memory_ok and allowed and (job := self.queue.next_runnable(allow=allowed)):
                    self.start(job)
                    self.overnight.started(job)
                if burst and self.current is None and not self._waiting():
                    break
                woken = self.waker.wait(self.poll_interval)
            if self.stopping:
                self.shutdown()
        finally:
            observer.stop()
            self.waker.close()
            self.singleton.release()
        return 0

    def _waiting(self) -> bool:
        return self.queue.next_runnable() is not None

    def shutdown(self) -> None:
        """Forward the stop to the child, wait for its checkpoint, leave the job pending."""
        if self.current is None:
            self.log("farensed parado")
            return
        self.log(f"a parar: SIGTERM ao job {self.current.job_id} (pid {self.current.pid}), à espera do checkpoint")
        self.signal_child(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and not self.current.exit_status()[0]:
            time.sleep(0.1)
        if self.current.exit_status()[0]:
            self.poll_current()
        else:
            self.log(f"job {self.current.job_id} não parou a tempo; o próximo farensed adota-o")
        self.log("farensed parado")
