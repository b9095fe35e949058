"""`python -m bench [--quick]`: measure every performance figure of farense beside its anchor.

The full run rewrites bench/RESULTS.md; --quick (under ~2 minutes, fewer repeats, smaller inputs) only prints.
Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import tempfile
import time
from pathlib import Path

import psutil

from bench.figures import REPO, Figure, checkpoint_share, resume_startup, training_throughput, workspace
from bench.figures_queue import cli_figures, daemon_figures, eval_figures, tail_figures
from bench.figures_wholerun import resume_startup_cached, whole_run


def build_figure(tmp: Path) -> tuple[Figure, Path]:
    from farensed.demo.data import write_demo_data
    from farensed.demo.tinymodel import build_tiny_model

    tic = time.perf_counter()
    model = build_tiny_model(tmp / "model", force=True, log=lambda *_: None)
    write_demo_data(tmp / "data")
    return Figure("build tiny model + demo data", [time.perf_counter() - tic], None, "s", "< 90 s"), model


def machine() -> str:
    import mlx.core as mx

    return (
        f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"mlx {mx.__version__} ({mx.default_device()})"
    )


def table(figures: list[Figure]) -> str:
    rows = ["| figure | farense | anchor | ratio | goal | notes |", "|---|---|---|---|---|---|"]
    for f in figures:
        ratio = f.ratio()
        rows.append(
            f"| {f.name} | {Figure.fmt(f.farense, f.unit)} | "
            f"{f.anchor_name + ': ' + Figure.fmt(f.anchor, f.unit) if f.anchor else '—'} | "
            f"{'—' if ratio is None else f'{ratio:.2f}×'} | {f.goal} | {f.note} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller inputs, print only")
    parser.add_argument(
        "--wholerun", action="store_true", help="only the whole-run figures; rewrites their section of RESULTS.md"
    )
    args = parser.parse_args()
    if args.wholerun:
        return main_wholerun(quick=args.quick)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quick = args.quick
    repeats = 1 if quick else 3
    figures: list[Figure] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="farense-bench-") as tmp:
        tmp = Path(tmp)
        if quick:
            from farensed.demo.tinymodel import build_tiny_model

            model = build_tiny_model(REPO / "tests/.cache/bench-model", log=lambda *_: None)
        else:
            fig, model = build_figure(tmp / "build")
            figures.append(fig)
        root = workspace(tmp / "ws", model)
        steps = [
            lambda: training_throughput(root, repeats),
            lambda: resume_startup(root, repeats),
            lambda: checkpoint_share(root),
            lambda: daemon_figures(root, repeats=3 if quick else 5, idle_seconds=5 if quick else 60),
            lambda: cli_figures(root, repeats=3 if quick else 7),
            lambda: tail_figures(root, repeats=3 if quick else 7, big=100_000 if quick else 1_000_000),
            lambda: eval_figures(root),
            lambda: whole_run(root, repeats=1 if quick else 2),
            lambda: resume_startup_cached(root, repeats),
        ]
        for step in steps:
            for fig in step():
                figures.append(fig)
                print(
                    f"{fig.name}: {Figure.fmt(fig.farense, fig.unit)}"
                    + (
                        f" vs {fig.anchor_name} {Figure.fmt(fig.anchor, fig.unit)} ({fig.ratio():.2f}×)"
                        if fig.anchor
                        else ""
                    ),
                    flush=True,
                )
    text = table(figures)
    print(f"\n{text}\n\n({time.perf_counter() - started:.0f} s)")
    if not quick:
        results = REPO / "bench/RESULTS.md"
        head = results.read_text().split("<!-- table -->")[0] if results.exists() else "# Benchmarks\n\n"
        results.write_text(
            f"{head}<!-- table -->\nMachine: {machine()}. Date: {dt.date.today()}. "
            f"Median (min–max) of repeated runs; comparisons interleaved in one run.\n\n{text}\n"
        )


def main_wholerun(quick: bool) -> None:
    """The whole-run figures alone (~3 minutes here), written between the wholerun markers of RESULTS.md."""
    from farensed.demo.tinymodel import build_tiny_model, recipe_hash

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    figures: list[Figure] = []
    cache = Path(os.environ.get("FARENSE_TEST_CACHE", REPO / "tests/.cache"))  # the tests' tiny model, if built
    model = build_tiny_model(cache / f"tiny-mistral-4bit-{recipe_hash()}", log=lambda *_: None)
    with tempfile.TemporaryDirectory(prefix="farense-bench-") as tmp:
        root = workspace(Path(tmp) / "ws", model)
        figures += whole_run(root, repeats=1 if quick else 2)
        figures += resume_startup_cached(root, repeats=1 if quick else 3)
    text = table(figures)
    print(text)
    if not quick:
        results = REPO / "bench/RESULTS.md"
        start, end = "<!-- wholerun -->", "<!-- /wholerun -->"
        before, rest = results.read_text().split(start)
        after = rest.split(end)[1]
        section = f"Machine: {machine()}. Date: {dt.date.today()}. Median (min–max).\n\n{text}\n"
        results.write_text(f"{before}{start}\n{section}{end}{after}")


if __name__ == "__main__":
    main()
