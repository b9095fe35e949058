"""The tokenized datasets cached on disk, so a resume or a second run of the same data skips tokenization.

One file per (tokenizer, data file, token settings): `checkpoints_qlora/.tokens/<key>.safetensors`, beside the runs
and shared by them. Stored without pickle: three numpy arrays in safetensors (all token ids end to end, each
example's start, each example's prompt offset) and the key's ingredients as metadata, written atomically. A file
that is unreadable or whose metadata does not match is ignored and rewritten; nothing is ever trusted blindly.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from farensed.engine.data import TokenizedSet
from farensed.storage.atomic import atomic_write_with
from farensed.storage.runlock import sweep_temps

FORMAT = 1
CACHE_DIR = ".tokens"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".npz", ".pt", ".pth", ".md")


def tokenizer_digest(model_dir: Path) -> str:
    """sha256 over the model folder's small files (tokenizer, its config, chat template, config.json)."""
    h = hashlib.sha256()
    for path in sorted(Path(model_dir).iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            h.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def cache_key(tokenizer: str, data: str, settings: dict) -> dict:
    """Everything the token ids depend on, mlx-lm's version (its dataset classes tokenize) included."""
    from mlx_lm import __version__ as mlx_lm_version

    return {
        "format": FORMAT,
        "mlx_lm": mlx_lm_version,
        "tokenizer_sha256": tokenizer,
        "data_sha256": data,
        "settings": settings,
    }


class TokenCache:
    """Look up or fill the token cache of one model folder and one set of token settings."""

    def __init__(self, folder: Path, model_dir: Path, settings: dict):
        self.folder = Path(folder)
        with contextlib.suppress(OSError):  # a writer killed mid-write left its temp file; an absent cache has none
            sweep_temps(self.folder)
        self.tokenizer = tokenizer_digest(model_dir)
        self.settings = settings

    def get(self, data_digest: str, tokenize: Callable[[], TokenizedSet]) -> tuple[TokenizedSet, bool]:
        """The cached set for this data file, or `tokenize()` stored for next time; True when it was cached."""
        key = cache_key(self.tokenizer, data_digest, self.settings)
        text = orjson.dumps(key, option=orjson.OPT_SORT_KEYS).decode()
        path = self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors"
        cached = read_cached(path, text, self.settings.get("max_seq_length"))
        if cached is not None:
            return cached, True
        data = tokenize()
        try:
            write_cached(path, text, data)
        except OSError:  # a read-only or full disk costs the next start-up its speed, never this run
            pass
        return data, False


def write_cached(path: Path, key_text: str, data: TokenizedSet) -> None:
    """Token ids end to end + starts + offsets, in safetensors, temp → fsync → rename."""
    from safetensors.numpy import save_file

    lengths = np.array([len(t) for t in data.tokens], np.int64)
    arrays = {
        "tokens": np.concatenate([np.asarray(t, np.int32) for t in data.tokens])
        if len(data)
        else np.zeros(0, np.int32),
        "starts": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "offsets": np.asarray(data.offsets, np.int64),
    }
    atomic_write_with(path, lambda tmp: save_file(arrays, str(tmp), metadata={"key": key_text}))


def read_cached(path: Path, key_text: str, max_seq_length: int | None) -> TokenizedSet | None:
    """The cached set when the file exists, reads whole and carries the same key; None otherwise."""
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            if (fh.metadata() or {}).get("key") != key_text:
                return None
            tokens, starts, offsets = (fh.get_tensor(n) for n in ("tokens", "starts", "offsets"))
    except Exception:  # a damaged cache file is only a cache miss
        return None
    if len(starts) != len(offsets) + 1 or starts[-1] != len(tokens):
        return None
    flat, bounds = tokens.tolist(), starts.tolist()
    sets = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    lengths = np.diff(starts)
    truncated = int((lengths > max_seq_length).sum()) if max_seq_length else 0
    return TokenizedSet(sets, [int(o) for o in offsets.tolist()], truncated)
