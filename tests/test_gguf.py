"""GGUF import on a GGUF the test writes from the tiny model (every block type, q/k permuted as llama.cpp does)."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from tests.ggufwrite import tiny_gguf
from tests.helpers import run_cli, spec_with, write_spec

TEXTS = [
    "Quando abre o Museu Municipal de Faro?",
    "A Praia de Faro fica na península do Ancão, a 10 km do centro; o autocarro 16 leva-o até lá.",
]


@pytest.fixture
def tiny_file(tmp_path, tiny_model):
    return tiny_gguf(tiny_model, tmp_path / "tiny.Q4.gguf")


def reference_model(tiny_model, weights):
    import mlx.core as mx
    from mlx_lm.models import llama

    config = orjson.loads((tiny_model / "config.json").read_bytes())
    config.pop("quantization", None)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    model.eval()
    return model


def test_import_gives_the_same_model_tokenizer_and_answers(tiny_file, tiny_model, tmp_path):
    import mlx.core as mx
    from mlx_lm import generate, load

    gguf, weights = tiny_file
    dest = tmp_path / "imported"
    result = CliRunner().invoke(cli, ["model", "import-gguf", str(gguf), str(dest), "--json"])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output)
    assert summary["bits"] == 4  # Q4_0/Q4_1 modules; the Q8_0 ones are listed with 8 bits
    assert summary["bits_by_module"] == {
        "model.embed_tokens": 8,
        "model.layers.0.self_attn.v_proj": 8,
        "model.layers.1.self_attn.v_proj": 8,
    }
    model, tokenizer = load(str(dest))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    assert model.model.layers[0].self_attn.v_proj.bits == 8
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear"  # F32 stays float

    _, original_tok = load(str(tiny_model))
    for text in TEXTS:
        assert tokenizer.encode(text) == original_tok.encode(text)
    messages = [{"role": "user", "content": TEXTS[0]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == original_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    reference = reference_model(tiny_model, weights)
    ids = mx.array([original_tok.encode(TEXTS[1])])
    got, want = model(ids).astype(mx.float32), reference(ids)
    assert got.shape == want.shape and want.shape[1] > 20
    assert mx.abs(got - want).max().item() < 2e-3 * mx.abs(want).max().item()
    answer = generate(model, tokenizer, prompt, max_tokens=12)
    assert answer and answer == generate(reference, original_tok, prompt, max_tokens=12)


def test_spec_naming_a_gguf_imports_once_and_trains(workspace, tiny_file):
    gguf, _ = tiny_file
    target = workspace / "models" / "tiny.gguf"
    target.write_bytes(gguf.read_bytes())
    spec = write_spec(workspace, spec_with(model="models/tiny.gguf", epochs=1))
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-3000:]
    cache = workspace / "models" / "tiny.gguf.mlx"
    marker = orjson.loads((cache / "farense_gguf.json").read_bytes())
    adapter_config = orjson.loads(
        (workspace / "checkpoints_qlora" / "t" / "adapters" / "adapter_config.json").read_bytes()
    )
    assert adapter_config["model"] == str(cache)
    records = orjson.loads((workspace / "checkpoints_qlora" / "t" / "training_metrics.json").read_bytes())
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 5 and losses[-1] < losses[0]

    doctor = CliRunner().invoke(cli, ["--home", str(workspace), "doctor", str(spec), "--json"])
    check = next(c for c in orjson.loads(doctor.output)["checks"] if c["name"] == "model")
    assert check["status"] == "ok" and "GGUF llama" in check["detail"] and "tiny.gguf.mlx" in check["detail"]

    from farensed.engine.gguf import model_path

    stamp = (cache / "farense_gguf.json").stat().st_mtime_ns
    assert model_path(target) == cache and (cache / "farense_gguf.json").stat().st_mtime_ns == stamp  # reused
    target.write_bytes(gguf.read_bytes() + b"\0" * 32)  # a different file under the same name: imported again
    assert model_path(target, log=lambda _m: None) == cache
    assert orjson.loads((cache / "farense_gguf.json").read_bytes())["sha256"] != marker["sha256"]
    assert list((workspace / "models").glob("tiny.gguf.mlx.old-*"))  # the old import moved aside, not deleted


def test_import_refuses_an_existing_destination_and_keeps_a_same_import(tiny_file, tmp_path):
    gguf, _ = tiny_file
    dest = tmp_path / "imported"
    runner = CliRunner()
    assert runner.invoke(cli, ["model", "import-gguf", str(gguf), str(dest)]).exit_code == 0
    again = runner.invoke(cli, ["model", "import-gguf", str(gguf), str(dest)])
    assert again.exit_code == 0 and "já contém" in again.output
    other = tmp_path / "other"
    other.mkdir()
    refused = runner.invoke(cli, ["model", "import-gguf", str(gguf), str(other)])
    assert refused.exit_code == 2 and "já existe" in refused.output
    assert list(other.iterdir()) == []


def llama_cpp_rope_freqs(base, dim, factor=8.0, low=1.0, high=4.0, context=8192):
    """What llama.cpp's convert_hf_to_gguf.py writes as rope_freqs for a Llama 3.1+ model."""
    import math

    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / dim))
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return out


def test_rope_freqs_become_mlx_lm_llama3_rope_scaling(tiny_model, tmp_path):
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load
    from mlx_lm.models.rope_utils import Llama3RoPE

    from farensed.engine.gguf import import_gguf
    from tests.ggufwrite import F32

    config = orjson.loads((tiny_model / "config.json").read_bytes())
    dim, base = config["hidden_size"] // config["num_attention_heads"], config["rope_theta"]
    freqs = np.array(llama_cpp_rope_freqs(base, dim, factor=32.0), dtype="<f4")
    assert len(set(freqs.tolist())) > 2  # unscaled, smoothed and fully scaled frequencies all occur
    extra = (("rope_freqs.weight", freqs.shape, F32, freqs.tobytes()),)
    gguf, weights = tiny_gguf(tiny_model, tmp_path / "llama31.gguf", extra=extra)
    import_gguf(gguf, tmp_path / "out", log=lambda _m: None)
    scaling = orjson.loads((tmp_path / "out" / "config.json").read_bytes())["rope_scaling"]
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 32.0
    rope = Llama3RoPE(dim, base=base, scaling_config=scaling)  # mlx-lm divides each frequency like llama.cpp
    assert np.allclose(np.array(rope._freqs), base ** (np.arange(0, dim, 2) / dim) * freqs, rtol=1e-5)
    model, tok = load(str(tmp_path / "out"))
    config.update(rope_scaling=scaling)
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "config.json").write_bytes(orjson.dumps(config))
    reference = reference_model(tmp_path / "ref", weights)
    ids = mx.array([tok.encode(TEXTS[1])])
    want = reference(ids)
    assert mx.abs(model(ids).astype(mx.float32) - want).max().item() < 2e-3 * mx.abs(want).max().item()
