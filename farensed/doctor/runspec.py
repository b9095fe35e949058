"""The checks of one spec: the spec, model folder, tokenizer, data files, steps, and estimates from a similar run."""

from __future__ import annotations

from pathlib import Path

import orjson

from farensed.analysis.metrics import JSON_NAME, read_all
from farensed.doctor.check import FAIL, INFO, OK, WARN, Check, duration
from farensed.errors import SpecError
from farensed.filevalues import positive, whole
from farensed.i18n import _, ngettext
from farensed.models.hub import resolve_model
from farensed.spec.datacheck import check_data_file, check_model_dir, file_format
from farensed.spec.jobspec import JobSpec, parse_spec
from farensed.spec.load import check_inputs, read_spec_file
from farensed.spec.modelcheck import MAX_CONFIG_BYTES, MissingTokenizer, has_chat_template
from farensed.storage.atomic import read_json
from farensed.storage.regular import read_regular
from farensed.storage.workspace import Workspace
from farensed.terminal import safe
from farensed.units import size as gb

STATE_NAME = "training_state.json"


def _json(path: Path) -> dict:
    try:  # a regular file only, bounded: a FIFO planted in a model or run folder never blocks the doctor
        data = orjson.loads(read_regular(path, MAX_CONFIG_BYTES))
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def weights_bytes(model: Path) -> int:
    """The weights' size on disk: a .gguf file's own, or a model folder's safetensors."""
    try:
        if model.is_file():
            return model.stat().st_size
        return sum(p.stat().st_size for p in model.glob("*.safetensors"))
    except OSError:  # a file gone between two looks: the size is advice, never a traceback
        return 0


def describe_model(model: Path) -> tuple[str, dict]:
    """'mistral, 4 bits, 32 camadas, 3.8 GB de pesos' and the same as data."""
    config = _json(model / "config.json")
    quant = config.get("quantization") or config.get("quantization_config") or {}
    quant = quant if isinstance(quant, dict) else {}
    model_type = config.get("model_type")
    data = {
        "path": str(model),
        "model_type": model_type if isinstance(model_type, str) else None,
        "bits": whole(quant.get("bits"), 64),
        "layers": whole(config.get("num_hidden_layers"), 100_000),
        "weights_bytes": weights_bytes(model),
    }
    kind = safe(data["model_type"], 40) if data["model_type"] else "?"
    parts = [kind, f"{data['bits']} bits" if data["bits"] else _("sem quantização")]
    if data["layers"]:
        parts.append(ngettext("{count} camada", "{count} camadas", data["layers"]).format(count=data["layers"]))
    parts.append(_("{size} de pesos").format(size=gb(data["weights_bytes"])))
    return f"{model}: {', '.join(parts)}", data


def _check_gguf(path: Path, formats: set[str]) -> Check:
    """A .gguf model: what its header says, and whether its import (<file>.gguf.mlx/) already exists."""
    from farensed.models.gguf_support import check_chat_template, check_gguf_file

    try:
        info = check_gguf_file(path, "model")
        check_chat_template(info, formats, "model")
    except SpecError as exc:
        fix = _("farensectl model info {file} diz o que falta").format(file=path)
        return Check("model", FAIL, str(exc), fix)
    imported = path.with_name(path.name + ".mlx")
    when = _("importado em {folder}") if imported.is_dir() else _("importado na primeira execução para {folder}")
    detail = _("GGUF {architecture} ({file}); {when}").format(
        architecture=info.architecture, file=path.name, when=when.format(folder=imported.name)
    )
    return Check("model", OK, detail, data={"gguf": str(path)})


