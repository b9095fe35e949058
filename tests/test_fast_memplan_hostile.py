"""The memory plan on hostile model folders and data: the doctor's memory_plan line is one line whatever the config.json
sizes, the safetensors headers, FIFOs or chat templates hold; nothing raises, nothing blocks, nothing grows without
bound."""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
import threading
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from farensed.doctor.check import Check
from farensed.doctor.memcheck import check_memory_plan
from farensed.doctor.memplan import MAX_DIM, model_shape
from farensed.spec.jobspec import parse_spec
from tests.helpers import spec_with, wait_for

SIZES = {  # a small llama's config.json
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what JSON (orjson) carries
HOSTILE = st.one_of(
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.lists(INT64, max_size=2),
    st.dictionaries(st.text(max_size=2), INT64, max_size=2),
)
PROBE = {"info": {"max_recommended_working_set_size": 8 << 30}}


def folder(root: Path, config: dict | bytes) -> Path:
    model = root / "m"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_bytes(config if isinstance(config, bytes) else orjson.dumps(config))
    return model


def train_file(root: Path) -> Path:
    line = {"messages": [{"role": "user", "content": "olá " * 40}, {"role": "assistant", "content": "Faro " * 60}]}
    path = root / "train.jsonl"
    path.write_bytes((orjson.dumps(line) + b"\n") * 8)
    return path


def one_line(check: Check) -> None:
    assert check.name == "memory_plan" and "\n" not in check.detail
    if "parts" in check.data:
        assert all(math.isfinite(v) and v >= 0 for v in check.data["parts"].values())


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(set(SIZES) - {"model_type"}) + ["head_dim"]), value=HOSTILE)
def test_any_size_in_config_json_gives_one_line(key, value):
    spec = parse_spec(spec_with(max_seq_length=512))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        check = check_memory_plan(spec, folder(root, {**SIZES, key: value}), train_file(root), PROBE)
    one_line(check)
    integral = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    fallback = key in ("head_dim", "num_key_value_heads") and not value  # hidden / heads, and heads
    if not (fallback or integral and 1 <= value <= MAX_DIM):
        assert check.status == "info" and "parts" not in check.data


def test_a_config_json_that_is_not_an_object_or_not_json_gives_one_line(tmp_path):
    spec = parse_spec(spec_with())
    for content in (b"[1, 2]", b"nul", b"\xff\xfe", b"", b'{"hidden_size": 1e400}'):
        check = check_memory_plan(spec, folder(tmp_path, content), train_file(tmp_path), PROBE)
        one_line(check)
        assert check.status == "info" and "config.json" in check.detail


