"""farensectl model import-gguf / info: GGUF files (llama.cpp, Ollama) as mlx-lm model folders."""

from __future__ import annotations

from pathlib import Path

import click

from farensed.cli.app import cli, print_json
from farensed.i18n import _


@cli.group()
def model():
    """Models from GGUF files: inspect one, import it into an mlx-lm folder."""


def _describe(summary: dict) -> str:
    types = ", ".join(f"{k}×{v}" for k, v in summary["tensor_types"].items())
    bits = summary.get("bits")
    quant = _("float (sem quantização)") if bits is None else _("{bits} bits, grupo 32").format(bits=bits)
    extra = ", ".join(f"{k}: {v} bits" for k, v in summary.get("bits_by_module", {}).items())
    return "\n".join(
        [
            _("Arquitetura: {architecture} ({name})").format(
                architecture=summary["architecture"], name=summary.get("name") or "-"
            ),
            _("Camadas: {layers}, hidden {hidden}, cabeças {heads} (KV {kv_heads}), vocabulário {vocab}").format(
                layers=summary["layers"],
                hidden=summary["hidden_size"],
                heads=summary["heads"],
                kv_heads=summary["kv_heads"],
                vocab=summary["vocab_size"],
            ),
            _("Tensores: {types}").format(types=types),
            _("Quantização MLX: {quant}").format(quant=quant) + (f" ({extra})" if extra else ""),
            _("Tokenizer: {tokenizer}, chat template: {chat}").format(
                tokenizer=summary["tokenizer"], chat=_("sim") if summary["chat_template"] else _("não")
            ),
        ]
    )


@model.command("import-gguf")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the import summary as one JSON document.")
def import_gguf(file, dest, as_json):
    """Import FILE.gguf (Llama family) into the mlx-lm model folder DEST.

    Q4_0/Q4_1/Q8_0 tensors stay quantized (per-module bits), F32/F16 stay float;
    the tokenizer and chat template come from the file's metadata. DEST is
    written atomically and must not exist (an import of the same file is kept).
    A spec whose `model` names a .gguf imports it by itself into FILE.gguf.mlx/.

    \b
    Example:
      farensectl model import-gguf SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2-135m
      mlx_lm generate --model models/smollm2-135m --prompt "Olá"
    """
    from farensed.engine.gguf import import_gguf as do_import
    from farensed.engine.runner import configure_environment

    configure_environment()
    summary = do_import(Path(file), Path(dest), log=(lambda _msg: None) if as_json else click.echo)
    if as_json:
        print_json(summary)
    else:
        click.echo(_describe(summary))


@model.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the header summary as one JSON document.")
def info(file, as_json):
    """Read FILE.gguf's header (no weights) and say whether farense can import it.

    Exit code 2 (with the reason) when it cannot.

    \b
    Example:
      farensectl model info SmolLM2-135M-Instruct.Q4_1.gguf
    """
    from farensed.models.gguf_header import check_supported, read_header

    gguf = read_header(Path(file))
    doc = {
        "file": str(Path(gguf.path)),
        "version": gguf.version,
        "architecture": gguf.architecture,
        "name": gguf.metadata.get("general.name"),
        "layers": gguf.arch_key("block_count"),
        "tensor_types": gguf.type_counts(),
        "tokenizer": gguf.metadata.get("tokenizer.ggml.model"),
    }
    check_supported(gguf)
    if as_json:
        print_json(dict(doc, supported=True))
    else:
        types = ", ".join(f"{k}×{v}" for k, v in doc["tensor_types"].items())
        click.echo(
            _("{file}: {architecture}, {layers} camadas, {types}").format(
                file=doc["file"], architecture=doc["architecture"], layers=doc["layers"], types=types
            )
        )
        click.echo(_("✅ Suportado: farensectl model import-gguf importa-o"))
