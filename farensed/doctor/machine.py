"""The machine's checks: Python and packages, the MLX device, disk, the service, sleep, memory, the HF cache."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import orjson

from farensed.doctor.check import FAIL, INFO, OK, WARN, Check
from farensed.i18n import _, ngettext
from farensed.storage.workspace import Workspace
from farensed.terminal import safe
from farensed.units import size as gb

PACKAGES = ("farense", "mlx", "mlx-metal", "mlx-lm", "transformers", "tokenizers", "huggingface-hub", "numpy")
REQUIRED = ("mlx", "mlx-lm")
GB = 2**30

# Runs in a fresh interpreter: the doctor (like the daemon and the CLI) never imports mlx itself.
MLX_PROBE = """
import json, mlx.core as mx
info = {"mlx": mx.__version__, "device": str(mx.default_device()), "metal": bool(mx.metal.is_available())}
try:
    raw = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
    info["info"] = {k: v if isinstance(v, (int, float, str)) else str(v) for k, v in raw.items()}
except Exception as exc:
    info["error"] = str(exc)
print(json.dumps(info))
"""


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", OK, f"Python {version} ({sys.executable})", data={"version": version})


def check_packages() -> Check:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    text = ", ".join(f"{n} {v}" for n, v in versions.items() if v)
    missing = [n for n in REQUIRED if versions[n] is None]
    if missing:
        return Check(
            "packages",
            FAIL,
            _("em falta: {items} ({text})").format(items=", ".join(missing), text=text),
            "pip install -e .",
            versions,
        )
    return Check("packages", OK, text, data=versions)


@functools.cache
def probe_mlx(timeout: float = 120.0) -> dict:
    """Ask a fresh interpreter which device MLX trains on (a dict; 'error' when mlx cannot load). Asked once per
    process: the installed mlx and the machine's device do not change under it."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", MLX_PROBE], capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
        )
    except subprocess.TimeoutExpired:
        return {"error": _("mlx não respondeu em {timeout:.0f} s").format(timeout=timeout)}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or [_("código {code}").format(code=proc.returncode)])[-1]
        return {"error": safe(last, 300)}
    try:
        probe = orjson.loads(lines[-1])
    except orjson.JSONDecodeError:  # something else printed last (a library's notice): what it said, not a traceback
        return {"error": safe(lines[-1], 300)}
    return probe if isinstance(probe, dict) else {"error": safe(lines[-1], 300)}


def check_mlx(probe: dict) -> Check:
    if "device" not in probe:
        return Check(
            "mlx",
            FAIL,
            _("mlx não carrega: {error}").format(error=probe.get("error")),
            _("pip install -e . (no venv deste Python)"),
        )
    info = probe.get("info", {})
    name = info.get("device_name", "?")
    if "gpu" in probe["device"]:
        memory = info.get("memory_size")
        working = info.get("max_recommended_working_set_size")
        text = f"{'Metal GPU' if probe.get('metal') else 'GPU'} {name} (mlx {probe['mlx']})"
        if memory:
            text += _(", {memory} de memória unificada").format(memory=gb(memory))
        if working:
            text += _(", {memory} recomendados para a GPU").format(memory=gb(working))
        return Check("mlx", OK, text, data=probe)
    fix = None
    if sys.platform == "darwin":
        fix = _("use um Python arm64 (não Rosetta) num Mac Apple Silicon com o pacote mlx")
    return Check(
        "mlx",
        WARN,
        _("CPU {name} (mlx {mlx}): sem GPU, o treino é muito mais lento").format(name=name, mlx=probe["mlx"]),
        fix,
        probe,
    )


def check_disk(ws: Workspace) -> Check:
    target = ws.root / "checkpoints_qlora"
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    text = _("{gb} livres em {target}").format(gb=gb(free), target=target)
    data = {"free_bytes": free, "path": str(target)}
    if free < 1 * GB:
        return Check("disk", FAIL, text, _("liberte espaço: cada checkpoint guarda adapters e otimizador"), data)
    if free < 10 * GB:
        return Check("disk", WARN, text, _("menos de 10 GB: liberte espaço antes de uma run longa"), data)
    return Check("disk", OK, text, data=data)


def _process_type(unit_path: Path) -> str | None:
    try:
        return plistlib.loads(unit_path.read_bytes()).get("ProcessType")
    except (OSError, plistlib.InvalidFileException, ValueError):
        return None


def check_service(ws: Workspace) -> Check:
    from farensed.queue import service

    info = service.status(ws)
    m = service.manager()
    where = f"{service.manager_label(info['manager'])}, " + (
        _("instalado") if info["installed"] else _("não instalado")
    )
    if info["installed"] and m.kind == "launchd":
        info["process_type"] = _process_type(m.unit_path)
        where += f", ProcessType {info['process_type'] or _('em falta')}"
        if info["process_type"] != "Interactive":
            return Check(
                "service",
                WARN,
                _(
                    "o LaunchAgent não tem ProcessType Interactive: o launchd limita CPU e I/O do treino ({where})"
                ).format(where=where),
                _("farensectl daemon install (reinstala com ProcessType Interactive)"),
                info,
            )
    if info["running"] and info["installed"]:
        return Check(
            "service", OK, _("farensed a correr (pid {pid}; {where})").format(pid=info["pid"], where=where), data=info
        )
    hint = service.persistence_hint(ws) if m.kind == "process" else None  # `daemon install` cannot help here
    if info["running"]:
        return Check(
            "service",
            WARN,
            _("farensed a correr em segundo plano (pid {pid}; {where}): não volta após reiniciar").format(
                pid=info["pid"], where=where
            ),
            hint or "farensectl daemon install",
            info,
        )
    if info["installed"]:
        return Check(
            "service", WARN, _("farensed parado ({where})").format(where=where), "farensectl daemon start", info
        )
    return Check(
        "service",
        WARN,
        _("farensed não está a correr ({where}); a fila não avança").format(where=where),
        _("farensectl daemon start; {hint}").format(hint=hint)
        if hint
        else _("farensectl daemon install (ou farensectl run SPEC, sem fila)"),
        info,
    )


