"""GGUF → MLX: import a llama.cpp / Ollama / LM Studio model file into an mlx-lm model folder.

Each tensor is read from the file (memory-mapped) and converted in numpy by `farensed.models.gguf_quants`: block
types that are MLX affine groups stay quantized exactly (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K), Q6_K becomes
8 bits with its error measured, floats stay floats. mx.load is not used: its K-quant reader is wrong for Q4_K. The
tensors get mlx-lm's names (llama's q/k rows back in Hugging Face order), config.json comes from the metadata, the
tokenizer and chat template too, and `farense_gguf.json` (the source's sha256 and what the import did) is written
last, all in a temp folder that is fsynced and renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from farensed.engine.gguf_config import build_config
from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_header import GgufInfo, read_header, shown
from farensed.models.gguf_quants import Measure, conversion_table, convert, row_key, to_float32
from farensed.models.gguf_support import PERMUTED_QK, ROPE_FREQS, check_supported, mlx_name
from farensed.storage.atomic import atomic_write_json, fsync_dir, move_aside, read_json_dict
from farensed.storage.runlock import sweep_temps

MARKER = "farense_gguf.json"
CACHE_SUFFIX = ".mlx"
SHARD_BYTES = 1 << 30  # written as converted: the import holds about one shard in memory


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The file's sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_gguf_path(path: Path) -> bool:
    """A spec `model` naming a .gguf file (rather than an mlx-lm model folder)."""
    return Path(path).suffix.lower() == ".gguf"


def _unpermute(w, n_head: int):
    """llama.cpp stores q/k rows interleaved per head (for its rope); put them back in Hugging Face order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class _Shards:
    """Converted tensors written in shards of about SHARD_BYTES as they come (memory stays near one shard)."""

    def __init__(self, folder: Path):
        self.folder, self.files, self.pending, self.size = folder, [], {}, 0

    def add(self, arrays: dict) -> None:
        self.pending.update(arrays)
        self.size += sum(a.nbytes for a in arrays.values())
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        import mlx.core as mx

        if self.pending:
            name = f"part-{len(self.files) + 1:05d}.safetensors"
            mx.save_safetensors(str(self.folder / name), self.pending, metadata={"format": "mlx"})
            self.files.append((name, sorted(self.pending), self.size))
            self.pending, self.size = {}, 0

    def finish(self) -> None:
        """mlx-lm's names (model.safetensors, or model-0000i-of-0000n) and the index."""
        self.flush()
        n = len(self.files)
        index = {"metadata": {"total_size": sum(f[2] for f in self.files)}, "weight_map": {}}
        for i, (part, keys, _size) in enumerate(self.files, start=1):
            name = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / part, self.folder / name)
            index["weight_map"].update(dict.fromkeys(keys, name))
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        atomic_write_json(self.folder / "model.safetensors.index.json", index)


def _mlx_arrays(info: GgufInfo, t, arrays: dict, form) -> dict:
    """A converted tensor under its mlx-lm names, q/k rows back in Hugging Face order, as mlx arrays."""
    import mlx.core as mx

    heads = int(info.arch_key("attention.head_count"))
    kv_heads = int(info.arch_key("attention.head_count_kv", heads))
    module, suffix = mlx_name(t.name).rsplit(".", 1)
    n_head = heads if ".attn_q." in t.name else kv_heads if ".attn_k." in t.name else 0
    n_head = n_head if info.architecture in PERMUTED_QK else 0
    out = {}
    for key, value in arrays.items():
        value = _unpermute(value, n_head) if n_head else value
        name = f"{module}.{key}" if form.bits else f"{module}.{suffix}"
        out[name] = mx.array(value).view(mx.bfloat16) if form.dtype == "bfloat16" else mx.array(value)
    return out


def convert_weights(info: GgufInfo, shards: _Shards, compact: bool = False) -> tuple[dict, list | None, dict]:
    """Every tensor through gguf_quants into `shards`: ({quantized module: bits}, rope_freqs or None, conversions)."""
    import numpy as np

    mm = np.memmap(info.path, dtype=np.uint8, mode="r")
    bits, rope_freqs, conversions = {}, None, {}
    for t in info.tensors.values():
        raw = mm[t.offset : t.offset + t.nbytes]
        if t.name == ROPE_FREQS:
            rope_freqs = to_float32(raw, t.type_name).tolist()
            continue
        try:
            arrays, form, measure = convert(raw, t, compact)
        except SpecError as exc:
            raise SpecError(f"{info.path}: {shown(t.name)}: {exc}") from None
        if form.bits:
            bits[mlx_name(t.name).rsplit(".", 1)[0]] = form.bits
        row = conversions.setdefault(row_key(t), {"count": 0, "form": form, "measure": Measure()})
        row["count"] += 1
        row["measure"].add(measure)
        shards.add(_mlx_arrays(info, t, arrays, form))
        del arrays
    del mm
    return bits, rope_freqs, conversions


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(folder)


