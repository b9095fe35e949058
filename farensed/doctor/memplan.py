"""The memory plan of a training step, before the first run: arithmetic on the model's config, the spec and the
data's lengths, without loading weights (and without mlx).

A step's peak is the weights, the trainable parameters with their gradient and optimizer state, and what the step
allocates: the activations the adapted layers keep for the backward pass, their attention scores, the forward
pass of the frozen layers below them, and the output projection's logits with the cross-entropy (all positions
with mlx-lm's `default_loss`; the counted ones with farense's; a few tiles with `ce_chunk`). Each term is sized
from the shapes; one coefficient per term was fitted on peaks measured with `mx.get_peak_memory()`
(`python -m bench.memory --calibrate`: the tiny model and SmolLM2-135M, on this project's CPU machine) and is
checked by tests/test_fast_memplan.py against those measurements. Apple GPUs allocate differently (Metal command
buffers, float16 activations for most models): the plan is an estimate there, to be re-measured with the same bench.
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.spec.modelcheck import MAX_CONFIG_BYTES, WEIGHTS_GLOB
from farensed.storage.regular import open_regular, read_regular

PAD_TO = 8  # the engine's batch widths (engine/data.py: padded_width), repeated: the doctor may not import engine
BUCKET = 64  # the engine's gathered-position bucket (engine/trainloss.py)
AUTO_TILE = 4096  # the engine's automatic ce_chunk (engine/chunkce.py: DEFAULT_TILE)
MAX_HEADER = 64 << 20  # a safetensors header larger than this is not read
MAX_DIM = 1 << 24  # a config.json size beyond this is no model's (the largest vocabularies hold ~256k rows)
NORM_DTYPE_RE = re.compile(rb'norm\.weight"\s*:\s*\{[^{}]*?"dtype"\s*:\s*"([A-Z0-9]{1,8})"')

# fitted coefficients (bytes of the term per byte of its shape); see bench/RESULTS.md, "Memory plan"
COEF = {
    "layers": 0.7684,  # activations each adapted block keeps for the backward pass
    "attention": 0.6742,  # their attention scores (kept: MLX's attention without a fused backward on this CPU)
    "frozen": 0.311,  # the frozen blocks' forward pass
    "transient": 1.7731,  # one block's working set at a time (forward, backward or recomputation)
    "head": 4.008,  # logits, their softmax and gradient (positions x vocabulary)
    "tiles": 5.1711,  # tiled cross-entropy: positions x tile, a few tiles in flight
    "fixed": 105906,  # bytes
}


@dataclass
class ModelShape:
    """What a step's memory depends on in a model: sizes from config.json, bytes from the weight files."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    weights_bytes: int
    act_bytes: int  # bytes per activation: the float type of the unquantized tensors (norms, scales)


@dataclass
class StepShape:
    """The widest batch of a run: rows, padded width (tokens + 1), positions the loss counts, gathered (bucketed)."""

    rows: int
    width: int
    counted: int
    gathered: int


def _half_norms(path: Path) -> bool:
    """Whether a safetensors header lists a norm weight in float16 or bfloat16 (the activations' type). The header
    is read bounded, from a regular file only, and searched as text: a hostile header's millions of entries are
    never turned into Python objects (entries are flat objects: none spans a brace)."""
    try:
        with open_regular(path) as f:
            prefix = f.read(8)
            size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else MAX_HEADER + 1
            header = f.read(size) if size <= MAX_HEADER else b""
    except OSError:
        return False
    return any(m.group(1) in (b"F16", b"BF16") for m in NORM_DTYPE_RE.finditer(header))


def _dim(config: dict, key: str, default=None) -> int:
    """One size of config.json: an integer from 1 to MAX_DIM (ValueError otherwise)."""
    value = config.get(key) or default
    if isinstance(value, float) and value.is_integer() and 1 <= value <= MAX_DIM:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
        raise ValueError(key)
    return value


