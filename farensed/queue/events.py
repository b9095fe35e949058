"""The daemon's lifecycle lines: a fixed machine-readable part, then the human part in the chosen language.

    [2026-05-01 23:00:01] job=3 event=started attempt=2 pid=4242 · job 3 (v2) iniciado: tentativa 2, pid 4242
    === farensed: job=3 event=started attempt=2 time=2026-05-01T23:00:01+01:00 · tentativa 2 ===

Tools (the morning report, bench/chaos.py, tests, grep) read only the `key=value` fields before ` · `: their keys
and values are the same in every language (states and events are identifiers, like JSON values); a missing value
is `-`. The text after ` · ` is for people and follows FARENSE_LANG. The job log's frame (`=== farensed: … ===`)
marks each attempt, each resume after an overnight pause and each stop in `jobs/<id>/log`; logs written before
this format (`=== farensed: job 3, tentativa 2, <time> ===`) are still read.
"""

from __future__ import annotations

import re

from farensed.i18n import _, ngettext
from farensed.queue.job import state_label

SEPARATOR = " · "
FRAME_RE = re.compile(r"^=== farensed: (.*?) ===$")
LOG_PREFIX_RE = re.compile(r"^\[[^\]]*\] ")  # the daemon log's `[2026-05-01 23:00:01] `
FIELD_RE = re.compile(r"^[a-z_]+=\S+$")
OLD_ATTEMPT_RE = re.compile(r"^job (\d+), tentativa (\d+), (\S+)$")  # the frame before this format


