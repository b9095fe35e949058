"""Hostile input against the real tiny model and a real farensed process (e2e; the model-free battery is
tests/test_fast_hostile.py): generated poison files dropped into jobs/pending/ while farensed runs are all set
aside with a short reason, farensed never dies, and a good job dropped among them trains to its end; fuzzed
mutations of a valid spec meet the real model and data checks and end as a job or one short line."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import stat
import subprocess
import sys

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farensed.errors import SpecError
from farensed.queue.jobs import Queue
from farensed.queue.pidfile import daemon_info
from farensed.storage.workspace import Workspace
from tests.helpers import TEST_SPEC, child_env, spec_with, wait_for
from tests.hostile import OSC_CLIPBOARD, OSC_TITLE, POISON, drop, snapshot

DEEP: list = ["deep"]
for _ in range(20):
    DEEP = [DEEP]
HOSTILE_VALUES = [
    10**30,
    -(2**63),
    float("inf"),
    "x" * 5000,
    OSC_TITLE,
    OSC_CLIPBOARD,
    "abc\n",
    DEEP,
    {"": None},
    "9999-12-31T23:59:59",
    True,
    None,
    "",
]
MUST_BE_INVALID = {  # one of these makes any spec invalid, whatever else it holds
    "name": ["abc\n", OSC_TITLE, "", "../x", 42],
    "lora": [{"rank": 10**9}, {"rank": 0}, "x", [1]],
    "max_seq_length": [2**21, 0, "2048", 1e300],
    "not_before": ["9999-12-31T23:59:59", "2999-01-01T00:00", "amanhã"],
    "data": [{"train": "data/demo/train.jsonl"}, {"train": "/dev/zero", "valid": "data/demo/valid.jsonl"}, None],
    "model": ["models/missing", "models/tiny-mistral-4bit\x1b[2J", ""],
    "keep_checkpoints": [10**6, -1],
}


def generated_poison(rng: random.Random, n: int) -> dict[str, bytes]:
    """`n` spec files that must all be refused: TEST_SPEC with random hostile values and one sure breakage each."""
    files = {}
    for i in range(n):
        raw = copy.deepcopy(TEST_SPEC)
        for _ in range(rng.randint(0, 3)):
            raw[rng.choice(sorted(TEST_SPEC))] = rng.choice(HOSTILE_VALUES)
        key = rng.choice(sorted(MUST_BE_INVALID))
        raw[key] = rng.choice(MUST_BE_INVALID[key])
        files[f"gen-{i:02d}.{rng.choice(['json', 'yaml'])}"] = json.dumps(raw).encode()  # JSON is YAML too
    return files


def test_farensed_survives_generated_poison_and_trains_a_good_job_to_its_end(workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".keep.tmp-999999").write_text("not the workspace's")
    before_outside = snapshot(outside)
    log = workspace / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace), "--poll", "0.1", "--rescan", "1"],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        env=child_env(),
    )
    ws = Workspace(workspace)
    try:
        wait_for(lambda: (daemon_info(ws) or {}).get("ready_at"), timeout=60, proc=daemon)
        pending = ws.jobs / "pending"
        poison = {name: content.encode("utf-8", "surrogateescape") for name, content in POISON.items()}
        poison |= generated_poison(random.Random(22), 24)
        for name, content in poison.items():
            drop(pending, name, content)
        os.mkfifo(pending / "fifo.json")
        (pending / "link.json").symlink_to(outside / "nothing.json")
        drop(pending, "good.json", orjson.dumps(spec_with(name="good", epochs=1, eval_every=20, save_every=20)))
        queue = Queue(ws)
        wait_for(lambda: any(j.name == "good" and j.status.terminal for j in queue.jobs()), timeout=600, proc=daemon)
        assert daemon.poll() is None, log.read_text()[-3000:]  # alive all along
        [good] = queue.jobs()
        assert (good.name, good.state, good.exit_code, good.attempts) == ("good", "done", 0, 1)
        adapters = workspace / "output" / "good" / "adapters.safetensors"
        assert stat.S_IMODE(adapters.stat().st_mode) == 0o600  # private by default: the daemon's umask 077
        assert stat.S_IMODE((workspace / "checkpoints_qlora" / "good").stat().st_mode) == 0o700
        failed = {p.name for p in (ws.jobs / "failed").iterdir() if not p.name.endswith(".reason.txt")}
        assert failed == set(poison) | {"fifo.json", "link.json"}
        text = log.read_text()
        for name in failed:
            reason = (ws.jobs / "failed" / f"{name}.reason.txt").read_text()
            assert len(reason) <= 301 and reason.count("\n") == 1 and "\x1b" not in reason, (name, reason)
            assert f"jobs/pending/{name} recusado" in text, name
        assert "Traceback" not in text and "\x1b" not in text  # no bug of ours met; nothing raw in the log
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=120) == 0
    assert snapshot(outside) == before_outside


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(TEST_SPEC)),
        st.one_of(st.sampled_from(HOSTILE_VALUES), st.integers(), st.floats(), st.text(max_size=20)),
        max_size=3,
    )
)
def test_fuzzed_specs_meet_the_real_model_checks_as_a_job_or_one_line(workspace, changes):
    q = Queue(Workspace(workspace))
    path = q.inbox / "fuzz.json"
    path.write_text(json.dumps({**TEST_SPEC, **changes}))
    refused = []
    job = q.ingest(path, on_reject=lambda name, reason, exc: refused.append((reason, exc)))
    if job is None:
        [(reason, exc)] = refused
        assert isinstance(exc, SpecError) and len(reason) <= 300 and "\n" not in reason and "\x1b" not in reason
        (q.failed_inbox / "fuzz.json").unlink()
        (q.failed_inbox / "fuzz.json.reason.txt").unlink()
    else:
        assert job.name == {**TEST_SPEC, **changes}["name"] and not refused
