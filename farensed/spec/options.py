"""Validation of the spec keys of mlx_lm lora's options (value sets, mlx-lm's schedule and optimizer forms)."""

from __future__ import annotations

import difflib
from typing import Any

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.terminal import excerpt, safe

FINE_TUNE_TYPES = ("lora", "dora", "full")
OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor", "muon")
SCHEDULES = ("cosine_decay", "exponential_decay", "linear_schedule", "step_decay")  # mlx.optimizers.schedulers


def unknown_key(key: str, known: list[str], where: str) -> SpecError:
    """One line naming an unknown key and the nearest valid one."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = (
        " " + _("(quis dizer '{key}'?)").format(key=close[0])
        if close
        else " "
        + _("(chaves válidas: {keys})").format(keys=safe(", ".join(known), 300))  # one short line, however many
    )
    return SpecError(_("{where}: chave desconhecida '{key}'{hint}").format(where=where, key=safe(key, 40), hint=hint))


def _choice(options: tuple):
    def check(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in options:
            close = difflib.get_close_matches(value, options, n=1, cutoff=0.5) if isinstance(value, str) else []
            hint = " " + _("(quis dizer '{key}'?)").format(key=close[0]) if close else ""
            raise SpecError(
                _("{where}: '{value}' desconhecido{hint}; valores válidos: {items}").format(
                    where=where,
                    value=safe(value, 80) if isinstance(value, str) else excerpt(value),
                    hint=hint,
                    items=", ".join(options),
                )
            )
        return value

    return check


def _check_optimizer_config(value: Any, where: str) -> dict:
    """mlx-lm's form: {optimizer name: {argument: value}}; only the chosen optimizer's entry is used."""
    if not isinstance(value, dict):
        raise SpecError(
            _("{where}: deve ser um objeto {{otimizador: {{argumento: valor}}}}, como no mlx-lm").format(where=where)
        )
    for name, args in value.items():
        _choice(OPTIMIZERS)(name, where)
        if not isinstance(args, dict):
            raise SpecError(_("{where}.{name}: deve ser um objeto {{argumento: valor}}").format(where=where, name=name))
    return value


def _check_schedule(value: Any, where: str) -> dict:
    """mlx-lm's lr_schedule: name, arguments (passed to the scheduler), warmup, warmup_init."""
    if not isinstance(value, dict):
        raise SpecError(_("{where}: deve ser um objeto {{name, arguments, warmup, warmup_init}}").format(where=where))
    known = ["name", "arguments", "warmup", "warmup_init"]
    for key in value:
        if key not in known:
            raise unknown_key(key, known, where)
    if "name" not in value:
        raise SpecError(_("{where}: falta 'name' ({items})").format(where=where, items=", ".join(SCHEDULES)))
    _choice(SCHEDULES)(value["name"], f"{where}.name")
    args = value.get("arguments")
    if not isinstance(args, list) or not args or not all(_is_number(a) for a in args):
        raise SpecError(
            _("{where}: 'arguments' deve ser uma lista não vazia de números (ex.: [1e-5, 1000, 1e-7])").format(
                where=where
            )
        )
    warmup = value.get("warmup", 0)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise SpecError(_("{where}.warmup: deve ser inteiro ≥ 0").format(where=where))
    if not _is_number(value.get("warmup_init", 0.0)):
        raise SpecError(_("{where}.warmup_init: deve ser número").format(where=where))
    return value


def _check_fuse(value: Any, where: str) -> Any:
    """false, true, or {"dequantize": bool, "export_gguf": bool}."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict):
        raise SpecError(
            _('{where}: deve ser true/false ou {{"dequantize": ..., "export_gguf": ...}}').format(where=where)
        )
    for key, item in value.items():
        if key not in ("dequantize", "export_gguf"):
            raise unknown_key(key, ["dequantize", "export_gguf"], where)
        if not isinstance(item, bool):
            raise SpecError(_("{where}.{key}: deve ser true/false").format(where=where, key=key))
    return value


def _check_keys(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(k, str) and k for k in value):
        raise SpecError(
            _('{where}: deve ser uma lista de nomes de módulos (ex.: ["self_attn.q_proj"])').format(where=where)
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


REPORT_TO = ("wandb",)  # what engine/reporting.py sends to (mlx-lm's reporting callbacks)


def report_destinations(report_to: str | None) -> list[str]:
    """mlx-lm's form: a comma-separated list, case and spaces ignored."""
    return [item.strip().lower() for item in (report_to or "").split(",") if item.strip()]


def _check_report_to(value: Any, where: str) -> str:
    """mlx-lm's form: a name or a comma-separated list of names."""
    if not isinstance(value, str):
        raise SpecError(_("{where}: deve ser texto, como 'wandb'").format(where=where))
    for name in report_destinations(value):
        _choice(REPORT_TO)(name, where)
    return value


def check_report_installed(report_to: str | None, label: str) -> None:
    """A destination whose package is missing is one line with the fix (at submit, at ingestion, before training)."""
    import importlib.util

    for name in report_destinations(report_to):
        if importlib.util.find_spec(name) is None:
            raise SpecError(
                _("{label}: report_to: {name} não está instalado (pip install 'farense[{name}]')").format(
                    label=label, name=name
                )
            )


# config.json model_types mlx-lm builds as its LlamaModel (engine/packing.py)
PACKED_ARCHITECTURES = ("llama", "mistral")


def check_pack_architecture(pack: bool, config: dict, label: str) -> None:
    """`pack: true` keeps each example exact only on mlx-lm's llama models: say so at submit, not at the first step."""
    model_type = config.get("model_type")
    if pack and model_type not in PACKED_ARCHITECTURES:
        raise SpecError(
            _("{label}: pack: a arquitetura {model_type} não é suportada (só {supported}); use pack: false").format(
                label=label, model_type=excerpt(str(model_type)), supported=", ".join(PACKED_ARCHITECTURES)
            )
        )


CUSTOM = {
    "report_to": _check_report_to,
    "fine_tune_type": _choice(FINE_TUNE_TYPES),
    "optimizer": _choice(OPTIMIZERS),
    "optimizer_config": _check_optimizer_config,
    "lr_schedule": _check_schedule,
    "fuse": _check_fuse,
    "lora.keys": _check_keys,
}


def exclusive_keys(raw: Any, label: str) -> None:
    """Pairs of keys of which a spec gives at most one (the same budget or scale said twice)."""
    if not isinstance(raw, dict):
        return
    for section, a, b in (("", "epochs", "iters"), ("lora.", "alpha", "scale")):
        obj = raw.get(section.rstrip("."), {}) if section else raw
        if isinstance(obj, dict) and obj.get(a) is not None and obj.get(b) is not None:
            raise SpecError(
                _("{label}: dê só uma de '{section}{a}' e '{section}{b}', não as duas").format(
                    label=label, section=section, a=a, b=b
                )
            )
