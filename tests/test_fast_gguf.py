"""GGUF files farense refuses (one line, exit 2, nothing written), the chat-template check at submit, and the
tokenizers rebuilt from metadata (byte-level BPE; SentencePiece through transformers' converter); no model."""

from __future__ import annotations

import io

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.errors import SpecError
from farensed.models.gguf_header import read_header
from farensed.models.gguf_support import check_supported
from tests.ggufwrite import Q2_K, TOKENS, metadata, qwen2_metadata, tensors, write_gguf
from tests.helpers import spec_with, write_spec

TEXTS = [
    "Olá! Quando abre o Museu Municipal de Faro? Às 10h, 2024-11-27 às 18:30.",
    "émojis 🎉, ÇÃÕ ñ ß 中文, bytes \x00\x7f\u200b, tabs\t\tand\nnewlines",
    "def f(x):\n    return x**2  # 12345",
]


@pytest.mark.parametrize(
    "md,odd,biases,message",
    [
        (metadata(**{"general.architecture": "qwen3"}), None, (), "arquitetura 'qwen3' não suportada"),
        (metadata(), Q2_K, (), "quantização Q2_K (tensor blk.0.attn_q.weight) não suportada"),
        (metadata(**{"tokenizer.ggml.model": "bert"}), None, (), "tokenizer.ggml.model 'bert' não suportado"),
        (metadata(**{"tokenizer.ggml.pre": "tekken"}), None, (), "tokenizer.ggml.pre 'tekken' não suportado"),
        (metadata(**{"llama.expert_count": 8}), None, (), "MoE"),
        (metadata(**{"general.architecture": "qwen2"}), None, (), "falta qwen2.block_count"),
        (qwen2_metadata(), None, (), "falta tensor blk.0.attn_q.bias"),
        (metadata(), None, ("attn_q",), "falta tensor blk.0.attn_k.bias"),
        (metadata(**{"tokenizer.ggml.bos_token_id": 99}), None, (), "tokenizer.ggml.bos_token_id 99 fora do"),
        (metadata(**{"general.architecture": "\x1b]0;pwn\x07"}), None, (), r"arquitetura '\x1b]0;pwn\x07'"),
    ],
)
def test_unsupported_gguf_is_one_line_exit_2(tmp_path, md, odd, biases, message):
    folder = tmp_path / "g"
    folder.mkdir()
    path = write_gguf(folder / "m.gguf", md, tensors(odd, biases))
    result = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(folder / "out")])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert [p.name for p in folder.iterdir()] == ["m.gguf"]  # nothing written
    info = CliRunner().invoke(cli, ["model", "info", str(path)])
    assert info.exit_code == 2 and "Suportado" not in info.output


