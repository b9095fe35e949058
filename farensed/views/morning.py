"""The morning report: one self-contained HTML file (PNG figures inline as base64, no network), phone-friendly.

For every job of the period: state, attempts and recoveries with their reasons, duration, loss/val_loss/gap curves,
the gap analysis, evaluation F1/EM vs base, the success criteria's verdicts, and a V1-vs-V2 table per model.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
import tempfile
from pathlib import Path

from farensed.analysis.compare import ROWS, cell, column
from farensed.analysis.gap import analyse, format_analysis
from farensed.errors import FarenseError
from farensed.i18n import _, language, ngettext
from farensed.queue import events
from farensed.queue.job import Job, job_run_dir, parse_time, state_label
from farensed.queue.jobs import Queue
from farensed.storage.atomic import atomic_write_bytes, read_json_dict
from farensed.storage.regular import open_regular
from farensed.terminal import safe, safe_lines
from farensed.views.runref import Run
from farensed.views.status import duration_s, format_duration, total_duration_s

REPORTS_DIR = "reports"
REPORT_NAME_RE = re.compile(r"farense-\d{8}-\d{6}(?:-\d+)?\.html")  # the name write_report gives a report
KEEP_REPORTS = 20  # reports/ keeps the newest ones farensed wrote itself (FARENSE_KEEP_REPORTS); one at every drain
AUTO_MARK = '<meta name="generator" content="farensed: the queue drained">'  # such reports are the pruned ones


def parse_since(text: str | None, now: dt.datetime | None = None) -> dt.datetime:
    """ISO time, `HH:MM` (its latest past occurrence), or None for the last 24 hours; ValueError if malformed."""
    from farensed.errors import SpecError

    now = now or dt.datetime.now().astimezone()
    if not text:
        return now - dt.timedelta(hours=24)
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    try:
        if m:
            when = now.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
            return when if when <= now else when - dt.timedelta(days=1)
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise SpecError(_("--since: '{text}' não é hora ISO nem HH:MM").format(text=text)) from None
    return when if when.tzinfo else when.astimezone()


def in_period(job: Job, since: dt.datetime) -> bool:
    """A job belongs to the report if it is unfinished or was submitted, started or ended since `since`."""
    if not job.status.terminal:
        return True
    stamps = [job.submitted_at, job.started_at, job.ended_at]
    return any(s and parse_time(s) >= since for s in stamps)  # Job.from_dict checked they parse


def job_events(queue: Queue, job: Job) -> list[str]:
    """What farensed wrote into the job's log — each attempt, each resume after a pause, each stop and why — said
    in the reader's language (farensed.queue.events)."""
    try:
        with open_regular(queue.log_path(job.id)) as fh:  # line by line, keeping the frames only: any size of log
            frames = [line.decode(errors="replace") for line in fh if line.startswith(b"=== farensed:")]
    except OSError:
        return []
    return [events.describe(fields, human) for fields, human in events.job_events("\n".join(frames[-200:]))]


def success_verdicts(spec: dict, records: list[dict], evaluation: dict | None) -> list[dict] | None:
    """The verdicts of the spec's `success` criteria (farensed.analysis.success), or None without the key."""
    criteria = spec.get("success")
    if not isinstance(criteria, dict) or not criteria:
        return None
    try:
        from farensed.analysis.success import criteria_of, verdicts
    except ImportError:
        return [
            {
                "criterion": k,
                "passed": None,
                "text": _("{criterion}: {value} (sem verificador)").format(criterion=k, value=v),
            }
            for k, v in criteria.items()
        ]
    try:
        chosen, _own = criteria_of(spec)
        return [v.to_dict() for v in verdicts(chosen, records, evaluation)]
    except (TypeError, ValueError, KeyError, FarenseError) as exc:
        return [{"criterion": "success", "passed": None, "text": _("critérios ilegíveis ({error})").format(error=exc)}]


