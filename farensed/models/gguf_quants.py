"""GGUF blocks → MLX tensors in numpy (no mlx): each block type decoded to an MLX affine group-32 form (codes,
scales, biases) or to floats, the codes packed as MLX packs them, and the error of any inexact form measured.

The decoders follow ggml's block layouts (ggml-common.h); tests check every one bit for bit against llama.cpp's own
`gguf.quants.dequantize`. An MLX group dequantizes to `scale·code + bias` in float32, so a block `d·q + m` (Q4_1,
Q5_1), `d·(q − 8)` (Q4_0, Q5_0, Q8_0) or, per 32-value sub-block, `d·sc·q − dmin·m` (Q4_K, Q5_K) is held exactly
when scale and bias are stored in float32 (float16 wherever that loses nothing). Q6_K's 16-value sub-blocks with
their own scales do not fit one MLX group: they are requantized to 8 bits over each group's range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from farensed.errors import SpecError
from farensed.i18n import _
from farensed.models.gguf_header import GGML_TYPES, GgufInfo, TensorInfo, shown
from farensed.models.gguf_support import GROUP_SIZE, MLX_FORMS, ROPE_FREQS, MlxForm, mlx_form

CHUNK_VALUES = 1 << 22  # values converted at once: bounds the temporaries (a 7B layer is converted in pieces)


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) bytes → (n, 1) float32."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 32-value 4-bit layout: byte j holds value j (low nibble) and value j + 16 (high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: a little-endian uint32 whose bit j is value j's fifth bit → (n, 32) of 0/16."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=1, bitorder="little")
    return bits << 4


def _q4_0(b):
    d = _f16(b[:, 0:2])
    return _nibbles(b[:, 2:18]), d, -8 * d


def _q4_1(b):
    return _nibbles(b[:, 4:20]), _f16(b[:, 0:2]), _f16(b[:, 2:4])


def _q5_0(b):
    d = _f16(b[:, 0:2])
    return _nibbles(b[:, 6:22]) | _high_bits(b[:, 2:6]), d, -16 * d


def _q5_1(b):
    return _nibbles(b[:, 8:24]) | _high_bits(b[:, 4:8]), _f16(b[:, 0:2]), _f16(b[:, 2:4])


def _q8_0(b):
    d = _f16(b[:, 0:2])
    q = np.ascontiguousarray(b[:, 2:34]).view(np.int8)
    return (q.astype(np.int16) + 128).astype(np.uint8), d, -128 * d


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: 12 bytes → the 8 sub-blocks' 6-bit scales and mins (ggml's get_scale_min_k4)."""
    s = s.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc.astype(np.float32), mn.astype(np.float32)


def _k_low(qs: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: 128 bytes, 4 chunks of 32: low nibbles are sub-block 2c, high nibbles 2c + 1 → (n, 8, 32)."""
    qs = qs.reshape(-1, 4, 1, 32)
    return np.concatenate([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)


def _q4_k(b):
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    return _k_low(b[:, 16:144]).reshape(-1, 256), d * sc, -(dmin * mn)


def _q5_k(b):
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    high = (b[:, 16:48].reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    return (_k_low(b[:, 48:176]) | (high << 4)).reshape(-1, 256), d * sc, -(dmin * mn)


def q6_k_values(b: np.ndarray) -> np.ndarray:
    """Q6_K blocks → (n, 256) float32: 16 sub-blocks of 16 values, `d·sc·(q − 32)` (exact in float32)."""
    ql = (b[:, 0:128].reshape(-1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    qh = (b[:, 128:192].reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03
    q = (ql.reshape(-1, 8, 32) | (qh.reshape(-1, 8, 32) << 4)).astype(np.int8) - np.int8(32)
    scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210]) * scales
    return (d.reshape(-1, 16, 1) * q.reshape(-1, 16, 16).astype(np.float32)).reshape(-1, 256)


def _requantize(values: np.ndarray, bits: int):
    """Floats → the affine groups of `bits` over each group's range (MLX's own choice: min and max)."""
    v = values.reshape(-1, GROUP_SIZE)
    lo, hi = v.min(axis=1, keepdims=True), v.max(axis=1, keepdims=True)
    scale = (hi - lo) / np.float32(2**bits - 1)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    codes = np.clip(np.rint((v - lo) * inv), 0, 2**bits - 1).astype(np.uint8)
    return codes.reshape(values.shape[0], -1), scale.reshape(values.shape[0], -1), lo.reshape(values.shape[0], -1)


# the block types whose values are MLX affine groups as stored: (codes, scales, biases) per block
AFFINE = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k}
FLOATS = ("F32", "F16", "BF16")


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, cols) codes → MLX's packed uint32 (rows, cols·bits/32): each row a little-endian stream of `bits`."""
    rows = codes.shape[0]
    if bits == 8:
        return np.ascontiguousarray(codes).view("<u4")
    if bits == 4:
        return np.ascontiguousarray(codes[:, 0::2] | (codes[:, 1::2] << 4)).view("<u4")
    c = codes.reshape(rows, -1, 8).astype(np.uint16)
    out = np.empty((rows, c.shape[1], bits), np.uint8)  # 8 codes fill `bits` bytes
    for byte in range(bits):
        acc = None
        for k in range(8):  # the codes that reach into this byte, shifted to their place in it
            shift = k * bits - 8 * byte
            if -bits < shift < 8:
                part = c[:, :, k] << shift if shift >= 0 else c[:, :, k] >> -shift
                acc = part if acc is None else acc | part
        out[:, :, byte] = acc  # the low 8 bits
    return out.reshape(rows, -1).view("<u4")


