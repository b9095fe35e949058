"""`python -m bench.chaos [--minutes N]`: a chaos soak of the queue that proves its promises.

Submits rounds of 6 jobs (priorities, an `after` chain, one cancelled midway) and, for N minutes, kills at random
moments: kill -9 of the daemon, kill -9 of the training child, SIGTERM of either, two SIGTERMs to the daemon;
the daemon is restarted after each. With every kill a poison file (tests/hostile.py: deep nesting, alias bombs,
`!!binary`, integer keys, duplicate keys, a year-9999 `not_before`, escape sequences, garbage bytes…) lands in
jobs/pending/. Then it lets the queue drain and checks: every job ended exactly once in the state it should (daemon
logs and attempt log), each finished job's adapters tensor-identical to an uninterrupted reference, every poison
file refused into jobs/failed/ with its reason and a line in the daemon's log (and none became a job), no daemon
exit it did not cause, no orphan processes, no temp files, and — from a watcher sampling processes all along —
never two trainers at once and never two morning reports at once. `--write-results` puts the figures into
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psutil

from bench.chaos_watch import Watcher
from tests.hostile import POISON, drop

REPO = Path(__file__).resolve().parents[1]
# Two configurations (the name does not enter the computation: jobs of one config end with the same tensors).
BASE = {
    "model": "models/tiny-mistral-4bit",
    "data": {"train": "data/demo/train.jsonl", "valid": "data/demo/valid.jsonl"},
    "lora": {"rank": 4, "alpha": 16, "dropout": 0.08, "layers": 2},
    "batch_size": 8,
    "grad_accumulation": 2,
    "learning_rate": 2e-3,
    "epochs": 1,
    "max_seq_length": 128,
    "eval_every": 4,
    "save_every": 4,
    "keep_checkpoints": 2,
    "val_samples": 16,
    "evaluate": False,
    "max_recoveries": 1000,
}
CONFIGS = {"a": {}, "b": {"learning_rate": 1e-3, "seed": 7}}
# (suffix, config, priority, index of the job it runs after within the round)
ROUND = [("p0", "a", 0, None), ("p5", "b", 5, None), ("p9", "a", 9, None), ("c1", "b", 1, 2), ("c2", "a", 1, 3)]
CANCELLED = ("x", "b", 2, None)  # the one cancelled midway
ACTIONS = ("kill9-daemon", "kill9-child", "sigterm-daemon", "sigterm-child", "double-sigterm-daemon")


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def spec_of(name: str, config: str, **extra) -> dict:
    spec = copy.deepcopy(BASE)
    spec.update(CONFIGS[config], name=name, **extra)
    return spec


def make_workspace(root: Path, model: Path) -> Path:
    from farensed.demo.data import write_demo_data

    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models/tiny-mistral-4bit").symlink_to(model, target_is_directory=True)
    write_demo_data(root / "data/demo")
    return root


def references(root: Path, model: Path) -> dict[str, Path]:
    """Each configuration trained once, uninterrupted, with `farensectl run`."""
    make_workspace(root, model)
    out = {}
    for config in CONFIGS:
        path = root / f"{config}.json"
        path.write_bytes(orjson.dumps(spec_of(f"ref-{config}", config)))
        cmd = [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "run", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
        if proc.returncode != 0:
            raise RuntimeError(f"reference run {config} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        out[config] = root / "output" / f"ref-{config}" / "adapters.safetensors"
    return out


@dataclass
class Soak:
    root: Path
    minutes: float
    seed: int = 0
    log: callable = print
    daemon: subprocess.Popen | None = None
    daemon_logs: list[Path] = field(default_factory=list)
    kills: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    expected: dict[int, tuple[str, str]] = field(default_factory=dict)  # job id → (config, expected state)
    cancel_target: int | None = None
    cancelled_directly: set = field(default_factory=set)  # cancelled while pending: no daemon ever ended them
    poison: list[str] = field(default_factory=list)  # files dropped into jobs/pending/ that must be refused
    unexpected_exits: int = 0  # daemon exits the soak did not cause

    def queue(self):
        from farensed.queue.jobs import Queue
        from farensed.storage.workspace import Workspace

        return Queue(Workspace(self.root))

    # ---- the daemon -------------------------------------------------------------------------------------
    def start_daemon(self) -> None:
        path = self.root / f"daemon-{len(self.daemon_logs):03d}.log"
        self.daemon_logs.append(path)
        cmd = [sys.executable, "-m", "farensed.queue.main", "--home", str(self.root), "--poll", "0.1"]
        cmd += ["--rescan", "1", "--recovery-backoff", "0.5,1,2", "--stop-timeout", "60"]
        self.daemon = subprocess.Popen(cmd, stdout=open(path, "wb"), stderr=subprocess.STDOUT, env=env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self._ready(self.daemon.pid):  # whatever the log's language
            if self.daemon.poll() is not None:  # e.g. the previous one still held the queue: try again
                time.sleep(0.2)
                return self.start_daemon()
            time.sleep(0.02)

    def _ready(self, pid: int) -> bool:
        """The daemon `pid` serves the queue: it recovered its jobs and read jobs/pending/ once (daemon.pid)."""
        from farensed.queue.pidfile import daemon_info
        from farensed.storage.workspace import Workspace

        info = daemon_info(Workspace(self.root)) or {}
        return info.get("pid") == pid and bool(info.get("ready_at"))

    def stop_daemon(self, sig: int = signal.SIGTERM, timeout: float = 120) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            self.daemon.wait(timeout=timeout)

    # ---- jobs -------------------------------------------------------------------------------------------
    def submit_round(self, n: int) -> None:
        q = self.queue()
        ids: list[int] = []
        for suffix, config, priority, after in [*ROUND, CANCELLED]:
            extra = {"after": [ids[after]]} if after is not None else {}
            path = self.root / "specs" / f"r{n}-{suffix}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(orjson.dumps(spec_of(f"r{n}-{suffix}", config, priority=priority, **extra)))
            job = q.submit(path)
            ids.append(job.id)
            self.expected[job.id] = (config, "done")
        self.cancel_target = ids[-1]

    def maybe_cancel(self) -> None:
        """Cancel the round's marked job once it has trained a little (midway), whatever the daemon's state."""
        if self.cancel_target is None:
            return
        q = self.queue()
        job = q.get(self.cancel_target)
        lines = self.root / "checkpoints_qlora" / job.name / "training_metrics.jsonl"
        if job.state == "running" and lines.exists() and lines.read_bytes().count(b"\n") >= 3:
            if q.cancel(job.id).state == "cancelled":
                self.cancelled_directly.add(job.id)
            self.expected[job.id] = (self.expected[job.id][0], "cancelled")
            self.log(f"cancel job {job.id} ({job.name}) midway")
            self.cancel_target = None

    def child(self) -> psutil.Process | None:
        for job in self.queue().jobs():
            if job.state == "running" and job.pid:
                try:
                    proc = psutil.Process(job.pid)
                    if abs(proc.create_time() - (job.pid_create_time or 0)) < 0.5:
                        return proc
                except psutil.Error:
                    pass
        return None

    # ---- chaos ------------------------------------------------------------------------------------------
    def drop_poison(self, rng: random.Random) -> None:
        name = rng.choice(sorted(POISON))
        target = f"p{len(self.poison):03d}-{name}"
        drop(self.root / "jobs" / "pending", target, POISON[name])
        self.poison.append(target)

    def strike(self, rng: random.Random) -> None:
        self.drop_poison(rng)
        action = rng.choice(ACTIONS)
        child = self.child()
        if action.endswith("child") and child is None:
            action = "kill9-daemon"
        self.log(f"{time.strftime('%H:%M:%S')} {action}" + (f" (child {child.pid})" if child else ""))
        if action == "kill9-daemon":
            self.stop_daemon(signal.SIGKILL)
        elif action == "sigterm-daemon":
            self.stop_daemon(signal.SIGTERM)
        elif action == "double-sigterm-daemon":
            self.daemon.send_signal(signal.SIGTERM)
            time.sleep(rng.uniform(0.0, 0.3))
            self.stop_daemon(signal.SIGTERM, timeout=30)
        else:
            try:
                child.send_signal(signal.SIGKILL if action == "kill9-child" else signal.SIGTERM)
            except psutil.Error:
                pass
        self.kills[action] += 1
        if self.daemon.poll() is not None:
            self.start_daemon()

    def striking(self, elapsed: float, min_strikes: int) -> bool:
        wanted = self.minutes * 60
        return elapsed < wanted or (sum(self.kills.values()) < min_strikes and elapsed < 4 * wanted)

    def all_ended(self) -> bool:
        return all(j.status.terminal for j in self.queue().jobs())

    def run(self, interval: tuple[float, float] = (1.5, 5.0), drain_timeout: float = 900, min_strikes: int = 0) -> dict:
        """Strike for `minutes`, and on until `min_strikes` (a loaded machine fits fewer in the time; at most 4x it)."""
        rng = random.Random(self.seed)
        watcher = Watcher(self.root)
        watcher.start()
        rounds = 1
        self.submit_round(rounds)
        self.start_daemon()
        tic = time.monotonic()
        next_strike = tic + rng.uniform(*interval)
        while self.striking(time.monotonic() - tic, min_strikes):
            self.maybe_cancel()
            if self.daemon.poll() is not None:  # not killed by us: a poison file or a bug must never do this
                self.unexpected_exits += 1
                self.log(f"{time.strftime('%H:%M:%S')} daemon exited by itself (code {self.daemon.returncode})")
                self.start_daemon()
            if self.all_ended():
                rounds += 1
                self.submit_round(rounds)
            if time.monotonic() >= next_strike:
                self.strike(rng)
                next_strike = time.monotonic() + rng.uniform(*interval)
            time.sleep(0.05)
        chaos_s = time.monotonic() - tic
        deadline = time.monotonic() + drain_timeout
        while not self.all_ended() and time.monotonic() < deadline:
            self.maybe_cancel()
            if self.daemon.poll() is not None:
                self.start_daemon()
            time.sleep(0.1)
        self.stop_daemon()
        time.sleep(0.5)
        watcher.stop_event.set()
        watcher.join()
        return self.verify(watcher, rounds, chaos_s)

    # ---- the proof --------------------------------------------------------------------------------------
    def verify(self, watcher: Watcher, rounds: int, chaos_s: float) -> dict:
        problems: list[str] = []
        logs = "".join(p.read_text(errors="replace") for p in self.daemon_logs)
        # the daemon's lifecycle lines: fixed fields before ` · ` (farensed/queue/events.py), whatever the language
        ends = re.findall(r"(?m)^(?:\[[^\]]*\] )?job=(\d+) event=ended state=(done|failed|cancelled) ", logs)
        for job in self.queue().jobs():
            if job.id not in self.expected:
                problems.append(f"job {job.id} ({job.name}) came from a poison file: {job.source}")
                continue
            config, want = self.expected[job.id]
            n_ends = sum(1 for i, _ in ends if int(i) == job.id) + (job.id in self.cancelled_directly)
            finished_first = want == "cancelled" and job.state == "done" and job.exit_code == 0  # cancel came late
            if job.state != want and not finished_first:
                problems.append(f"job {job.id} ({job.name}): {job.state}, expected {want} ({job.error})")
            if n_ends != 1:
                problems.append(f"job {job.id} ({job.name}): ended {n_ends} times in the daemon logs")
            tries = [
                int(t)
                for t in re.findall(rf"=== farensed: job={job.id} event=started attempt=(\d+)", self._job_log(job.id))
            ]
            # Strictly increasing and ending at `attempts` (a daemon killed between claiming a job and writing
            # the header skips a number: an attempt without a child, never a second one).
            if tries != sorted(set(tries)) or (tries[-1:] or [0])[0] != job.attempts:
                problems.append(f"job {job.id}: attempt log {tries} ≠ 1..{job.attempts}")
        problems += self.verify_poison(logs)
        problems += [f"{self.unexpected_exits} daemon exits the soak did not cause"] if self.unexpected_exits else []
        if watcher.max_reports > 1:
            problems.append(f"{watcher.max_reports} morning reports at once")
        divergences, compared = self.compare_adapters()
        problems += divergences
        leftovers = [p for p in self.root.rglob("*") if ".tmp-" in p.name]
        problems += [f"temp file left: {p.relative_to(self.root)}" for p in leftovers]
        # Processes naming this workspace may still be finishing (the morning report the daemon starts when the
        # queue drains); an orphan is one that is still there after a grace period.
        named = [p for p in psutil.process_iter(["cmdline"]) if str(self.root) in " ".join(p.info["cmdline"] or [])]
        orphans = [p.pid for p in psutil.wait_procs(named, timeout=60)[1]]
        problems += [f"orphan process {pid}" for pid in orphans]
        if watcher.violations:
            problems.append(f"two trainers at once: {watcher.violations[:3]}")
        jobs = self.queue().jobs()
        return {
            "minutes": round(chaos_s / 60, 2),
            "rounds": rounds,
            "jobs": len(jobs),
            "done": sum(j.state == "done" for j in jobs),
            "cancelled": sum(j.state == "cancelled" for j in jobs),
            "kills": dict(self.kills),
            "kills_total": sum(self.kills.values()),
            "daemons_started": len(self.daemon_logs),
            "attempts": sum(j.attempts for j in jobs),
            "recoveries": sum(j.recoveries for j in jobs),
            "adapters_compared": compared,
            "divergences": len(divergences),
            "poison_files": len(self.poison),
            "poison_refused": sum((self.root / "jobs" / "failed" / f"{n}.reason.txt").is_file() for n in self.poison),
            "unexpected_daemon_exits": self.unexpected_exits,
            "max_reports_at_once": watcher.max_reports,
            "max_trainers_at_once": watcher.max_trainers,
            "watcher_samples": watcher.samples,
            "orphans": len(orphans),
            "temp_files": len(leftovers),
            "problems": problems,
        }

    def verify_poison(self, logs: str) -> list[str]:
        """Every poison file in jobs/failed/ with a one-line reason, and named in a daemon's log."""
        problems = []
        failed = self.root / "jobs" / "failed"
        for name in self.poison:
            reason = failed / f"{name}.reason.txt"
            if not (failed / name).exists() or not reason.is_file():
                problems.append(f"poison file {name} not set aside in jobs/failed/")
            elif reason.read_text().count("\n") != 1 or len(reason.read_text()) > 301:
                problems.append(f"poison file {name}: reason not one short line")
            if f"jobs/pending/{name} " not in logs:  # `… recusado → jobs/failed/: …` (or its translation)
                problems.append(f"poison file {name}: no line in the daemon's log")
        return problems

    def _job_log(self, job_id: int) -> str:
        path = self.root / "jobs" / str(job_id) / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def compare_adapters(self) -> tuple[list[str], int]:
        import mlx.core as mx

        refs = {c: mx.load(str(p)) for c, p in self.references.items()}
        problems, compared = [], 0
        for job in self.queue().jobs():
            if job.state != "done":
                continue
            got = mx.load(str(self.root / "output" / job.name / "adapters.safetensors"))
            want = refs[self.expected[job.id][0]]
            compared += 1
            if sorted(got) != sorted(want) or not all(mx.array_equal(got[k], want[k]).item() for k in want):
                problems.append(f"job {job.id} ({job.name}): adapters differ from the uninterrupted reference")
        return problems, compared


