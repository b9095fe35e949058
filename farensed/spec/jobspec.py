"""The job spec: typed dataclasses with the seed's V2 defaults, and their validation (one SpecError line each)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any

from farensed.errors import SpecError
from farensed.i18n import N_, _
from farensed.spec.decode import check_bounds
from farensed.spec.options import CUSTOM, exclusive_keys, unknown_key
from farensed.terminal import excerpt, safe

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class LoraConfig:
    """LoRA adapters: rank, alpha or scale (scale = alpha / rank), dropout, last layers adapted, module keys."""

    rank: int = 6
    alpha: float | None = 16.0
    dropout: float = 0.08
    layers: int = 16
    scale: float | None = None  # mlx-lm's name; give exactly one of alpha / scale
    keys: list | None = None  # mlx-lm's lora_parameters.keys (e.g. ["self_attn.q_proj"]); all linear layers if null

    def __post_init__(self):
        if self.scale is None and self.alpha is not None:
            self.scale = self.alpha / self.rank


@dataclass
class DataConfig:
    """JSONL files in one of mlx-lm's formats (chat messages, prompt/completion, text)."""

    train: str
    valid: str
    test: str | None = None


@dataclass
class EarlyStoppingConfig:
    """Stop after `patience` validations without an improvement larger than `min_delta`."""

    patience: int = 5
    min_delta: float = 0.001


@dataclass
class SuccessConfig:
    """The seed's success criteria (farensed.analysis.success): checked at the end of a run and by `check`."""

    loss_drop: float | None = None
    val_improves: bool | None = None
    gap_max: float | None = None
    f1_min: float | None = None


@dataclass
class DistributedConfig:
    """Data-parallel training over several hosts with mlx.launch."""

    hosts: list = field(default_factory=list)
    backend: str = "ring"
    hostfile: str | None = None


@dataclass
class JobSpec:
    """One training job. Every key but `model` and `data` has the seed's V2 default."""

    name: str
    model: str
    data: DataConfig
    lora: LoraConfig = field(default_factory=LoraConfig)
    batch_size: int = 2
    grad_accumulation: int = 4
    learning_rate: float = 2e-4
    epochs: int = 3
    max_seq_length: int = 2048
    seed: int = 0
    eval_every: int = 50
    save_every: int = 200
    keep_checkpoints: int = 3
    early_stopping: EarlyStoppingConfig | None = field(default_factory=EarlyStoppingConfig)
    evaluate: bool = True
    val_samples: int | None = None
    success: SuccessConfig | None = None
    # mlx-lm lora's options (README: "Opções do mlx_lm lora")
    fine_tune_type: str = "lora"
    optimizer: str = "adam"
    optimizer_config: dict | None = None
    lr_schedule: dict | None = None
    grad_checkpoint: bool = False
    mask_prompt: bool = True
    iters: int | None = None
    resume_adapter_file: str | None = None
    val_batches: int | None = None
    test_batches: int = -1
    clear_cache_threshold: int = 0
    fuse: Any = False
    val_batch_size: int | None = None  # None: automatic (engine/data.py: validation_batches)
    report_to: str | None = None  # mlx-lm's --report-to: "wandb" (engine/reporting.py)
    project_name: str | None = None  # mlx-lm's --project-name: the W&B project
    # the training step's memory (README: "Memória de um step")
    counted_loss: bool = True  # output projection + cross-entropy on the counted positions only (engine/trainloss.py)
    ce_chunk: int | None = None  # vocabulary rows per cross-entropy tile; 0 off; None automatic (engine/chunkce.py)
    pack: bool = False  # several examples per row, attention kept per example (engine/packing.py)
    # queue keys
    priority: int = 0
    not_before: str | None = None
    after: list = field(default_factory=list)
    max_recoveries: int = 10
    distributed: DistributedConfig | None = None
    window: str | None = None  # training window, e.g. "23:00-07:00" (farensed.spec.window)

    def to_dict(self) -> dict:
        """The spec as a JSON object that parses back to the same spec (values derived from others left out)."""
        out = dataclasses.asdict(self)
        if self.lora.alpha is not None:
            out["lora"].pop("scale")  # alpha / rank
        if self.iters is not None:
            out.pop("epochs")  # the budget is iters; epochs keeps its default
        return out

    def resume_fingerprint(self) -> dict:
        """The settings that, once changed, make resuming a run meaningless."""
        lora = {k: v for k, v in dataclasses.asdict(self.lora).items() if v is not None}
        if self.lora.alpha is not None:
            lora.pop("scale")  # derived from alpha (and absent from older runs' fingerprints)
        return {
            **{k: getattr(self, k) for k in FINGERPRINT_OPTIONS if getattr(self, k) != _DEFAULTS[k]},
            "model": self.model,
            "lora": lora,
            "batch_size": self.batch_size,
            "grad_accumulation": self.grad_accumulation,
            "learning_rate": self.learning_rate,
            "max_seq_length": self.max_seq_length,
            "seed": self.seed,
            "val_samples": self.val_samples,
        }


