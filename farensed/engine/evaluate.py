"""Evaluation of a job's best adapters against the base model: loss/perplexity, greedy answers, token F1, EM.

Resumable: each finished example is appended (fsync) to evaluation_progress.jsonl; a killed evaluation
continues from the first example that is not there. Deterministic: greedy decoding, fixed order.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.analysis.textmetrics import aggregate, exact_match, token_f1
from farensed.errors import FarenseError, SpecError
from farensed.i18n import _
from farensed.models.hub import resolve_model
from farensed.spec.modelcheck import check_safetensors
from farensed.storage.atomic import append_line, atomic_write_bytes, atomic_write_json, move_aside, read_json_dict
from farensed.storage.digest import sha256_file
from farensed.storage.jsonl import parse_lines, read_jsonl
from farensed.storage.regular import read_regular

REPORT, SUMMARY, PROGRESS = "evaluation_report.json", "evaluation_summary.csv", "evaluation_progress.jsonl"
MODELS = ("base", "adapters")
MAX_PROGRESS_BYTES = 512 * 1024 * 1024  # a test set's answers: far less; a file past it is not ours


@dataclass
class Example:
    index: int
    prompt: list[dict]  # chat messages before the answer
    reference: str


def load_examples(path: Path) -> list[Example]:
    """The last assistant turn of each chat example (or the completion) is the reference."""
    out = []
    for i, record in enumerate(read_jsonl(path)):
        where = f"{path}:{i + 1}"
        if "messages" in record:
            msgs = record["messages"]
            if msgs[-1].get("role") != "assistant":
                raise SpecError(
                    _("{where}: sem referência (a última mensagem não é do 'assistant')").format(where=where)
                )
            out.append(Example(i, msgs[:-1], msgs[-1]["content"]))
        elif "prompt" in record and "completion" in record:
            out.append(Example(i, [{"role": "user", "content": record["prompt"]}], record["completion"]))
        else:
            raise SpecError(
                _(
                    "{where}: formato 'text' não tem referências para avaliar; use 'messages' ou prompt/completion"
                ).format(where=where)
            )
    if not out:
        raise SpecError(_("{path}: ficheiro de avaliação vazio").format(path=path))
    return out


def honesty_note(split: str, path: Path) -> str:
    """What the evaluation's numbers mean: held-out test data, or the validation set that chose the adapters."""
    if split == "test":
        return _("Avaliação em data.test ({name}): exemplos que o treino e a escolha dos adapters não viram.").format(
            name=path.name
        )
    return _(
        "⚠  Sem data.test: avalia-se no conjunto de validação ({name}), que também escolheu os adapters (melhor val_loss); os números são otimistas. Junte data.test à spec para uma avaliação honesta."
    ).format(name=path.name)


class EvaluationInterrupted(Exception):
    """A stop was requested during evaluation; its progress file lets the next run resume it."""