def parse_pmset(text: str) -> dict[str, str]:
    """`pmset -g` settings: name → value (the first word after the name)."""
    settings = {}
    for line in text.splitlines():
        if line[:1].isspace() and len(parts := line.split()) >= 2:
            settings.setdefault(parts[0], parts[1])
    return settings


def _run_text(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def sleep_check_macos(pmset: str, batt: str | None) -> Check:
    """The verdict on macOS sleep settings, from the text of `pmset -g` and `pmset -g batt`."""
    settings = parse_pmset(pmset)
    data = {"pmset": settings, "on_battery": bool(batt and "Battery Power" in batt)}
    if data["on_battery"]:
        return Check(
            "sleep",
            WARN,
            _("a bateria: caffeinate -s só impede o repouso na corrente; o Mac pode adormecer a meio"),
            _("ligue o carregador para uma run longa"),
            data,
        )
    if settings.get("lowpowermode") == "1":
        return Check(
            "sleep",
            WARN,
            _("modo de baixo consumo ativo: o treino fica mais lento"),
            _("desligue-o em Definições > Bateria (ou sudo pmset -a lowpowermode 0)"),
            data,
        )
    sleep = settings.get("sleep", "?")
    text = (
        _("o Mac não adormece sozinho (sleep 0)")
        if sleep == "0"
        else _("repouso após {sleep} min sem uso").format(sleep=sleep)
    )
    text += _(
        "; durante um job farensed usa caffeinate -i -s; com a tampa fechada adormece e o job continua ao acordar"
    )
    return Check("sleep", OK, text, data=data)


def check_sleep() -> Check:
    if sys.platform == "darwin":
        pmset = _run_text(["pmset", "-g"])
        if pmset is None:
            return Check("sleep", WARN, _("pmset -g não respondeu"), _("verifique em Definições > Bateria"))
        return sleep_check_macos(pmset, _run_text(["pmset", "-g", "batt"]))
    if shutil.which("systemd-inhibit"):
        works = _run_text(["systemd-inhibit", "--what=sleep:idle", "--who=farense", "--why=doctor", "true"])
        if works is not None:
            return Check("sleep", OK, _("systemd-inhibit impede a suspensão enquanto um job corre"))
        return Check("sleep", INFO, _("systemd-inhibit sem logind aqui: nada impede a suspensão (servidor/contentor?)"))
    return Check("sleep", INFO, _("sem caffeinate nem systemd-inhibit: nada impede a suspensão durante um job"))


def check_memory() -> Check:
    from farensed.queue.pressure import Action, PressureReader, Thresholds, decide

    reading = PressureReader().read()
    verdict = decide(reading, Thresholds(), holding=False)
    text = _("{available_gb:.1f} GB disponíveis de {total_gb:.0f} GB; {detail}").format(
        available_gb=reading.available_mb / 1024, total_gb=reading.total_mb / 1024, detail=verdict.detail
    )
    data = {"available_mb": reading.available_mb, "total_mb": reading.total_mb, "signal": verdict.signal}
    if verdict.action is Action.STOP:
        return Check(
            "memory",
            WARN,
            _("pressão alta agora ({text})").format(text=text),
            _("feche aplicações antes de treinar"),
            data,
        )
    return Check("memory", OK, text, data=data)


def _hf_cache_dir() -> Path:
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        return Path(os.environ.get("HF_HUB_CACHE", Path(home) / "hub")).expanduser()


def _tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def check_hf_cache() -> Check:
    cache = _hf_cache_dir()
    offline = " " + _("(HF_HUB_OFFLINE: sem rede)") if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
    if not cache.is_dir():
        return Check(
            "hf_cache",
            INFO,
            _("{cache} não existe{offline}: os modelos vêm de pastas locais").format(cache=cache, offline=offline),
        )
    repos = sorted(p.name.split("--", 1)[1].replace("--", "/") for p in cache.glob("models--*"))
    size = _tree_size(cache)
    models = ngettext("{count} modelo", "{count} modelos", len(repos)).format(count=len(repos))
    text = _("{cache}: {models}, {gb}{offline}").format(cache=cache, models=models, gb=gb(size), offline=offline)
    return Check("hf_cache", OK, text, data={"path": str(cache), "models": repos, "bytes": size})


def machine_checks(ws: Workspace, probe: dict) -> list[Check]:
    return [
        check_python(),
        check_packages(),
        check_mlx(probe),
        check_disk(ws),
        check_service(ws),
        check_sleep(),
        check_memory(),
        check_hf_cache(),
    ]
