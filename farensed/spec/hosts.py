"""The hosts of a distributed spec and the world size they make (no mlx: submit and the daemon read them)."""

from __future__ import annotations

import orjson

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.storage.regular import read_regular
from farensed.terminal import safe


def hosts_of(spec, ws) -> list[str]:
    """The hosts of a distributed spec, one entry per rank (a hostfile is mlx's JSON list or one host a line)."""
    d = spec.distributed
    if d.hostfile:
        path = ws.resolve(d.hostfile)
        try:
            text = read_regular(path, 64 * 1024).decode("utf-8", "replace")  # a FIFO never blocks submit
        except (OSError, ValueError) as exc:
            raise SpecError(
                _("distributed.hostfile: não foi possível ler {path} ({strerror})").format(
                    path=path, strerror=getattr(exc, "strerror", None) or safe(exc, 80)
                )
            ) from None
        try:
            entries = orjson.loads(text)
            return [e["ssh"] if isinstance(e, dict) else str(e) for e in entries]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return list(d.hosts)


def world_size(spec, ws) -> int:
    return len(hosts_of(spec, ws)) if spec.distributed else 1


def check_batch_size(spec, size: int, label) -> None:
    """Every rank takes batch_size / world_size rows of each global batch (hosts or hostfile alike)."""
    if spec.distributed and size and spec.batch_size % size:
        raise SpecError(
            _("{label}: batch_size ({batch_size}) deve ser múltiplo do número de hosts ({size})").format(
                label=label, batch_size=spec.batch_size, size=size
            )
        )
