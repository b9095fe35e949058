"""Spec files decoded as hostile input: one SpecError line for anything a spec cannot be, never a traceback.

A spec is a few KB of JSON or YAML. Before anything recurses or echoes a value: the file must be a regular file of
at most MAX_BYTES; JSON may not repeat a key (orjson keeps the last one silently: a second pass with the standard
library's pairs hook names the key); YAML is read by a SafeLoader that refuses more than MAX_ALIASES aliases (the
"billion laughs"), nesting deeper than MAX_DEPTH, keys that are not text and the `!!binary`/`!!set`/`!!omap`/
`!!pairs` tags (SafeLoader already refuses python tags), and reads timestamps as the text they are. Then every
decoded value is bounded (`check_bounds`): depth, node count, finite numbers within ±2^53, text of at most MAX_TEXT
characters — so later checks and error messages never meet a value they cannot afford.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import orjson

from farensed.errors import SpecError
from farensed.i18n import N_, _
from farensed.storage.regular import FileTooLarge, NotRegularFile, read_regular
from farensed.terminal import excerpt, safe

MAX_BYTES = 64 * 1024  # a spec is a few KB; mlx-lm's example config with every comment is under 4 KB
MAX_DEPTH = 16  # the deepest spec key is optimizer_config.<name>.<argument>[i]: depth 4
MAX_NODES = 10_000  # values in one spec, counting every alias's expansion
MAX_ALIASES = 20
MAX_TEXT = 4096  # characters in one text value (a path is at most PATH_MAX)
MAX_INT = 2**53  # what a JSON reader anywhere reads exactly


def read_spec_bytes(path: Path) -> bytes:
    """A spec file's bytes: a regular file of at most MAX_BYTES, else one line naming the file."""
    path = Path(path)
    try:
        return read_regular(path, MAX_BYTES)
    except FileTooLarge:
        raise SpecError(
            _("{path}: a spec tem mais de {limit} KB (uma spec tem poucos KB)").format(
                path=path, limit=MAX_BYTES // 1024
            )
        ) from None
    except NotRegularFile as exc:
        raise SpecError(str(exc)) from None
    except FileNotFoundError:
        raise SpecError(_("{path}: ficheiro não encontrado").format(path=path)) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or excerpt(str(exc))
        raise SpecError(_("{path}: não foi possível ler ({strerror})").format(path=path, strerror=reason)) from None


# ---- JSON -----------------------------------------------------------------------------------------------------
def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(Exception):
    pass


# orjson's reasons, in the reader's language (one it does not list here is shown as orjson says it)
JSON_REASONS = (
    (re.compile(r"unexpected character, expected a string key"), N_("esperava-se uma chave entre aspas")),
    (re.compile(r"unexpected character, expected (.+)"), N_("carácter inesperado; esperava-se {expected}")),
    (re.compile(r"invalid literal, expected (.+)"), N_("valor inválido; esperava-se {expected}")),
    (re.compile(r"trailing comma is not allowed"), N_("vírgula a mais antes do fecho")),
    (re.compile(r"unexpected end of data"), N_("o texto acaba a meio (falta fechar algo)")),
    (re.compile(r"unexpected content after document"), N_("há texto depois do fim do documento")),
    (re.compile(r"Input is a zero-length, empty document"), N_("ficheiro vazio")),
    (re.compile(r"number with leading zero is not allowed"), N_("número começado por zero")),
    (re.compile(r"invalid escaped sequence in string"), N_("sequência de escape inválida num texto")),
    (re.compile(r"str is not valid UTF-8.*"), N_("não é texto UTF-8 válido")),
)


# PyYAML's problems, likewise (what a hand-edited mlx_lm config most often has)
YAML_REASONS = (
    (
        re.compile(r"expected (.+), but (?:got|found) '<stream end>'"),
        N_("o texto acaba a meio; esperava-se {expected}"),
    ),
    (re.compile(r"found unexpected end of stream"), N_("o texto acaba a meio (falta fechar algo)")),
    (re.compile(r"mapping values are not allowed here"), N_("'chave: valor' onde não pode estar (falta um espaço?)")),
    (
        re.compile(r"found character (.+) that cannot start any token"),
        N_("o carácter {expected} não pode começar um valor"),
    ),
    (re.compile(r"expected (.+), but (?:got|found) .+"), N_("esperava-se {expected} (indentação?)")),
)


def parser_reason(msg: str, table=JSON_REASONS) -> str:
    """A parser's reason for a malformed document, in the chosen language (`',' or '}'` → `',' ou '}'`); one the
    table does not know is shown as the parser says it."""
    for pattern, said in table:
        if m := pattern.fullmatch(msg):
            expected = m.group(1).replace(" or ", " " + _("ou") + " ") if m.groups() else ""
            return _(said).format(expected=expected)
    return msg


