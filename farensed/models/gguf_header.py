"""GGUF files without mlx: read the header (metadata, tensor names, types and data ranges), bounded against hostile
files: string lengths, array counts, nesting and tensor counts are capped, and every tensor's data must lie inside
the file (a truncated download is one line, never a traceback)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from farensed.errors import SpecError
from farensed.i18n import _

MAGIC = b"GGUF"
# ggml tensor types by id (llama.cpp's ggml.h): name, values per block, bytes per block
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
}  # fmt: skip

# Bounds on what a header may claim before anything is allocated (real files stay far below each)
MAX_TENSORS = 1 << 16  # Llama 3.1 405B has 1,138 tensors
MAX_KEYS = 1 << 12  # metadata entries (real files: tens)
MAX_STRING = 1 << 24  # bytes in one string (a chat template is tens of KB)
MAX_ARRAY = 1 << 24  # elements in one array (the largest vocabularies and merge lists: under a million)
MAX_DEPTH = 2  # arrays of arrays; llama.cpp writes none
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ELEMENTS = 1 << 40  # values in one tensor
MAX_ALIGNMENT = 1 << 16

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MIN_BYTES = {_STRING: 8, _ARRAY: 12}  # the least one array element of this kind takes in the file


def shown(value, limit: int = 60) -> str:
    """A value from a file as one safe, short excerpt: control characters escaped, long text cut."""
    text = str(value)
    cut = text[:limit]
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return escaped + ("…" if len(text) > limit else "")


@dataclass
class TensorInfo:
    """One tensor as the header lists it: name, shape in numpy order (rows first), ggml type, data range."""

    name: str
    shape: tuple
    ggml_type: int
    offset: int = 0  # absolute, in the file
    nbytes: int | None = None  # None for a type farense does not know

    @property
    def type_name(self) -> str:
        if self.ggml_type in GGML_TYPES:
            return GGML_TYPES[self.ggml_type][0]
        return f"ggml_type {self.ggml_type}"  # no name: the number, the same in every language

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GgufInfo:
    """A GGUF file's header: metadata (plain Python values) and its tensors."""

    path: Path
    version: int
    metadata: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    file_size: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def arch_key(self, key: str, default=None):
        """A `<architecture>.<key>` metadata value."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def type_counts(self) -> dict:
        """How many tensors of each ggml type, e.g. {'Q4_1': 210, 'F32': 61}."""
        counts: dict = {}
        for t in self.tensors.values():
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts


class _Reader:
    def __init__(self, fh, path: Path, size: int):
        self.fh, self.path, self.size, self.pos = fh, path, size, 0

    def bad(self, what: str) -> SpecError:
        return SpecError(_("{path}: cabeçalho GGUF inválido: {what}").format(path=self.path, what=what))

    def truncated(self) -> SpecError:
        return SpecError(_("{path}: ficheiro GGUF truncado (cabeçalho incompleto)").format(path=self.path))

    def take(self, n: int) -> bytes:
        if n > self.size - self.pos:  # checked before reading: a claimed length never allocates
            raise self.truncated()
        self.pos += n
        return self.fh.read(n)

    def scalar(self, kind: int):
        fmt = _SCALARS[kind]
        value = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return _shortest_f32(value) if kind == 6 else value

    def count(self, limit: int, where: str) -> int:
        n = self.scalar(10)
        if n > limit:
            raise self.bad(_("{where} declara {count} (limite {limit})").format(where=where, count=n, limit=limit))
        return n

    def string(self, where: str) -> str:
        return self.take(self.count(MAX_STRING, where)).decode("utf-8", errors="replace")

    def value(self, kind: int, where: str, depth: int = 0):
        if kind == _STRING:
            return self.string(where)
        if kind == _ARRAY:
            if depth >= MAX_DEPTH:
                raise self.bad(
                    _("{where}: listas encaixadas a mais de {depth} níveis").format(where=where, depth=depth)
                )
            inner, count = self.scalar(4), self.count(MAX_ARRAY, where)
            if inner in _SCALARS:
                fmt = _SCALARS[inner]
                return list(struct.unpack(f"<{count}{fmt[1]}", self.take(count * struct.calcsize(fmt))))
            if count * _MIN_BYTES.get(inner, 1) > self.size - self.pos:  # bounds the loop by the file
                raise self.truncated()
            return [self.value(inner, where, depth + 1) for _ in range(count)]
        if kind not in _SCALARS:
            raise SpecError(
                _("{path}: cabeçalho GGUF com tipo de valor desconhecido ({kind})").format(path=self.path, kind=kind)
            )
        return self.scalar(kind)


def _shortest_f32(value: float) -> float:
    """A float32 as its shortest decimal (1e-05, not 9.999999747378752e-06)."""
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
            return candidate
    return value


def is_gguf(path: Path) -> bool:
    """A file whose first bytes are the GGUF magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def _tensor_info(r: _Reader) -> tuple[str, list, int, int]:
    name = r.string(_("o nome de um tensor"))
    n_dims = r.scalar(4)
    if n_dims > MAX_DIMS:
        raise r.bad(_("tensor '{name}' com {count} dimensões").format(name=shown(name), count=n_dims))
    dims = [r.scalar(10) for _ in range(n_dims)]
    return name, dims, r.scalar(4), r.scalar(10)


