"""Data-parallel training over several hosts with mlx.launch (mlx's own launcher and ring back end).

The launcher runs `python -m farensed.engine.rank` once per host; every rank runs the same engine on its rows of each
global batch, gradients are averaged with mx.distributed, rank 0 alone writes files. The launcher ignores
SIGTERM/SIGINT so that a stop reaches the ranks, which agree on it and checkpoint together.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.spec.hosts import hosts_of

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _ip(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise SpecError(
            _("distributed.hosts: '{host}' não tem endereço IP (o backend ring precisa de IPs)").format(host=host)
        ) from None


def check_hosts(spec, ws, paths: list[Path]) -> None:
    """Every non-local host answers ssh and has the model and data at the same paths."""
    for host in hosts_of(spec, ws):
        if host in LOCAL_HOSTS:
            continue
        _ip(host)
        checks = " && ".join(f"test -e {shlex.quote(str(p))}" for p in paths)  # the remote shell is POSIX sh
        try:
            proc = subprocess.run(
                ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", host, checks],
                capture_output=True,
                text=True,
                timeout=20,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SpecError(
                _("distributed.hosts: {host} inacessível por ssh ({exc})").format(host=host, exc=exc)
            ) from None
        if proc.returncode == 255:
            raise SpecError(
                _("distributed.hosts: {host} inacessível por ssh ({error})").format(
                    host=host, error=proc.stderr.strip()[-200:]
                )
            )
        if proc.returncode != 0:
            raise SpecError(
                _("distributed.hosts: {host} não tem o modelo e os dados nos mesmos caminhos").format(host=host)
            )


def launcher() -> list[str]:
    script = Path(sys.executable).parent / "mlx.launch"
    if script.exists():
        return [str(script)]
    found = shutil.which("mlx.launch")
    return [found] if found else [sys.executable, "-c", "from mlx._distributed_utils.launch import main; main()"]


def launch_command(spec, ws, spec_path: Path, exit_file: Path) -> list[str]:
    """mlx.launch … -- python -m farensed.engine.rank …, with the same paths on every host."""
    d = spec.distributed
    cmd = launcher() + ["--backend", d.backend, "--cwd", str(ws.root)]
    if d.hostfile:
        cmd += ["--hostfile", str(ws.resolve(d.hostfile))]
    else:
        cmd += ["--hosts", ",".join(_ip(h) for h in d.hosts)]
    for env in ("HF_HUB_OFFLINE=1", "PYTHONUNBUFFERED=1", "TOKENIZERS_PARALLELISM=false"):
        cmd += ["--env", env]
    return cmd + [
        "--",
        sys.executable,
        "-m",
        "farensed.engine.rank",
        "--home",
        str(ws.root),
        "--spec",
        str(spec_path),
        "--exit-file",
        str(exit_file),
    ]


def run_launcher(cmd: list[str]) -> int:
    """Run mlx.launch with SIGTERM/SIGINT ignored (they are for the ranks, which checkpoint first)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    # A pipe nobody writes: mlx.launch selects on its stdin, and /dev/null (always readable) makes it spin.
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    return proc.wait()


class World:
    """This process's place in the group; collectives are skipped when alone."""

    def __init__(self):
        import mlx.core as mx

        self.group = mx.distributed.init()
        self.rank, self.size = self.group.rank(), self.group.size()
        self.is_main = self.rank == 0

    def all_sum(self, value):
        import mlx.core as mx

        return value if self.size == 1 else mx.distributed.all_sum(value, stream=mx.cpu)

    def any(self, flag: bool) -> bool:
        """True on every rank when any rank says True (e.g. a stop request)."""
        import mlx.core as mx

        return flag if self.size == 1 else self.all_sum(mx.array(int(flag))).item() > 0

    def broadcast_arrays(self, arrays: dict) -> dict:
        """Rank 0's tensors on every rank (others pass tensors of the same shapes)."""
        import mlx.core as mx

        if self.size == 1:
            return arrays
        # Sorted keys: every rank must run the same collectives in the same order.
        out = {k: self.all_sum(arrays[k] if self.is_main else mx.zeros_like(arrays[k])) for k in sorted(arrays)}
        mx.eval(out)
        return out

    def broadcast_json(self, obj):
        """Rank 0's JSON value on every rank."""
        import mlx.core as mx
        import numpy as np

        if self.size == 1:
            return obj
        data = orjson.dumps(obj) if self.is_main else b""
        n = int(self.all_sum(mx.array(len(data))).item())
        buf = np.frombuffer(data, dtype=np.uint8).astype(np.int32) if self.is_main else np.zeros(n, np.int32)
        data = bytes(np.array(self.all_sum(mx.array(buf))).astype(np.uint8))
        return orjson.loads(data)


def peer_lost(exc: BaseException) -> bool:
    """A ring collective failed because another rank died: resumable, not a bug of this job."""
    return isinstance(exc, RuntimeError) and "[ring]" in str(exc)


def in_rank() -> bool:
    return "MLX_RANK" in os.environ