def test_a_weights_header_with_odd_entries_is_read_as_text_not_objects(tmp_path):
    model = folder(tmp_path, SIZES)
    header = orjson.dumps({"x.norm.weight": {"dtype": [], "shape": [1], "data_offsets": [0, 4]}})
    (model / "model-00002.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"0000")
    (model / "model-00001.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (model / "model-00003.safetensors").write_bytes(b"\x01")
    half = orjson.dumps({"m.layers.0.input_layernorm.weight": {"shape": [2], "dtype": "BF16", "data_offsets": [0, 4]}})
    shape = model_shape(model)
    assert shape is not None and shape.act_bytes == 4
    (model / "model-00004.safetensors").write_bytes(struct.pack("<Q", len(half)) + half + b"0000")
    assert model_shape(model).act_bytes == 2


def test_fifos_in_the_model_folder_never_block_the_plan(tmp_path):
    model = folder(tmp_path, SIZES)
    os.mkfifo(model / "model.safetensors")
    results = []
    reader = threading.Thread(target=lambda: results.append(model_shape(model)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and results[0] is not None and results[0].act_bytes == 4
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    reader = threading.Thread(target=lambda: results.append(model_shape(model)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and results[1] is None


def _in_thread(fn, timeout: float = 20):
    results = []
    worker = threading.Thread(target=lambda: results.append(fn()), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "blocked"
    return results[0]


def test_a_gguf_import_folder_with_a_fifo_never_blocks_the_doctor(tmp_path, untrained_model):
    """A .gguf model's plan reads its import (<file>.gguf.mlx/), a folder the model line never checked."""
    from farensed.doctor.runspec import check_memory
    from farensed.storage.workspace import Workspace

    ws = Workspace(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    imported = tmp_path / "models" / "m.gguf.mlx"
    shutil.copytree(untrained_model, imported)
    spec = parse_spec(spec_with(model="models/m.gguf", data={"train": str(train_file(tmp_path)), "valid": "v.jsonl"}))
    assert _in_thread(lambda: check_memory(ws, spec, PROBE)).status == "ok"
    for name in ("chat_template.jinja", "tokenizer.json", "config.json"):
        (imported / name).unlink()
        os.mkfifo(imported / name)
        assert _in_thread(lambda: check_memory(ws, spec, PROBE)) is None  # the run imports it again


def _model_with_template(root: Path, untrained_model: Path, template: str | None) -> Path:
    model = root / "tokenized"
    shutil.copytree(untrained_model, model)
    (model / "chat_template.jinja").unlink()
    if template is not None:
        (model / "chat_template.jinja").write_text(template)
    return model


def test_a_chat_template_that_fails_on_the_data_gives_estimated_lengths(tmp_path, untrained_model):
    """mlx-lm fails on such data too (a template that raises, or none for prompt/completion): the plan estimates."""
    from farensed.doctor.lengths import data_lengths

    data = tmp_path / "pc.jsonl"
    data.write_bytes(b'{"prompt": "ol\\u00e1", "completion": "Faro"}\n' * 4)
    for template in ("{{ raise_exception('roles must alternate') }}", "{{ messages[5].x.y }}", None):
        model = _model_with_template(tmp_path, untrained_model, template)
        for train in (data, train_file(tmp_path)):
            lengths = data_lengths(train, model, True, 256)
            assert lengths.source == "estimate" and lengths.examples in (4, 8) and lengths.longest
        spec = parse_spec(spec_with(max_seq_length=256))
        assert check_memory_plan(spec, model, data, PROBE).status == "ok"
        shutil.rmtree(model)


def test_an_example_too_long_to_tokenize_quickly_is_estimated(tmp_path, untrained_model, monkeypatch):
    import farensed.doctor.lengths as lengths

    tokenized = []
    real = lengths._tokens
    monkeypatch.setattr(lengths, "_tokens", lambda t, r, m: tokenized.append(len(orjson.dumps(r))) or real(t, r, m))
    data = tmp_path / "long.jsonl"
    long = {"messages": [{"role": "user", "content": "olá"}, {"role": "assistant", "content": "Faro " * 200_000}]}
    data.write_bytes(orjson.dumps(long) + b"\n" + train_file(tmp_path).read_bytes())
    found = lengths.data_lengths(data, _model_with_template(tmp_path, untrained_model, "{{ messages }}"), True, 512)
    assert found.longest[0][0] == 512 and found.examples == 9 and found.source == "estimate"
    assert tokenized and max(tokenized) < 8 * 512 + 200  # the 1 MB example never reached the tokenizer


def test_the_lengths_of_a_large_file_keep_no_records(tmp_path, monkeypatch):
    import tracemalloc

    import farensed.doctor.lengths as lengths

    line = {"messages": [{"role": "user", "content": "olá " * 20}, {"role": "assistant", "content": "Faro " * 30}]}
    data = tmp_path / "big.jsonl"
    data.write_bytes((orjson.dumps(line) + b"\n") * 8_000)
    tracemalloc.start()
    try:
        found = lengths.data_lengths(data, None, True, 512)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found.examples == 8_000 and found.longest[0] == (78, 34)
    assert peak < 2 << 20, peak  # 8,000 records as Python objects: some 10 MB
    monkeypatch.setattr(lengths, "MAX_LINE", 1000)  # a line longer than this is skipped, in pieces
    with open(data, "ab") as f:
        f.write(b'{"text": "' + b"x" * 300_000 + b'"}\n' + orjson.dumps(line) + b"\n")
    found = lengths.data_lengths(data, None, True, 512)
    assert found.examples == 8_001 and found.longest[0] == (78, 34)


def test_the_tile_knob_names_the_counted_loss_it_needs():
    """ce_chunk does nothing without counted_loss (mlx-lm's own loss then): a knob planned with both says both."""
    from farensed.doctor.memcheck import first_knob, knobs
    from farensed.doctor.memplan import ModelShape, StepShape, plan

    model = ModelShape("mistral", 32, 4096, 14336, 32, 8, 128, 32768, 4_080_000_000, 2)
    lora = {"rank": 8, "alpha": 16, "dropout": 0.0, "layers": 1}
    spec = parse_spec(spec_with(max_seq_length=2048, counted_loss=False, grad_checkpoint=True, batch_size=1, lora=lora))

    def step(_other):
        return StepShape(1, 2049, 2000, 2048)

    (_, counted), (_, tiled) = knobs(spec, model)[:2]
    limit = (plan(counted, model, step(spec))["total"] + plan(tiled, model, step(spec))["total"]) / 2
    assert first_knob(spec, model, step, limit)[0] == "counted_loss: true, ce_chunk: 1024"
    assert first_knob(parse_spec(spec_with(lora=lora)), model, step, 1e12)[0] == "ce_chunk: 1024"


def test_a_chat_template_that_loops_is_estimated_not_awaited(tmp_path, untrained_model, monkeypatch):
    """A template of nested loops renders for hours (mlx-lm too would sit there): the doctor waits its budget, then
    estimates, and answers."""
    import farensed.doctor.lengths as lengths

    monkeypatch.setattr(lengths, "TOKENIZE_SECONDS", 0.3)
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages }}"
    model = _model_with_template(tmp_path, untrained_model, loop)
    found = lengths.data_lengths(train_file(tmp_path), model, True, 256)  # returns: the budget, not the hours
    assert found.source == "estimate" and found.examples == 8 and found.longest
    # and the render it gave up on is stopped, not left burning a core until the process ends
    assert wait_for(lambda: not any(t.name == "doctor-tokenize" for t in threading.enumerate()), timeout=10)


def test_a_cpu_plan_fits_a_validation_beside_the_step(tmp_path, untrained_model, monkeypatch):
    """On a CPU with a core to spare a validation may run beside a step (engine/validation.py): the plan says what it
    may add, and the step and it must fit together; on a GPU, with val_batch_size set by hand or on one core, the
    step alone."""
    import farensed.doctor.memcheck as memcheck

    monkeypatch.setattr(memcheck, "usable_cores", lambda: 4)
    spec, data = parse_spec(spec_with()), train_file(tmp_path)

    def planned(device: str, limit: float | None = None, other=spec):
        probe = {"device": device, "info": {"max_recommended_working_set_size": limit or 8 << 30}}
        return check_memory_plan(other, untrained_model, data, probe)

    cpu, gpu = planned("Device(cpu, 0)"), planned("Device(gpu, 0)")
    parts = cpu.data["parts"]
    assert parts["validation"] > 0 and parts["worst"] == parts["total"] + parts["validation"]
    assert "uma validação ao lado (CPU) junta-lhe até" in cpu.detail
    assert parts["total"] == gpu.data["parts"]["total"]  # the step's own prediction is the same
    by_hand = planned("Device(cpu, 0)", other=parse_spec(spec_with(val_batch_size=4)))
    for alone in (gpu, by_hand):
        assert alone.data["parts"]["validation"] == 0 and "validação ao lado" not in alone.detail
    monkeypatch.setattr(memcheck, "usable_cores", lambda: 1)
    assert planned("Device(cpu, 0)").data["parts"]["validation"] == 0
    monkeypatch.setattr(memcheck, "usable_cores", lambda: 4)
    between = (parts["total"] + parts["worst"]) / 2 / 0.9  # the step fits that limit, the step and a validation not
    assert planned("Device(gpu, 0)", between).status == "ok"
    assert planned("Device(cpu, 0)", between).status == "warn"