def job_data(queue: Queue, job: Job) -> dict:
    """Everything the report shows about one job."""
    run = Run(job_run_dir(queue.ws, job), job.name, job, queue)  # empty for a job that never ran
    spec = read_json_dict(queue.job_dir(job.id) / "spec.json") or {}
    records = run.records()
    evaluation = run.read("evaluation_report.json")
    analysis = analyse(records)
    return {
        **job.to_dict(),
        "model": spec.get("model"),
        "max_seq_length": spec.get("max_seq_length"),
        "duration_s": duration_s(job),
        "total_duration_s": total_duration_s(job),
        "events": job_events(queue, job),
        "pauses": (read_json_dict(queue.job_dir(job.id) / "pause.json") or {}).get("history", []),  # queue.overnight
        "analysis": analysis,
        "summary": run.read("training_summary.json"),
        "evaluation": None
        if not evaluation
        else {k: evaluation.get(k) for k in ("adapters", "base", "uplift") if isinstance(evaluation.get(k), dict)},
        "success": success_verdicts(spec, records, evaluation),
        "records": len(records),
    }


def collect(queue: Queue, since: dt.datetime) -> dict:
    """The report's data: every job of the period and one comparison per model shared by several jobs."""
    jobs = [job for job in queue.jobs() if in_period(job, since)]
    data = [job_data(queue, job) for job in jobs]
    by_model: dict[str, list[Job]] = {}
    for job, item in zip(jobs, data):
        by_model.setdefault(str(item["model"]), []).append(job)
    comparisons = [
        {"model": model, "jobs": [column(Run(job_run_dir(queue.ws, job), job.name, job, queue)) for job in group]}
        for model, group in by_model.items()
        if len(group) > 1
    ]
    return {
        "generated_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "since": since.isoformat(timespec="seconds"),
        "jobs": data,
        "comparisons": comparisons,
    }


# ---- figures --------------------------------------------------------------------------------------------
def curves_png(queue: Queue, job: Job) -> bytes | None:
    """loss, val_loss and gap curves of a job as PNG bytes (None without metrics)."""
    from farensed.analysis.plots import plot_training

    records = Run(job_run_dir(queue.ws, job), job.name, job, queue).records()
    if not records:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_training(records, Path(tmp) / "curves.png", title=f"job {job.id} — {safe(job.name, 80)}")
        return path.read_bytes()


