"""Hostile text made harmless before it reaches a terminal, a log or a reason file.

Any value from a user's file (a spec, a data line, a file name, a child's output) may hold escape sequences that a
terminal acts on (OSC 0 sets the window title, OSC 52 writes the clipboard), control characters that rewrite or
hide a line, bidi overrides that reorder what is shown, or simply megabytes. `safe()` shows such characters as
visible escapes on one line, `excerpt()` renders any value in a few dozen characters without walking all of it,
`terminal_text()` keeps a log's colours and newlines and drops every other control, and `SafeFormatter` applies
`safe()` to every line a logger writes.
"""

from __future__ import annotations

import logging
import re

# what a terminal acts on: C0 and C1 controls, DEL, bidi embeddings/overrides/isolates, line/paragraph separators;
# and lone surrogates: a file name's undecodable bytes (os.fsdecode's surrogateescape), which no UTF-8 can hold
CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]")
CONTROL_BUT_NEWLINE_RE = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\ud800-\udfff]"
)
NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}
# in a log: an SGR sequence (colours) is kept; any other escape sequence, and any control character but newline,
# tab and carriage return (the progress bar redraws with it), is dropped
LOG_RE = re.compile(
    r"(?P<sgr>\x1b\[[0-9;:]*m)"
    r"|\x1b\[[0-?]*[ -/]*[@-~]"  # CSI: cursor moves, erase, modes...
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC up to their terminator
    r"|\x1b[ -/]*[0-~]?"  # two-character escapes (and a lone ESC)
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
    "|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
ELLIPSIS = "…"


def _visible(match: re.Match) -> str:
    char = match.group()
    if char in NAMED:
        return NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name, shown as the byte it was
        code -= 0xDC00
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cut(text: str, limit: int | None) -> str:
    return text if limit is None or len(text) <= limit else text[: max(limit - 1, 0)] + ELLIPSIS


def safe(text, limit: int | None = None) -> str:
    """One line a terminal shows as it is: control characters and escape sequences made visible (`\\e]0;…`),
    cut to `limit` characters (with …) when given."""
    text = str(text)
    if limit is not None and len(text) > 4 * limit:
        text = text[: 4 * limit]  # never escape megabytes to show a few dozen characters
    return _cut(CONTROL_RE.sub(_visible, text), limit)


def safe_lines(text, limit: int | None = None) -> str:
    """`safe`, keeping newlines (a traceback, a multi-line message)."""
    text = str(text)
    if limit is not None and len(text) > 4 * limit:
        text = text[: 4 * limit]
    return _cut(CONTROL_BUT_NEWLINE_RE.sub(_visible, text), limit)


def terminal_text(text: str) -> str:
    """A log as a terminal may show it: colours (SGR) kept, every other escape sequence and control dropped."""
    return LOG_RE.sub(lambda m: m.group("sgr") or "", text)


# ---- excerpt: any value in a few dozen characters ---------------------------------------------------------------
def _number(value) -> str:
    if isinstance(value, int) and value.bit_length() > 60:  # str() of a huge int is slow, and refused past 4300 digits
        return f"{'-' if value < 0 else ''}2^{value.bit_length() - 1}{ELLIPSIS}"
    return repr(value)


def _render(value, budget: int, depth: int) -> str:
    """At most about `budget` characters of `value`, never visiting more of it than that needs."""
    if isinstance(value, str):
        return "'" + safe(value, max(budget - 2, 1)) + "'"
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        items, opening, closing = value.items(), "{", "}"
    elif isinstance(value, (list, tuple, set, frozenset)):
        items, opening, closing = value, "[", "]"
    else:
        return f"<{type(value).__name__}>"
    if depth >= 3:
        return opening + (ELLIPSIS if value else "") + closing
    parts, used = [], 2
    for item in items:
        if used >= budget:
            parts.append(ELLIPSIS)
            break
        if opening == "{":
            key, val = item
            text = _render(key, budget - used, depth + 1) + ": " + _render(val, budget - used, depth + 1)
        else:
            text = _render(item, budget - used, depth + 1)
        parts.append(text)
        used += len(text) + 2
    return opening + ", ".join(parts) + closing


def excerpt(value, limit: int = 60) -> str:
    """A short, escaped rendering of any value (text quoted, containers only as far as `limit` reaches)."""
    return _cut(_render(value, limit, 0), limit)


class SafeFormatter(logging.Formatter):
    """Every log record on one safe line (a file name cannot forge a line); a traceback keeps its newlines only."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = safe(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - logging's name
        return safe_lines(super().formatException(ei))