def model_shape(model_dir: Path) -> ModelShape | None:
    """The shape of an mlx-lm model folder (config.json, the safetensors headers of the weights mlx-lm loads); None
    when config.json cannot be read or lacks a plausible size (an integer from 1 to MAX_DIM) the plan needs."""
    model_dir = Path(model_dir)
    try:  # a regular file only, bounded: a FIFO or a huge file planted as config.json never blocks the doctor
        config = orjson.loads(read_regular(model_dir / "config.json", MAX_CONFIG_BYTES))
        files = sorted(model_dir.glob(WEIGHTS_GLOB))
        weights = sum(p.stat().st_size for p in files)
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    half = any(_half_norms(p) for p in files)
    try:
        hidden, heads = _dim(config, "hidden_size"), _dim(config, "num_attention_heads")
        return ModelShape(
            model_type=config["model_type"][:40] if isinstance(config.get("model_type"), str) else "?",
            layers=_dim(config, "num_hidden_layers"),
            hidden=hidden,
            intermediate=_dim(config, "intermediate_size"),
            heads=heads,
            kv_heads=_dim(config, "num_key_value_heads", heads),
            head_dim=_dim(config, "head_dim", hidden // heads),
            vocab=_dim(config, "vocab_size"),
            weights_bytes=weights,
            act_bytes=2 if half else 4,
        )
    except ValueError:
        return None


def padded_width(longest: int, max_seq_length: int) -> int:
    return min(1 + PAD_TO * ((min(longest, max_seq_length) + PAD_TO - 1) // PAD_TO), max_seq_length)


def bucket(count: int) -> int:
    return max(BUCKET, -(-count // BUCKET) * BUCKET)


def step_shape(
    spec, longest: list[tuple[int, int]], counted_share: float, world: int = 1, total_tokens: int | None = None
) -> StepShape:
    """The widest batch: the `batch_size` longest examples (length-sorted batches), or a packed batch of full rows
    (no fuller than all the data: a max_seq_length far above the data's tokens plans the data, not the key)."""
    rows = max(spec.batch_size // max(world, 1), 1)
    if spec.pack:
        fill = min(spec.max_seq_length, max(total_tokens, 1)) if total_tokens else spec.max_seq_length
        width = PAD_TO * -(-fill // PAD_TO)
        counted = min(rows * width, math.ceil(counted_share * rows * fill * 1.1))
        return StepShape(rows, width + 1, counted, bucket(counted))
    top = longest[: spec.batch_size] or [(1, 0)]
    width = padded_width(top[0][0], spec.max_seq_length)
    counted = sum(max(0, min(n, width - 1) - max(o, 1) + 1) for n, o in top[:rows])
    return StepShape(rows, width, counted, bucket(counted))


def adapted_layers(spec, model: ModelShape) -> int:
    return model.layers if spec.lora.layers == -1 else min(spec.lora.layers, model.layers)


def trainable_parameters(spec, model: ModelShape) -> int:
    """LoRA's A and B (and DoRA's magnitudes) on every linear layer of the adapted blocks, or the blocks (full)."""
    h, i, q, kv = model.hidden, model.intermediate, model.heads * model.head_dim, model.kv_heads * model.head_dim
    linears = {
        "self_attn.q_proj": (h, q),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (q, h),
        "mlp.gate_proj": (h, i),
        "mlp.up_proj": (h, i),
        "mlp.down_proj": (i, h),
    }
    chosen = [v for k, v in linears.items() if not spec.lora.keys or k in spec.lora.keys]
    if spec.fine_tune_type == "full":
        per_layer = sum(a * b for a, b in linears.values()) + 2 * h
    else:
        per_layer = sum(spec.lora.rank * (a + b) + (b if spec.fine_tune_type == "dora" else 0) for a, b in chosen)
    return per_layer * adapted_layers(spec, model)


def tile_rows(spec, model: ModelShape) -> int:
    """The cross-entropy's tile: the spec's `ce_chunk`, or the engine's automatic choice (engine/trainloss.py:
    auto_chunk, repeated: 4096-row tiles when the vocabulary holds more than two)."""
    if spec.ce_chunk is not None:
        return min(spec.ce_chunk, model.vocab)
    return AUTO_TILE if model.vocab > 2 * AUTO_TILE else 0


OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 1, "adafactor": 1, "muon": 1}


def _kept_per_token(model: ModelShape) -> int:
    """Activations one adapted block keeps per token (a llama block)."""
    return 12 * model.hidden + 5 * model.intermediate


def _block_pass(model: ModelShape, step: StepShape) -> int:
    """Bytes of any one block's pass over a batch of this shape: its activations and attention scores."""
    positions = step.rows * (step.width - 1)
    return positions * _kept_per_token(model) * model.act_bytes + step.rows * model.heads * (step.width - 1) ** 2 * 4


def plan(spec, model: ModelShape, step: StepShape, coef: dict | None = None) -> dict[str, float]:
    """Bytes of each part of a step's peak, and `total`: what `mx.get_peak_memory()` reads over that step."""
    c = COEF if coef is None else coef
    ab, n = model.act_bytes, adapted_layers(spec, model)
    positions = step.rows * (step.width - 1)
    per_token = _kept_per_token(model)
    kept = n if not spec.grad_checkpoint else 1  # checkpointing keeps block inputs and recomputes one block
    layers = positions * (kept * per_token + (n * model.hidden if spec.grad_checkpoint else 0)) * ab
    attention = step.rows * model.heads * (step.width - 1) ** 2 * kept * 4
    frozen = positions * model.hidden * model.layers * ab
    one_layer = _block_pass(model, step)
    projected = step.gathered if spec.counted_loss or spec.pack else positions
    tile = tile_rows(spec, model)
    chunked = bool(tile) and (spec.counted_loss or spec.pack)
    logits = projected * (tile if chunked else model.vocab) * 4
    trainable = trainable_parameters(spec, model) * 4 * (2 + OPTIMIZER_STATES.get(spec.optimizer, 2))
    parts = {
        "weights": float(model.weights_bytes),
        "trainable": float(trainable),
        "layers": c["layers"] * layers,
        "attention": c["attention"] * attention,
        "frozen": c["frozen"] * frozen,
        "transient": c["transient"] * one_layer,
        "head": c["tiles" if chunked else "head"] * logits,
        "fixed": c["fixed"],
    }
    parts["total"] = sum(parts.values())
    return parts


def validation_beside(spec, model: ModelShape, step: StepShape, coef: dict | None = None) -> float:
    """Bytes a background validation adds beside a step (a CPU, engine/validation.py): one forward-only batch of
    about the training batch's tokens (half the automatic budget, which is twice them), one block's working set at
    a time, and the logits of its counted positions (validation projects them whole, without tiles). Not fitted on
    its own: the terms are the step's, an upper bound (measured on the demo: the run's peak grew 6 % with
    validations in the background; this says 55 %)."""
    c = COEF if coef is None else coef
    return c["transient"] * _block_pass(model, step) + c["head"] * step.counted * model.vocab * 4
