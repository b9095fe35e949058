"""Shared fixtures: the tiny model built once per machine (cached on disk), a temp workspace per test."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from tests.helpers import TEST_SPEC, run_cli, write_spec

CACHE = Path(os.environ.get("FARENSE_TEST_CACHE", Path(__file__).parent / ".cache"))


def pytest_collection_modifyitems(items):
    """Two layers: a test that uses the tiny model (directly or through a fixture) is `e2e`, any other `fast`."""
    for item in items:
        # a test that picks its model at run time (request.getfixturevalue) says so with an explicit e2e mark
        if item.get_closest_marker("real"):
            continue  # real weights: their own layer (`pytest -m real`)
        uses_model = item.get_closest_marker("e2e") or "tiny_model" in getattr(item, "fixturenames", ())
        item.add_marker(pytest.mark.e2e if uses_model else pytest.mark.fast)


@pytest.fixture(scope="session", autouse=True)
def portuguese():
    """Tests pin the language they assert: Portuguese (the seed's wording), here and in every process they start,
    set before any fixture (a module-scoped workspace starts its daemon before function-scoped fixtures run).
    The developer's own farense settings (FARENSE_WINDOW, FARENSE_MEMORY_GUARD, ...) and a rank's MLX_RANK are not
    the tests': each test sets what it needs."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("FARENSE_") or k == "MLX_RANK"]:
            mp.delenv(name)
        mp.setenv("FARENSE_LANG", "pt")
        yield


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own workspace root (as $FARENSE_HOME) and runs offline."""
    home = tmp_path / "ws"
    home.mkdir()
    monkeypatch.setenv("FARENSE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.chdir(tmp_path)
    return home


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """models/tiny-mistral-4bit, built by the project itself once and reused across runs."""
    from farensed.demo.tinymodel import build_tiny_model, recipe_hash

    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"tiny-mistral-4bit-{recipe_hash()}"
    with FileLock(str(CACHE / "build.lock")):
        build_tiny_model(target, log=lambda msg: print(msg, file=sys.stderr))
    return target


@pytest.fixture(scope="session")
def tiny_fp_model(tiny_model) -> Path:
    """The tiny model dequantized to float32 with `mlx_lm convert -d` (full fine-tuning needs float weights)."""
    import subprocess

    from tests.helpers import child_env

    target = CACHE / f"{tiny_model.name}-fp32"
    with FileLock(str(CACHE / "build.lock")):
        if not (target / "config.json").is_file():
            tmp = CACHE / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            cmd = [
                sys.executable,
                "-m",
                "mlx_lm",
                "convert",
                "--hf-path",
                str(tiny_model),
                "--mlx-path",
                str(tmp),
                "-d",
            ]
            subprocess.run(cmd, check=True, env=child_env(), capture_output=True)
            os.replace(tmp, target)
    return target


def make_workspace(root: Path, model: Path) -> Path:
    """A workspace with the tiny model (linked, read-only use) and the demo data."""
    from farensed.demo.data import write_demo_data

    (root / "models").mkdir(parents=True, exist_ok=True)
    link = root / "models" / "tiny-mistral-4bit"
    if not link.exists():
        link.symlink_to(model, target_is_directory=True)
    write_demo_data(root / "data" / "demo")
    return root


@pytest.fixture
def workspace(isolated_home, tiny_model) -> Path:
    return make_workspace(isolated_home, tiny_model)


@pytest.fixture(scope="session")
def untrained_model() -> Path:
    """The tiny model's folder with untrained weights, written without mlx (tests/helpers.py: write_untrained_model)."""
    from farensed.demo.tinymodel import recipe_hash
    from tests.helpers import write_untrained_model

    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"untrained-mistral-4bit-{recipe_hash()}"
    with FileLock(str(CACHE / "build.lock")):
        if not (target / "config.json").is_file():  # config.json is written last
            tmp = CACHE / f".{target.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            write_untrained_model(tmp)
            os.replace(tmp, target)
    return target


@pytest.fixture
def spec_workspace(isolated_home, untrained_model) -> Path:
    """A workspace for checks that read the model folder but never load it: the fast layer's `workspace`."""
    return make_workspace(isolated_home, untrained_model)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, tiny_model) -> Path:
    """TEST_SPEC trained once without interruption: what every resumed run must equal."""
    root = make_workspace(tmp_path_factory.mktemp("reference"), tiny_model)
    spec = write_spec(root, TEST_SPEC)
    proc = run_cli(root, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-3000:]
    return root


@pytest.fixture
def fresh_copy(tmp_path):
    """Copy a folder tree (e.g. a finished run) into this test's temp dir."""

    def copy(src: Path, name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst, symlinks=True)
        return dst

    return copy
