"""farensectl model import-gguf / info: GGUF files (llama.cpp, Ollama) as mlx-lm model folders."""

from __future__ import annotations

from pathlib import Path

import click

from farensed.cli.app import cli, print_json
from farensed.i18n import _
from farensed.models.gguf_header import shown


@cli.group()
def model():
    """Models from GGUF files: inspect one, import it into an mlx-lm folder."""


def _number(value: float) -> str:
    return f"{value:.2e}" if value else "0"


def conversion_lines(table: dict, error: dict, sampled: bool) -> list[str]:
    """One line per GGUF tensor type (count → MLX form: exact, or its measured error), then the total."""
    lines = [_("Tensores → MLX:")]
    for type_name, row in table.items():
        head = f"  {type_name} ×{row['count']} → {row['to']}: "
        if row["exact"]:
            lines.append(head + _("exato"))
            continue
        lines.append(
            head
            + _("erro máx {max_abs}, RMS {rms} (relativo {rel_rms}), medido em {measured} de {values} valores").format(
                max_abs=_number(row["max_abs"]),
                rms=_number(row["rms"]),
                rel_rms=_number(row["rel_rms"]),
                measured=row["measured"],
                values=row["values"],
            )
        )
    total = _("Erro no total: máx {max_abs}, RMS {rms} sobre {values} pesos").format(
        max_abs=_number(error["max_abs"]), rms=_number(error["rms"]), values=error["values"]
    )
    if not error["max_abs"]:
        total = _("Erro no total: nenhum (todos os {values} pesos exatos)").format(values=error["values"])
    return lines + [total + (" " + _("(estimado numa amostra)") if sampled and error["max_abs"] else "")]


def _describe(summary: dict) -> str:
    return "\n".join(
        [
            _("Arquitetura: {architecture} ({name})").format(
                architecture=summary["architecture"], name=shown(summary.get("name") or "-")
            ),
            _("Camadas: {layers}, hidden {hidden}, cabeças {heads} (KV {kv_heads}), vocabulário {vocab}").format(
                layers=summary["layers"],
                hidden=summary["hidden_size"],
                heads=summary["heads"],
                kv_heads=summary["kv_heads"],
                vocab=summary["vocab_size"],
            ),
            *(conversion_lines(summary["conversions"], summary["error"], False) if "conversions" in summary else []),
            _("Tokenizer: {tokenizer}, chat template: {chat}").format(
                tokenizer=shown(summary["tokenizer"]), chat=_("sim") if summary["chat_template"] else _("não")
            ),
        ]
    )


@model.command("import-gguf")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option(
    "--compact",
    is_flag=True,
    help="float16 scales and biases everywhere (mlx-lm's usual): K-quant layers take 5 bits per weight instead "
    "of 6, and move by float16 rounding (measured and shown).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the import summary as one JSON document.")
def import_gguf(file, dest, compact, as_json):
    """Import FILE.gguf (llama, mistral, qwen2) into the mlx-lm model folder DEST.

    Quantized tensors stay quantized, exactly where MLX can hold the blocks:
    Q4_0/Q4_1/Q4_K as 4 bits, Q5_0/Q5_1/Q5_K as 5 bits, Q8_0 as 8 bits (group 32);
    Q6_K becomes 8 bits (its small error is measured and shown); F32/F16/BF16
    stay float. The tokenizer (byte-level BPE or SentencePiece) and the chat
    template come from the file's metadata. DEST is written atomically and must
    not exist (an import of the same file is kept). A spec whose `model` names a
    .gguf imports it by itself into FILE.gguf.mlx/.

    \b
    Example:
      farensectl model import-gguf mistral-7b-instruct-v0.2.Q4_K_M.gguf models/mistral-7b
      mlx_lm generate --model models/mistral-7b --prompt "Hello"
    """
    from farensed.engine.gguf import import_gguf as do_import
    from farensed.engine.runner import configure_environment

    configure_environment()
    log = (lambda _msg: None) if as_json else click.echo
    summary = do_import(Path(file), Path(dest), log=log, compact=compact)
    if as_json:
        print_json(summary)
    else:
        click.echo(_describe(summary))


@model.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the header summary as one JSON document.")
def info(file, as_json):
    """Read FILE.gguf's header and say whether farense can import it, and how.

    Every tensor's data range is checked against the file (a truncated
    download is refused); each tensor type is listed with what it becomes in
    MLX and its error, measured on a sample of the file's blocks. Exit code 2
    (with the reason) when farense cannot import it.

    \b
    Example:
      farensectl model info ~/.ollama/models/blobs/sha256-…
    """
    from farensed.models.gguf_header import read_header
    from farensed.models.gguf_quants import plan
    from farensed.models.gguf_support import check_supported

    gguf = read_header(Path(file))
    check_supported(gguf)
    table, error = plan(gguf)
    md = gguf.metadata
    doc = {
        "file": str(Path(gguf.path)),
        "version": gguf.version,
        "architecture": gguf.architecture,
        "name": md.get("general.name"),
        "layers": gguf.arch_key("block_count"),
        "tensor_types": gguf.type_counts(),
        "tokenizer": md.get("tokenizer.ggml.model"),
        "vocab_size": len(md["tokenizer.ggml.tokens"]),
        "chat_template": bool(md.get("tokenizer.chat_template")),
        "conversions": table,
        "error": error,
        "supported": True,
    }
    if as_json:
        print_json(doc)
        return
    click.echo(
        _("{file}: {architecture}, {layers} camadas, vocabulário {vocab} ({tokenizer}), chat template: {chat}").format(
            file=doc["file"],
            architecture=doc["architecture"],
            layers=doc["layers"],
            vocab=doc["vocab_size"],
            tokenizer=doc["tokenizer"],
            chat=_("sim") if doc["chat_template"] else _("não"),
        )
    )
    for line in conversion_lines(table, error, sampled=True):
        click.echo(line)
    click.echo(_("✅ Suportado: farensectl model import-gguf importa-o"))