def summary_of(info: GgufInfo, config: dict, dest: Path, digest: str, conversions: dict, compact: bool) -> dict:
    """What an import produced, for the console and --json."""
    quant = config.get("quantization") or {}
    table, error = conversion_table(conversions)
    return {
        "source": str(info.path),
        "dest": str(dest),
        "sha256": digest,
        "architecture": info.architecture,
        "name": info.metadata.get("general.name"),
        "layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "heads": config["num_attention_heads"],
        "kv_heads": config["num_key_value_heads"],
        "vocab_size": config["vocab_size"],
        "tensor_types": info.type_counts(),
        "bits": quant.get("bits"),
        "bits_by_module": {k: v["bits"] for k, v in quant.items() if isinstance(v, dict)},
        "tokenizer": f"{info.metadata.get('tokenizer.ggml.model')}/{info.metadata.get('tokenizer.ggml.pre', 'default')}",
        "chat_template": bool(info.metadata.get("tokenizer.chat_template")),
        "conversions": table,
        "error": error,
        "compact": compact,
    }


def _tokenizer(info: GgufInfo):
    from farensed.engine.gguf_tokenizer import build_tokenizer

    try:
        return build_tokenizer(info.metadata)
    except SpecError:
        raise
    except Exception as exc:  # hostile metadata inside the tokenizers library (a merge naming no token, …)
        raise SpecError(
            _("{path}: tokenizer do GGUF inválido ({reason})").format(path=info.path, reason=shown(exc, 120))
        ) from None


def imported_digest(dest: Path) -> str | None:
    """The sha256 of the GGUF a finished import in `dest` came from (None if `dest` is not one)."""
    digest = (read_json_dict(Path(dest) / MARKER) or {}).get("sha256")
    return digest if isinstance(digest, str) else None


def import_gguf(src: Path, dest: Path, log=print, digest: str | None = None, compact: bool = False) -> dict:
    """Import a GGUF into the mlx-lm folder `dest` (atomically); an existing import of the same file is kept.

    `compact`: float16 scales and biases everywhere (mlx-lm's usual; a K-quant layer then takes 5 bits per weight
    instead of 6, and its values move by the float16 rounding of each scale, which the summary measures).
    """
    src, dest = Path(src), Path(dest)
    info = read_header(src)
    check_supported(info)
    digest = digest or sha256_of(src)
    if dest.exists():
        if imported_digest(dest) == digest:
            summary = (read_json_dict(dest / MARKER) or {}).get("summary")
            summary = summary if isinstance(summary, dict) else {}
            if bool(summary.get("compact")) != compact:  # the same file, another layout: never dropped silently
                raise SpecError(
                    _(
                        "{dest}: já contém este GGUF importado {layout}; escolha outra pasta para esta importação"
                    ).format(dest=dest, layout=_("com --compact") if summary.get("compact") else _("sem --compact"))
                )
            log(_("✅ {dest} já contém este GGUF importado (sha256 {sha256})").format(dest=dest, sha256=digest[:12]))
            return dict(summary, already=True)
        raise SpecError(_("{dest}: o destino já existe; escolha outra pasta ou mova-a").format(dest=dest))
    tokenizer = _tokenizer(info)  # before the weights: a bad vocabulary is refused in a second, not minutes
    log(
        _("A importar {name} ({architecture}, {items})").format(
            name=src.name,
            architecture=info.architecture,
            items=", ".join(f"{k}×{v}" for k, v in info.type_counts().items()),
        )
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # an import killed midway left a model-sized temp folder: only that name's (the folder is the user's)
    sweep_temps(dest.parent, prefix=f".{dest.name}.tmp-")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted import by this pid
    tmp.mkdir()
    try:
        shards = _Shards(tmp)
        bits, rope_freqs, conversions = convert_weights(info, shards, compact)
        shards.finish()
        config = build_config(info, bits, rope_freqs)
        atomic_write_json(tmp / "config.json", config)
        tokenizer.save_pretrained(str(tmp))
        summary = summary_of(info, config, dest, digest, conversions, compact)
        stat = src.stat()
        marker = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "summary": summary}
        atomic_write_json(tmp / MARKER, marker)
        _fsync_tree(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only the half-written temp folder
        raise
    fsync_dir(dest.parent)
    log(_("✅ Modelo importado: {dest}").format(dest=dest))
    return summary


def _cache_is_current(cache: Path, src: Path) -> bool:
    """The import beside the file is of this file; a damaged or hand-edited marker means import again."""
    marker = read_json_dict(cache / MARKER)
    if marker is None:
        return False
    stat = src.stat()
    if marker.get("size") == stat.st_size and marker.get("mtime_ns") == stat.st_mtime_ns:
        return True
    return marker.get("sha256") == sha256_of(src)


def model_path(path: Path, log=print) -> Path:
    """The mlx-lm folder for a spec's `model`: itself, or for a .gguf its import `<file>.mlx/` (made once, reused)."""
    path = Path(path)
    if not is_gguf_path(path):
        return path
    from filelock import FileLock

    cache = path.with_name(path.name + CACHE_SUFFIX)
    try:
        with FileLock(str(path.with_name(f".{path.name}.lock"))):
            if _cache_is_current(cache, path):
                return cache
            if cache.exists():
                log(_("O GGUF mudou: a importação anterior foi guardada em {path}").format(path=move_aside(cache)))
            import_gguf(path, cache, log=log)
    except OSError as exc:  # a read-only folder, a full disk, …
        raise SpecError(
            _(
                "{path}: não foi possível importar para {name} ao lado do GGUF ({error}); use farensectl model import-gguf FILE DEST e ponha DEST no model do spec"
            ).format(path=path, name=cache.name, error=exc.strerror or exc)
        ) from None
    return cache
