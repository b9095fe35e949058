"""Checkpoints: what one holds, how it is written atomically, and how the newest valid one is found.

checkpoint_epoch<E>_step<S>/
    adapters.safetensors     trainable LoRA weights
    adapter_config.json      mlx-lm's adapter config (so any checkpoint loads with --adapter-path)
    optimizer.safetensors    the optimizer state (Adam moments, step, learning rate)
    training_metrics.json    the metrics history up to step S
    training_state.json      step, epoch, data position, RNG scheme, early stopping, best, fingerprint,
                             train-loss window, sha256 of every file above (written last)
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.i18n import _
from farensed.storage.atomic import atomic_write_json, dumps, fsync_dir, fsync_file, move_aside, read_json
from farensed.storage.digest import sha256_file

STATE_NAME = "training_state.json"
CKPT_RE = re.compile(r"^checkpoint_epoch(\d+)_step(\d+)$")
FORMAT = 1


def checkpoint_name(epoch: int, step: int) -> str:
    return f"checkpoint_epoch{epoch}_step{step}"


def save_safetensors(path: Path, arrays: dict) -> None:
    """mx.save_safetensors to exactly `path` (it appends .safetensors to names lacking it)."""
    import mlx.core as mx

    assert path.suffix == ".safetensors", path
    mx.save_safetensors(str(path), arrays)
    fsync_file(path)


def write_checkpoint(
    run_dir: Path, name: str, tensors: dict[str, dict], json_files: dict[str, object], state: dict
) -> Path:
    """Write every file into a temp folder, fsync, rename it into place, fsync the run folder."""
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an earlier attempt in this process
    tmp.mkdir(parents=True)
    try:
        files = {}
        for fname, arrays in tensors.items():
            save_safetensors(tmp / fname, arrays)
            files[fname] = sha256_file(tmp / fname)
        for fname, obj in json_files.items():
            (tmp / fname).write_bytes(dumps(obj))
            fsync_file(tmp / fname)
            files[fname] = sha256_file(tmp / fname)
        (tmp / STATE_NAME).write_bytes(dumps(dict(state, format=FORMAT, files=files)))
        fsync_file(tmp / STATE_NAME)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint is never left to be taken for one
        raise
    if final.exists():
        # The same step written again (a run resumed from an older checkpoint after this one was found
        # damaged): keep the old folder aside rather than delete it.
        move_aside(final)
    os.replace(tmp, final)
    fsync_dir(run_dir)
    return final


@dataclass
class Checkpoint:
    path: Path
    epoch: int
    step: int


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Checkpoint folders of a run, oldest first (by step)."""
    found = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            m = CKPT_RE.match(child.name)
            if m and child.is_dir():
                found.append(Checkpoint(child, int(m.group(1)), int(m.group(2))))
    return sorted(found, key=lambda c: c.step)


def verify(ckpt: Checkpoint) -> dict:
    """Load a checkpoint's state and check every file's hash; raise ValueError naming what is damaged."""
    try:
        state = read_json(ckpt.path / STATE_NAME)
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(_("{file} ilegível ({exc})").format(file=STATE_NAME, exc=exc)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "files" not in state:
        raise ValueError(_("{file} incompleto").format(file=STATE_NAME))
    for fname, digest in state["files"].items():
        path = ckpt.path / fname
        if not path.is_file():
            raise ValueError(_("falta {fname}").format(fname=fname))
        if sha256_file(path) != digest:
            raise ValueError(_("{fname} danificado (sha256 não confere)").format(fname=fname))
    return state


def newest_valid(run_dir: Path, warn) -> tuple[Checkpoint, dict] | None:
    """The newest checkpoint that verifies; each damaged one on the way is reported through `warn`."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            return ckpt, verify(ckpt)
        except ValueError as exc:
            warn(_("⚠  Checkpoint {name} danificado: {exc}; a usar o anterior").format(name=ckpt.path.name, exc=exc))
    return None


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` checkpoints (the spec's keep_checkpoints; best adapters live elsewhere)."""
    removed = []
    for ckpt in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(ckpt.path)
        removed.append(ckpt.path)
    return removed


def write_run_state(run_dir: Path, state: dict) -> None:
    """The run's own training_state.json: the newest checkpoint's state plus where it is."""
    atomic_write_json(run_dir / STATE_NAME, state)
