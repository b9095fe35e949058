"""The memory plan's arithmetic, without weights: recorded measurements predicted within 15 %, the widest batch from
the data's lengths, the knob to turn first, the lengths estimated without a tokenizer."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from farensed.doctor.lengths import data_lengths
from farensed.doctor.memcheck import first_knob
from farensed.doctor.memplan import ModelShape, StepShape, plan, step_shape
from farensed.spec.jobspec import parse_spec
from tests.helpers import spec_with

CALIBRATION = Path(__file__).resolve().parents[1] / "bench" / "memory_calibration.json"
RECORDS = orjson.loads(CALIBRATION.read_bytes())["records"]
# mlx-community/Mistral-7B-Instruct-v0.3-4bit's config.json sizes, and its weight files (the seed's model)
MISTRAL_7B = ModelShape("mistral", 32, 4096, 14336, 32, 8, 128, 32768, 4_080_000_000, 2)


def recorded_spec(record):
    return parse_spec(dict(record["spec"], model="m", data={"train": "t.jsonl", "valid": "v.jsonl"}))


@pytest.mark.parametrize("record", RECORDS, ids=[f"{r['model']}: {r['label']}" for r in RECORDS])
def test_the_plan_predicts_each_measured_peak_within_15_percent(record):
    spec = recorded_spec(record)
    width = record["width"] + (1 if spec.pack else 0)  # a packed batch has no extra target column
    step = StepShape(record["rows"], width, record["counted"], record["gathered"] or 0)
    predicted = plan(spec, ModelShape(**record["shape"]), step)["total"]
    assert predicted == pytest.approx(record["peak_bytes"], rel=0.15)


def test_the_widest_batch_comes_from_the_longest_examples():
    spec = parse_spec(spec_with(batch_size=2, max_seq_length=512))
    longest = [(600, 100), (300, 290), (200, 50)]  # (length, prompt offset), longest first
    step = step_shape(spec, [(min(n, 512), o) for n, o in longest], 0.5)
    assert (step.rows, step.width) == (2, 512)  # truncated to max_seq_length
    assert step.counted == (511 - 100 + 1) + (300 - 290 + 1) and step.gathered == 448
    packed = step_shape(parse_spec(spec_with(batch_size=2, max_seq_length=512, pack=True)), longest, 0.5)
    assert (packed.rows, packed.width) == (2, 513)
    huge = parse_spec(spec_with(batch_size=2, max_seq_length=65536, pack=True))
    small_data = step_shape(huge, longest, 0.5, total_tokens=8650)  # rows no fuller than all the data
    assert small_data.width == 8657 and small_data.counted <= 2 * 8656
    assert step_shape(huge, longest, 0.5).width == 65537  # the data's size unknown: the key


def test_counted_loss_and_tiles_shrink_the_head_and_grad_checkpoint_the_activations():
    step = StepShape(2, 2049, 2000, 2048)
    v2 = {"max_seq_length": 2048, "lora": {"rank": 6, "alpha": 16, "dropout": 0.08, "layers": 16}}
    base = plan(parse_spec(spec_with(**v2, counted_loss=False)), MISTRAL_7B, step)
    counted = plan(parse_spec(spec_with(**v2)), MISTRAL_7B, step)
    tiled = plan(parse_spec(spec_with(**v2, ce_chunk=1024)), MISTRAL_7B, step)
    checkpointed = plan(parse_spec(spec_with(**v2, grad_checkpoint=True)), MISTRAL_7B, step)
    assert tiled["head"] < counted["head"] < base["head"]
    assert checkpointed["layers"] + checkpointed["attention"] < (counted["layers"] + counted["attention"]) / 4
    assert base["weights"] == counted["weights"] == MISTRAL_7B.weights_bytes


def test_the_first_knob_is_the_cheapest_change_that_fits():
    spec = parse_spec(dict(orjson.loads((Path(__file__).parents[1] / "jobs/examples/v2.json").read_bytes())))
    spec.counted_loss = False  # as mlx_lm lora trains

    def reshape(other):
        return step_shape(other, [(other.max_seq_length, other.max_seq_length // 2)] * 2, 0.5)

    full = plan(spec, MISTRAL_7B, reshape(spec))["total"]
    knob = first_knob(spec, MISTRAL_7B, reshape, limit=full - 1)
    assert knob is not None and knob[1] < full - 1
    assert knob[0] == "counted_loss: true"  # it changes no trained number: always the first to try
    roomy = first_knob(spec, MISTRAL_7B, reshape, limit=0.5 * full)
    assert roomy is None or roomy[1] <= 0.5 * full


def test_lengths_without_a_tokenizer_are_estimated_from_the_characters(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "p" * 350}, {"role": "assistant", "content": "c" * 700}]},
        {"prompt": "x" * 35, "completion": "y" * 35},
        {"text": "z" * 3500},
    ]
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows) + b"not json\n")
    lengths = data_lengths(data, None, mask_prompt=True, max_seq_length=512)
    assert lengths.source == "estimate" and lengths.examples == 3
    assert lengths.longest[0] == (512, 0)  # the text example, truncated; text has no prompt
    assert lengths.longest[1][1] == 100 + 12  # the chat prompt: 350 characters / 3.5, plus role markers
    assert 0 < lengths.counted_share < 1


@pytest.mark.parametrize(
    ("batch_size", "world", "advice"),
    [
        (4, 1, "batch_size: 2, grad_accumulation: 2"),
        (6, 1, "batch_size: 3, grad_accumulation: 2"),
        (5, 1, "batch_size: 1, grad_accumulation: 5"),  # the effective batch stays 5, never 2 × 2
        (6, 3, "batch_size: 3, grad_accumulation: 2"),
        (4, 2, "batch_size: 2, grad_accumulation: 2"),
        (2, 2, None),  # one row per host already: no smaller batch keeps every host fed
        (1, 1, None),
    ],
)
def test_the_smaller_batch_advice_keeps_the_effective_batch_and_a_multiple_of_the_hosts(batch_size, world, advice):
    from farensed.doctor.memcheck import knobs

    spec = parse_spec(spec_with(batch_size=batch_size, grad_accumulation=1, grad_checkpoint=True, save_every=10))
    texts = [text for text, _other in knobs(spec, MISTRAL_7B, world) if text.startswith("batch_size")]
    assert texts == ([advice] if advice else [])
