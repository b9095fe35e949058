"""The adapter files mlx-lm reads: adapters.safetensors and adapter_config.json, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

from farensed.storage.atomic import atomic_write_json, atomic_write_with


def adapter_config(spec, model_path: Path) -> dict:
    """mlx-lm's adapter_config.json, so `mlx_lm generate --adapter-path` loads the adapters."""
    lora_parameters = {"rank": spec.lora.rank, "scale": spec.lora.scale, "dropout": spec.lora.dropout}
    if spec.lora.keys:
        lora_parameters["keys"] = spec.lora.keys
    return {
        "fine_tune_type": spec.fine_tune_type,
        "model": str(model_path),
        "num_layers": spec.lora.layers,
        "lora_parameters": lora_parameters,
        "farense": {"name": spec.name, "alpha": spec.lora.alpha},
    }


def save_adapters(folder: Path, weights: dict, config: dict) -> None:
    """adapters.safetensors + adapter_config.json, each written atomically."""
    import mlx.core as mx

    def write(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + ".safetensors")  # mx appends the suffix otherwise
        mx.save_safetensors(str(named), weights)
        os.replace(named, tmp)

    atomic_write_with(folder / "adapters.safetensors", write)
    atomic_write_json(folder / "adapter_config.json", config)
