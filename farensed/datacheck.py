"""Validation of training data files (mlx-lm's JSONL formats) without importing mlx."""

from __future__ import annotations

from pathlib import Path

import orjson

from farensed.errors import SpecError

FORMATS = ("messages", "prompt/completion", "text")


def _format_of(record: dict, where: str) -> str:
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise SpecError(f"{where}: 'messages' deve ser uma lista não vazia de {{role, content}}")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise SpecError(f"{where}: messages[{i}] deve ser um objeto com 'role' e 'content' de texto")
        return "messages"
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise SpecError(f"{where}: '{key}' deve ser texto (formato prompt/completion)")
        return "prompt/completion"
    if "text" in record:
        if not isinstance(record["text"], str) or not record["text"]:
            raise SpecError(f"{where}: 'text' deve ser texto não vazio")
        return "text"
    keys = ", ".join(sorted(record)) or "nenhuma"
    raise SpecError(f"{where}: formato desconhecido (chaves: {keys}); use 'messages', 'prompt'/'completion' ou 'text'")


def check_data_file(path: Path, label: str) -> int:
    """Check one JSONL file line by line; return its number of examples."""
    if not path.is_file():
        raise SpecError(f"{label}: ficheiro de dados não encontrado: {path}")
    fmt = None
    count = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise SpecError(f"{where}: linha não é JSON válido ({exc})") from None
            if not isinstance(record, dict):
                raise SpecError(f"{where}: cada linha deve ser um objeto JSON")
            this = _format_of(record, where)
            if fmt is None:
                fmt = this
            elif this != fmt:
                raise SpecError(f"{where}: formato '{this}' diferente do resto do ficheiro ('{fmt}')")
            count += 1
    if count == 0:
        raise SpecError(f"{label}: ficheiro de dados vazio: {path}")
    return count


def check_model_dir(path: Path, label: str) -> None:
    """A usable mlx-lm model folder has config.json, safetensors weights and a tokenizer (or: a supported .gguf)."""
    if path.suffix.lower() == ".gguf":
        from farensed.ggufinfo import check_gguf_file

        return check_gguf_file(path, label)
    if not path.is_dir():
        raise SpecError(f"{label}: pasta do modelo não encontrada: {path}")
    if not (path / "config.json").is_file():
        raise SpecError(f"{label}: {path} não tem config.json")
    try:
        orjson.loads((path / "config.json").read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SpecError(f"{label}: {path / 'config.json'} não é JSON válido ({exc})") from None
    if not any(path.glob("*.safetensors")):
        raise SpecError(f"{label}: {path} não tem pesos (*.safetensors)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise SpecError(f"{label}: {path} não tem tokenizer (tokenizer.json ou tokenizer.model)")


def file_format(path: Path) -> str:
    """The format of a data file that `check_data_file` accepted: that of its first example."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.strip():
                return _format_of(orjson.loads(raw), f"{path}:{lineno}")
    raise SpecError(f"{path}: ficheiro de dados vazio")