def _value(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return re.sub(r"\s+", "_", str(value))  # one token: a space would end the field


def fields_text(fields: dict) -> str:
    """`job=3 event=started attempt=2`: the machine-readable part, in the given key order."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def line(fields: dict, human: str) -> str:
    """One line of the daemon's log: fields, then the human text."""
    return f"{fields_text(fields)}{SEPARATOR}{human}"


def frame(fields: dict, human: str) -> str:
    """One event in a job's log (its own line, between blank lines)."""
    return f"\n=== farensed: {line(fields, human)} ===\n"


def parse(text: str) -> tuple[dict, str] | None:
    """(fields, human text) of a daemon log line or a frame's inside; None when it is neither."""
    text = LOG_PREFIX_RE.sub("", text.strip(), count=1)
    if m := FRAME_RE.match(text):
        text = m.group(1)
    head, sep, human = text.partition(SEPARATOR)
    tokens = head.split()
    if tokens and all(FIELD_RE.match(t) for t in tokens):
        return dict(t.split("=", 1) for t in tokens), human if sep else ""
    if m := OLD_ATTEMPT_RE.match(text):
        return {"job": m.group(1), "event": "started", "attempt": m.group(2), "time": m.group(3)}, ""
    return None


def job_events(log_text: str) -> list[tuple[dict, str]]:
    """Every frame in a job's log, in order (old-format stops come back as `event=stopping` with their text)."""
    found = []
    for raw in log_text.splitlines():
        m = FRAME_RE.match(raw.strip())
        if not m:
            continue
        parsed = parse(m.group(1))
        found.append(parsed if parsed else ({"event": "stopping"}, m.group(1)))
    return found


def describe(fields: dict, human: str) -> str:
    """One event of a job's log for a person, in the reader's language (the report, `status`)."""
    event, attempt, time = fields.get("event"), fields.get("attempt", "?"), fields.get("time", "")[11:19]
    if event == "started":
        return _("tentativa {attempt} iniciada às {time}").format(attempt=attempt, time=time or "?")
    if event == "resumed":
        return _("tentativa {attempt} retomada depois da pausa às {time}").format(attempt=attempt, time=time or "?")
    if event == "stopping" and time:
        return _("paragem às {time}: {reason}").format(time=time, reason=human or "-")
    if event == "stopping":
        return _("paragem: {reason}").format(reason=human or "-")
    return human or fields_text(fields)


# ---- the lines the daemon writes ------------------------------------------------------------------------
def attempt_frame(job, resuming: bool, time: str) -> str:
    """The frame that opens a start of the child in the job's log."""
    event = "resumed" if resuming else "started"
    human = _("tentativa {attempt}, retomada depois da pausa") if resuming else _("tentativa {attempt}")
    fields = {"job": job.id, "event": event, "attempt": job.attempts, "time": time}
    return frame(fields, human.format(attempt=job.attempts))


def stop_frame(job_id: int, attempt: int | None, time: str, reason: str, checkpoint: bool = True) -> str:
    """The frame of a stop the daemon decided: with a checkpoint (window, power, queue pause, memory guard), or of a
    child it gave up on (the stall watch)."""
    said = _("{reason}; a parar com checkpoint") if checkpoint else _("{reason}; a parar")
    human = said.format(reason=reason)
    return frame({"job": job_id, "event": "stopping", "attempt": attempt, "time": time}, human)


def received(job) -> str:
    human = _("job {id} ({name}) recebido de jobs/pending/{source}").format(id=job.id, name=job.name, source=job.source)
    return line({"job": job.id, "event": "received", "source": job.source}, human)


def rejected(name: str, reason: str) -> str:
    """An inbox file set aside in jobs/failed/ (its name and reason already made safe and short)."""
    human = _("jobs/pending/{file} recusado → jobs/failed/: {reason}").format(file=name, reason=reason)
    return line({"event": "rejected", "file": name}, human)


def started(job, resuming: bool, pid: int) -> str:
    said = (
        _("job {id} ({name}) retomado depois da pausa: tentativa {attempt}, pid {pid}")
        if resuming
        else _("job {id} ({name}) iniciado: tentativa {attempt}, pid {pid}")
    )
    fields = {"job": job.id, "event": "resumed" if resuming else "started", "attempt": job.attempts, "pid": pid}
    return line(fields, said.format(id=job.id, name=job.name, attempt=job.attempts, pid=pid))


def adopted(job, pid: int) -> str:
    human = _("job {id} ({name}): processo {pid} vivo, adotado").format(id=job.id, name=job.name, pid=pid)
    return line({"job": job.id, "event": "adopted", "pid": pid}, human)


def ended(job, code: int | None, lost: str | None) -> str:
    """How a child's end left its job: `job=3 event=ended state=done exit_code=0 recoveries=0 · …`."""
    recoveries = ngettext("{count} recuperação", "{count} recuperações", job.recoveries).format(count=job.recoveries)
    if code is None:
        human = _("job {id} ({name}): {state}; processo perdido ({reason}); {recoveries}").format(
            id=job.id, name=job.name, state=state_label(job.state), reason=lost or "-", recoveries=recoveries
        )
    else:
        human = _("job {id} ({name}): {state} (código de saída {code}; {recoveries})").format(
            id=job.id, name=job.name, state=state_label(job.state), code=code, recoveries=recoveries
        )
    fields = {"job": job.id, "event": "ended", "state": job.state, "exit_code": code, "recoveries": job.recoveries}
    return line(fields, human)


def ended_by_farensed(job, why: str, reason: str) -> str:
    """A job the daemon itself ended (`why`: `dependency`, `internal_error`, `unreadable`): the same fixed
    `event=ended` fields as a child's end, so every end of a job has one line."""
    human = _("job {id} ({name}): {state}: {reason}").format(
        id=job.id, name=job.name, state=state_label(job.state), reason=reason
    )
    fields = {"job": job.id, "event": "ended", "state": job.state, "exit_code": None, "by": why}
    return line(fields, human)


def watching(pid: int, inbox) -> str:
    human = _("farensed a vigiar {inbox} (pid {pid})").format(inbox=inbox, pid=pid)
    return line({"farensed": pid, "event": "watching"}, human)


def stopped(pid: int) -> str:
    return line({"farensed": pid, "event": "stopped"}, _("farensed parado"))
