"""`mlx_lm lora -c config.yaml` files read as farense job specs (no mlx import: the daemon and CLI use this).

A key missing from the YAML means what it means to `mlx_lm lora`: its default (mlx_lm/lora.py CONFIG_DEFAULTS),
not farense's V2 default. Keys farense also knows (name, epochs, early_stopping, ...) may be added to the YAML.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from farensed.errors import SpecError
from farensed.i18n import N_, _
from farensed.spec.decode import check_bounds, decode_yaml, read_spec_bytes
from farensed.spec.jobspec import JobSpec
from farensed.terminal import excerpt, safe

# mlx_lm/lora.py CONFIG_DEFAULTS (mlx-lm 0.32) for the keys farense maps; tests check them against mlx-lm's own
MLX_DEFAULTS = {
    "fine_tune_type": "lora",
    "optimizer": "adam",
    "seed": 0,
    "num_layers": 16,
    "batch_size": 4,
    "iters": 1000,
    "val_batches": 25,
    "learning_rate": 1e-5,
    "steps_per_eval": 200,
    "save_every": 100,
    "test_batches": 500,
    "max_seq_length": 2048,
    "grad_checkpoint": False,
    "grad_accumulation_steps": 1,
    "clear_cache_threshold": 0,
    "lora_parameters": {"rank": 8, "dropout": 0.0, "scale": 20.0},
    "mask_prompt": False,
}

RENAMED = {"steps_per_eval": "eval_every", "grad_accumulation_steps": "grad_accumulation"}
SAME = (
    "model fine_tune_type optimizer optimizer_config seed batch_size iters val_batches learning_rate save_every "
    "test_batches max_seq_length grad_checkpoint clear_cache_threshold lr_schedule mask_prompt resume_adapter_file "
    "report_to project_name"
).split()
# keys whose mlx-lm meaning farense already covers, or that only shape mlx-lm's own console/launch
ACCEPTED = ("train", "test", "data", "num_layers", "lora_parameters", "adapter_path", "steps_per_report", "config")
# key -> the only values farense can honour (mlx-lm's defaults), and why
ONLY = {
    "trust_remote_code": ((False,), N_("o farense não executa código do repositório do modelo")),
    "training_mode": (("normal",), N_("só o treino supervisionado normal (não DPO/ORPO)")),
}
LORA_KEYS = ("rank", "scale", "alpha", "dropout", "keys")


def is_yaml(path: Path) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def read_yaml(path: Path) -> Any:
    """Decode a YAML file (farensed.spec.decode: bounded, one line per problem with its line and column)."""
    path = Path(path)
    return decode_yaml(read_spec_bytes(path), str(path))


def _lora(config: dict, label: str) -> dict:
    params = config.get("lora_parameters", MLX_DEFAULTS["lora_parameters"])
    if not isinstance(params, dict):
        raise SpecError(
            _("{label}: lora_parameters deve ser um objeto {{rank, scale, dropout, keys}}").format(label=label)
        )
    for key in params:
        if key not in LORA_KEYS:
            raise _unknown(key, list(LORA_KEYS), f"{label}: lora_parameters")
    lora = {k: v for k, v in MLX_DEFAULTS["lora_parameters"].items() if k != "scale" or "alpha" not in params}
    lora.update({k: v for k, v in params.items() if v is not None})
    lora["layers"] = config.get("num_layers", MLX_DEFAULTS["num_layers"])
    return lora


def _data(config: dict, label: str) -> dict:
    folder = config.get("data")
    if not isinstance(folder, str) or not folder:
        raise SpecError(
            _("{label}: data deve ser a pasta com train.jsonl, valid.jsonl e test.jsonl").format(label=label)
        )
    if "hf_dataset" in config:
        raise SpecError(_("{label}: hf_dataset não é suportado; use uma pasta local em 'data'").format(label=label))
    data = {"train": f"{folder.rstrip('/')}/train.jsonl", "valid": f"{folder.rstrip('/')}/valid.jsonl"}
    if config.get("test"):
        data["test"] = f"{folder.rstrip('/')}/test.jsonl"
    return data


def _unknown(key: str, known: list[str], where: str) -> SpecError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = " " + _("(quis dizer '{key}'?)").format(key=close[0]) if close else ""
    return SpecError(_("{where}: chave desconhecida '{key}'{hint}").format(where=where, key=safe(key, 40), hint=hint))


def to_spec(config: Any, label: str, default_name: str) -> dict:
    """Map an mlx-lm config onto an equivalent farense spec (a plain dict, before parse_spec checks it)."""
    if not isinstance(config, dict):
        raise SpecError(_("{label}: deve ser um mapa YAML de opções do mlx_lm lora").format(label=label))
    check_bounds(config, label)  # text keys, bounded values: what follows may compare and echo them
    farense_keys = [f for f in JobSpec.__dataclass_fields__ if f not in ("lora", "data")]
    known = sorted(set(SAME) | set(RENAMED) | set(ACCEPTED) | set(ONLY) | set(farense_keys) | {"hf_dataset"})
    for key, value in config.items():
        if key not in known:
            raise _unknown(key, known, label)
        if key in ONLY and value not in ONLY[key][0]:
            raise SpecError(
                _("{label}: {key}: {value} não é suportado ({why})").format(
                    label=label, key=key, value=excerpt(value), why=_(ONLY[key][1])
                )
            )
    if config.get("train") is False:
        raise SpecError(
            _("{label}: train: false (só teste) não é suportado; um job do farense treina").format(label=label)
        )
    spec: dict[str, Any] = {"name": config.get("name") or _name(config, default_name)}
    for key in SAME:
        value = config.get(key, MLX_DEFAULTS.get(key))
        if value is not None:
            spec[key] = value
    for src, dst in RENAMED.items():
        spec[dst] = config.get(src, MLX_DEFAULTS[src])
    if "epochs" in config:
        spec.pop("iters")  # a farense key added to the YAML replaces mlx-lm's default budget
    if isinstance(spec.get("optimizer_config"), dict):  # mlx-lm lists every optimizer, mostly empty
        spec["optimizer_config"] = {k: v for k, v in spec["optimizer_config"].items() if v} or None
        if spec["optimizer_config"] is None:
            del spec["optimizer_config"]
    spec["lora"] = _lora(config, label)
    spec["data"] = _data(config, label)
    # mlx_lm lora neither stops early nor runs a generation evaluation: the equivalent job does not either
    spec["early_stopping"] = False
    spec["evaluate"] = False
    for key in farense_keys:
        if key in config and key not in SAME:
            spec[key] = config[key]
    return spec


def _name(config: dict, default_name: str) -> str:
    """The job name: the YAML's `name`, else adapter_path's last folder, else the file's stem."""
    adapter_path = config.get("adapter_path")
    if isinstance(adapter_path, str) and adapter_path.strip("/") and adapter_path.strip("/") != "adapters":
        return Path(adapter_path.strip("/")).name
    return default_name


def config_to_spec(config: Any, path: Path) -> dict:
    """A decoded YAML config as the equivalent farense spec dict (the job's name defaults to the file's stem)."""
    path = Path(path)
    return to_spec(config, str(path), re.sub(r"[^A-Za-z0-9._-]", "-", path.stem)[:128] or "job")


def read_config(path: Path) -> dict:
    """A YAML config file as the equivalent farense spec dict."""
    return config_to_spec(read_yaml(path), path)