def test_header_reader_and_info(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", metadata(**{"llama.attention.layer_norm_rms_epsilon": 1e-5}), tensors())
    info = read_header(path)
    check_supported(info)
    assert info.metadata["llama.attention.layer_norm_rms_epsilon"] == 1e-5  # float32 read back as 1e-05
    assert info.tensors["token_embd.weight"].shape == (len(TOKENS), 32)
    result = CliRunner().invoke(cli, ["model", "info", str(path), "--json"])
    doc = orjson.loads(result.output)
    assert result.exit_code == 0 and doc["supported"] is True and doc["chat_template"] is False
    assert doc["conversions"]["F32"]["count"] == 11 and doc["conversions"]["F32"]["exact"] is True
    assert doc["error"]["max_abs"] == 0 and doc["error"]["values"] == sum(t.size for t in info.tensors.values())
    text = CliRunner().invoke(cli, ["model", "info", str(path)]).output
    assert "F32 ×11 → float32: exato" in text and "Erro no total: nenhum" in text and "✅ Suportado" in text
    (tmp_path / "not.gguf").write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(SpecError, match="não é um ficheiro GGUF"):
        read_header(tmp_path / "not.gguf")
    (tmp_path / "short.gguf").write_bytes(path.read_bytes()[:200])
    with pytest.raises(SpecError, match="truncado"):
        read_header(tmp_path / "short.gguf")


def _workspace_with(home, md: dict, example: dict):
    (home / "models").mkdir()
    write_gguf(home / "models" / "q.gguf", md, tensors())
    (home / "data").mkdir()
    for name in ("train", "valid"):
        (home / "data" / f"{name}.jsonl").write_bytes(orjson.dumps(example) + b"\n")
    data = {"train": "data/train.jsonl", "valid": "data/valid.jsonl"}
    return spec_with(model="models/q.gguf", data=data, batch_size=1, grad_accumulation=1, save_every=1)


def test_spec_with_an_unsupported_gguf_is_refused_before_anything_runs(isolated_home):
    from farensed.spec.load import load_spec
    from farensed.storage.workspace import Workspace

    spec = _workspace_with(isolated_home, metadata(**{"general.architecture": "qwen3"}), {"text": "olá"})
    with pytest.raises(SpecError, match=r"model: .*q\.gguf: arquitetura 'qwen3'"):
        load_spec(write_spec(isolated_home, spec), Workspace.at(isolated_home))
    with pytest.raises(SpecError, match="ficheiro GGUF não encontrado"):
        load_spec(write_spec(isolated_home, dict(spec, model="models/none.gguf")), Workspace.at(isolated_home))
    assert not (isolated_home / "models" / "q.gguf.mlx").exists()
    blob = isolated_home / "models" / "sha256-0a1b"  # an Ollama blob: a GGUF with no .gguf in its name
    write_gguf(blob, metadata(), tensors())
    with pytest.raises(SpecError, match=r"sha256-0a1b é um GGUF sem a extensão \.gguf .*ln -s"):
        load_spec(write_spec(isolated_home, dict(spec, model="models/sha256-0a1b")), Workspace.at(isolated_home))


MESSAGES = {"messages": [{"role": "user", "content": "Olá?"}, {"role": "assistant", "content": "Olá."}]}


def test_messages_data_on_a_gguf_without_chat_template_is_refused_at_submit_with_the_fix(isolated_home):
    from farensed.spec.load import load_spec
    from farensed.storage.workspace import Workspace

    spec = write_spec(isolated_home, _workspace_with(isolated_home, metadata(), MESSAGES))
    result = CliRunner().invoke(cli, ["--home", str(isolated_home), "submit", str(spec)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "q.gguf não tem chat template" in result.output and "os dados são 'messages'" in result.output
    assert not list((isolated_home / "jobs" / "pending").glob("*"))  # nothing queued
    doctor = CliRunner().invoke(cli, ["--home", str(isolated_home), "doctor", str(spec), "--json"])
    check = next(c for c in orjson.loads(doctor.output)["checks"] if c["name"] == "model")
    assert check["status"] == "fail" and "chat template" in check["detail"]
    with_template = metadata(**{"tokenizer.chat_template": "{{ messages[0]['content'] }}"})
    write_gguf(isolated_home / "models" / "q.gguf", with_template, tensors())
    load_spec(spec, Workspace.at(isolated_home))  # accepted: the template is in the file
    write_gguf(isolated_home / "models" / "q.gguf", metadata(), tensors())
    for name in ("train", "valid"):  # mlx-lm lays prompt/completion out with the chat template too
        (isolated_home / "data" / f"{name}.jsonl").write_bytes(orjson.dumps({"prompt": "a", "completion": "b"}) + b"\n")
    with pytest.raises(SpecError, match="os dados são 'prompt/completion'"):
        load_spec(spec, Workspace.at(isolated_home))
    (isolated_home / "data" / "train.jsonl").write_bytes(orjson.dumps({"text": "olá"}) + b"\n")
    (isolated_home / "data" / "valid.jsonl").write_bytes(orjson.dumps({"text": "olá"}) + b"\n")
    load_spec(spec, Workspace.at(isolated_home))  # plain text needs no template


def test_byte_level_tokenizer_from_metadata_specials_digits_and_bos():
    from farensed.engine.gguf_tokenizer import build_tokenizer

    tok = build_tokenizer(metadata(**{"tokenizer.chat_template": "{{ messages[0]['content'] }}"}))
    assert tok.convert_ids_to_tokens(tok.encode("ab ab<|im_end|>12")) == ["ab", "Ġab", "<|im_end|>", "1", "2"]
    assert tok.decode(tok.encode("ab ab12")) == "ab ab12"
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    with_bos = build_tokenizer(metadata(**{"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.pre": "default"}))
    assert with_bos.encode("ab 12") == [1, 5, 8, 10]  # GPT-2's split keeps "12" whole


def _converter_ids(md: dict, texts: list[str]) -> list[list[int]]:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    renames = GGUF_TOKENIZER_MAPPING["tokenizer"]
    fields = {n: md[f"tokenizer.{k}"] for k, n in renames.items() if f"tokenizer.{k}" in md}
    theirs, _ = convert_gguf_tokenizer(md["general.architecture"], fields)
    return [theirs.encode(t, add_special_tokens=False).ids for t in texts]


@pytest.fixture(scope="module")
def sentencepiece_model():
    """A real SentencePiece BPE model with byte fallback (as Llama 2 / Mistral's), trained on the demo text, and
    the GGUF metadata llama.cpp's convert script writes for it (pieces, scores, token types)."""
    import sentencepiece as spm

    from farensed.demo.data import pretraining_text

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(pretraining_text()),
        model_writer=buf,
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",  # Llama's: no NFKC, spaces kept as they are
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
    md = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
    }
    return sp, md


def test_sentencepiece_tokenizer_has_the_converters_and_sentencepieces_ids(sentencepiece_model, tmp_path):
    from transformers import AutoTokenizer

    from farensed.engine.gguf_tokenizer import build_tokenizer

    sp, md = sentencepiece_model
    ours = build_tokenizer(md)
    texts = TEXTS + ["a<s>b</s>c [INST] Olá [/INST]"]
    assert [ours.encode(t, add_special_tokens=False) for t in texts] == _converter_ids(md, texts)
    for text in TEXTS:  # sentencepiece itself: what the model was trained with, byte fallback included
        assert ours.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == text
    assert any(sp.is_byte(i) for i in sp.encode(TEXTS[1]))  # the emoji and CJK went through byte fallback
    assert ours.encode("Faro") == [1, *sp.encode("Faro")]  # llama.cpp's default for SentencePiece: BOS added
    assert ours.bos_token == "<s>" and ours.eos_token == "</s>" and ours.unk_token == "<unk>"
    no_bos = build_tokenizer(dict(md, **{"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True}))
    assert no_bos.encode("Faro") == [*sp.encode("Faro"), 2]
    no_prefix = build_tokenizer(dict(md, **{"tokenizer.ggml.add_space_prefix": False}))
    pieces = no_prefix.convert_ids_to_tokens(no_prefix.encode("Faro", add_special_tokens=False))
    assert not pieces[0].startswith("\u2581") and ours.convert_ids_to_tokens(ours.encode("Faro"))[1].startswith(
        "\u2581"
    )
    ours.save_pretrained(str(tmp_path))  # what mlx-lm loads
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    assert [again.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]
    chat = again.apply_chat_template([{"role": "user", "content": "Olá"}], tokenize=False)
    assert chat == "<s>[INST] Olá [/INST]"


def test_qwen2_pre_tokenizer_matches_the_converter():
    from farensed.engine.gguf_tokenizer import build_tokenizer

    bytes_alphabet = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["Ġ", "Ċ", "ĉ"]
    tokens = TOKENS + [t for t in bytes_alphabet if t not in TOKENS] + ["Fa", "ro", "Faro", "ĠFaro", "ĠĠ"]
    md = metadata(
        **{
            "general.architecture": "qwen2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [3, 3, 3] + [1] * (len(tokens) - 3),
            "tokenizer.ggml.merges": ["a b", "Ġ ab", "1 2", "F a", "r o", "Fa ro", "Ġ Faro", "Ġ Ġ"],
        }
    )
    texts = ["Faro  Faro 12345 ab<|im_end|>\n\n  x", "it's 1,234.5 ab ab"]
    ours = build_tokenizer(md)
    assert [ours.encode(t, add_special_tokens=False) for t in texts] == _converter_ids(md, texts)
    assert ours.convert_ids_to_tokens(ours.encode("12345"))[:3] == ["1", "2", "3"]  # qwen2 splits every digit


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
    from farensed.engine.gguf_config import llama3_rope_freqs, rope_scaling_from_freqs

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


def test_doctor_on_a_gguf_spec_states_the_file_s_size_as_the_weights(isolated_home):
    from farensed.units import size

    spec = write_spec(isolated_home, _workspace_with(isolated_home, metadata(), {"text": "olá"}))
    doctor = CliRunner().invoke(cli, ["--home", str(isolated_home), "doctor", str(spec), "--json"])
    (estimate,) = [c for c in orjson.loads(doctor.output)["checks"] if c["name"] == "estimate"]
    weights = (isolated_home / "models" / "q.gguf").stat().st_size
    assert weights > 0 and f"({size(weights)})" in estimate["detail"].replace("os pesos ocupam ", "")


def test_importing_the_same_gguf_again_keeps_it_and_another_layout_is_refused(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", metadata(), tensors())
    out = tmp_path / "out"
    first = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(out)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(out), "--json"])
    assert again.exit_code == 0 and orjson.loads(again.stdout)["already"] is True
    compact = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(out), "--compact"])
    assert compact.exit_code == 2 and "sem --compact; escolha outra pasta" in compact.output  # never dropped silently