# the mlx-lm options that change the trained weights; in the fingerprint only when not at their default, so runs
# started before these keys existed still resume
FINGERPRINT_OPTIONS = (
    "fine_tune_type",
    "optimizer",
    "optimizer_config",
    "lr_schedule",
    "mask_prompt",
    "resume_adapter_file",
    "val_batches",
    "grad_checkpoint",  # recomputing the forward pass draws dropout masks again: not the same numbers
    "pack",  # other batches, other steps per epoch (counted_loss and ce_chunk change only float rounding: not here)
)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(JobSpec)}

SECTIONS = {
    "lora": LoraConfig,
    "data": DataConfig,
    "early_stopping": EarlyStoppingConfig,
    "distributed": DistributedConfig,
    "success": SuccessConfig,
}

# key -> (check, description); every number is range-checked here, in one place. Every range has an upper bound a
# machine can honour (and that keeps arithmetic on it finite): a typo of three extra zeros is refused, not queued.
STEPS_MAX = 10_000_000  # steps of one run (iters, eval_every, save_every): weeks at 10 steps/s
RANGES = {
    "lora.rank": (lambda v: 1 <= v <= 4096, "1 ≤ rank ≤ 4096"),
    "lora.alpha": (lambda v: 0 < v <= 10_000, "0 < alpha ≤ 10000"),
    "lora.dropout": (lambda v: 0 <= v < 1, "0 ≤ dropout < 1"),
    "lora.layers": (lambda v: 1 <= v <= 1024 or v == -1, N_("1 ≤ layers ≤ 1024 (ou -1 para todas)")),
    "batch_size": (lambda v: 1 <= v <= 1024, "1 ≤ batch_size ≤ 1024"),
    "grad_accumulation": (lambda v: 1 <= v <= 1024, "1 ≤ grad_accumulation ≤ 1024"),
    "learning_rate": (lambda v: 0 < v < 1, "0 < lr < 1"),
    "epochs": (lambda v: 1 <= v <= 10_000, "1 ≤ epochs ≤ 10000"),
    "max_seq_length": (lambda v: 8 <= v <= 2**20, "8 ≤ max_seq_length ≤ 1048576"),
    "seed": (lambda v: 0 <= v < 2**32, "0 ≤ seed < 2^32"),
    "eval_every": (lambda v: 1 <= v <= STEPS_MAX, "1 ≤ eval_every ≤ 10000000"),
    "save_every": (lambda v: 1 <= v <= STEPS_MAX, "1 ≤ save_every ≤ 10000000"),
    "keep_checkpoints": (lambda v: 1 <= v <= 1000, "1 ≤ keep_checkpoints ≤ 1000"),
    "early_stopping.patience": (lambda v: 1 <= v <= 10_000, "1 ≤ patience ≤ 10000"),
    "early_stopping.min_delta": (lambda v: 0 <= v <= 100, "0 ≤ min_delta ≤ 100"),
    "val_samples": (lambda v: 1 <= v <= STEPS_MAX, "1 ≤ val_samples ≤ 10000000"),
    "val_batch_size": (lambda v: 1 <= v <= 1024, "1 ≤ val_batch_size ≤ 1024"),
    "max_recoveries": (lambda v: 0 <= v <= 1000, "0 ≤ max_recoveries ≤ 1000"),
    "priority": (lambda v: -1_000_000 <= v <= 1_000_000, "-1000000 ≤ priority ≤ 1000000"),
    "success.loss_drop": (lambda v: 0 <= v < 1, "0 ≤ loss_drop < 1"),
    "success.gap_max": (lambda v: 0 < v <= 100, "0 < gap_max ≤ 100"),
    "success.f1_min": (lambda v: 0 <= v <= 1, "0 ≤ f1_min ≤ 1"),
    "lora.scale": (lambda v: 0 < v <= 10_000, "0 < scale ≤ 10000"),
    "iters": (lambda v: 1 <= v <= STEPS_MAX, "1 ≤ iters ≤ 10000000"),
    "val_batches": (lambda v: 1 <= v <= 1_000_000 or v == -1, N_("1 ≤ val_batches ≤ 1000000 (ou -1 para todos)")),
    "test_batches": (lambda v: 1 <= v <= 1_000_000 or v == -1, N_("1 ≤ test_batches ≤ 1000000 (ou -1 para todos)")),
    "clear_cache_threshold": (lambda v: 0 <= v <= 2**50, N_("0 ≤ clear_cache_threshold ≤ 2^50 (bytes)")),
    "ce_chunk": (lambda v: v == 0 or 256 <= v <= 2**20, N_("0 (desligado) ou 256 … 1048576 linhas do vocabulário")),
}
NOT_BEFORE_MAX = dt.timedelta(days=3 * 366)  # a start date years away is a typo, not a plan
HOST_RE = re.compile(r"[A-Za-z0-9_.:@\[\]%-]{1,253}")  # a name, an IPv4/IPv6 address, user@host
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")