def _img(png: bytes, alt: str, name: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<figure data-figure="{name}"><img alt="{_html(alt)}" src="data:image/png;base64,{data}"></figure>'


# ---- HTML -----------------------------------------------------------------------------------------------
CSS = """
body{font-family:-apple-system,system-ui,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:980px;padding:12px;
color:#1d1d1f;background:#fafafa;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
section.job{background:#fff;border:1px solid #e3e3e3;border-radius:10px;padding:12px;margin:14px 0}
.state{display:inline-block;padding:1px 8px;border-radius:8px;background:#eee;font-weight:600}
.done{background:#d7f5dd}.failed{background:#fbd5d5}.cancelled{background:#eee}.running,.pending{background:#fff2c6}
img{max-width:100%;height:auto}figure{margin:8px 0}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.92em}td,th{padding:3px 8px;border-bottom:1px solid #eee;
text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}
pre{white-space:pre-wrap;word-break:break-word;background:#f4f4f4;padding:8px;border-radius:6px;font-size:.85em}
pre.analysis{white-space:pre;overflow-x:auto}ul{padding-left:1.2em}.pass{color:#137333}.fail{color:#b3261e}
@media (max-width:600px){body{padding:6px;font-size:15px}table{font-size:.85em}}
"""


def _fmt(value, spec: str = ".4f") -> str:
    return cell(value, spec)


def _table(rows: list[tuple], head: tuple | None = None) -> str:
    out = ['<div class="scroll"><table>']
    if head:
        out.append("<tr>" + "".join(f"<th>{_html(str(h))}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_html(str(c))}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table></div>"


def _job_html(item: dict, png: bytes | None) -> str:
    esc = _html
    attempts = ngettext("{count} tentativa", "{count} tentativas", item["attempts"]).format(count=item["attempts"])
    parts = [
        f'<section class="job" id="job-{item["id"]}" data-job="{item["id"]}">',
        f'<h2>#{item["id"]} {esc(item["name"])} <span class="state {esc(item["state"])}">{esc(state_label(item["state"]))}</span>'
        "</h2>",
        _table(
            [
                (_("modelo"), item["model"] or "-"),
                (_("tentativas"), item["attempts"]),
                (_("recuperações"), item["recoveries"]),
                (_("duração (total, {attempts})").format(attempts=attempts), format_duration(item["total_duration_s"])),
                (_("duração (último arranque)"), format_duration(item["duration_s"])),
                (_("tempo de treino (steps)"), format_duration((item["summary"] or {}).get("elapsed_s"))),
                (_("pausas"), len(item["pauses"])),
                (_("primeiro início"), (item.get("first_started_at") or item["started_at"] or "-")[:19]),
                (_("fim"), (item["ended_at"] or "-")[:19]),
            ]
        ),
    ]
    if item["error"]:
        parts.append(f"<p><b>{esc(_('motivo:'))}</b></p><pre>{esc(item['error'])}</pre>")
    reasons = item["events"] + [
        _("pausa: {reason} ({time})").format(reason=p.get("reason"), time=str(p.get("at", ""))[11:19])
        for p in item["pauses"]
    ]
    if reasons:
        parts.append(f"<p><b>{esc(_('tentativas, recuperações e pausas:'))}</b></p><ul>")
        parts += [f"<li>{esc(r)}</li>" for r in reasons]
        parts.append("</ul>")
    if png:
        parts.append(_img(png, _("curvas do job {id}").format(id=item["id"]), f"curves-{item['id']}"))
    else:
        parts.append(f"<p>{esc(_('sem métricas'))}</p>")
    parts.append(f'<pre class="analysis" data-analysis="{item["id"]}">{esc(format_analysis(item["analysis"]))}</pre>')
    if item["evaluation"]:
        ev = item["evaluation"]
        rows = [
            (
                label,
                _fmt(ev.get("adapters", {}).get(k)),
                _fmt(ev.get("base", {}).get(k)),
                _fmt(ev.get("uplift", {}).get(k)),
            )
            for label, k in (("F1", "f1_mean"), ("EM", "em_mean"), ("loss", "loss_mean"))
        ]
        parts.append(
            f'<div data-evaluation="{item["id"]}">' + _table(rows, ("", "adapters", "base", _("ganho"))) + "</div>"
        )
    if item["success"]:
        parts.append(f'<ul data-success="{item["id"]}">')
        for v in item["success"]:
            mark, cls = {True: ("✅", "pass"), False: ("❌", "fail")}.get(v.get("passed"), ("?", ""))
            parts.append(f'<li class="{cls}">{mark} {esc(str(v.get("criterion")))}: {esc(str(v.get("text")))}</li>')
        parts.append("</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def _comparison_html(comparison: dict) -> str:
    cols = comparison["jobs"]
    head = ("", *(f"#{c['id']} {c['name']}" for c in cols))
    rows = [(_(label), *(cell(c.get(key), spec, key) for c in cols)) for label, key, spec in ROWS if key != "name"]
    return f'<div data-compare="{_html(comparison["model"])}"><h3>{_html(comparison["model"])}</h3>' + (
        _table(rows, head) + "</div>"
    )


def render(data: dict, figures: dict[int, bytes | None]) -> str:
    """The whole report as one HTML document, in the reader's language."""
    counts: dict[str, int] = {}
    for item in data["jobs"]:
        counts[item["state"]] = counts.get(item["state"], 0) + 1
    overview = _table(
        [
            (
                f"#{i['id']}",
                i["name"],
                state_label(i["state"]),
                i["attempts"],
                i["recoveries"],
                format_duration(i["total_duration_s"]),
            )
            for i in data["jobs"]
        ],
        ("job", _("nome"), _("estado"), _("tent."), _("rec."), _("duração total")),
    )
    jobs = ngettext("{count} job", "{count} jobs", len(data["jobs"])).format(count=len(data["jobs"]))
    states = ", ".join(f"{n} {state_label(s)}" for s, n in sorted(counts.items()))
    title = _("farense — relatório da manhã")
    body = [
        "<!DOCTYPE html>",
        f'<html lang="{language()}"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        AUTO_MARK if data.get("auto") else "",
        f"<title>{_html(title)} {data['generated_at'][:16]}</title><style>{CSS}</style></head><body>",
        f"<h1>{_html(title)}</h1><p>"
        + _html(
            _("{generated} · desde {since} · {jobs} ({states})").format(
                generated=data["generated_at"][:16].replace("T", " "),
                since=data["since"][:16].replace("T", " "),
                jobs=jobs,
                states=states or "-",
            )
        )
        + "</p>",
        overview,
    ]
    body += [_job_html(item, figures.get(item["id"])) for item in data["jobs"]]
    if data["comparisons"]:
        body.append(f"<h2>{_html(_('Comparação (V1 vs V2) por modelo'))}</h2>")
        body += [_comparison_html(c) for c in data["comparisons"]]
    body.append("</body></html>")
    return "\n".join(body)


def _html(text) -> str:
    """Text from files a person may edit, for the HTML: escaped, and its control characters and escape sequences
    made visible (a raw ESC in the file would act on a terminal that shows it)."""
    return html.escape(safe_lines(str(text), 10_000))


def write_report(queue: Queue, since: dt.datetime, output: str | Path | None = None, auto: bool = False) -> Path:
    """Collect, draw and write the report atomically; return its path (default reports/farense-<time>.html).

    `auto`: written by farensed when the queue drained; only such reports are ever pruned (keep_reports)."""
    data = dict(collect(queue, since), auto=auto)
    figures = {item["id"]: curves_png(queue, queue.get(item["id"])) for item in data["jobs"]}
    default = output is None
    if default:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = queue.ws.root / REPORTS_DIR / f"farense-{stamp}.html"
        n = 1
        while output.exists():  # two reports in one second: the second never replaces the first
            output, n = output.with_name(f"farense-{stamp}-{n}.html"), n + 1
    path = queue.ws.resolve(output)
    if default:
        path.parent.mkdir(parents=True, exist_ok=True)  # reports/ (a folder asked for must exist: never made)
    atomic_write_bytes(path, render(data, figures).encode())
    if default and auto:
        prune_reports(path.parent, keep_reports())
    return path


def keep_reports() -> int:
    """How many reports reports/ keeps: $FARENSE_KEEP_REPORTS (at least 1), else KEEP_REPORTS."""
    import os

    try:
        return min(max(int(os.environ.get("FARENSE_KEEP_REPORTS", KEEP_REPORTS)), 1), 10_000)
    except ValueError:
        return KEEP_REPORTS


def _auto(path: Path) -> bool:
    """Whether a report was written by farensed at a drain (its head carries AUTO_MARK)."""
    try:
        with open_regular(path) as fh:
            return AUTO_MARK.encode() in fh.read(4096)
    except OSError:
        return False


def prune_reports(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` reports that farensed wrote by itself at a drain; a report a person asked
    for (`farensectl report`, `--output`) is never touched. A report is a view of files farense keeps (jobs/, the
    run folders): `farensectl report --since` draws it again."""
    found = [p for p in folder.iterdir() if REPORT_NAME_RE.fullmatch(p.name) and _auto(p)]
    reports = sorted(found, key=lambda p: (p.name[:23], p.stat().st_mtime_ns))  # by its stamp, then when written
    old = reports[: max(len(reports) - keep, 0)]
    for path in old:
        path.unlink(missing_ok=True)
    return old
