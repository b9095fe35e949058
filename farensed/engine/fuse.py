"""The `fuse` post-step: output/<name>/fused/ = base model + the job's adapters, fused by mlx-lm's own helpers.

The model is written into output/<name>/.fused.tmp-<pid>/ and renamed into place when complete, so a kill
during the fuse leaves no half model behind; the next run of the job (already trained) redoes only the fuse.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from farensed.i18n import _
from farensed.models.hub import resolve_model
from farensed.storage.atomic import dumps, fsync_dir, fsync_file, move_aside, read_json
from farensed.storage.digest import sha256_file

FUSED_DIR = "fused"
MARKER = "farense_fuse.json"  # which adapters (sha256) and options this fused model was made from
GGUF_NAME = "ggml-model-f16.gguf"  # mlx_lm fuse's default --gguf-path


def fuse_options(spec) -> dict:
    """`fuse: true` means mlx_lm fuse's defaults; an object sets dequantize / export_gguf."""
    options = {"dequantize": False, "export_gguf": False}
    if isinstance(spec.fuse, dict):
        options.update(spec.fuse)
    return options


def fuse_job(spec, ws, say) -> Path | None:
    """Fuse the job's adapters (output/<name>/) into its base model once; return the fused folder."""
    if not spec.fuse:
        return None
    out = ws.output_dir(spec.name)
    target = out / FUSED_DIR
    made_from = {"adapters_sha256": sha256_file(out / "adapters.safetensors"), "options": fuse_options(spec)}
    if target.is_dir():
        try:
            if read_json(target / MARKER) == made_from:
                return target  # already fused from these very adapters
        except (OSError, ValueError):
            pass
        say(_("Modelo fundido antigo (de outros adapters) guardado em {path}").format(path=move_aside(target)))
    for stale in out.glob(f".{FUSED_DIR}.tmp-*"):  # an earlier fuse that was killed: incomplete, ours
        shutil.rmtree(stale)
    tmp = out / f".{FUSED_DIR}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    say("\n" + _("A fundir os adapters no modelo base (mlx-lm fuse) → {path}").format(path=target.relative_to(ws.root)))
    from farensed.engine.gguf import model_path  # a .gguf: its import <file>.mlx/

    _fuse_into(tmp, model_path(resolve_model(spec.model, ws), log=say), out, fuse_options(spec))
    (tmp / MARKER).write_bytes(dumps(made_from))
    for path in tmp.rglob("*"):
        if path.is_file():
            fsync_file(path)
    fsync_dir(tmp)
    os.replace(tmp, target)
    fsync_dir(out)
    say(_("✓ Modelo fundido: {path}").format(path=target.relative_to(ws.root)))
    return target


def _fuse_into(folder: Path, model_path: Path, adapter_path: Path, options: dict) -> None:
    """What `mlx_lm fuse` does, with its own functions: load with adapters, fuse, (dequantize), save, (GGUF)."""
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.gguf import convert_to_gguf
    from mlx_lm.utils import dequantize_model, load, save

    model, tokenizer, config = load(str(model_path), adapter_path=str(adapter_path), return_config=True)
    fused = [(n, m.fuse(dequantize=options["dequantize"])) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if options["dequantize"]:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    save(folder, str(model_path), model, tokenizer, config, donate_model=False)
    if options["export_gguf"]:
        weights = dict(tree_flatten(model.parameters()))
        convert_to_gguf(folder, weights, config, str(folder / GGUF_NAME))
