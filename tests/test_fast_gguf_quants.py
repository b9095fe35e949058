"""GGUF block types → MLX, checked against llama.cpp's own `gguf` package (gguf.quants.dequantize, GGUFWriter):
every type decodes to llama.cpp's values; the exact ones land in MLX exactly; Q6_K's error is measured and small."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.models.gguf_header import GGML_TYPES, TensorInfo
from farensed.models.gguf_quants import convert, pack, to_float32
from farensed.models.gguf_support import MLX_FORMS
from tests.ggufwrite import encode, metadata, synthetic_gguf

IDS = {name: type_id for type_id, (name, _block, _size) in GGML_TYPES.items()}
F16_FIELDS = {"Q4_0": 2, "Q4_1": 4, "Q5_0": 2, "Q5_1": 4, "Q8_0": 2, "Q4_K": 4, "Q5_K": 4}  # leading fp16 d (, m)


def random_blocks(type_name: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Every bit pattern llama.cpp could store (random bytes), with finite fp16 scales: the harshest input."""
    rng = np.random.default_rng(seed)
    _name, block, size = GGML_TYPES[IDS[type_name]]
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    scales = rng.uniform(-0.05, 0.05, size=(raw.shape[0], 2)).astype("<f2").view(np.uint8)
    if type_name == "Q6_K":
        raw[:, 208:210] = scales[:, :2]
    else:
        raw[:, : F16_FIELDS[type_name]] = scales[:, : F16_FIELDS[type_name]]
    return raw.reshape(rows, -1)


def llama_cpp(raw: np.ndarray, type_name: str) -> np.ndarray:
    import gguf
    from gguf.quants import dequantize

    return dequantize(raw, gguf.GGMLQuantizationType[type_name]).astype(np.float32)


def test_block_table_is_llama_cpps():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    for type_id, (name, block, size) in GGML_TYPES.items():
        assert GGMLQuantizationType(type_id).name == name
        assert GGML_QUANT_SIZES[GGMLQuantizationType(type_id)] == (block, size), name


@pytest.mark.parametrize("type_name", sorted(F16_FIELDS) + ["Q6_K"])
def test_every_block_type_decodes_to_llama_cpps_values(type_name):
    raw = random_blocks(type_name, 8, 512)
    ours, theirs = to_float32(raw.reshape(-1), type_name), llama_cpp(raw, type_name).reshape(-1)
    assert np.array_equal(ours, theirs)
    differ = ours.view(np.uint32) != theirs.view(np.uint32)
    assert not (differ & (ours != 0)).any()  # bit for bit, but for the sign of a zero (d·(q−8) at q = 8)


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_types_decode_to_llama_cpps_values(type_name):
    x = np.random.default_rng(1).normal(0, 1, size=(4, 64)).astype(np.float32)
    raw, theirs = encode(x, IDS[type_name])
    ours = to_float32(np.ascontiguousarray(raw).view(np.uint8).reshape(-1), type_name)
    assert np.array_equal(ours.view(np.uint32), theirs.reshape(-1).view(np.uint32))


@pytest.mark.parametrize("type_name", sorted(F16_FIELDS))
def test_exact_types_land_in_mlx_exactly(type_name):
    import mlx.core as mx

    raw = random_blocks(type_name, 8, 512, seed=2)
    t = TensorInfo("blk.0.attn_q.weight", (8, 512), IDS[type_name])
    arrays, form, measure = convert(raw.reshape(-1), t)
    assert form == MLX_FORMS[type_name] and form.exact and measure.measured == 0 and measure.values == 8 * 512
    # llama.cpp's fp16 d and m are MLX's scales and biases as they are; d·sc and dmin·m of a K-quant need float32
    assert arrays["scales"].dtype == (np.float32 if type_name.endswith("_K") else np.float16)
    scales, biases = (mx.array(arrays[k].astype(np.float32)) for k in ("scales", "biases"))
    mlx = mx.dequantize(mx.array(arrays["weight"]), scales, biases, group_size=32, bits=form.bits)
    assert np.array_equal(np.array(mlx), llama_cpp(raw, type_name))


