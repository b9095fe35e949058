"""A tiny real Mistral-architecture model, built offline: BPE tokenizer, brief pre-training, 4-bit convert."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import shutil
import tempfile
from pathlib import Path

import orjson

from farensed.demo.data import FACTS, demo_examples, pretraining_text
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_json, fsync_dir, move_aside

# Everything that determines the weights; a change here rebuilds the model.
RECIPE = {
    "version": 1,
    "seed": 0,
    "vocab_size": 1024,
    "config": {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    },
    "pretrain": {"steps": 120, "batch_size": 16, "seq_len": 48, "learning_rate": 3e-3},
    "quantize": {"group_size": 32, "bits": 4},
}
MARKER = "farense_model.json"

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def recipe_hash() -> str:
    return hashlib.sha256(orjson.dumps(RECIPE, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def is_valid(folder: Path) -> bool:
    """A finished build of the current recipe (the marker is written last)."""
    try:
        marker = orjson.loads((folder / MARKER).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return marker.get("recipe") == recipe_hash() and all((folder / f).is_file() for f in files)


def _tokenizer_corpus() -> list[str]:
    train, _ = demo_examples(RECIPE["seed"])
    return pretraining_text() + [" ".join(m["content"] for m in ex["messages"]) for ex in train]


def _train_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"],
        special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def _progress(steps: int):
    """The pre-training's steps with a progress bar: the first build takes minutes and must not look hung."""
    import os
    import sys

    from tqdm import tqdm

    return tqdm(
        range(steps), desc=_("Pré-treino"), unit="step", mininterval=0.5 if os.isatty(1) else 10, file=sys.stdout
    )


def _pretrain(model, tokenizer) -> float:
    """A few hundred steps of full training on the demo text, so QLoRA has a base to adapt."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import numpy as np

    p = RECIPE["pretrain"]
    ids: list[int] = []
    for line in pretraining_text():  # plain text: the chat format is left for QLoRA to learn
        ids += [tokenizer.bos_token_id] + tokenizer.encode(line, add_special_tokens=False) + [tokenizer.eos_token_id]
    stream = np.array(ids, dtype=np.int32)
    rng = np.random.default_rng(RECIPE["seed"])
    optimizer = optim.Adam(learning_rate=p["learning_rate"])

    def loss_fn(model, x, y):
        return nn.losses.cross_entropy(model(x), y, reduction="mean")

    step = nn.value_and_grad(model, loss_fn)
    loss = float("nan")
    for _step in _progress(p["steps"]):
        starts = rng.integers(0, len(stream) - p["seq_len"] - 1, size=p["batch_size"])
        batch = np.stack([stream[s : s + p["seq_len"] + 1] for s in starts])
        x, y = mx.array(batch[:, :-1]), mx.array(batch[:, 1:])
        value, grads = step(model, x, y)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, value)
        loss = value.item()
    return loss


def build_tiny_model(target: Path, force: bool = False, log=print) -> Path:
    """Build models/tiny-mistral-4bit/ unless a valid build is already there (idempotent)."""
    target = Path(target)
    if not force and is_valid(target):
        return target
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.convert import convert
    from mlx_lm.models import llama

    log(
        _(
            "A construir o modelo pequeno em {target}: tokenizer, {steps} passos de pré-treino e conversão a 4 bits "
            "(só da primeira vez)..."
        ).format(target=target, steps=RECIPE["pretrain"]["steps"])
    )
    mx.random.seed(RECIPE["seed"])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        fp_dir, q_dir = Path(tmp) / "fp32", Path(tmp) / "q4"
        fp_dir.mkdir()
        tokenizer = _train_tokenizer(fp_dir)
        config = dict(RECIPE["config"], vocab_size=len(tokenizer), torch_dtype="float32")
        config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = llama.Model(llama.ModelArgs.from_dict(config))
        final_loss = _pretrain(model, tokenizer)
        mx.save_safetensors(str(fp_dir / "model.safetensors"), dict(tree_flatten(model.parameters())))
        (fp_dir / "config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
        q = RECIPE["quantize"]
        with contextlib.redirect_stdout(io.StringIO()) as said:  # mlx-lm's [INFO] lines: said below in words
            convert(str(fp_dir), str(q_dir), quantize=True, q_group_size=q["group_size"], q_bits=q["bits"])
        bits_per_weight = _passed_on(said.getvalue(), log)
        atomic_write_json(q_dir / MARKER, {"recipe": recipe_hash(), "pretrain_loss": final_loss, "facts": len(FACTS)})
        if target.exists():
            move_aside(target)
        shutil.move(str(q_dir), str(target))
        fsync_dir(target.parent)
    log(_("✅ Modelo pronto: {target}").format(target=target))
    log(about_the_model(final_loss, q["bits"], q["group_size"], bits_per_weight))
    return target


def _passed_on(said: str, log) -> float | None:
    """The bits per weight mlx-lm's convert reported; any line of its other than [INFO] is passed on as it was."""
    for line in said.splitlines():
        if line.strip() and not line.startswith("[INFO]"):
            log(line)
    found = re.search(r"with ([0-9.]+) bits per weight", said)
    return float(found.group(1)) if found else None


def about_the_model(final_loss: float, bits: int, group_size: int, bits_per_weight: float | None = None) -> str:
    """What the build's numbers mean: the pre-training loss is not the demo's scale, and the bits per weight mlx-lm
    measures count more than the 4-bit layers."""
    weight = (
        _("Quantizado a {bits} bits, o modelo pesa {bpw:.2f} bits por peso").format(bits=bits, bpw=bits_per_weight)
        if bits_per_weight
        else _("Quantizado a {bits} bits, o modelo pesa mais do que {bits} bits por peso").format(bits=bits)
    )
    return _(
        "ℹ  Loss de pré-treino {final_loss:.3f}, em texto corrido; o treino do demo mede outra coisa (só as respostas, "
        "em formato de chat), por isso começa mais alto. {weight}: contam também a escala e o bias de cada grupo de "
        "{group_size} pesos e as camadas que ficam em float, que num modelo tão pequeno pesam muito."
    ).format(final_loss=final_loss, weight=weight, group_size=group_size)
