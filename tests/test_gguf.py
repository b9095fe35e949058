"""GGUF import on files written by llama.cpp's GGUFWriter: the tiny model (q/k permuted as llama.cpp does), one of
every supported type (exact where MLX can hold the blocks), qwen2, and a K-quant model trained, killed and resumed."""

from __future__ import annotations

import subprocess

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
    assert summary["bits"] == 4  # Q4_0/Q4_1 modules; the Q8_0 ones are listed with 8 bits, Q5_0/Q5_1 with 5
    assert summary["bits_by_module"] == {
        "model.embed_tokens": 8,
        **{f"model.layers.{i}.self_attn.v_proj": 8 for i in range(2)},
        **{f"model.layers.{i}.mlp.{m}_proj": 5 for i in range(2) for m in ("gate", "up")},
    }
    assert summary["error"]["max_abs"] == 0 and all(row["exact"] for row in summary["conversions"].values())
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
    gone = subprocess.Popen(["true"])  # its pid: an import killed midway, which left a model-sized folder
    gone.wait()
    (tmp_path / f".imported.tmp-{gone.pid}").mkdir()
    (tmp_path / f".imported.tmp-{gone.pid}" / "model-00001.safetensors").write_bytes(b"half")
    (tmp_path / f".notes.txt.tmp-{gone.pid}").write_bytes(b"another program's")
    runner = CliRunner()
    assert runner.invoke(cli, ["model", "import-gguf", str(gguf), str(dest)]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [f".notes.txt.tmp-{gone.pid}"]
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
    extra = (("rope_freqs.weight", freqs, F32),)
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


def _hf_rows(stored, n_head):
    """llama.cpp's q/k rows back in Hugging Face order, with mlx-lm's own permutation (not farense's)."""
    import numpy as np
    from mlx_lm.gguf import permute_weights

    rows = stored.shape[0]
    order = permute_weights(np.arange(rows), n_head).astype(int)  # stored row i is Hugging Face row order[i]
    out = np.empty_like(stored)
    out[order] = stored
    return out


def _synthetic_reference(gguf_ref: dict, arch: str) -> dict:
    """The float model llama.cpp's values make, under mlx-lm names (q/k rows un-permuted for llama)."""
    from farensed.models.gguf_support import mlx_name

    out = {}
    for name, values in gguf_ref.items():
        if arch == "llama" and ".attn_q." in name:
            values = _hf_rows(values, 4)
        elif arch == "llama" and ".attn_k." in name:
            values = _hf_rows(values, 2)
        out[mlx_name(name)] = values
    return out


def _logits_close(model, reference, vocab: int, tol: float):
    import mlx.core as mx

    ids = mx.array([[i % vocab for i in range(3, 40)]])
    got, want = model(ids).astype(mx.float32), reference(ids)
    assert mx.abs(got - want).max().item() < tol * mx.abs(want).max().item()


def test_every_supported_type_imports_and_equals_llama_cpps_values(tmp_path):
    import mlx.core as mx
    import numpy as np
    from mlx_lm import load
    from mlx_lm.models import llama

    from tests.ggufwrite import metadata, synthetic_gguf

    path, gguf_ref = synthetic_gguf(tmp_path / "all.gguf", metadata())
    summary = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(tmp_path / "out"), "--json"])
    assert summary.exit_code == 0, summary.output
    conversions = orjson.loads(summary.output)["conversions"]
    assert [k for k, r in conversions.items() if not r["exact"]] == ["Q6_K"]
    reference = _synthetic_reference(gguf_ref, "llama")
    saved = mx.load(str(tmp_path / "out" / "model.safetensors"))
    config = orjson.loads((tmp_path / "out" / "config.json").read_bytes())
    for name, want in reference.items():
        module = name.rsplit(".", 1)[0]
        if f"{module}.scales" in saved:
            got = mx.dequantize(
                saved[f"{module}.weight"],
                saved[f"{module}.scales"].astype(mx.float32),
                saved[f"{module}.biases"].astype(mx.float32),
                group_size=32,
                bits=config["quantization"].get(module, config["quantization"])["bits"],
            )
        else:
            got = saved[name].astype(mx.float32)
        if module == "lm_head":  # Q6_K → 8 bits: within what the summary measured
            assert 0 < np.abs(np.array(got) - want).max() <= conversions["Q6_K"]["max_abs"] * (1 + 1e-6)
        else:
            assert np.array_equal(np.array(got), want), name
    model, _tok = load(str(tmp_path / "out"))
    assert model.model.layers[0].self_attn.q_proj.bits == 5 and model.model.layers[0].mlp.up_proj.bits == 8
    ref_config = {k: v for k, v in config.items() if not k.startswith("quantization")}
    ref_model = llama.Model(llama.ModelArgs.from_dict(ref_config))
    ref_model.load_weights([(k, mx.array(v)) for k, v in reference.items()], strict=True)
    _logits_close(model, ref_model, config["vocab_size"], 1e-2)  # the Q6_K output layer's small error