def test_pack_is_mlxs_layout_at_every_width():
    import mlx.core as mx

    rng = np.random.default_rng(3)
    for bits in (2, 3, 4, 5, 6, 8):
        codes = rng.integers(0, 2**bits, size=(3, 64)).astype(np.uint8)
        ones, zeros = mx.ones((3, 2)), mx.zeros((3, 2))
        back = mx.dequantize(mx.array(pack(codes, bits)), ones, zeros, group_size=32, bits=bits)
        assert np.array_equal(np.array(back), codes.astype(np.float32)), bits


def test_q6_k_becomes_8_bits_with_its_error_measured_and_small():
    import mlx.core as mx

    x = np.random.default_rng(4).normal(0, 0.02, size=(16, 512)).astype(np.float32)
    raw, q6 = encode(x, IDS["Q6_K"])
    t = TensorInfo("output.weight", x.shape, IDS["Q6_K"])
    arrays, form, measure = convert(raw.reshape(-1), t)
    assert (form.bits, form.exact) == (8, False) and measure.measured == x.size
    args = [mx.array(arrays[k]) for k in ("weight", "scales", "biases")]
    mlx = np.array(mx.dequantize(*args, group_size=32, bits=8))
    err = np.abs(mlx - q6)
    assert measure.max_abs == pytest.approx(float(err.max()), rel=1e-6)  # the measure is the real difference
    step = (q6.reshape(-1, 32).max(1) - q6.reshape(-1, 32).min(1)) / 255
    assert (err.reshape(-1, 32).max(1) <= step * 0.501).all()  # within half an 8-bit step (float32 rounding aside)
    rel = measure.as_dict()["rel_rms"]
    q6_own = np.sqrt(((q6 - x) ** 2).sum() / (x**2).sum())  # Q6_K's own quantization error
    assert 0 < rel < 0.01 and rel < q6_own / 3


def test_compact_scales_are_float16_and_their_error_is_measured():
    raw = random_blocks("Q4_K", 8, 512, seed=5)
    t = TensorInfo("blk.0.attn_q.weight", (8, 512), IDS["Q4_K"])
    arrays, _form, measure = convert(raw.reshape(-1), t, compact=True)
    assert arrays["scales"].dtype == np.float16 and measure.measured == 8 * 512
    exact, _f, _m = convert(raw.reshape(-1), t)
    bound = 2**-11 * (np.abs(exact["scales"]).max() * 15 + np.abs(exact["biases"]).max())
    assert 0 < measure.max_abs <= bound


def test_model_info_states_every_type_its_mlx_form_and_error(tmp_path):
    path, _reference = synthetic_gguf(tmp_path / "all.gguf", metadata())
    result = CliRunner().invoke(cli, ["model", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    rows = orjson.loads(result.output)["conversions"]
    assert {k: (r["bits"], r["dtype"], r["exact"]) for k, r in rows.items()} == {
        "Q4_K": (4, None, True),
        "Q5_K": (5, None, True),
        "Q4_0": (4, None, True),
        "Q4_1": (4, None, True),
        "Q5_0": (5, None, True),
        "Q5_1": (5, None, True),
        "Q8_0": (8, None, True),
        "Q6_K": (8, None, False),
        "BF16": (None, "bfloat16", True),
        "F16": (None, "float16", True),
        "F32": (None, "float32", True),
    }
    q6 = rows["Q6_K"]
    assert 0 < q6["max_abs"] < 1e-2 and 0 < q6["rel_rms"] < 1e-2 and 0 < q6["measured"] <= q6["values"]
    text = CliRunner().invoke(cli, ["model", "info", str(path)]).output
    assert "Q4_K ×1 → 4 bits, grupo 32: exato" in text and "Q6_K ×1 → 8 bits, grupo 32: erro máx" in text
    assert "(estimado numa amostra)" in text and "✅ Suportado" in text