def check_model(ws: Workspace, spec: JobSpec, formats: set[str]) -> list[Check]:
    """The model line and the tokenizer line (check_model_dir decides what is missing)."""
    from farensed.models.hub import hub_id, resolve_model

    try:
        model = resolve_model(spec.model, ws)  # a folder, or a Hub id's snapshot in the HF cache
    except SpecError as exc:
        fix = _("farensectl submit/run descarrega-o para a cache do Hugging Face ({repo})").format(
            repo=hub_id(spec.model, ws)
        )
        return [Check("model", WARN, str(exc), fix)]
    if model.suffix.lower() == ".gguf":
        return [_check_gguf(model, formats)]
    try:
        check_model_dir(model, "model")
    except MissingTokenizer as exc:
        text, data = describe_model(model)
        fix = _("copie tokenizer.json (ou tokenizer.model) do modelo original para {model}").format(model=model)
        return [Check("model", OK, text, data=data), Check("tokenizer", FAIL, str(exc), fix)]
    except SpecError as exc:
        fix = _(
            "coloque o modelo em {model} (config.json, *.safetensors, tokenizer) ou corrija 'model' na spec"
        ).format(model=model)
        return [Check("model", FAIL, str(exc), fix)]
    text, data = describe_model(model)
    found = next((name for name in ("tokenizer.json", "tokenizer.model") if (model / name).is_file()), "tokenizer")
    chat = has_chat_template(model)
    tokenizer = Check(
        "tokenizer",
        OK,
        (_("{found}, com chat_template") if chat else _("{found}, sem chat_template")).format(found=found),
        data={"chat_template": chat},
    )
    if "messages" in formats and not chat:
        tokenizer.status = FAIL  # submit refuses it too: mlx-lm cannot apply 'messages' without a template
        tokenizer.detail += _(": os exemplos 'messages' precisam de um chat_template")
        tokenizer.fix = _("use o modelo -Instruct (traz o template) ou converta os dados para prompt/completion")
    return [Check("model", OK, text, data=data), tokenizer]


def check_data(ws: Workspace, spec: JobSpec) -> tuple[list[Check], dict[str, int], set[str]]:
    """One line per data file: examples and format; the counts and formats found."""
    checks, counts, formats = [], {}, set()
    files = {"train": spec.data.train, "valid": spec.data.valid, "test": spec.data.test}
    for key, rel in files.items():
        if rel is None:
            continue
        path = ws.resolve(rel)
        try:
            counts[key] = check_data_file(path, f"data.{key}")
            fmt = file_format(path)
        except SpecError as exc:
            fix = (
                _("coloque o ficheiro em {path} ou corrija data.{key} na spec").format(path=path, key=key)
                if not path.is_file()
                else _("corrija a linha indicada (formatos: messages, prompt/completion, text)")
            )
            checks.append(Check(f"data.{key}", FAIL, str(exc), fix))
            continue
        formats.add(fmt)
        checks.append(
            Check(
                f"data.{key}",
                OK,
                _("{path}: {examples}, formato {fmt}").format(
                    path=path,
                    examples=ngettext("{count} exemplo", "{count} exemplos", counts[key]).format(count=counts[key]),
                    fmt=fmt,
                ),
                data={"count": counts[key], "format": fmt},
            )
        )
    return checks, counts, formats


