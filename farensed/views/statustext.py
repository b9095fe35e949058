"""`farensectl status` as a person reads it: one labelled line per fact, in the chosen language (no mlx)."""

from __future__ import annotations

from farensed import EXIT_RESUMABLE
from farensed.analysis.compare import cell
from farensed.analysis.gap import band_label
from farensed.i18n import N_, _, grouped, ngettext
from farensed.queue.backoff import seconds_left
from farensed.queue.job import JobStatus, state_label
from farensed.terminal import safe
from farensed.views.status import format_duration

# `status`'s lines: the JSON key (fixed) -> its label on screen (translated)
STATUS_LABELS = {
    "id": N_("id"),
    "name": N_("nome"),
    "state": N_("estado"),
    "finished": N_("terminada"),
    "priority": N_("prioridade"),
    "attempts": N_("tentativas"),
    "recoveries": N_("recuperações"),
    "world_size": N_("hosts"),
    "submitted_at": N_("submetido"),
    "first_started_at": N_("primeiro início"),
    "started_at": N_("último início"),
    "ended_at": N_("fim"),
    "not_before": N_("não antes de"),
    "after": N_("depois de"),
    "pid": N_("pid"),
    "exit_code": N_("código de saída"),
    "held": N_("retido"),
    "pause": N_("pausa"),
    "loss_reason": N_("última paragem"),
    "run_dir": N_("pasta"),
    "log": N_("log"),
}


def status_value(value) -> str:
    """A value as a person reads it: yes/no, a list as `1, 2`, never a Python literal."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return cell(value, None)


def _number(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def status_lines(info: dict) -> list[str]:
    """The lines of `status` for `run_status()`'s document (values from files made safe for a terminal)."""
    return _facts(info) + _timing(info) + _progress(info["progress"]) + _adapters(info) + _problem(info)


# the other labels `status` may show (written with N_ where they are used): the value column clears them all
OTHER_LABELS = (N_("nota"), N_("duração"), N_("retoma às"), N_("progresso"), N_("erro"), "adapters")


def _width() -> int:
    """The value column: past the longest label in the chosen language (`primeiro início:` is 16 wide)."""
    return max(len(_(text)) for text in (*STATUS_LABELS.values(), *OTHER_LABELS)) + 2


def _label(text: str) -> str:
    """`estado:` padded to the value column, in the chosen language (`text` marked with N_ where it is written)."""
    return f"{_(text) + ':':<{_width()}}"


def _facts(info: dict) -> list[str]:
    lines = []
    for key, label in STATUS_LABELS.items():
        if info.get(key) not in (None, [], ""):
            value = state_label(info[key]) if key == "state" else status_value(info[key])
            if key == "pid" and info.get("pid_alive") is False:
                value = _("{pid} (terminou)").format(pid=value)  # a dead pid is never shown as alive
            if key == "exit_code" and info[key] == EXIT_RESUMABLE:  # a stop with a checkpoint, not a failure
                value = _("{code} (parado com checkpoint; retomável)").format(code=value)
            lines.append(_label(label) + safe(value, 400))  # a value from a file never reaches the terminal raw
    if info.get("note"):
        lines.append(_label(N_("nota")) + safe(info["note"], 400))
    return lines


def _timing(info: dict) -> list[str]:
    lines = []
    if info.get("total_duration_s") is not None:
        lines.append(
            _label(N_("duração"))
            + _("{total} no total ({attempts}); último arranque {latest}").format(
                total=format_duration(info["total_duration_s"]),
                attempts=ngettext("{count} tentativa", "{count} tentativas", info["attempts"]).format(
                    count=info["attempts"]
                ),
                latest=format_duration(info.get("duration_s")),
            )
        )
    if info["state"] == JobStatus.PENDING.value and info.get("retry_at"):
        if left := seconds_left(info["retry_at"]):
            lines.append(
                _label(N_("retoma às"))
                + _("{time} (daqui a {left:.0f} s)").format(time=info["retry_at"][11:19], left=left)
            )
    return lines


def _progress(p: dict) -> list[str]:
    if p["step"] is None:
        return []
    return [
        _label(N_("progresso"))
        + _(
            "step {step}/{total_steps}, época {epoch}, loss {loss}, val_loss {val_loss}, melhor {best}, banda {band}"
        ).format(
            step=p["step"],
            total_steps=p["total_steps"] or "?",
            epoch=p["epoch"] + 1 if p["epoch"] is not None else "?",
            loss=_number(p["loss"]),
            val_loss=_number(p["val_loss"]),
            best=_number(p["best_val_loss"]),
            band=safe(band_label(p["band"]), 20),
        )
    ]


def _adapters(info: dict) -> list[str]:
    lines = []
    if (adapters := info.get("adapters")) and "error" not in adapters:
        lines.append(
            _label("adapters")
            + _("{tensors}, {parameters} ({path})").format(
                tensors=ngettext("{count} tensor", "{count} tensores", adapters["tensors"]).format(
                    count=adapters["tensors"]
                ),
                parameters=ngettext("{count} parâmetro", "{count} parâmetros", adapters["parameters"]).format(
                    count=grouped(adapters["parameters"])
                ),
                path=safe(adapters["path"], 300),
            )
        )
    return lines


def _problem(info: dict) -> list[str]:
    lines = []
    if info.get("reason"):
        lines.append(_label(N_("erro")) + safe(info["reason"], 400))
        lines.append(" " * _width() + _("log completo: farensectl logs {id}").format(id=info["id"]))
    elif info.get("error"):
        lines.append(_label(N_("nota")) + safe(info["error"], 400))
    return lines
