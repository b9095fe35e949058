"""Validation of training data files (mlx-lm's JSONL formats) without importing mlx."""

from __future__ import annotations

from pathlib import Path

import orjson

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.spec.modelcheck import check_model_folder
from farensed.storage.regular import NotRegularFile, open_regular
from farensed.terminal import excerpt


def _format_of(record: dict, where: str) -> str:
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise SpecError(
                _("{where}: 'messages' deve ser uma lista não vazia de {{role, content}}").format(where=where)
            )
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise SpecError(
                    _("{where}: messages[{i}] deve ser um objeto com 'role' e 'content' de texto").format(
                        where=where, i=i
                    )
                )
        return "messages"
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise SpecError(
                    _("{where}: '{key}' deve ser texto (formato prompt/completion)").format(where=where, key=key)
                )
        return "prompt/completion"
    if "text" in record:
        if not isinstance(record["text"], str) or not record["text"]:
            raise SpecError(_("{where}: 'text' deve ser texto não vazio").format(where=where))
        return "text"
    keys = excerpt(sorted(record)[:20], 80) if record else _("nenhuma")
    raise SpecError(
        _("{where}: formato desconhecido (chaves: {keys}); use 'messages', 'prompt'/'completion' ou 'text'").format(
            where=where, keys=keys
        )
    )


def check_data_file(path: Path, label: str) -> int:
    """Check one JSONL file line by line; return its number of examples."""
    return scan_data_file(path, label)[0]


def _open_data(path: Path, label: str):
    try:
        return open_regular(path)
    except NotRegularFile as exc:
        raise SpecError(f"{label}: {exc}") from None
    except (FileNotFoundError, ValueError):  # ValueError: a NUL byte in the path
        raise SpecError(_("{label}: ficheiro de dados não encontrado: {path}").format(label=label, path=path)) from None
    except OSError as exc:
        raise SpecError(
            _("{label}: não foi possível ler {path} ({strerror})").format(label=label, path=path, strerror=exc.strerror)
        ) from None


def scan_data_file(path: Path, label: str) -> tuple[int, str]:
    """Check one JSONL file line by line (a regular file only: a FIFO never blocks); its examples and format."""
    fmt = None
    count = 0
    with _open_data(path, label) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise SpecError(_("{where}: linha não é JSON válido ({exc})").format(where=where, exc=exc)) from None
            if not isinstance(record, dict):
                raise SpecError(_("{where}: cada linha deve ser um objeto JSON").format(where=where))
            this = _format_of(record, where)
            if fmt is None:
                fmt = this
            elif this != fmt:
                raise SpecError(
                    _("{where}: formato '{this}' diferente do resto do ficheiro ('{fmt}')").format(
                        where=where, this=this, fmt=fmt
                    )
                )
            count += 1
    if count == 0:
        raise SpecError(_("{label}: ficheiro de dados vazio: {path}").format(label=label, path=path))
    return count, fmt


def check_model_dir(path: Path, label: str):
    """A usable mlx-lm model folder has config.json, safetensors weights and a tokenizer (or: a supported .gguf,
    whose header it returns)."""
    if path.suffix.lower() == ".gguf":
        from farensed.models.gguf_support import check_gguf_file

        return check_gguf_file(path, label)
    if path.is_file():
        from farensed.models.gguf_header import is_gguf

        if is_gguf(path):  # an Ollama blob is a GGUF named sha256-…
            raise SpecError(
                _(
                    "{label}: {path} é um GGUF sem a extensão .gguf (um blob do Ollama?); dê-lhe esse nome com uma ligação: ln -s {path} models/NOME.gguf, e ponha models/NOME.gguf no model"
                ).format(label=label, path=path)
            )
    check_model_folder(path, label)  # as mlx-lm reads it (spec/modelcheck.py)
    return None


def file_format(path: Path) -> str:
    """The format of a data file that `check_data_file` accepted: that of its first example."""
    with open_regular(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                return _format_of(orjson.loads(raw), f"{path}:{lineno}")
    raise SpecError(_("{path}: ficheiro de dados vazio").format(path=path))