def total_steps(spec: JobSpec, n_train: int) -> int:
    """Steps of the whole run, as the trainer counts them: `iters`, else full batches per epoch × epochs."""
    return spec.iters or (n_train // spec.batch_size) * spec.epochs


def epochs_text(epochs: int) -> str:
    return ngettext("{count} época", "{count} épocas", epochs).format(count=epochs)


def check_steps(spec: JobSpec, counts: dict[str, int]) -> Check:
    per_epoch = counts["train"] // spec.batch_size
    total = total_steps(spec, counts["train"])
    if spec.iters:
        updates = -(-spec.iters // spec.grad_accumulation)
        validations = total // spec.eval_every
        text = _(
            "{per_epoch} steps por época; iters = {total} steps ({updates} atualizações do otimizador, {validations})"
        )
    else:
        updates = -(-per_epoch // spec.grad_accumulation) * spec.epochs
        validations = total // spec.eval_every
        text = _(
            "{per_epoch} steps por época × {epochs} = {total} steps ({updates} atualizações do otimizador, {validations})"
        )
    text = text.format(
        per_epoch=per_epoch,
        epochs=epochs_text(spec.epochs),
        total=total,
        updates=updates,
        validations=ngettext("{count} validação", "{count} validações", validations).format(count=validations),
    )
    if spec.pack:  # rows are packed at the start, from every example's tokens: fewer steps than counted here
        text += _("; com pack: true são menos (a run diz quantas linhas empacotadas ao arrancar)")
    return Check("steps", OK, text, data={"steps_per_epoch": per_epoch, "total_steps": total, "updates": updates})


def check_run_folder(ws: Workspace, spec: JobSpec) -> Check | None:
    state_path = ws.run_dir(spec.name) / STATE_NAME
    if not state_path.is_file():
        return None
    state = _json(state_path)
    step, total = whole(state.get("step")) or "?", whole(state.get("total_steps")) or "?"
    what = (
        _("terminou: submit/run acabam logo com os resultados")
        if state.get("finished") is True
        else _("submit/run retomam-na")
    )
    return Check(
        "run",
        INFO,
        _("{run_dir} já existe (step {step}/{total}) e {what}; recusam se a spec ou os dados mudaram").format(
            run_dir=ws.run_dir(spec.name), step=step, total=total, what=what
        ),
        _("--fresh recomeça (a pasta antiga é guardada)"),
    )


# ---- estimates from a similar run ---------------------------------------------------------------------------------
def _records(run_dir: Path) -> list[dict]:
    records = read_all(run_dir)
    if records:
        return records
    try:
        data = read_json(run_dir / JSON_NAME)
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def run_figures(run_dir: Path) -> dict | None:
    """Peak memory (GB) and seconds per step measured by a run, from its metrics records."""
    records = [r for r in _records(run_dir) if isinstance(r, dict)]
    timed = [
        (elapsed, step) for r in records if (elapsed := positive(r.get("elapsed_s"))) and (step := whole(r.get("step")))
    ]
    peaks = [peak for r in records if (peak := positive(r.get("peak_memory_gb")))]
    if not timed:
        return None
    elapsed, step = timed[-1]
    return {"run": str(run_dir), "peak_memory_gb": max(peaks) if peaks else None, "step_s": elapsed / step}


def _same_model(ws: Workspace, recorded, model: Path) -> bool:
    """The model a run's fingerprint names is this spec's (a hand-edited name that is no path is another)."""
    if not isinstance(recorded, str) or "\0" in recorded:
        return False
    try:
        return ws.resolve(recorded).resolve() == model
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
        return False


def similar_runs(ws: Workspace, spec: JobSpec) -> list[tuple[Path, dict]]:
    """Earlier runs with the same model and max_seq_length: same batch_size first, then the newest."""
    model = ws.resolve(spec.model).resolve()
    found = []
    for state_path in (ws.root / "checkpoints_qlora").glob(f"*/{STATE_NAME}"):
        fp = _json(state_path).get("fingerprint")
        if not isinstance(fp, dict) or fp.get("max_seq_length") != spec.max_seq_length:
            continue
        if bool(fp.get("pack")) != spec.pack:  # packed rows are other steps: their time and peak are not this run's
            continue
        if not _same_model(ws, fp.get("model"), model):
            continue
        fp = dict(fp, batch_size=whole(fp.get("batch_size"), 1024))  # scales the estimate: a number or unknown
        try:
            mtime = state_path.stat().st_mtime
        except OSError:
            continue
        found.append((fp["batch_size"] != spec.batch_size, -mtime, state_path.parent, fp))
    return [(run_dir, fp) for *_, run_dir, fp in sorted(found, key=lambda item: item[:2])]


def check_estimates(ws: Workspace, spec: JobSpec, counts: dict[str, int], probe: dict) -> list[Check]:
    """Memory per step and run time, scaled from the most similar earlier run; a note when there is none."""
    try:
        weights = weights_bytes(resolve_model(spec.model, ws))  # a Hub id: its snapshot in the HF cache
    except SpecError:
        weights = 0
    measured = ((run_dir, fp, run_figures(run_dir)) for run_dir, fp in similar_runs(ws, spec))
    run_dir, fp, figures = next((m for m in measured if m[2] is not None), (None, {}, None))
    if figures is None:
        text = _(
            "sem run anterior com este modelo e max_seq_length {max_seq_length}: a primeira run mede memória e tempo (os pesos ocupam {gb})"
        ).format(max_seq_length=spec.max_seq_length, gb=gb(weights))
        return [Check("estimate", INFO, text)]
    ratio = spec.batch_size / (fp.get("batch_size") or spec.batch_size)
    scaled = (
        ""
        if ratio == 1
        else _(", batch_size {batch_size} nessa run (escalado ×{ratio})").format(
            batch_size=fp["batch_size"], ratio=f"{ratio:g}"
        )
    )
    steps = total_steps(spec, counts["train"])
    seconds = figures["step_s"] * ratio * steps
    time_check = Check(
        "time",
        OK,
        _("≈ {duration} ({step_s:.2f} s/step medidos em {name}{scaled} × {steps} steps)").format(
            duration=duration(seconds), step_s=figures["step_s"], name=run_dir.name, scaled=scaled, steps=steps
        ),
        data={"seconds": seconds, **figures},
    )
    if figures["peak_memory_gb"] is None:
        return [time_check]
    weights_gb = weights / 1e9  # the weights do not grow with batch_size; activations roughly do
    peak_gb = weights_gb + max(figures["peak_memory_gb"] - weights_gb, 0.0) * ratio
    text = _("≈ {gb} por step (pico medido em {name}{scaled})").format(
        gb=gb(peak_gb * 1e9), name=run_dir.name, scaled=scaled
    )
    memory_check = Check("memory_per_step", OK, text, data={"peak_memory_gb": peak_gb})
    limit = probe.get("info", {}).get("max_recommended_working_set_size")
    if limit and peak_gb * 1e9 > limit:
        memory_check.status = WARN
        memory_check.detail += _(": mais que os {memory} recomendados para a GPU").format(memory=gb(limit))
        memory_check.fix = _("reduza batch_size ou max_seq_length (e aumente grad_accumulation)")
    return [memory_check, time_check]


def spec_checks(ws: Workspace, spec_path: Path, probe: dict) -> list[Check]:
    """The spec first; then its model, tokenizer and data; then steps and estimates when everything is there."""
    label = str(spec_path)
    try:
        spec = parse_spec(read_spec_file(spec_path), label)
    except SpecError as exc:
        return [Check("spec", FAIL, str(exc), _("corrija a spec (farensectl submit valida o mesmo)"))]
    text = _("{spec_path}: '{name}', {epochs}, batch_size {batch_size}, max_seq_length {max_seq_length}").format(
        spec_path=spec_path,
        name=spec.name,
        epochs=epochs_text(spec.epochs),
        batch_size=spec.batch_size,
        max_seq_length=spec.max_seq_length,
    )
    data_lines, counts, formats = check_data(ws, spec)
    checks = [Check("spec", OK, text), *check_model(ws, spec, formats), *data_lines]
    if any(c.status == FAIL for c in checks):
        return checks
    try:
        check_inputs(spec, ws, label)  # the cross-checks submit makes (e.g. enough examples for one batch)
    except SpecError as exc:
        return [*checks, Check("steps", FAIL, str(exc), _("reduza batch_size ou junte exemplos"))]
    if spec.distributed:  # the hostfile and the batch split, as submit checks them
        from farensed.spec.hosts import check_batch_size, world_size

        try:
            check_batch_size(spec, world_size(spec, ws), label)
        except SpecError as exc:
            return [*checks, Check("distributed", FAIL, str(exc), _("corrija distributed na spec ou o hostfile"))]
    checks.append(check_steps(spec, counts))
    if (run := check_run_folder(ws, spec)) is not None:
        checks.append(run)
    if (memory := check_memory(ws, spec, probe)) is not None:
        checks.append(memory)
    return checks + check_estimates(ws, spec, counts, probe)


def check_memory(ws: Workspace, spec: JobSpec, probe: dict) -> Check | None:
    """The memory plan of a step (doctor/memcheck.py), for a model folder (a .gguf once imported)."""
    from farensed.doctor.memcheck import check_memory_plan
    from farensed.models.hub import resolve_model
    from farensed.spec.hosts import hosts_of
    from farensed.spec.modelcheck import check_model_folder

    try:
        model = resolve_model(spec.model, ws)
    except SpecError:
        return None
    if model.suffix.lower() == ".gguf":
        model = model.with_name(model.name + ".mlx")  # its import; absent before the first run
        try:  # checked as the model line checks a folder: a FIFO or a broken file there never blocks the plan
            check_model_folder(model, "model")
        except SpecError:  # absent, partial or stale: the run imports it again
            return None
    try:
        world = len(hosts_of(spec, ws)) if spec.distributed else 1
    except SpecError:  # an unreadable hostfile is the distributed check's line; plan one rank's share of nothing
        world = 1
    return check_memory_plan(spec, model, ws.resolve(spec.data.train), probe, world)
