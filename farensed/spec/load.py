"""Reading a spec file (JSON, or an mlx_lm lora YAML config) and checking the files it names, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_support import check_chat_template
from farensed.models.hub import resolve_model
from farensed.spec.datacheck import check_data_file, check_model_dir, file_format
from farensed.spec.jobspec import JobSpec, parse_spec
from farensed.spec.mlxlm import is_yaml, read_config
from farensed.storage.workspace import Workspace

GGUF_EXPORT_TYPES = ("llama", "mixtral", "mistral")  # what mlx_lm fuse --export-gguf accepts


def read_spec_file(path: Path) -> Any:
    """Decode a spec file (or an mlx_lm lora YAML config), reporting malformed JSON with its line and column."""
    path = Path(path)
    if is_yaml(path):
        return read_config(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            _("{path}: não foi possível ler ({strerror})").format(path=path, strerror=exc.strerror)
        ) from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SpecError(
            _("{path}: JSON inválido na linha {lineno}, coluna {colno}: {msg}").format(
                path=path, lineno=exc.lineno, colno=exc.colno, msg=exc.msg
            )
        ) from None


def _model_config(model_dir: Path) -> dict:
    try:
        config = orjson.loads((model_dir / "config.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def _quantized(model_dir: Path) -> bool:
    config = _model_config(model_dir)
    return bool(config.get("quantization") or config.get("quantization_config"))


def spec_bytes(path: Path) -> bytes:
    """What a job stores as spec.json: the file as it is, or the JSON spec equivalent to a YAML config."""
    if is_yaml(path):
        return orjson.dumps(read_config(path), option=orjson.OPT_INDENT_2)
    return Path(path).read_bytes()


def check_inputs(spec: JobSpec, ws: Workspace, label: str) -> dict[str, int]:
    """Check the model folder and data files exist and parse; return example counts."""
    model_dir = resolve_model(spec.model, ws, f"{label}: model")  # a Hub id: its snapshot in the HF cache
    gguf = check_model_dir(model_dir, f"{label}: model")  # a .gguf: its header (GgufInfo)
    if spec.fine_tune_type == "full" and _quantized(model_dir):
        raise SpecError(
            _(
                "{label}: fine_tune_type 'full' precisa de um modelo não quantizado ({model} é quantizado); use lora/dora, ou um modelo em float (mlx_lm convert -d)"
            ).format(label=label, model=spec.model)
        )
    if isinstance(spec.fuse, dict) and spec.fuse.get("export_gguf"):
        model_type = _model_config(model_dir).get("model_type")
        if model_type not in GGUF_EXPORT_TYPES:
            raise SpecError(
                _(
                    "{label}: fuse.export_gguf: o mlx-lm só exporta GGUF de llama/mixtral/mistral, não {model_type}"
                ).format(label=label, model_type=model_type)
            )
    if spec.resume_adapter_file and not ws.resolve(spec.resume_adapter_file).is_file():
        raise SpecError(
            _("{label}: resume_adapter_file não encontrado: {path}").format(
                label=label, path=ws.resolve(spec.resume_adapter_file)
            )
        )
    counts = {"train": check_data_file(ws.resolve(spec.data.train), f"{label}: data.train")}
    counts["valid"] = check_data_file(ws.resolve(spec.data.valid), f"{label}: data.valid")
    if spec.data.test:
        counts["test"] = check_data_file(ws.resolve(spec.data.test), f"{label}: data.test")
    if gguf is not None:
        files = [spec.data.train, spec.data.valid] + ([spec.data.test] if spec.data.test else [])
        check_chat_template(gguf, {file_format(ws.resolve(f)) for f in files}, f"{label}: model")
    if counts["train"] < spec.batch_size:
        raise SpecError(
            _("{label}: data.train tem {train} exemplos, menos que batch_size ({batch_size})").format(
                label=label, train=counts["train"], batch_size=spec.batch_size
            )
        )
    return counts


def load_spec(path: Path, ws: Workspace, check_files: bool = True) -> JobSpec:
    """Load and fully validate a spec file before anything runs."""
    label = str(path)
    spec = parse_spec(read_spec_file(path), label)
    if check_files:
        check_inputs(spec, ws, label)
    return spec
