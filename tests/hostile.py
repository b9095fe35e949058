"""Hostile inputs shared by the hostile battery (tests/test_fast_hostile.py), the fuzz tests, the daemon-level test
and `python -m bench.chaos`: poison spec files, a synthetic mlx-lm model folder (no mlx), workspace snapshots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

OSC_TITLE = "\x1b]0;pwned\x07"
OSC_CLIPBOARD = "\x1b]52;c;ZXZpbA==\x07"
ALIAS_BOMB = (  # 346 bytes that expand to 10^8 values (the 302 MB reason file)
    "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\nname: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
)
# name -> file content: each of these killed farensed at every start, or made a traceback, a hang or a huge file
POISON = {
    "deep-name.json": '{"name": ' + "[" * 500 + "]" * 500 + ', "model": "m", "data": {"train": "t", "valid": "v"}}',
    "int-key.yaml": "1: x\n",
    "binary.yaml": "model: !!binary aGVsbG8=\ndata: d\n",
    "set.yaml": "model: !!set {a, b}\ndata: d\n",
    "deep.yaml": "data: " + "[" * 5000 + "]" * 5000 + "\n",
    "python-tag.yaml": "model: !!python/object/apply:os.system ['touch /tmp/farense-pwned']\n",
    "alias-bomb.yaml": ALIAS_BOMB,
    "duplicate.json": '{"name": "a", "name": "b", "model": "m", "data": {"train": "t", "valid": "v"}}',
    "huge-int.yaml": "epochs: " + "9" * 5000 + "\ndata: d\n",
    "not-before-9999.json": '{"name": "x", "model": "m", "data": {"train": "t", "valid": "v"}, '
    '"not_before": "9999-12-31T23:59:59"}',
    "name-newline.json": '{"name": "abc\\n", "model": "m", "data": {"train": "t", "valid": "v"}}',
    "escapes.json": '{"name": "' + OSC_CLIPBOARD.replace("\x1b", "\\u001b").replace("\x07", "\\u0007") + '"}',
    "nan.yaml": "learning_rate: .nan\ndata: d\n",
    "binary-garbage.json": "\x00\xff\xfe garbage",
    "empty.json": "",
    "list.json": "[1, 2, 3]",
}


def spec(**changes) -> dict:
    """A spec for the synthetic model below: valid as it is."""
    return {
        "name": "h",
        "model": "models/m",
        "data": {"train": "data/train.jsonl", "valid": "data/valid.jsonl"},
        "batch_size": 1,
        "grad_accumulation": 1,
        "save_every": 4,
        "evaluate": False,
        **changes,
    }


def fake_model(folder: Path, model_type: str = "llama", chat_template: bool = True) -> Path:
    """An mlx-lm model folder as far as farense checks it without mlx: config.json, model.safetensors, tokenizer."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(orjson.dumps({"model_type": model_type, "num_hidden_layers": 2}))
    save_file({"model.embed_tokens.weight": np.zeros((4, 4), np.float32)}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "tokenizer_config.json").write_text("{}")
    if chat_template:
        (folder / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    return folder


def fake_workspace(root: Path, messages: bool = False) -> Path:
    """The synthetic model and two small data files (text, or chat messages)."""
    fake_model(root / "models" / "m")
    (root / "data").mkdir(parents=True, exist_ok=True)
    line = {"messages": [{"role": "user", "content": "olá"}]} if messages else {"text": "olá Faro"}
    for name in ("train", "valid"):
        (root / "data" / f"{name}.jsonl").write_bytes(orjson.dumps(line) + b"\n" + orjson.dumps(line) + b"\n")
    return root


def write(root: Path, name: str, content: str | bytes) -> Path:
    path = Path(root) / name
    path.write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    return path


def drop(pending: Path, name: str, content: str | bytes) -> Path:
    """A file dropped into jobs/pending/ by hand, already settled (written a second ago)."""
    path = write(pending, name, content)
    past = time.time() - 1
    os.utime(path, (past, past), follow_symlinks=False)
    return path


def snapshot(root: Path) -> dict:
    """Every file and link under `root` with its size and mtime (nothing changed = equal snapshots)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def cli_subprocess(root: Path, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """farensectl in its own process, with a timeout (what may hang is never run in the test's process)."""
    from tests.helpers import child_env

    return subprocess.run(
        [sys.executable, "-m", "farensed.cli.main", "--home", str(root), *args],
        capture_output=True,
        text=True,
        env={**child_env(), **(env or {})},
        timeout=timeout,
    )


def one_short_line(text: str, limit: int = 600) -> str:
    """The single line of an error output: no traceback, no terminal escape, at most `limit` characters."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text[-3000:]
    assert "Traceback" not in text and "\x1b" not in text and "\x07" not in text, text[-3000:]
    assert len(lines[0]) <= limit, lines[0][:300]
    return lines[0]