TYPE_NAMES = {
    int: N_("inteiro"),
    float: N_("número"),
    str: N_("texto"),
    bool: "true/false",
    list: N_("lista"),
    dict: N_("objeto"),
}


def _base_type(annotation: str) -> type:
    for name, typ in (("int", int), ("float", float), ("str", str), ("bool", bool), ("list", list), ("dict", dict)):
        if annotation.split(" |")[0] == name:
            return typ
    raise AssertionError(annotation)


def _check_type(value: Any, typ: type, where: str) -> Any:
    ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise SpecError(
            _("{where}: deve ser {expected}, não {got}").format(
                where=where, expected=_(TYPE_NAMES[typ]), got=excerpt(value)
            )
        )
    if typ is float and not math.isfinite(value):
        raise SpecError(_("{where}: deve ser um número finito").format(where=where))
    return value


def parse_success(raw: Any, label: str) -> dict:
    """`success` criteria checked as a spec's are (keys, types, ranges; SpecError naming `label`), those given only:
    a spec's key, `check --success`, a run's spec.json that a hand may have edited since."""
    return {k: v for k, v in vars(_build(SuccessConfig, raw, "success.", label)).items() if v is not None}


def _build(cls: type, raw: Any, prefix: str, label: str) -> Any:
    where = f"{label}: {prefix.rstrip('.')}" if prefix else label
    if not isinstance(raw, dict):
        raise SpecError(_("{where}: deve ser um objeto JSON").format(where=where))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise unknown_key(key, list(fields), where)
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if name not in raw:
            if required:
                raise SpecError(_("{label}: falta a chave obrigatória '{key}'").format(label=label, key=key))
            continue
        value = raw[name]
        if value is None and "None" in str(f.type):
            kwargs[name] = None
        elif key in CUSTOM:
            kwargs[name] = CUSTOM[key](value, f"{label}: {key}")
        elif name in SECTIONS and cls is not DataConfig:
            if name == "early_stopping" and value is False:
                kwargs[name] = None
                continue
            kwargs[name] = _build(SECTIONS[name], value, key + ".", label)
        else:
            value = _check_type(value, _base_type(str(f.type)), f"{label}: {key}")
            if key in RANGES and not RANGES[key][0](value):
                raise SpecError(
                    _("{label}: {key} = {value} fora do intervalo ({allowed})").format(
                        label=label, key=key, value=value, allowed=_(RANGES[key][1])
                    )
                )
            kwargs[name] = value
    return cls(**kwargs)


