"""Deciding how a run starts: fresh, resumed from the newest valid checkpoint, or refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.engine.checkpoint import STATE_NAME, Checkpoint, list_checkpoints, newest_valid
from farensed.errors import ResumeError
from farensed.i18n import _
from farensed.storage.atomic import move_aside, read_json
from farensed.terminal import excerpt, safe


@dataclass
class StartPoint:
    """Where training starts: nothing (fresh) or a verified checkpoint and its state."""

    checkpoint: Checkpoint | None = None
    state: dict | None = None

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{safe(str(key), 40)}: {excerpt(a, 80)} → {excerpt(b, 80)}")  # never a Python repr
    return out


def is_run_state(state) -> bool:
    """training_state.json as the trainer writes it: an object with its fingerprint and data digests."""
    return (
        isinstance(state, dict) and isinstance(state.get("fingerprint"), dict) and isinstance(state.get("data"), dict)
    )


def find_start(run_dir: Path, fingerprint: dict, data_digests: dict, fresh: bool, warn) -> StartPoint:
    """Fresh start, resume point, or a ResumeError saying what changed and suggesting --fresh."""
    if fresh:
        if run_dir.exists():
            moved = move_aside(run_dir)
            warn(_("--fresh: a pasta anterior foi guardada em {moved}").format(moved=moved))
        return StartPoint()
    if not (run_dir / STATE_NAME).exists() and not list_checkpoints(run_dir):
        return StartPoint()
    found = newest_valid(run_dir, warn)
    if found is None:
        raise ResumeError(
            _("{run_dir}: {file} existe mas nenhum checkpoint é válido; use --fresh para recomeçar").format(
                run_dir=run_dir, file=STATE_NAME
            )
        )
    ckpt, state = found
    refuse_if_changed(run_dir, state, fingerprint, data_digests)
    _repair_run_files(run_dir, ckpt, state, warn)
    return StartPoint(ckpt, state)


def refuse_if_changed(run_dir: Path, state: dict, fingerprint: dict, data_digests: dict) -> None:
    """ResumeError naming every setting or data file that changed since the run's checkpoint, with the --fresh hint."""
    old_data = state["data"]
    changed = _differences(state["fingerprint"], fingerprint) + [
        _("data.{key}: o conteúdo do ficheiro mudou").format(key=k)
        for k in sorted(set(old_data) | set(data_digests))
        if old_data.get(k) != data_digests.get(k)
    ]
    if changed:
        raise ResumeError(
            _(
                "{run_dir}: não é possível retomar, a spec ou os dados mudaram ({changes}); use --fresh para recomeçar (a pasta antiga é guardada)"
            ).format(run_dir=run_dir, changes="; ".join(changed))
        )


def check_resumable(spec, ws) -> None:
    """At submit: a spec whose run exists but cannot resume with it is refused now, not when it starts (no mlx)."""
    from farensed.spec.hosts import world_size
    from farensed.storage.atomic import read_json
    from farensed.storage.digest import sha256_file

    run_dir = ws.run_dir(spec.name)
    try:
        state = read_json(run_dir / STATE_NAME)
    except (OSError, ValueError):
        return  # no run yet (or nothing readable: the start decides, with the checkpoints' own states)
    if not is_run_state(state):
        return  # hand-edited or damaged: the start repairs it from the newest checkpoint's own state
    fingerprint = dict(spec.resume_fingerprint(), world_size=world_size(spec, ws))
    files = {k: getattr(spec.data, k) for k in ("train", "valid", "test") if k in state["data"]}  # as recorded
    digests = {k: sha256_file(ws.resolve(path)) for k, path in files.items() if path}
    refuse_if_changed(run_dir, state, fingerprint, digests)


def _repair_run_files(run_dir: Path, ckpt: Checkpoint, state: dict, warn) -> None:
    """Say which run-level files were torn; the state is rewritten now, the metrics when training restores them."""
    from farensed.engine.checkpoint import write_run_state

    for name in (STATE_NAME, "training_metrics.json"):
        try:
            found = read_json(run_dir / name)
            if is_run_state(found) if name == STATE_NAME else isinstance(found, list):
                continue
            problem = _("sem a forma esperada")
        except FileNotFoundError:
            problem = _("em falta")
        except (OSError, orjson.JSONDecodeError) as exc:
            problem = _("ilegível ({exc})").format(exc=exc)
        warn(
            _("⚠  {name} da pasta do treino {problem}; reconstruído a partir de {checkpoint}").format(
                name=name, problem=problem, checkpoint=ckpt.path.name
            )
        )
        if name == STATE_NAME:
            write_run_state(run_dir, dict(state, checkpoint=ckpt.path.name))


def agree_on_start(world, run_dir: Path, fingerprint: dict, data_digests: dict, fresh: bool, warn) -> StartPoint:
    """Rank 0 decides fresh / resume / refuse from its disk; every rank gets the same answer (other hosts may have
    no checkpoint files: they receive the tensors later, by broadcast)."""
    decision = None
    if world.is_main:
        try:
            start = find_start(run_dir, fingerprint, data_digests, fresh, warn)
        except ResumeError as exc:
            if world.size > 1:
                world.broadcast_json({"error": str(exc)})
            raise
        if world.size == 1:
            return start
        decision = {"state": start.state, "checkpoint": start.checkpoint.path.name if start.resuming else None}
    decision = world.broadcast_json(decision)
    if "error" in decision:
        raise ResumeError(decision["error"])
    if not world.is_main:
        name = decision["checkpoint"]
        return StartPoint(Checkpoint(run_dir / name, 0, 0) if name else None, decision["state"])
    return start
