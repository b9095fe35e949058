"""Reading a spec file (JSON, or an mlx_lm lora YAML config) and checking the files it names, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_support import TEMPLATED_FORMATS, check_chat_template
from farensed.models.hub import resolve_model
from farensed.spec.datacheck import check_model_dir, scan_data_file
from farensed.spec.decode import decode_json, decode_yaml, read_spec_bytes
from farensed.spec.jobspec import JobSpec, parse_spec
from farensed.spec.mlxlm import config_to_spec, is_yaml
from farensed.spec.modelcheck import MAX_CONFIG_BYTES, check_folder_chat_template, check_safetensors
from farensed.spec.options import check_pack_architecture, check_report_installed
from farensed.storage.regular import read_regular
from farensed.storage.workspace import Workspace

GGUF_EXPORT_TYPES = ("llama", "mixtral", "mistral")  # what mlx_lm fuse --export-gguf accepts


def read_spec(path: Path) -> tuple[Any, bytes]:
    """A spec file (or an mlx_lm lora YAML config) decoded, and the bytes a job stores as its spec.json: the file
    as it was read, or the JSON spec equivalent to the YAML. Read once: what is checked is what is stored."""
    path = Path(path)
    data = read_spec_bytes(path)
    if is_yaml(path):
        raw = config_to_spec(decode_yaml(data, str(path)), path)
        return raw, orjson.dumps(raw, option=orjson.OPT_INDENT_2)
    return decode_json(data, str(path)), data


def read_spec_file(path: Path) -> Any:
    """Decode a spec file (or an mlx_lm lora YAML config); every problem is one line naming the file."""
    return read_spec(path)[0]


def _model_config(model_dir: Path, gguf=None) -> dict:
    """The model's config.json (for a .gguf: what its import will write, from the header)."""
    if gguf is not None:
        from farensed.models.gguf_support import imported_config

        return imported_config(gguf)
    try:
        config = orjson.loads(read_regular(model_dir / "config.json", MAX_CONFIG_BYTES))
    except (OSError, orjson.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def check_inputs(spec: JobSpec, ws: Workspace, label: str) -> dict[str, int]:
    """Check the model folder and data files exist and parse; return example counts."""
    model_dir = resolve_model(spec.model, ws, f"{label}: model")  # a Hub id: its snapshot in the HF cache
    gguf = check_model_dir(model_dir, f"{label}: model")  # a .gguf: its header (GgufInfo)
    config = _model_config(model_dir, gguf)
    if spec.fine_tune_type == "full" and (config.get("quantization") or config.get("quantization_config")):
        raise SpecError(
            _(
                "{label}: fine_tune_type 'full' precisa de um modelo não quantizado ({model} é quantizado); use lora/dora, ou um modelo em float (mlx_lm convert -d)"
            ).format(label=label, model=spec.model)
        )
    if isinstance(spec.fuse, dict) and spec.fuse.get("export_gguf"):
        model_type = config.get("model_type")
        if model_type not in GGUF_EXPORT_TYPES:
            raise SpecError(
                _(
                    "{label}: fuse.export_gguf: o mlx-lm só exporta GGUF de llama/mixtral/mistral, não {model_type}"
                ).format(label=label, model_type=model_type)
            )
    check_report_installed(spec.report_to, label)  # before the job waits in the queue
    check_pack_architecture(spec.pack, config, label)
    if spec.resume_adapter_file:
        path = ws.resolve(spec.resume_adapter_file)
        if not path.exists():
            raise SpecError(_("{label}: resume_adapter_file não encontrado: {path}").format(label=label, path=path))
        check_safetensors(path, f"{label}: resume_adapter_file")
    counts, formats = {}, {}
    for key, rel in (("train", spec.data.train), ("valid", spec.data.valid), ("test", spec.data.test)):
        if rel:
            counts[key], formats[key] = scan_data_file(ws.resolve(rel), f"{label}: data.{key}")
    if gguf is not None:
        check_chat_template(gguf, set(formats.values()), f"{label}: model")
    elif chat := next((key for key, fmt in formats.items() if fmt in TEMPLATED_FORMATS), None):
        check_folder_chat_template(model_dir, f"{label}: model", f"data.{chat}", formats[chat])
    if counts["train"] < spec.batch_size:
        raise SpecError(
            _("{label}: data.train tem {train} exemplos, menos que batch_size ({batch_size})").format(
                label=label, train=counts["train"], batch_size=spec.batch_size
            )
        )
    return counts


def load_spec_file(path: Path, ws: Workspace, check_files: bool = True) -> tuple[JobSpec, bytes]:
    """Load and fully validate a spec file before anything runs; the spec and the bytes a job stores."""
    raw, data = read_spec(path)
    label = str(path)
    spec = parse_spec(raw, label)
    if check_files:
        check_inputs(spec, ws, label)
    return spec, data


def load_spec(path: Path, ws: Workspace, check_files: bool = True) -> JobSpec:
    """Load and fully validate a spec file before anything runs."""
    return load_spec_file(path, ws, check_files)[0]
