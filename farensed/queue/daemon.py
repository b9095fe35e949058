"""farensed: watch jobs/, run one job at a time in a child process, survive every crash.

The daemon never imports mlx: training runs in `python -m farensed.queue.child`, in its own session, so the daemon
stays small, and a daemon killed with -9 leaves its child training; the next daemon adopts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

import psutil
from filelock import FileLock, Timeout

from farensed import EXIT_RESUMABLE
from farensed.errors import FarenseError, QueueError
from farensed.i18n import _
from farensed.queue import backoff, events
from farensed.queue.adopt import Running, find_child
from farensed.queue.child import FRESH_DONE
from farensed.queue.intake import SUBMIT_TEMPS
from farensed.queue.job import Job, JobStatus, now_iso
from farensed.queue.jobs import Queue
from farensed.queue.keepawake import keep_awake, notify, release
from farensed.queue.mishaps import Mishaps
from farensed.queue.outcome import ending, failure_line, last_lines
from farensed.queue.overnight import Overnight, resumes_after_pause
from farensed.queue.pidfile import daemon_pid, mark_ready, record_daemon
from farensed.queue.pressure import Action, MemoryGuard
from farensed.queue.stall import DEFAULT_MINUTES, StallWatch, failed_line
from farensed.queue.wake import Waker, watch_folder
from farensed.storage.exitfile import EXIT_FILE, read_exit_error
from farensed.storage.procs import create_time, describe_loss, kill_orphans, oom_kills, signal_group
from farensed.storage.runlock import holder, sweep_temps
from farensed.storage.workspace import Workspace
from farensed.terminal import safe


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
        recovery_backoff: tuple[float, ...] = backoff.DEFAULT_SCHEDULE,
        stall_minutes: float | None = DEFAULT_MINUTES,
    ):
        self.ws, self.queue = ws, Queue(ws)
        self.recovery_backoff = recovery_backoff
        self.abandon = False  # a second SIGTERM/SIGINT: exit now, leave the child for the next daemon
        self._busy_logged: set[int] = set()
        self.poll_interval, self.rescan_interval = poll_interval, rescan_interval
        self.memory_guard, self.stop_timeout = memory_guard or MemoryGuard(), stop_timeout
        self.singleton = FileLock(str(ws.jobs / ".daemon.lock"))
        self.current: Running | None = None
        self.stopping = False
        self.waker: Waker | None = None
        self.logger = log or logging.getLogger("farensed")
        self.overnight = overnight or Overnight(ws, log=self.log)  # windows, power, queue pause, morning report
        self.mishaps = Mishaps(self.logger)  # an unexpected exception: logged, its job set aside, the loop goes on
        self.handling: int | None = None  # the job the loop is working on now (what a mishap sets aside)
        self.stall = StallWatch(stall_minutes * 60 if stall_minutes else None)  # a child that writes nothing

    def log(self, msg: str) -> None:
        self.logger.info(safe(msg))  # one line whatever a file or job name holds

    # ---- start-up ------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Exactly one daemon per queue."""
        try:
            self.singleton.acquire(timeout=0)
        except Timeout:
            raise QueueError(
                _("farensed já está a correr nesta fila (pid {pid})").format(pid=daemon_pid(self.ws) or "?")
            ) from None
        record_daemon(self.ws)

    def recover(self) -> None:
        """Adopt a running job whose exact process is alive; settle one whose process is gone.

        The pid in job.json, the child's own record (child.json) and the run lock's holder are all asked before a
        job is called lost, so a daemon that died while starting a child never leads to a second trainer.
        """
        with self.queue.lock:  # job.json writers hold it; a dead one's temp file is swept (submit's, a reason's too)
            with contextlib.suppress(OSError):  # in the inbox, only submit's copies: the rest is the user's
                sweep_temps(self.queue.inbox, self.ws.root, prefix=SUBMIT_TEMPS)
            for folder in [self.ws.jobs, self.queue.failed_inbox, *(self.queue.job_dir(i) for i in self.queue.ids())]:
                with contextlib.suppress(OSError):  # a folder that vanished or cannot be listed: nothing to sweep
                    sweep_temps(folder, self.ws.root)
        for job in self.queue.jobs():
            if job.status is not JobStatus.RUNNING:
                continue
            try:
                self.handling = job.id
                self._recover_one(job)
                self.handling = None
            except Exception as exc:  # noqa: BLE001 - one job must not keep the daemon from starting
                self._mishap(exc, slow=False)

    def _recover_one(self, job: Job) -> None:
        """Adopt the running job's live child, or settle the job as its process left it."""
        found = find_child(self.queue, job)
        if found:
            pid, started = found
            if pid != job.pid:
                self.queue.update(job.id, pid=pid, pid_create_time=started)
            self.current = Running(job.id, pid, create_time=started, oom_before=oom_kills())  # watched first
            self.current.awake = keep_awake(pid, self.log)
            self.log(events.adopted(job, pid))
            return
        code = self.queue.read_exit(job.id)
        if code is None:
            kill_orphans(job.pid, str(self.ws.root))  # ranks of a launcher that died with the daemon must not train on
        reason = None if code is not None else _("perdido enquanto o farensed não corria")
        self.settle(job.id, code, reason=reason, ended=self._last_written(job.id))

    def _last_written(self, job_id: int) -> str | None:
        """When a child that ended while no daemon watched last wrote its log: the end of its run time."""
        import datetime as dt

        try:
            mtime = self.queue.log_path(job_id).stat().st_mtime
        except OSError:
            return None
        return dt.datetime.fromtimestamp(mtime).astimezone().isoformat(timespec="seconds")

    # ---- one job ---------------------------------------------------------------------------------------
    def start(self, job: Job) -> bool:
        """Claim a pending job and start its child; False when a cancel (or hold) won the race."""
        job_dir = self.queue.job_dir(job.id)
        exit_file = job_dir / EXIT_FILE
        if exit_file.exists():
            os.replace(exit_file, job_dir / "exit.prev.json")
        fresh = job.fresh and not (job_dir / FRESH_DONE).exists()  # until the child has started over
        resuming = resumes_after_pause(self.queue, job)  # an overnight stop's resume continues its attempt
        now = now_iso()
        job = self.queue.claim(
            job.id,
            attempts=job.attempts + (0 if resuming else 1),
            started_at=now,
            first_started_at=job.first_started_at or now,
            ended_at=None,
            exit_code=None,
            error=None,
            retry_at=None,
        )
        if job is None:
            return False  # cancelled (or held) between the choice and now: the user's decision wins
        log = open(self.queue.log_path(job.id), "ab")
        log.write(events.attempt_frame(job, resuming, now).encode())
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        popen = subprocess.Popen(
            [sys.executable, "-m", "farensed.queue.child", "--home", str(self.ws.root), "--job-dir", str(job_dir)]
            + ["--attempt", str(job.attempts), "--wait-go"]
            + (["--fresh"] if fresh else []),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.ws.root,
            env=env,
            start_new_session=True,  # own process group: survives the daemon, gets signals only from us
        )
        log.close()
        # Watched from its first instant: whatever fails after this line, the child is never left unwatched.
        self.current = Running(job.id, popen.pid, popen, oom_before=oom_kills())
        try:
            self.current.create_time = create_time(popen.pid)
        except psutil.Error:
            pass  # it could not even start Python; poll_current settles it
        self.queue.update(job.id, pid=popen.pid, pid_create_time=self.current.create_time)
        self._go(popen)  # only now may the child touch the run: its pid is on disk
        self.current.awake = keep_awake(popen.pid, self.log)
        self.log(events.started(job, resuming, popen.pid))
        return True

    @staticmethod
    def _go(popen: subprocess.Popen) -> None:
        try:
            popen.stdin.write(b"g")
            popen.stdin.close()
        except OSError:
            pass  # it died already; poll_current settles it

    def settle(
        self,
        job_id: int,
        code: int | None,
        reason: str | None = None,
        ended: str | None = None,
        stalled: str | None = None,
    ) -> Job:
        """Record how a child ended: done, back to pending (resumable or lost), failed or cancelled."""
        failure = None
        if code not in (None, 0, EXIT_RESUMABLE):
            failure = read_exit_error(self.queue.job_dir(job_id) / EXIT_FILE) or failure_line(
                last_lines(self.queue.log_path(job_id), 40)
            )
        with self.queue.lock:  # read, decide, write as one: a cancel landing meanwhile is never lost
            changes = ending(self.queue.get(job_id), code, reason, failure, self.recovery_backoff, ended, stalled)
            job = self.queue.update(job_id, **changes)
        self.log(events.ended(job, code, changes.get("loss_reason") if code is None else None))
        if job.status.terminal:
            notify("farense", f"job {job_id} ({job.name}): {job.state}")
        return job

    def poll_current(self) -> None:
        run = self.current
        finished, rc = run.exit_status()
        if not finished:
            return
        self.current = None  # first: whatever fails below, this child is settled at most once
        self.handling = run.job_id
        release(run.awake)
        code = self.queue.read_exit(run.job_id)
        if code is None and rc is not None and rc > 0:
            code = rc  # failed on its own without exit.json (e.g. could not start Python)
        if code is None:
            signal_group(run.pid, signal.SIGKILL)  # ranks orphaned by a killed launcher must not train on
        reason = describe_loss(rc, run.oom_before) if code is None else None
        job = self.settle(run.job_id, code, reason=reason, stalled=run.stalled)
        if run.stalled and job.status is JobStatus.FAILED:
            with open(self.queue.log_path(job.id), "a", encoding="utf-8") as fh:
                fh.write(failed_line(job.id, run.stalled))

    def forward_cancel(self) -> None:
        """A cancel written while the child was starting (or by hand in job.json) still reaches the child."""
        run = self.current
        if run is None or run.cancel_sent:
            return
        if self.queue.get(run.job_id).cancel_requested:
            run.cancel_sent = True
            self.log(_("job {job_id}: cancelamento pedido; a parar com checkpoint").format(job_id=run.job_id))
            self.signal_child(signal.SIGTERM)

    def signal_child(self, sig: int) -> None:
        signal_group(self.current.pid, sig)

    # ---- memory guard ----------------------------------------------------------------------------------
    def guard_memory(self) -> bool:
        """False while memory pressure forbids starting a job: checkpoint-stop the child and hold its job."""
        held = [job for job in self.queue.jobs() if job.held]  # only the memory guard holds jobs
        verdict = self.memory_guard.check(holding=bool(held))
        if verdict.action is Action.RELEASE:
            for job in held:
                self.queue.update(job.id, held=None)
                self.log(
                    _("job {id}: memória recuperada ({detail}), volta à fila").format(id=job.id, detail=verdict.detail)
                )
        elif verdict.action is Action.STOP and self.current is not None:
            if not self.queue.get(self.current.job_id).held:
                reason = _("memória sob pressão (sinal: {signal}; {detail})").format(
                    signal=verdict.signal, detail=verdict.detail
                )
                self.queue.update(self.current.job_id, held=reason)
                self.log(
                    _("job {job_id}: {reason}; a parar com checkpoint").format(
                        job_id=self.current.job_id, reason=reason
                    )
                )
                job = self.queue.get(self.current.job_id)
                with open(self.queue.log_path(job.id), "ab") as fh:
                    fh.write(events.stop_frame(job.id, job.attempts, now_iso(), reason).encode())
                self.signal_child(signal.SIGTERM)
        return verdict.may_start

    # ---- the loop --------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.stopping:
            self.abandon = True  # a second SIGTERM/SIGINT: exit now (rq's "cold shutdown")
        self.stopping = True
        if self.waker is not None:
            self.waker.set()

    def work(self, burst: bool = False) -> int:
        """Run until SIGTERM/SIGINT (or, with burst, until nothing is left to run); return the exit code."""
        self.acquire()
        self.waker = Waker(self.ws.jobs)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.log(events.watching(os.getpid(), self.queue.inbox))
        observer = watch_folder(self.queue.inbox, self.waker, self.log)
        try:
            try:
                self.recover()
            except Exception as exc:  # noqa: BLE001 - a failed recovery is logged; the loop still serves the queue
                self._mishap(exc)
            last_scan, woken, ready = 0.0, True, False
            while not self.stopping:
                try:
                    if woken or time.monotonic() - last_scan >= self.rescan_interval:
                        last_scan = time.monotonic()
                        self._ingest()
                    if self._tick(burst):
                        break
                    self.mishaps.clean_tick()
                except Exception as exc:  # noqa: BLE001 - rq's rule: log it, set its item aside, keep serving
                    self._mishap(exc)
                if not ready:
                    ready = True
                    try:
                        mark_ready(self.ws)  # `daemon start` waits for this: the first tick (ingestion) is behind us
                    except OSError as exc:  # a full disk: `daemon start` says it did not see it; we serve anyway
                        self._mishap(exc)
                woken = self.waker.wait(self.mishaps.pause() or self.poll_interval)
            if self.stopping:
                self.shutdown()
        finally:
            if observer is not None:
                observer.stop()
            self.waker.close()
            self.singleton.release()
        return 0

    def _ingest(self) -> None:
        self.queue.ingest_inbox(on_reject=self._rejected, on_job=lambda job: self.log(events.received(job)))

    def _rejected(self, name: str, reason: str, exc: Exception) -> None:
        """An inbox file moved to jobs/failed/: one line in the log (and the traceback when it was a bug of ours)."""
        self.log(events.rejected(safe(name, 120), reason))
        if not isinstance(exc, FarenseError):
            self.mishaps.record(exc, f"jobs/pending/{safe(name, 120)}", slow=False)

    def _tick(self, burst: bool = False) -> bool:
        """Watch the child, the memory, the overnight policy; start the next job. True: a burst has nothing left."""
        if self.current is not None:
            self.handling = self.current.job_id  # a failure while watching or settling it sets this job aside
            self.poll_current()
            self.forward_cancel()
            self.stall.tick(self)  # a child that writes nothing for too long is stopped, its job failed
        self.handling = None
        memory_ok = self.guard_memory()
        allowed = self.overnight.tick(self)  # may stop the current job; None: nothing new may start
        if self.current is None and memory_ok and allowed and not self.stopping and (job := self._pick(allowed)):
            self.handling = job.id  # a failure from here on sets this job aside
            if self.start(job):
                self.overnight.started(job)
        self.handling = None
        return burst and self.current is None and not self.queue.work_ahead()

    def _mishap(self, exc: Exception, slow: bool = True) -> None:
        """An unexpected exception: logged with its traceback, the job being handled set aside, the loop slowed."""
        job_id, self.handling = self.handling, None
        self.mishaps.record(exc, f"job {job_id}" if job_id is not None else _("ciclo do farensed"), slow=slow)
        if job_id is not None:
            run = self.current
            ours = run is not None and run.job_id == job_id
            alive = ours and not run.exit_status()[0]
            if ours and not alive:
                self.current = None  # its end is recorded by set_aside below: never settled a second time
            self.mishaps.set_aside(self.queue, job_id, exc, alive)

    def _dependency_failed(self, job: Job) -> None:
        self.log(events.ended_by_farensed(job, "dependency", job.error or ""))

    def _pick(self, allow=None) -> Job | None:
        """The next runnable job (that `allow` lets start) whose run folder nobody else trains or evaluates now."""
        busy: set[int] = set(self.mishaps.broken)
        while job := self.queue.next_runnable(allow=allow, exclude=busy, on_end=self._dependency_failed):
            info = holder(self.ws.run_dir(job.name))  # the folder its child will lock and train
            if info is None:
                self._busy_logged.discard(job.id)
                return job
            busy.add(job.id)
            if job.id not in self._busy_logged:
                self._busy_logged.add(job.id)
                self.log(
                    _("job {id} ({name}) à espera: pasta em uso pelo pid {pid}").format(
                        id=job.id, name=job.name, pid=info.get("pid")
                    )
                )
        return None

    def shutdown(self) -> None:
        """Forward the stop to the child, wait for its checkpoint, leave the job pending."""
        if self.current is None:
            self.log(events.stopped(os.getpid()))
            return
        self.log(
            _("a parar: SIGTERM ao job {job_id} (pid {pid}), à espera do checkpoint").format(
                job_id=self.current.job_id, pid=self.current.pid
            )
        )
        self.signal_child(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and not self.current.exit_status()[0] and not self.abandon:
            time.sleep(0.1)
        if self.current.exit_status()[0]:
            self.poll_current()
        elif self.abandon:
            self.log(
                _(
                    "segundo sinal: farensed sai já; o job {job_id} (pid {pid}) continua e o próximo farensed adota-o"
                ).format(job_id=self.current.job_id, pid=self.current.pid)
            )
        else:
            self.log(_("job {job_id} não parou a tempo; o próximo farensed adota-o").format(job_id=self.current.job_id))
        self.log(events.stopped(os.getpid()))