def soak(
    minutes: float,
    model: Path | None = None,
    seed: int = 0,
    workdir: Path | None = None,
    log=print,
    interval: tuple[float, float] = (1.5, 5.0),
    drain_timeout: float = 900,
    min_strikes: int = 0,
) -> dict:
    """Build (or reuse) the tiny model, train the references, run the soak; return the figures."""
    from farensed.demo.tinymodel import build_tiny_model

    base = Path(workdir or tempfile.mkdtemp(prefix="farense-chaos-"))
    if model is None:
        model = build_tiny_model(base / "model", log=lambda *_: None)
    refs = references(base / "reference", model)
    root = make_workspace(base / "ws", model)
    runner = Soak(root, minutes, seed=seed, log=log)
    runner.references = refs
    return runner.run(interval, drain_timeout, min_strikes)


RESULTS_START, RESULTS_END = "<!-- chaos -->", "<!-- /chaos -->"


def machine() -> str:
    import platform

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores (load {load:.1f} at the end)"


def write_results(figures: dict) -> None:
    """Replace the chaos section of bench/RESULTS.md (kept above the table the full bench rewrites)."""
    import datetime as dt

    path = REPO / "bench/RESULTS.md"
    text = path.read_text()
    k = figures["kills"]
    section = (
        f"{RESULTS_START}\n## Chaos soak (`python -m bench.chaos --minutes {figures['minutes']:g}`)\n\n"
        f"Date: {dt.date.today()}, seed {figures.get('seed', 0)}. {figures['kills_total']} kills survived "
        f"(kill -9 daemon {k['kill9-daemon']}, kill -9 child {k['kill9-child']}, SIGTERM daemon "
        f"{k['sigterm-daemon']}, two SIGTERMs to the daemon {k['double-sigterm-daemon']}, SIGTERM child "
        f"{k['sigterm-child']}); {figures['daemons_started']} daemons started. With each kill a poison file in "
        f"jobs/pending/ (tests/hostile.py): {figures['poison_files']} dropped, {figures['poison_refused']} set aside "
        f"in jobs/failed/ with their reason, {figures['unexpected_daemon_exits']} daemon exits not caused by a kill, "
        f"at most {figures['max_reports_at_once']} morning report at once. Machine: {machine()}.\n"
        f"Problems found: {len(figures['problems'])} (each job ended exactly once in the daemon logs, in its expected "
        "state, attempt log increasing; done jobs' adapters equal, tensor for tensor, to an uninterrupted run of "
        "the same configuration; every poison file refused, logged, never a job; a watcher sampled the workspace's "
        "processes all along).\n\n"
        "| jobs | done | cancelled | attempts | recoveries | adapters compared | divergences | "
        "max trainers at once | orphans | temp files |\n|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {figures['jobs']} | {figures['done']} | {figures['cancelled']} | {figures['attempts']} | "
        f"{figures['recoveries']} | {figures['adapters_compared']} | {figures['divergences']} | "
        f"{figures['max_trainers_at_once']} ({figures['watcher_samples']} samples) | {figures['orphans']} | "
        f"{figures['temp_files']} |\n{RESULTS_END}\n"
    )
    if RESULTS_START in text:
        head, rest = text.split(RESULTS_START, 1)
        text = head + section + "\n" + rest.split(RESULTS_END, 1)[1].lstrip("\n")
    else:
        head, sep, tail = text.partition("<!-- table -->")
        text = head + section + "\n" + sep + tail
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to keep killing (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="the random kill schedule's seed")
    parser.add_argument("--model", type=Path, help="an mlx-lm model folder to reuse (default: build the tiny one)")
    parser.add_argument("--workdir", type=Path, help="where to keep the soak's workspaces (default: a temp folder)")
    parser.add_argument("--write-results", action="store_true", help="write the figures into bench/RESULTS.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    figures = soak(args.minutes, args.model, args.seed, args.workdir)
    figures["seed"] = args.seed
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.write_results:
        write_results(figures)
    sys.exit(1 if figures["problems"] else 0)


if __name__ == "__main__":
    main()
