"""The seed's console messages (Portuguese, same wording; English via farensed.i18n), in one place."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from farensed.analysis.gap import icon
from farensed.i18n import N_, _, ngettext
from farensed.signals import signal_name

LINE = "=" * 80
THIN = "─" * 76
LOADING_MODEL = N_("A carregar modelo: {model}")


def say(msg: str = "") -> None:
    """Print above a live progress bar, flushed (the daemon's log is a file)."""
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def banner(spec) -> str:
    es = spec.early_stopping
    stop = (
        _("Patience={patience}, Min Delta={min_delta:g}").format(patience=es.patience, min_delta=es.min_delta)
        if es
        else _("desativado")
    )
    return "\n".join(
        [
            LINE,
            f"CONFIGURATION - {spec.name}",
            LINE,
            f"LoRA Rank: {spec.lora.rank}",
            _("LoRA Alpha: {alpha:g} (camadas: {layers})").format(alpha=spec.lora.alpha, layers=spec.lora.layers)
            if spec.lora.alpha is not None
            else _("LoRA Scale: {scale:g} (camadas: {layers})").format(scale=spec.lora.scale, layers=spec.lora.layers),
            f"Dropout: {spec.lora.dropout:g}",
            _("Batch Size: {batch_size} (acumulação de gradientes: {grad_accumulation})").format(
                batch_size=spec.batch_size, grad_accumulation=spec.grad_accumulation
            ),
            f"Learning Rate: {spec.learning_rate:g}",
            _("Épocas: {epochs}").format(epochs=spec.epochs)
            if not getattr(spec, "iters", None)
            else _("Iterações: {iters}").format(iters=spec.iters),
            f"Early Stopping: {stop}",
            LINE,
        ]
    )


def heading(title: str) -> str:
    return "\n".join(["", LINE, title, LINE])


def epoch_header(epoch: int, epochs: int) -> str:
    return "\n" + _("Época {epoch}/{epochs}").format(epoch=epoch + 1, epochs=epochs) + f"\n{THIN}"


def validation_block(step: int, val_loss: float, gap: float, band: str, improved: bool, stopper) -> str:
    lines = [f"\n✅ Val Loss (step {step}): {val_loss:.4f}", "", _("Análise de Validação:")]
    if improved:
        lines.append("  " + _("✅ Melhor Val Loss: {val_loss:.4f}").format(val_loss=val_loss))
    if band == "MODERADO":
        lines.append("  " + _("{icon}  Overfitting moderado (gap={gap:.4f})").format(icon=icon(band), gap=gap))
    elif band == "CRÍTICO":
        lines.append("  " + _("{icon} Overfitting crítico (gap={gap:.4f})").format(icon=icon(band), gap=gap))
    if stopper.patience is not None and not improved:  # an improvement is said once, by the line above
        lines.append(
            "  " + _("ℹ  Sem melhoria ({wait}/{patience})").format(wait=stopper.wait, patience=stopper.patience)
        )
    return "\n".join(lines)


def early_stop_block(stopper) -> str:
    return "\n".join(
        [
            "",
            "  " + _("EARLY STOPPING ATIVADO!"),
            "   "
            + ngettext(
                "Sem melhoria por {patience} validação",
                "Sem melhoria por {patience} validações consecutivas",
                stopper.patience,
            ).format(patience=stopper.patience),
            "   "
            + _("Melhor modelo: Época {epoch}, Step {step}").format(
                epoch=stopper.best_epoch + 1, step=stopper.best_step
            ),
            "   " + _("Melhor Val Loss: {best_val_loss:.4f}").format(best_val_loss=stopper.best_val_loss),
            "",
            _("Treino terminado por Early Stopping"),
        ]
    )


def restart_clock(bar) -> None:
    """Restart a progress bar's clock after this process's first step, which holds the JIT compile (honest ETA)."""
    done = bar.n
    bar.reset(total=bar.total)  # zero, clocks and rate averages restarted
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()


def compiling(folder) -> str:
    """MLX's CPU back end is compiling kernels (seen in its cache folder): once per machine and shape."""
    return _(
        "⏳ O MLX está a compilar kernels para esta máquina (uma vez; ficam em {path}): o primeiro passo demora mais"
    ).format(path=folder)


def compiled(seconds: float) -> str:
    from farensed.engine.jit import seconds_text

    return _("✓ Kernels compilados; primeiro passo em {duration} (fora do ETA)").format(duration=seconds_text(seconds))


def interrupted(signum: int) -> str:
    """How a signal-stopped run says the way back: the same command, or (from the queue) what the child adds."""
    name = signal_name(signum)  # SIGTERM, not 15: what a person can look up
    if os.environ.get("FARENSE_JOB_ID"):
        return "\n" + _("⏸  Interrompido (sinal {signum}); checkpoint guardado.").format(signum=name)
    return "\n" + _("⏸  Interrompido (sinal {signum}); retoma com o mesmo comando.").format(signum=name)
