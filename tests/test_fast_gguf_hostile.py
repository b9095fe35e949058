"""Hostile GGUF headers (issue #22): huge lengths and counts, deep arrays, tensors outside the file, truncated
downloads. Each is one short line (exit 2), never a traceback, never "✅ Suportado", and nothing is written."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farensed.cli.main import cli
from farensed.errors import SpecError
from farensed.models.gguf_header import MAX_ARRAY, MAX_STRING, MAX_TENSORS, read_header
from farensed.models.gguf_quants import plan
from farensed.models.gguf_support import check_supported
from tests.ggufwrite import F32, Q4_0, header_bytes, metadata, tensors, write_gguf

HEAD = b"GGUF" + struct.pack("<I", 3)


def counts(n_tensors: int, n_kv: int) -> bytes:
    return HEAD + struct.pack("<QQ", n_tensors, n_kv)


def key(name: str, kind: int) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", kind)


def nested(depth: int) -> bytes:
    """An array of arrays `depth` levels deep, one element each, ending in an empty uint8 array."""
    return b"".join(struct.pack("<IQ", 9, 1) for _ in range(depth)) + struct.pack("<IQ", 0, 0)


def tensor_info(name: str, dims: list[int], kind: int, offset: int) -> bytes:
    return (
        struct.pack("<Q", len(name)) + name.encode() + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
    )


HOSTILE = {
    "key length past the file": (counts(0, 1) + struct.pack("<Q", 1000) + b"abc", "truncado"),
    "key length of 2^62": (counts(0, 1) + struct.pack("<Q", 1 << 62), f"(limite {MAX_STRING})"),
    "string value of 1 GiB": (counts(0, 1) + key("k", 8) + struct.pack("<Q", 1 << 30), f"(limite {MAX_STRING})"),
    "array of 2^40 bytes": (counts(0, 1) + key("k", 9) + struct.pack("<IQ", 0, 1 << 40), f"(limite {MAX_ARRAY})"),
    "a million strings in 60 bytes": (counts(0, 1) + key("k", 9) + struct.pack("<IQ", 8, 1 << 20), "truncado"),
    "arrays 3 deep": (counts(0, 1) + key("k", 9) + nested(2), "listas encaixadas"),
    "arrays 100000 deep": (counts(0, 1) + key("k", 9) + nested(100_000), "listas encaixadas"),
    "2^40 tensors": (counts(1 << 40, 0), f"(limite {MAX_TENSORS})"),
    "2^40 metadata keys": (counts(0, 1 << 40), "(limite 4096)"),
    "unknown value type": (counts(0, 1) + key("k", 99) + b"\0" * 16, "tipo de valor desconhecido (99)"),
    "repeated key": (counts(0, 2) + key("k", 4) + b"\0" * 4 + key("k", 4) + b"\0" * 4, "chave 'k' repetida"),
    "7 dimensions": (counts(1, 0) + tensor_info("t", [1] * 7, 0, 0), "tensor 't' com 7 dimensões"),
    "a zero dimension": (counts(1, 0) + tensor_info("t", [0, 4], 0, 0) + b"\0" * 64, "tensor 't' com forma"),
    "2^64 values": (counts(1, 0) + tensor_info("t", [1 << 32, 1 << 32], 0, 0) + b"\0" * 64, "com forma"),
    "data past the end": (counts(1, 0) + tensor_info("t", [8], 0, 0) + b"\0" * 8, "os dados do tensor 't' acabam"),
    "data offset 2^60": (counts(1, 0) + tensor_info("t", [8], 0, 1 << 60) + b"\0" * 64, "acabam no byte"),
    "misaligned offset": (counts(1, 0) + tensor_info("t", [8], 0, 3) + b"\0" * 96, "desalinhado (offset 3)"),
    "rows not whole blocks": (counts(1, 0) + tensor_info("t", [48], Q4_0, 0) + b"\0" * 96, "não múltiplo do bloco"),
    "repeated tensor": (
        counts(2, 0) + tensor_info("t", [8], 0, 0) + tensor_info("t", [8], 0, 32) + b"\0" * 128,
        "tensor 't' repetido",
    ),
    "alignment 3": (counts(0, 1) + key("general.alignment", 4) + struct.pack("<I", 3), "general.alignment 3"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_header_is_one_line_exit_2(tmp_path, case):
    data, message = HOSTILE[case]
    tmp_path = tmp_path / "g"
    tmp_path.mkdir()
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    for args in (["model", "info", str(path)], ["model", "import-gguf", str(path), str(tmp_path / "out")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (case, result.output, result.exception)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert len(result.output) < 400 and "Suportado" not in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


def test_a_truncated_download_is_refused_naming_the_tensor(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf", metadata(), tensors()).read_bytes()
    info = read_header(tmp_path / "whole.gguf")
    last = max(info.tensors.values(), key=lambda t: t.offset)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: last.offset + 5])  # the download stopped inside the last tensor's data
    for args in (["model", "info", str(cut)], ["model", "import-gguf", str(cut), str(tmp_path / "out")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "Suportado" not in result.output
        assert (
            f"os dados do tensor '{last.name}' acabam no byte" in result.output
            and "download incompleto" in result.output
        )
    assert not (tmp_path / "out").exists()


def test_a_gguf_with_a_vocabulary_the_tokenizer_library_rejects_is_one_line(tmp_path):
    md = metadata(**{"tokenizer.ggml.merges": ["a zz"]})  # a merge naming a token the vocabulary lacks
    path = write_gguf(tmp_path / "m.gguf", md, tensors())
    result = CliRunner().invoke(cli, ["model", "import-gguf", str(path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "tokenizer do GGUF inválido" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


VALID, _BLOBS = header_bytes(metadata(), tensors())
VALID += b"".join(_BLOBS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, len(VALID)),
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    big=st.lists(
        st.tuples(st.integers(0, len(VALID) - 8), st.sampled_from([1 << 62, 1 << 40, 1 << 31, 255])), max_size=2
    ),
)
def test_any_damaged_gguf_is_read_or_refused_in_one_line(tmp_path, cut, flips, big):
    data = bytearray(VALID)
    for pos, value in big:  # a length or count field replaced by a huge number
        data[pos : pos + 8] = struct.pack("<Q", value)
    for pos, value in flips:
        data[pos] = value
    path = tmp_path / "fuzz.gguf"
    path.write_bytes(bytes(data[:cut]))
    try:
        info = read_header(path)
        check_supported(info)
        table, _error = plan(info)
    except SpecError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 400 and "\x1b" not in text
        return
    assert all(np.isfinite(row["max_abs"]) for row in table.values())


def test_bounds_leave_real_files_alone():
    assert MAX_STRING >= 1 << 20 and MAX_ARRAY >= 1 << 20  # chat templates of megabytes, vocabularies of millions
    assert MAX_TENSORS > 10_000 and F32 == 0


def test_blocks_with_nan_scales_are_refused_naming_the_tensor(tmp_path):
    from tests.ggufwrite import Q4_0

    md = metadata()
    bad = tensors()
    blocks = np.zeros((32, 18), np.uint8)
    blocks[5, 0:2] = np.array([np.nan], "<f2").view(np.uint8)  # one block's d is NaN: a corrupted download
    bad[2] = ("blk.0.attn_q.weight", (32, 32), Q4_0, blocks.tobytes())
    path = write_gguf(tmp_path / "m.gguf", md, bad)
    for args in (["model", "info", str(path)], ["model", "import-gguf", str(path), str(tmp_path / "out")]):
        result = CliRunner().invoke(cli, args)
        assert (
            result.exit_code == 2 and "blk.0.attn_q.weight: blocos Q4_0 com escalas infinitas ou NaN" in result.output
        )
        assert len(result.stderr.strip().splitlines()) == 1 and "Suportado" not in result.output  # the one error
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # the half import removed