def _float_values(raw: np.ndarray, type_name: str) -> np.ndarray:
    if type_name == "F32":
        return raw.view("<f4")
    if type_name == "F16":
        return raw.view("<f2")
    if type_name == "BF16":
        return raw.view("<u2")  # kept as bfloat16 bits; mlx reinterprets them
    raise ValueError(type_name)


def to_float32(raw: np.ndarray, type_name: str) -> np.ndarray:
    """A tensor's bytes → its values as float32, flat (what llama.cpp dequantizes them to)."""
    if type_name in AFFINE:
        codes, scales, biases = AFFINE[type_name](_blocks(raw, type_name))
        groups = codes.reshape(-1, GROUP_SIZE).astype(np.float32)
        return (groups * scales.reshape(-1, 1) + biases.reshape(-1, 1)).reshape(-1)
    if type_name == "Q6_K":
        return q6_k_values(_blocks(raw, type_name)).reshape(-1)
    values = _float_values(raw, type_name)
    if type_name == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _blocks(raw: np.ndarray, type_name: str) -> np.ndarray:
    block_bytes = next(v[2] for v in GGML_TYPES.values() if v[0] == type_name)
    return raw.reshape(-1, block_bytes)


@dataclass
class Measure:
    """How far the MLX form is from the values llama.cpp dequantizes (absolute errors, sums for the RMS)."""

    values: int = 0
    max_abs: float = 0.0
    sq_err: float = 0.0  # over all `values` (at import: summed; in `model info`: extrapolated from the sample)
    sq_ref: float = 0.0
    measured: int = 0  # values compared (all of the inexact ones at import; a sample in `model info`)

    def add(self, other: Measure) -> None:
        self.values += other.values
        self.max_abs = max(self.max_abs, other.max_abs)
        self.sq_err += other.sq_err
        self.sq_ref += other.sq_ref
        self.measured += other.measured

    def as_dict(self) -> dict:
        rms = (self.sq_err / self.values) ** 0.5 if self.values else 0.0
        rel = (self.sq_err / self.sq_ref) ** 0.5 if self.sq_ref else 0.0
        return {"values": self.values, "measured": self.measured, "max_abs": self.max_abs, "rms": rms, "rel_rms": rel}


def _measure(ref: np.ndarray, got: np.ndarray) -> Measure:
    diff = got - ref  # float32 sums (BLAS dot): a statistic shown to 3 digits, not worth a float64 copy
    return Measure(0, float(np.abs(diff).max(initial=0.0)), float(diff @ diff), float(ref @ ref), len(ref))


def _store(scales: np.ndarray, biases: np.ndarray, compact: bool) -> tuple[np.ndarray, np.ndarray]:
    """float16 where it holds every scale and bias exactly (or when asked to be compact), else float32."""
    s16, b16 = scales.astype(np.float16), biases.astype(np.float16)
    exact = np.array_equal(s16.astype(np.float32), scales) and np.array_equal(b16.astype(np.float32), biases)
    return (s16, b16) if compact or exact else (scales, biases)


def _affine_rows(raw_rows: np.ndarray, type_name: str, bits: int, compact: bool, check: bool):
    """Some whole rows of a quantized matrix → (packed, scales, biases, Measure or None)."""
    rows, blocks = raw_rows.shape[0], _blocks(raw_rows, type_name)
    if type_name == "Q6_K":  # requantized from its values, which are also the reference
        ref = q6_k_values(blocks).reshape(-1)
        codes, scales, biases = _requantize(ref.reshape(-1, GROUP_SIZE), bits)
    else:
        codes, scales, biases = AFFINE[type_name](blocks)
        ref = to_float32(raw_rows.reshape(-1), type_name) if check else None
    codes = codes.reshape(rows, -1)
    if not (np.isfinite(scales).all() and np.isfinite(biases).all()):
        raise SpecError(
            _("blocos {type_name} com escalas infinitas ou NaN (ficheiro corrompido?)").format(type_name=type_name)
        )
    scales, biases = _store(scales.reshape(rows, -1), biases.reshape(rows, -1), compact)
    measure = None
    if check:
        got = codes.reshape(-1, GROUP_SIZE) * scales.astype(np.float32).reshape(-1, 1)
        measure = _measure(ref, (got + biases.astype(np.float32).reshape(-1, 1)).reshape(-1))
    return pack(codes, bits), scales, biases, measure


