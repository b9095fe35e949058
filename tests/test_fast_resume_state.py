"""A run's training_state.json as hostile input: submit's resume check reads it without a traceback, and a refusal
shows settings as the spec writes them (null, true, {…}), never as Python values."""

from __future__ import annotations

import orjson
import pytest

from farensed.engine.resume import check_resumable, is_run_state, refuse_if_changed
from farensed.errors import ResumeError
from farensed.spec.jobspec import parse_spec
from farensed.storage.workspace import Workspace
from tests.helpers import spec_with


@pytest.mark.parametrize(
    "content",
    [b"{}", b"[]", b"null", b"3", b'{"data": {"__class__": 1}, "fingerprint": {}}', b'{"data": [], "fingerprint": {}}'],
)
def test_a_state_file_of_another_shape_is_left_to_the_start_to_repair(tmp_path, content):
    ws = Workspace(tmp_path)
    spec = parse_spec(spec_with(name="r"))
    ws.run_dir("r").mkdir(parents=True)
    (ws.run_dir("r") / "training_state.json").write_bytes(content)
    if is_run_state(orjson.loads(content)):  # the right shape, other settings: one line, as for any changed spec
        with pytest.raises(ResumeError, match=r"data\.__class__: .*--fresh"):
            check_resumable(spec, ws)
    else:
        check_resumable(spec, ws)  # no exception: the checkpoints' own states decide at the start


def test_a_refusal_names_changed_settings_in_the_spec_s_own_notation(tmp_path):
    old = {"fingerprint": {"pack": None, "lr_schedule": None, "lora": {"rank": 4}}, "data": {}}
    new = {"pack": True, "lr_schedule": {"name": "cosine_decay", "arguments": [0.001, 10]}, "lora": {"rank": 8}}
    with pytest.raises(ResumeError) as caught:
        refuse_if_changed(tmp_path, old, new, {})
    text = str(caught.value)
    assert "pack: null → true" in text and "lora.rank: 4 → 8" in text
    assert "lr_schedule: null → {'name': 'cosine_decay', 'arguments': [0.001, 10]}" in text
    assert "None" not in text and "True" not in text


@pytest.mark.parametrize("marker", [b"[]", b"null", b'"x"', b'{"size": "x", "sha256": []}', b"{", b'{"summary": 3}'])
def test_a_damaged_gguf_import_marker_means_import_again_not_a_failed_job(tmp_path, marker):
    from farensed.engine.gguf import MARKER, _cache_is_current, imported_digest

    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + bytes(60))
    cache = tmp_path / "m.gguf.mlx"
    cache.mkdir()
    (cache / MARKER).write_bytes(marker)
    assert _cache_is_current(cache, src) is False and imported_digest(cache) is None
