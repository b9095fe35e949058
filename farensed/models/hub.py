"""`model` as a Hugging Face Hub id, resolved into the user's HF cache (HF_HOME / HF_HUB_OFFLINE honoured).

`submit` and `run` download a missing model before the job starts (with huggingface_hub's progress bars); every
later step (the daemon's checks, the training process) only looks it up in the cache, never on the network.
No mlx import here.
"""

from __future__ import annotations

import re
from pathlib import Path

from farensed.errors import SpecError
from farensed.i18n import _

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# what mlx_lm.load downloads (mlx_lm/utils.py DEFAULT_ALLOW_PATTERNS; importing it would load mlx)
ALLOW_PATTERNS = ["*.json", "model*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt"]
ALLOW_PATTERNS += ["*.jsonl", "*.jinja"]


def hub_id(model: str, ws) -> str | None:
    """The Hub id `model` names (ORG/NAME where not even ORG is a folder of the workspace), else None."""
    if not isinstance(model, str) or not HUB_ID.fullmatch(model) or ws.resolve(model).parent.exists():
        return None
    return model


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve_model(model: str, ws, label: str = "model") -> Path:
    """The local folder of `model`: the path itself, or the Hub id's snapshot already in the HF cache."""
    repo = hub_id(model, ws)
    if repo is None:
        return ws.resolve(model)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, local_files_only=True, allow_patterns=ALLOW_PATTERNS))
    except Exception:  # huggingface_hub's LocalEntryNotFoundError and kin: the snapshot is not in the cache
        hint = _("HF_HUB_OFFLINE=1 está definido") if _offline() else _("farensectl submit/run descarrega-o")
        raise SpecError(
            _("{label}: o modelo '{repo}' não está na cache do Hugging Face ({cache_dir}); {hint}").format(
                label=label, repo=repo, cache_dir=_cache_dir(), hint=hint
            )
        ) from None


def fetch_model(model: str, ws, label: str, say) -> Path:
    """Bring a Hub model into the HF cache before a job starts (progress bars on stderr); a path is returned as is."""
    repo = hub_id(model, ws)
    if repo is None:
        return ws.resolve(model)
    if _offline():
        return resolve_model(model, ws, label)
    from huggingface_hub import snapshot_download

    say(
        _("A obter o modelo {repo} do Hugging Face Hub (cache: {cache_dir})...").format(
            repo=repo, cache_dir=_cache_dir()
        )
    )
    try:
        return Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:  # not found, gated, no network: one line, naming the model
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SpecError(
            _("{label}: não foi possível obter o modelo '{repo}' do Hugging Face Hub ({first})").format(
                label=label, repo=repo, first=first
            )
        ) from None
