"""The seed's console messages (Portuguese, same wording), in one place."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from farensed.analysis.gap import icon

LINE = "=" * 80
THIN = "─" * 76


def say(msg: str = "") -> None:
    """Print above a live progress bar, flushed (the daemon's log is a file)."""
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def banner(spec) -> str:
    es = spec.early_stopping
    stop = f"Patience={es.patience}, Min Delta={es.min_delta:g}" if es else "desativado"
    return "\n".join(
        [
            LINE,
            f"CONFIGURATION - {spec.name}",
            LINE,
            f"LoRA Rank: {spec.lora.rank}",
            f"LoRA Alpha: {spec.lora.alpha:g} (camadas: {spec.lora.layers})"
            if spec.lora.alpha is not None
            else f"LoRA Scale: {spec.lora.scale:g} (camadas: {spec.lora.layers})",
            f"Dropout: {spec.lora.dropout:g}",
            f"Batch Size: {spec.batch_size} (acumulação de gradientes: {spec.grad_accumulation})",
            f"Learning Rate: {spec.learning_rate:g}",
            f"Épocas: {spec.epochs}" if not getattr(spec, "iters", None) else f"Iterações: {spec.iters}",
            f"Early Stopping: {stop}",
            LINE,
        ]
    )


def heading(title: str) -> str:
    return "\n".join(["", LINE, title, LINE])


def epoch_header(epoch: int, epochs: int) -> str:
    return f"\nÉpoca {epoch + 1}/{epochs}\n{THIN}"


def validation_block(step: int, val_loss: float, gap: float, band: str, improved: bool, stopper) -> str:
    lines = [f"\n✅ Val Loss (step {step}): {val_loss:.4f}", "", "Análise de Validação:"]
    if improved:
        lines.append(f"  ✅ Melhor Val Loss: {val_loss:.4f}")
    if band == "MODERADO":
        lines.append(f"  {icon(band)}  Overfitting moderado (gap={gap:.4f})")
    elif band == "CRÍTICO":
        lines.append(f"  {icon(band)} Overfitting crítico (gap={gap:.4f})")
    if stopper.patience is not None and not improved:  # an improvement is said once, by the line above
        lines.append(f"  ℹ  Sem melhoria ({stopper.wait}/{stopper.patience})")
    return "\n".join(lines)


def early_stop_block(stopper) -> str:
    return "\n".join(
        [
            "",
            "  EARLY STOPPING ATIVADO!",
            f"   Sem melhoria por {stopper.patience} validações consecutivas",
            f"   Melhor modelo: Época {stopper.best_epoch + 1}, Step {stopper.best_step}",
            f"   Melhor Val Loss: {stopper.best_val_loss:.4f}",
            "",
            "Treino terminado por Early Stopping",
        ]
    )


def restart_clock(bar) -> None:
    """Restart a progress bar's clock after this process's first step, which holds the JIT compile (honest ETA)."""
    done = bar.n
    bar.reset(total=bar.total)  # zero, clocks and rate averages restarted
    bar.n = bar.last_print_n = bar.initial = done
    bar.refresh()


def interrupted(signum: int) -> str:
    """How a signal-stopped run says the way back: the same command, or (from the queue) what the child adds."""
    if os.environ.get("FARENSE_JOB_ID"):
        return f"\n⏸  Interrompido (sinal {signum}); checkpoint guardado."
    return f"\n⏸  Interrompido (sinal {signum}); retoma com o mesmo comando."