def parse_not_before(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO time, or `HH:MM` meaning the next such local time; ValueError for anything else (or off the calendar)."""
    now = now or dt.datetime.now().astimezone()
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", value.strip())
    if m:
        hour, minute = int(m.group(1)), int(m.group(2))
        if hour > 23 or minute > 59:
            raise ValueError(_("hora inválida '{value}'").format(value=safe(value, 40)))
        when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        return when if when > now else when + dt.timedelta(days=1)
    try:
        when = dt.datetime.fromisoformat(value.strip())
        return when if when.tzinfo else when.astimezone()
    except (OverflowError, OSError):  # year 1 or 9999 in a time zone that pushes it off the calendar
        raise ValueError(_("data fora do calendário")) from None


def check_not_before(value: str, label: str, now: dt.datetime | None = None) -> dt.datetime:
    """A spec's or `--not-before`'s time, parsed, at most NOT_BEFORE_MAX ahead; one SpecError line otherwise."""
    now = now or dt.datetime.now().astimezone()
    try:
        when = parse_not_before(value, now)
    except ValueError as exc:
        raise SpecError(
            _("{label}: not_before '{not_before}' não é hora ISO nem HH:MM ({exc})").format(
                label=label, not_before=safe(value, 60), exc=safe(exc, 120)
            )
        ) from None
    if when - now > NOT_BEFORE_MAX:
        raise SpecError(
            _("{label}: not_before '{not_before}' está a mais de {years} anos no futuro").format(
                label=label, not_before=safe(value, 60), years=NOT_BEFORE_MAX.days // 366
            )
        )
    return when


def _paths(spec: JobSpec) -> dict[str, str | None]:
    """The spec's file paths by key (each must be a usable path: not blank, no control characters)."""
    return {
        "model": spec.model,
        "data.train": spec.data.train,
        "data.valid": spec.data.valid,
        "data.test": spec.data.test,
        "resume_adapter_file": spec.resume_adapter_file,
        "distributed.hostfile": spec.distributed.hostfile if spec.distributed else None,
    }


def _cross_checks(spec: JobSpec, label: str) -> None:
    if not NAME_RE.fullmatch(spec.name):  # fullmatch: "abc\n" would make a folder named with a newline
        raise SpecError(
            _("{label}: name '{name}' deve usar só letras, dígitos, '.', '_' e '-'").format(
                label=label, name=safe(spec.name, 80)
            )
        )
    for key, value in _paths(spec).items():
        if isinstance(value, str) and (not value.strip() or CONTROL_RE.search(value)):
            raise SpecError(
                _("{label}: {key} {path} não é um caminho utilizável (vazio ou com caracteres de controlo)").format(
                    label=label, key=key, path=excerpt(value)
                )
            )
    if spec.save_every % spec.grad_accumulation:
        raise SpecError(
            _(
                "{label}: save_every = {save_every} deve ser múltiplo de grad_accumulation ({grad_accumulation}): só se guarda no fim de uma atualização do otimizador"
            ).format(label=label, save_every=spec.save_every, grad_accumulation=spec.grad_accumulation)
        )
    if spec.pack and not spec.counted_loss:
        raise SpecError(
            _(
                "{label}: pack = true precisa de counted_loss = true (o packing usa a loss das posições contadas)"
            ).format(label=label)
        )
    if spec.ce_chunk and not spec.counted_loss:
        raise SpecError(
            _(
                "{label}: ce_chunk = {ce_chunk} precisa de counted_loss = true (sem ela a loss é a do mlx-lm, sem tiles)"
            ).format(label=label, ce_chunk=spec.ce_chunk)
        )
    if spec.not_before is not None:
        check_not_before(spec.not_before, label)
    if spec.window is not None:
        from farensed.spec.window import parse_windows

        try:
            parse_windows(spec.window)
        except ValueError as exc:
            raise SpecError(f"{label}: window: {safe(exc, 200)}") from None
    for i, dep in enumerate(spec.after):
        if isinstance(dep, bool) or not isinstance(dep, int) or not 1 <= dep < 2**31:
            raise SpecError(_("{label}: after[{i}] deve ser o id (inteiro ≥ 1) de um job").format(label=label, i=i))
    if spec.distributed is not None:
        _check_distributed(spec, label)


def _check_distributed(spec: JobSpec, label: str) -> None:
    d = spec.distributed
    for i, host in enumerate(d.hosts):
        if not isinstance(host, str) or not HOST_RE.fullmatch(host):
            raise SpecError(
                _("{label}: distributed.hosts[{i}] {host} não é um nome de host").format(
                    label=label, i=i, host=excerpt(host)
                )
            )
    if not d.hosts and not d.hostfile:
        raise SpecError(_("{label}: distributed precisa de 'hosts' ou 'hostfile'").format(label=label))
    if d.backend not in ("ring", "mpi"):
        raise SpecError(
            _("{label}: distributed.backend '{backend}' deve ser 'ring' ou 'mpi'").format(
                label=label, backend=safe(d.backend, 40)
            )
        )
    if spec.batch_size % max(len(d.hosts), 1):
        raise SpecError(
            _("{label}: batch_size deve ser múltiplo do número de hosts ({n_hosts})").format(
                label=label, n_hosts=len(d.hosts)
            )
        )


def parse_spec(raw: Any, label: str = "spec") -> JobSpec:
    """Build a JobSpec from a decoded JSON object; every problem is one SpecError line, whatever `raw` holds."""
    check_bounds(raw, label)  # depth, size, text keys, finite bounded numbers: before anything walks or echoes it
    exclusive_keys(raw, label)
    spec = _build(JobSpec, raw, "", label)
    if isinstance(raw.get("lora"), dict) and "scale" in raw["lora"]:
        spec.lora.alpha = None  # the user chose mlx-lm's scale
    _cross_checks(spec, label)
    return spec