class Evaluator:
    """Scores base and adapters on the same examples; writes the report, CSV and PNGs into the run folder."""

    def __init__(
        self,
        spec,
        ws,
        batch_size: int = 8,
        batched: bool = True,
        log=print,
        run_dir: Path | None = None,
        should_stop=None,
    ):
        self.spec, self.ws, self.log = spec, ws, log
        self.run_dir = Path(run_dir) if run_dir else ws.run_dir(spec.name)
        self.adapters = self.run_dir / "adapters"
        self.split = "test" if spec.data.test else "valid"  # valid: it also chose the adapters (optimistic)
        self.data_path = ws.resolve(spec.data.test or spec.data.valid)
        self.batch_size, self.batched = batch_size, batched
        self.should_stop = should_stop  # a training process's stop request (SIGTERM): checked between chunks
        if not (self.adapters / "adapters.safetensors").is_file():
            raise FarenseError(
                _("{run_dir}: job sem adapters para avaliar (treine-o primeiro)").format(run_dir=self.run_dir)
            )
        self.examples = load_examples(self.data_path)  # bad input fails here, before any output
        check_safetensors(self.adapters / "adapters.safetensors", "adapters")  # damaged: one line, before any model

    def _fingerprint(self) -> dict:
        return {
            "adapters": sha256_file(self.adapters / "adapters.safetensors"),
            "data": sha256_file(self.data_path),
            "batched": self.batched,
        }

    def _done(self, fingerprint: dict) -> dict[tuple[str, int], dict]:
        path = self.run_dir / PROGRESS
        try:  # a FIFO or a folder in its place is no progress, never a hang
            lines = read_regular(path, MAX_PROGRESS_BYTES).splitlines()
        except FileNotFoundError:
            lines = []
        except OSError:
            lines = [b"{}"]  # unreadable: moved aside below, a fresh one started
        first = parse_lines(lines[:1])
        if not first or first[0].get("fingerprint") != fingerprint:
            if path.exists():
                move_aside(path)  # adapters or data changed: those results no longer apply
            append_line(path, orjson.dumps({"fingerprint": fingerprint}))
            return {}
        # a killed evaluation may leave a torn last line: parse_lines skips it; a line edited by hand is left out
        return {
            (r["model"], r["index"]): r
            for r in parse_lines(lines[1:])
            if r.get("model") in MODELS and type(r.get("index")) is int
        }

    def run(self, force: bool = False) -> dict:
        examples = self.examples
        fingerprint = self._fingerprint()
        if force and (self.run_dir / PROGRESS).exists():
            self.log(
                _("--force: avaliação anterior guardada em {name}").format(
                    name=move_aside(self.run_dir / PROGRESS).name
                )
            )
        done = self._done(fingerprint)
        self.log(honesty_note(self.split, self.data_path))
        todo = sum(1 for tag in MODELS for e in examples if (tag, e.index) not in done)
        if not todo:
            self.log(_("ℹ  Estes adapters já foram avaliados com estes dados: resultados reutilizados (--force refaz)"))
            return self._reuse(examples, done, fingerprint)  # nothing to load: no model, no progress bars
        if done:
            self.log(
                _("↻ A retomar a avaliação: {n_done} de {total} já feitas").format(
                    n_done=len(done), total=2 * len(examples)
                )
            )
        from mlx_lm import load
        from mlx_lm.tuner.utils import load_adapters

        from farensed.engine.gguf import model_path  # a .gguf: its import <file>.mlx/

        model, tokenizer = load(str(model_path(resolve_model(self.spec.model, self.ws), log=self.log)))
        for tag in MODELS:
            if tag == "adapters":
                load_adapters(model, str(self.adapters))
            model.eval()
            self._score(tag, model, tokenizer, [e for e in examples if (tag, e.index) not in done], done)
        report = self._report(examples, done, fingerprint)
        self._write(report)
        return report

    def _score(self, tag, model, tokenizer, todo: list[Example], done: dict) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            desc=_("Avaliação ({tag})").format(tag=tag),
            unit="ex",
            mininterval=0.5 if os.isatty(1) else 10,
        )
        step = self.batch_size if self.batched else 1
        for start in range(0, len(todo), step):
            if self.should_stop is not None and self.should_stop():
                bar.close()
                raise EvaluationInterrupted  # what is done is in evaluation_progress.jsonl: the next run goes on
            chunk = todo[start : start + step]
            predictions = self._generate(model, tokenizer, chunk)
            for example, prediction in zip(chunk, predictions):
                rec = {
                    "model": tag,
                    "index": example.index,
                    "prediction": prediction,
                    "loss": self._loss(model, tokenizer, example),
                    "f1": token_f1(prediction, example.reference),
                    "em": exact_match(prediction, example.reference),
                }
                append_line(self.run_dir / PROGRESS, orjson.dumps(rec))
                done[(tag, example.index)] = rec
            bar.update(len(chunk))
        bar.close()

    def _prompt_tokens(self, tokenizer, example: Example) -> list[int]:
        return list(tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True))

    def _generate(self, model, tokenizer, chunk: list[Example]) -> list[str]:
        from mlx_lm.generate import batch_generate, generate

        prompts = [self._prompt_tokens(tokenizer, e) for e in chunk]
        limits = [min(len(tokenizer.encode(e.reference)) + 8, 256) for e in chunk]
        if self.batched and len(chunk) > 1:
            return [t.strip() for t in batch_generate(model, tokenizer, prompts, max_tokens=limits).texts]
        return [generate(model, tokenizer, prompt=p, max_tokens=m).strip() for p, m in zip(prompts, limits)]

    def _loss(self, model, tokenizer, example: Example) -> float:
        """Mean cross-entropy of the reference answer given the prompt (prompt tokens masked)."""
        import mlx.core as mx
        import mlx.nn as nn

        messages = example.prompt + [{"role": "assistant", "content": example.reference}]
        tokens = list(tokenizer.apply_chat_template(messages))
        offset = len(self._prompt_tokens(tokenizer, example))
        x = mx.array([tokens])
        logits = model(x[:, :-1])
        ce = nn.losses.cross_entropy(logits, x[:, 1:])[0]
        mask = mx.arange(1, len(tokens)) >= offset
        return (ce * mask).sum().item() / max(mask.sum().item(), 1)

    def _report(self, examples: list[Example], done: dict, fingerprint: dict) -> dict:
        report = {
            "config": {
                "name": self.spec.name,
                "model": self.spec.model,
                "adapters": str(self.adapters),
                "data": str(self.data_path),
                "examples": len(examples),
                "split": self.split,
                "selection_bias": self.split == "valid",
                "note": honesty_note(self.split, self.data_path),
                "decoding": "greedy",
                "normalisation": "lower-case, no accents, no punctuation, no articles (pt, en)",
                **fingerprint,
            }
        }
        for tag in MODELS:
            rows = [done[(tag, e.index)] for e in examples]
            f1, em, loss = ([r[k] for r in rows] for k in ("f1", "em", "loss"))
            agg = aggregate(f1)
            report[tag] = {
                "f1_mean": agg["mean"],
                "f1_median": agg["median"],
                "f1_p10": agg["p10"],
                "f1_p90": agg["p90"],
                "em_mean": sum(em) / len(em),
                "loss_mean": sum(loss) / len(loss),
                "perplexity": math.exp(sum(loss) / len(loss)),
                "examples": len(rows),
            }
        report["uplift"] = {k: report["adapters"][k] - report["base"][k] for k in report["base"] if k != "examples"}
        report["examples"] = [
            {
                "index": e.index,
                "prompt": e.prompt[-1]["content"],
                "reference": e.reference,
                **{tag: {k: done[(tag, e.index)][k] for k in ("prediction", "f1", "em", "loss")} for tag in MODELS},
            }
            for e in examples
        ]
        return report

    def _reuse(self, examples: list[Example], done: dict, fingerprint: dict) -> dict:
        """Every example is scored already: the report on disk when it is these results, else written from them."""
        report = read_json_dict(self.run_dir / REPORT)  # a FIFO in its place: None, never a hang
        config = report.get("config") if isinstance(report, dict) else None
        if not isinstance(config, dict) or any(config.get(k) != v for k, v in fingerprint.items()):
            report = self._report(examples, done, fingerprint)
            self._write(report)
        else:
            self._say(report)
        return report

    def _write(self, report: dict) -> None:
        atomic_write_json(self.run_dir / REPORT, report)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["metric", "adapters", "base", "uplift"])
        for k in report["uplift"]:
            writer.writerow([k] + [f"{report[tag][k]:.6f}" for tag in ("adapters", "base", "uplift")])
        atomic_write_bytes(self.run_dir / SUMMARY, buf.getvalue().encode())
        from farensed.analysis.plots import plot_evaluation

        plot_evaluation(report, self.run_dir)
        self._say(report)

    def _say(self, report: dict) -> None:
        a, b = report["adapters"], report["base"]
        self.log(
            "\n"
            + _(
                "Avaliação ({examples} exemplos): F1 {f1:.4f} (base {base_f1:.4f}), EM {em:.4f} (base {base_em:.4f}), perplexidade {perplexity:.2f} (base {base_perplexity:.2f})"
            ).format(
                examples=report["config"]["examples"],
                f1=a["f1_mean"],
                base_f1=b["f1_mean"],
                em=a["em_mean"],
                base_em=b["em_mean"],
                perplexity=a["perplexity"],
                base_perplexity=b["perplexity"],
            )
        )
        self.log(_("✓ Relatório: {path}").format(path=(self.run_dir / REPORT).relative_to(self.ws.root)))