def _place(r: _Reader, info: GgufInfo, name: str, dims: list, ggml_type: int, offset: int, start: int, align: int):
    """Check one tensor's shape, alignment and data range against the file; record it."""
    t = TensorInfo(name, tuple(reversed(dims)), ggml_type, start + offset)
    if any(d == 0 for d in dims) or t.size > MAX_ELEMENTS:
        raise r.bad(_("tensor '{name}' com forma {shape}").format(name=shown(name), shape=t.shape))
    if offset % align:
        raise r.bad(_("tensor '{name}' desalinhado (offset {offset})").format(name=shown(name), offset=offset))
    if ggml_type in GGML_TYPES:
        _type_name, block, block_bytes = GGML_TYPES[ggml_type]
        if dims and dims[0] % block:
            raise r.bad(
                _("tensor '{name}': linhas de {count} valores, não múltiplo do bloco {type_name} ({block})").format(
                    name=shown(name), count=dims[0], type_name=t.type_name, block=block
                )
            )
        t.nbytes = t.size // block * block_bytes
        if t.offset + t.nbytes > r.size:
            raise SpecError(
                _(
                    "{path}: ficheiro GGUF truncado: os dados do tensor '{name}' acabam no byte {end}, o ficheiro tem {size} bytes (download incompleto?)"
                ).format(path=r.path, name=shown(name), end=t.offset + t.nbytes, size=r.size)
            )
    info.tensors[name] = t


def read_header(path: Path) -> GgufInfo:
    """Parse a GGUF header (v2/v3): metadata and tensor infos, each tensor's data range checked; no tensor data."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(_("{path}: ficheiro GGUF não encontrado").format(path=path))
    with open(path, "rb") as fh:
        r = _Reader(fh, path, os.fstat(fh.fileno()).st_size)
        if r.take(4) != MAGIC:
            raise SpecError(_("{path}: não é um ficheiro GGUF (falta a assinatura 'GGUF')").format(path=path))
        version = r.scalar(4)
        if version not in (2, 3):
            raise SpecError(
                _("{path}: versão GGUF {version} não suportada (suportadas: 2, 3)").format(path=path, version=version)
            )
        n_tensors = r.count(MAX_TENSORS, _("o número de tensores"))
        n_kv = r.count(MAX_KEYS, _("o número de metadados"))
        info = GgufInfo(path=path, version=version, file_size=r.size)
        for _kv in range(n_kv):
            key = r.string(_("uma chave"))
            if key in info.metadata:
                raise r.bad(_("chave '{key}' repetida").format(key=shown(key)))
            info.metadata[key] = r.value(r.scalar(4), shown(key))
        raw, seen = [], set()
        for _tensor in range(n_tensors):
            raw.append(_tensor_info(r))
            if raw[-1][0] in seen:
                raise r.bad(_("tensor '{name}' repetido").format(name=shown(raw[-1][0])))
            seen.add(raw[-1][0])
        align = info.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or not 0 < align <= MAX_ALIGNMENT or align & (align - 1):
            raise r.bad(_("general.alignment {alignment}").format(alignment=shown(align)))
        start = -(-r.pos // align) * align
    for name, dims, ggml_type, offset in raw:
        _place(r, info, name, dims, ggml_type, offset, start, align)
    return info