def decode_json(data: bytes, label: str) -> Any:
    """JSON text → value: malformed JSON names its line and column, a repeated key names the key."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SpecError(
            _("{path}: JSON inválido na linha {lineno}, coluna {colno}: {msg}").format(
                path=label, lineno=exc.lineno, colno=exc.colno, msg=parser_reason(exc.msg)
            )
        ) from None
    check_bounds(value, label)  # bounded depth before the standard library's (recursive) second pass
    try:
        json.loads(data, object_pairs_hook=_refuse_duplicates)
    except _Duplicate as dup:
        raise SpecError(
            _("{path}: a chave {key} aparece mais de uma vez no mesmo objeto").format(
                path=label, key=excerpt(dup.args[0])
            )
        ) from None
    return value


# ---- YAML -----------------------------------------------------------------------------------------------------
# mlx_lm/lora.py reads 1e-5 as a float (plain YAML 1.1 reads it as text); mlx-lm configs rely on it
FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
REFUSED_TAGS = ("binary", "set", "omap", "pairs")


def yaml_loader():
    """A SafeLoader for spec files (mlx-lm's float rule; aliases, depth, keys and tags bounded)."""
    import yaml
    from yaml.composer import ComposerError
    from yaml.constructor import ConstructorError

    class Loader(yaml.SafeLoader):
        def __init__(self, stream):
            super().__init__(stream)
            self.depth = 0
            self.aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise ComposerError(
                        None,
                        None,
                        _("mais de {limit} aliases (*nome)").format(limit=MAX_ALIASES),
                        self.peek_event().start_mark,
                    )
                return super().compose_node(parent, index)
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise ComposerError(
                        None,
                        None,
                        _("aninhado a mais de {limit} níveis").format(limit=MAX_DEPTH),
                        self.peek_event().start_mark,
                    )
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def construct_mapping(self, node, deep=False):
            mapping = super().construct_mapping(node, deep=deep)
            for key in mapping:
                if not isinstance(key, str):
                    raise ConstructorError(
                        None, None, _("a chave {key} não é texto").format(key=excerpt(key)), node.start_mark
                    )
            return mapping

    def refuse(loader, node):
        raise ConstructorError(
            None,
            None,
            _("a etiqueta !!{tag} não é aceite numa spec").format(tag=node.tag.rsplit(":", 1)[-1]),
            node.start_mark,
        )

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", FLOAT_RE, list("-+0123456789."))
    for tag in REFUSED_TAGS:
        Loader.add_constructor(f"tag:yaml.org,2002:{tag}", refuse)
    # a date or time stays the text it is (not_before is parsed by farense, and orjson cannot hold a date)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
    return Loader


def decode_yaml(data: bytes, label: str) -> Any:
    """YAML text → value; every problem is one line with its line and column where YAML gives one."""
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            _("{path}: não é texto UTF-8 (byte {position})").format(path=label, position=exc.start)
        ) from None
    try:
        value = yaml.load(text, yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = (
            " " + _("na linha {line}, coluna {column}").format(line=mark.line + 1, column=mark.column + 1)
            if mark
            else ""
        )
        problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        problem = parser_reason(problem, YAML_REASONS)
        raise SpecError(
            _("{path}: YAML inválido{where}: {problem}").format(path=label, where=where, problem=safe(problem, 160))
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:  # e.g. an int of 5000 digits
        raise SpecError(_("{path}: YAML inválido: {problem}").format(path=label, problem=safe(exc, 160))) from None
    check_bounds(value, label)
    return value


# ---- every decoded value bounded --------------------------------------------------------------------------------
def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def check_bounds(value: Any, label: str) -> None:
    """Depth, size, numbers and text of a decoded spec within what a spec can need; one line naming the key."""
    stack = [(value, "", 0)]
    nodes = 0
    while stack:
        item, where, depth = stack.pop()
        nodes += 1
        shown = where or _("(raiz)")
        if nodes > MAX_NODES:
            raise SpecError(_("{path}: mais de {limit} valores numa spec").format(path=label, limit=MAX_NODES))
        if depth > MAX_DEPTH:
            raise SpecError(
                _("{path}: {key}: aninhado a mais de {limit} níveis").format(
                    path=label, key=safe(shown, 80), limit=MAX_DEPTH
                )
            )
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise SpecError(
                        _("{path}: {key}: a chave {child} não é texto").format(
                            path=label, key=safe(shown, 80), child=excerpt(key)
                        )
                    )
                stack.append((child, _join(where, safe(key, 40)), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        elif item is None or isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if abs(item) > MAX_INT:
                raise SpecError(
                    _("{path}: {key} = {value}: número grande demais (máximo 2^53)").format(
                        path=label, key=safe(shown, 80), value=excerpt(item)
                    )
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise SpecError(
                    _("{path}: {key} = {value}: o número deve ser finito").format(
                        path=label, key=safe(shown, 80), value=item
                    )
                )
        elif isinstance(item, str):
            if len(item) > MAX_TEXT:
                raise SpecError(
                    _("{path}: {key}: texto com {length} caracteres (máximo {limit}): {value}").format(
                        path=label, key=safe(shown, 80), length=len(item), limit=MAX_TEXT, value=excerpt(item)
                    )
                )
        else:
            raise SpecError(
                _("{path}: {key}: valor do tipo {kind} não é aceite numa spec").format(
                    path=label, key=safe(shown, 80), kind=type(item).__name__
                )
            )
