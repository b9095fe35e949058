"""GGUF files farense refuses (one line, exit 2, nothing written) and the tokenizer rebuilt from metadata; no model."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.errors import SpecError
from farensed.models.gguf_header import check_supported, read_header
from tests.ggufwrite import F32, Q4_K, write_gguf
from tests.helpers import spec_with, write_spec

TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab", "1", "2", "Ġ", "Ġab", "12"]


def metadata(**changes) -> dict:
    md = {
        "general.architecture": "llama",
        "llama.block_count": 1,
        "llama.embedding_length": 32,
        "llama.feed_forward_length": 32,
        "llama.attention.head_count": 2,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(TOKENS) - 3),
        "tokenizer.ggml.merges": ["a b", "Ġ ab", "1 2"],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    md.update(changes)
    return {k: v for k, v in md.items() if v is not None}


def tensors(odd_type: int | None = None) -> list:
    names = [f"blk.0.{n}.weight" for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up")]
    names += ["blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"]
    out = [("token_embd.weight", (len(TOKENS), 32), F32, np.zeros((len(TOKENS), 32), "<f4").tobytes())]
    out += [("output_norm.weight", (32,), F32, np.ones(32, "<f4").tobytes())]
    for name in names:
        shape = (32,) if "norm" in name else (32, 32)
        out.append((name, shape, F32, np.zeros(shape, "<f4").tobytes()))
    if odd_type == Q4_K:  # a K-quant block: 144 bytes per 256 weights
        out[2] = ("blk.0.attn_q.weight", (32, 256), Q4_K, b"\0" * (32 * 144))
    return out


@pytest.mark.parametrize(
    "md,odd,message",
    [
        (metadata(**{"general.architecture": "qwen2"}), None, "arquitetura 'qwen2' não suportada"),
        (metadata(), Q4_K, "quantização Q4_K (tensor blk.0.attn_q.weight) não suportada"),
        (metadata(**{"tokenizer.ggml.model": "llama"}), None, "tokenizer.ggml.model 'llama' não suportado"),
        (metadata(**{"tokenizer.ggml.pre": "qwen2"}), None, "tokenizer.ggml.pre 'qwen2' não suportado"),
        (metadata(**{"llama.expert_count": 8}), None, "MoE"),
    ],
)
def test_unsupported_gguf_is_one_line_exit_2(tmp_path, md, odd, message):
    folder = tmp_path / "g"
    folder.mkdir()
    path = write_gguf(folder / "m.gguf", md, tensors(odd))
    result = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(folder / "out")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert [p.name for p in folder.iterdir()] == ["m.gguf"]  # nothing written
    assert CliRunner().invoke(cli, ["model", "info", str(path)]).exit_code == 2


def test_header_reader_and_info(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", metadata(**{"llama.attention.layer_norm_rms_epsilon": 1e-5}), tensors())
    info = read_header(path)
    check_supported(info)
    assert info.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # float32 read back as 1e-05
    assert info.tensors["token_embd.weight"].shape == (len(TOKENS), 32)
    result = CliRunner().invoke(cli, ["model", "info", str(path), "--json"])
    assert result.exit_code == 0 and orjson.loads(result.output)["supported"] is True
    (tmp_path / "not.gguf").write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(SpecError, match="não é um ficheiro GGUF"):
        read_header(tmp_path / "not.gguf")
    (tmp_path / "short.gguf").write_bytes(path.read_bytes()[:200])
    with pytest.raises(SpecError, match="truncado"):
        read_header(tmp_path / "short.gguf")


def test_spec_with_an_unsupported_gguf_is_refused_before_anything_runs(isolated_home):
    from farensed.spec.load import load_spec
    from farensed.storage.workspace import Workspace

    (isolated_home / "models").mkdir()
    write_gguf(isolated_home / "models" / "q.gguf", metadata(**{"general.architecture": "qwen2"}), tensors())
    data = isolated_home / "data"
    data.mkdir()
    for name in ("train", "valid"):
        (data / f"{name}.jsonl").write_bytes(orjson.dumps({"text": "olá"}) + b"\n")
    spec = spec_with(model="models/q.gguf", data={"train": "data/train.jsonl", "valid": "data/valid.jsonl"})
    with pytest.raises(SpecError, match=r"model: .*q\.gguf: arquitetura 'qwen2'"):
        load_spec(write_spec(isolated_home, spec), Workspace.at(isolated_home))
    with pytest.raises(SpecError, match="ficheiro GGUF não encontrado"):
        load_spec(write_spec(isolated_home, dict(spec, model="models/none.gguf")), Workspace.at(isolated_home))
    assert not (isolated_home / "models" / "q.gguf.mlx").exists()


def test_tokenizer_from_metadata_specials_digits_and_bos():
    from farensed.engine.gguf_tokenizer import build_tokenizer

    tok = build_tokenizer(metadata(**{"tokenizer.chat_template": "{{ messages[0]['content'] }}"}))
    assert tok.convert_ids_to_tokens(tok.encode("ab ab<|im_end|>12")) == ["ab", "Ġab", "<|im_end|>", "1", "2"]
    assert tok.decode(tok.encode("ab ab12")) == "ab ab12"
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    with_bos = build_tokenizer(metadata(**{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.pre": "default"}))
    assert with_bos.encode("ab 12") == [1, 5, 8, 10]  # GPT-2's split keeps "12" whole


def test_model_info_and_spec_checks_do_not_import_mlx(tmp_path):
    import subprocess
    import sys

    from tests.helpers import child_env

    path = write_gguf(tmp_path / "m.gguf", metadata(), tensors())
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom farensed.cli.main import cli\n"
        "from farensed.spec.datacheck import check_model_dir\nfrom pathlib import Path\n"
        f"assert CliRunner().invoke(cli, ['model', 'info', {str(path)!r}]).exit_code == 0\n"
        f"check_model_dir(Path({str(path)!r}), 'model')\n"
        "print('MLX', sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'transformers')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MLX []" in proc.stdout


def test_rope_freqs_that_are_not_llama3_scaling_are_refused(tmp_path):
    from farensed.engine.gguf import llama3_rope_freqs, rope_scaling_from_freqs

    info = read_header(write_gguf(tmp_path / "m.gguf", metadata(), tensors()))
    good = llama3_rope_freqs(500000.0, 64, 8.0, 1.0, 4.0, 8192)
    assert rope_scaling_from_freqs(info, good, 500000.0, 64)["factor"] == 8.0
    assert rope_scaling_from_freqs(info, [1.0] * 32, 500000.0, 64) is None
    with pytest.raises(SpecError, match="não corresponde ao rope 'llama3'"):
        rope_scaling_from_freqs(info, [1.0] * 16 + [3.0] * 16, 500000.0, 64)


def test_a_gguf_whose_folder_cannot_take_the_import_is_one_line(tmp_path):
    from farensed.engine.gguf import model_path

    path = write_gguf(tmp_path / "m.gguf", metadata(), tensors())
    (tmp_path / ".m.gguf.lock").mkdir()  # the lock file cannot be created (as a read-only folder, even for root)
    with pytest.raises(SpecError, match="não foi possível importar para m.gguf.mlx ao lado do GGUF"):
        model_path(path)
    assert not (tmp_path / "m.gguf.mlx").exists()
