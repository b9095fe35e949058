"""The service files built, not pasted: the LaunchAgent with plistlib, the systemd unit with systemd's quoting.

A workspace path may hold a space, `&`, `%`, `$` or quotes. Pasted into the templates it made a plist that does not
parse and an `ExecStart=` that splits the path into several arguments. Here the plist template is parsed, filled
as data and written back by plistlib; in the unit every value is quoted by the rules of systemd.syntax(7) and
systemd.service(5): `%` doubled (specifiers) everywhere, `$` doubled in `ExecStart=` (variable expansion), each
argument in double quotes with C-style escapes. Both run farensed with umask 077 (private by default).
"""

from __future__ import annotations

import plistlib
import re
import sys
import urllib.parse

from farensed.errors import QueueError
from farensed.i18n import _
from farensed.storage.workspace import Workspace

UMASK = 0o077
C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
CONTROL_RE = re.compile("[\x00-\x1f\x7f]")


def program(ws: Workspace) -> list[str]:
    """The daemon's command line (what launchd and systemd run)."""
    return [sys.executable, "-m", "farensed.queue.main", "--home", str(ws.root)]


def _check_path(ws: Workspace) -> None:
    """A line-based unit file cannot hold a newline, nor keep trailing blanks: such a workspace is refused."""
    root = str(ws.root)
    if CONTROL_RE.search(root) or root != root.strip():
        raise QueueError(
            _("{path}: um serviço não pode apontar para uma pasta com caracteres de controlo ou espaços no fim").format(
                path=ascii(root)
            )
        )


# ---- launchd ----------------------------------------------------------------------------------------------------
def _fill(value, values: dict[str, str]):
    """Replace @NAME@ placeholders inside every string of a parsed plist."""
    if isinstance(value, str):
        for key, replacement in values.items():
            value = value.replace(key, replacement)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, values) for v in value]
    return value


def launch_agent(template: str, ws: Workspace) -> bytes:
    """The LaunchAgent plist: the template parsed, filled as data, written by plistlib (escaping is its job)."""
    _check_path(ws)
    plist = _fill(plistlib.loads(template.encode()), {"@PYTHON@": sys.executable, "@HOME@": str(ws.root)})
    plist["ProgramArguments"] = program(ws)
    plist["Umask"] = UMASK
    return plistlib.dumps(plist)


# ---- systemd ----------------------------------------------------------------------------------------------------
def _c_escape(text: str) -> str:
    return "".join(C_ESCAPES.get(ch, f"\\x{ord(ch):02x}" if CONTROL_RE.match(ch) else ch) for ch in text)


def exec_argument(arg: str) -> str:
    """One ExecStart= argument: double-quoted with C escapes, `$` → `$$` (no variable), `%` → `%%` (no specifier)."""
    return '"' + _c_escape(arg).replace("$", "$$").replace("%", "%%") + '"'


def environment_assignment(name: str, value: str) -> str:
    """One Environment= assignment, quoted (Environment= expands specifiers, not variables)."""
    return '"' + _c_escape(f"{name}={value}").replace("%", "%%") + '"'


def systemd_unit(template: str, ws: Workspace) -> str:
    """The systemd user unit with this Python and workspace, every value quoted for systemd."""
    _check_path(ws)
    root = str(ws.root)
    values = {
        "@EXEC_START@": " ".join(exec_argument(arg) for arg in program(ws)),
        # WorkingDirectory= takes the rest of the line as one path (no quotes), after specifier expansion
        "@WORKING_DIRECTORY@": root.replace("%", "%%"),
        "@ENVIRONMENT@": " ".join(
            [environment_assignment("FARENSE_HOME", root), environment_assignment("PYTHONUNBUFFERED", "1")]
        ),
        "@DOCUMENTATION@": ("file://" + urllib.parse.quote(f"{root}/README.md")).replace("%", "%%"),
    }
    lines = []
    for line in template.splitlines():
        key, sep, value = line.partition("=")
        if sep and value.strip() in values:
            line = f"{key}={values[value.strip()]}"
        lines.append(line)
    return "\n".join(lines) + "\n"