def convert(raw: np.ndarray, t: TensorInfo, compact: bool = False) -> tuple[dict, MlxForm, Measure]:
    """One tensor's bytes (uint8, memory-mapped) → ({"weight", "scales", "biases"} or {"weight"}, form, Measure).

    The error is measured against llama.cpp's values wherever the form is not exact by construction (Q6_K; float16
    scales in compact mode); an exact form counts its values and measures nothing.
    """
    form = mlx_form(t)
    if form.bits is None:
        values = _float_values(raw, t.type_name) if t.type_name in FLOATS else to_float32(raw, t.type_name)
        return {"weight": values.reshape(t.shape)}, form, Measure(values=t.size)
    rows, row_bytes = t.shape[0], raw.size // t.shape[0]
    check = not form.exact or compact
    step = max(1, CHUNK_VALUES // t.shape[1])
    parts, total = [], Measure(values=t.size)
    for start in range(0, rows, step):
        packed, scales, biases, measure = _affine_rows(
            raw[start * row_bytes : (start + step) * row_bytes].reshape(-1, row_bytes), t.type_name, form.bits,
            compact, check,
        )  # fmt: skip
        parts.append((packed, scales, biases))
        if measure:
            total.add(measure)
    dtype = np.result_type(*(p[1].dtype for p in parts))
    arrays = {
        "weight": np.concatenate([p[0] for p in parts]),
        "scales": np.concatenate([p[1].astype(dtype) for p in parts]),
        "biases": np.concatenate([p[2].astype(dtype) for p in parts]),
    }
    return arrays, form, total


SAMPLE_BLOCKS = 64  # per inexact tensor in `model info`: blocks spread over the whole tensor


def sample_measure(raw: np.ndarray, t: TensorInfo) -> Measure:
    """The error of a tensor's MLX form, measured on a few blocks and extrapolated to the whole tensor (an exact
    form: none, its sampled scales only checked finite)."""
    form = mlx_form(t)
    if form.bits is None:
        return Measure(values=t.size)
    block_bytes = GGML_TYPES[t.ggml_type][2]
    blocks = _blocks(raw, t.type_name)
    picked = np.unique(np.linspace(0, len(blocks) - 1, min(SAMPLE_BLOCKS, len(blocks))).astype(np.int64))
    sample = np.ascontiguousarray(blocks[picked]).reshape(len(picked), block_bytes)
    *_arrays, measure = _affine_rows(sample, t.type_name, form.bits, False, not form.exact)  # also: finite scales
    if measure is None:
        return Measure(values=t.size)
    factor = t.size / measure.measured
    return Measure(t.size, measure.max_abs, measure.sq_err * factor, measure.sq_ref * factor, measure.measured)


def conversion_table(rows: dict) -> tuple[dict, dict]:
    """{type: {"count", "form", "measure"}} → what `model info` and the import summary show, and the total error."""
    table, total = {}, Measure()
    for key, row in rows.items():
        form, measure = row["form"], row["measure"]
        table[key] = {
            "count": row["count"],
            "to": form.describe(),
            "bits": form.bits,
            "group_size": GROUP_SIZE if form.bits else None,
            "dtype": form.dtype,
            "exact": measure.sq_err == 0 and measure.max_abs == 0,
            **measure.as_dict(),
        }
        total.add(measure)
    return table, total.as_dict()


def row_key(t: TensorInfo) -> str:
    """A tensor's line in the conversion table: its type, or its type and float dtype for a quantized vector."""
    form = mlx_form(t)
    return t.type_name if form == MLX_FORMS[t.type_name] else f"{t.type_name} ({form.dtype})"


def plan(info: GgufInfo) -> tuple[dict, dict]:
    """What each tensor type of a supported file becomes in MLX, with the error measured on a sample (`model info`)."""
    mm = np.memmap(info.path, dtype=np.uint8, mode="r")
    rows: dict = {}
    for t in info.tensors.values():
        if t.name == ROPE_FREQS:
            continue
        row = rows.setdefault(row_key(t), {"count": 0, "form": mlx_form(t), "measure": Measure()})
        row["count"] += 1
        try:
            row["measure"].add(sample_measure(mm[t.offset : t.offset + t.nbytes], t))
        except SpecError as exc:
            raise SpecError(f"{info.path}: {shown(t.name)}: {exc}") from None
    return conversion_table(rows)