def test_qwen2_maps_onto_mlx_lms_qwen2_without_permutation(tmp_path):
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models import qwen2

    from farensed.engine.gguf import import_gguf
    from tests.ggufwrite import F32, Q8_0, qwen2_metadata, synthetic_gguf

    types = {"output": Q8_0, "ffn_down": F32}  # every tensor exact: the logits must agree to float rounding
    path, gguf_ref = synthetic_gguf(tmp_path / "qwen2.gguf", qwen2_metadata(), types=types)
    summary = import_gguf(path, tmp_path / "out", log=lambda _m: None)
    assert summary["architecture"] == "qwen2" and summary["error"]["max_abs"] == 0
    model, tok = load(str(tmp_path / "out"))
    assert type(model).__module__ == "mlx_lm.models.qwen2"
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # the biases llama.cpp keeps for qwen2
    config = orjson.loads((tmp_path / "out" / "config.json").read_bytes())
    ref_model = qwen2.Model(qwen2.ModelArgs.from_dict({k: v for k, v in config.items() if "quantization" not in k}))
    reference = _synthetic_reference(gguf_ref, "qwen2")  # qwen2's q/k rows are stored in Hugging Face order
    ref_model.load_weights([(k, mx.array(v)) for k, v in reference.items()], strict=True)
    _logits_close(model, ref_model, config["vocab_size"], 1e-4)
    assert tok.convert_ids_to_tokens(tok.encode("Faro 12"))[-2:] == ["1", "2"]  # qwen2's digit split


@pytest.mark.e2e
def test_qlora_on_an_imported_k_quant_model_resumes_exactly_after_sigkill(tmp_path, tiny_model):
    """The tiny model widened to 256 and written as Q4_K/Q5_K/Q6_K (a Q4_K_M-like mix) by GGUFWriter."""
    import signal

    from tests.conftest import make_workspace
    from tests.ggufwrite import K_TYPES, tiny_gguf
    from tests.helpers import assert_same_adapters, deterministic_metrics, kill_at_record
    from tests.test_mlxlm_options import short_spec

    gguf, _ = tiny_gguf(tiny_model, tmp_path / "tiny-k.gguf", types=K_TYPES, width=256)
    spec = short_spec(model="models/tiny-k.gguf", iters=12, eval_every=4, save_every=2)
    runs = {}
    for name in ("reference", "killed"):
        root = make_workspace(tmp_path / name, tiny_model)
        (root / "models" / "tiny-k.gguf").write_bytes(gguf.read_bytes())
        runs[name] = (root, write_spec(root, spec))
    root, path = runs["reference"]
    proc = run_cli(root, "run", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:]
    imported = orjson.loads((root / "models" / "tiny-k.gguf.mlx" / "farense_gguf.json").read_bytes())["summary"]
    assert imported["tensor_types"] == {"Q4_K": 7, "Q5_K": 2, "Q6_K": 5, "Q8_0": 2, "F32": 5}
    summary = orjson.loads((root / "checkpoints_qlora/t/training_summary.json").read_bytes())
    assert summary["final_val_loss"] < summary["first_val_loss"]  # the widened tiny model still learns

    killed, path = runs["killed"]
    assert kill_at_record(killed, path, 3) == -signal.SIGKILL  # after 3 of the 6 updates
    proc = run_cli(killed, "run", str(path))
    assert proc.returncode == 0 and "A retomar de checkpoint_epoch" in proc.stdout, proc.stdout[-3000:]
    for rel in ("output/t/adapters.safetensors", "checkpoints_qlora/t/adapters/adapters.safetensors"):
        assert_same_adapters(root / rel, killed / rel)
    assert deterministic_metrics(root / "checkpoints_qlora/t") == deterministic_metrics(killed / "checkpoints_qlora/t")
