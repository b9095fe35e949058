"""Sleep inhibition: the exact commands, and an adopted job is kept awake like a started one (fast, no model)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from farensed.queue import keepawake
from farensed.queue.daemon import Daemon
from farensed.queue.job import Job
from farensed.queue.jobs import Queue
from farensed.storage.procs import create_time
from farensed.storage.workspace import Workspace
from tests.helpers import wait_for

# What systemd-inhibit does once logind grants the lock: run the command it wraps. Here (a container, no logind)
# the real one cannot take a lock, so this stand-in records its arguments and runs the wrapped command.
STAND_IN = """#!/bin/sh
echo "$@" > "$INHIBIT_ARGS"
while [ "$#" -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
exec "$@"
"""


def everything(name: str) -> str:
    return f"/usr/bin/{name}"


def test_macos_keeps_awake_on_idle_and_on_mains_power():
    assert keepawake.inhibit_command(4242, "darwin", everything) == ["caffeinate", "-i", "-s", "-w", "4242"]


def test_linux_inhibits_sleep_until_the_pid_exits():
    cmd = keepawake.inhibit_command(4242, "linux", everything)
    assert cmd[0] == "systemd-inhibit" and "--what=sleep:idle" in cmd and "--mode=block" in cmd
    assert cmd[cmd.index("tail") :] == ["tail", "--pid=4242", "-s", "0.5", "-f", "/dev/null"]
    assert keepawake.inhibit_command(4242, "linux", lambda name: None) is None


def test_an_adopted_job_is_kept_awake_until_its_process_ends(tmp_path, monkeypatch):
    if sys.platform != "darwin":
        tools = tmp_path / "bin"
        tools.mkdir()
        (tools / "systemd-inhibit").write_text(STAND_IN)
        (tools / "systemd-inhibit").chmod(0o755)
        monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("INHIBIT_ARGS", str(tmp_path / "inhibit-args"))
    monkeypatch.setattr(keepawake, "_unavailable", set())
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)  # a training child left by a dead daemon
    try:
        ws = Workspace(tmp_path / "ws")
        queue = Queue(ws)
        queue.job_dir(1).mkdir()
        queue.save(Job(id=1, name="t", state="running", pid=child.pid, pid_create_time=create_time(child.pid)))
        daemon = Daemon(ws, log=logging.getLogger("test"))
        daemon.recover()
        assert daemon.current.job_id == 1 and daemon.current.pid == child.pid
        awake = daemon.current.awake
        assert awake is not None and awake.poll() is None
        if sys.platform != "darwin":
            args = tmp_path / "inhibit-args"  # written by the stand-in once it runs
            wait_for(lambda: args.exists() and f"--pid={child.pid}" in args.read_text().split(), timeout=10)
        child.kill()
        child.wait()
        awake.wait(timeout=10)  # the inhibition ends with the process it covers
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.skipif(sys.platform != "darwin", reason="caffeinate existe só no macOS")
def test_caffeinate_runs_for_a_live_pid():
    proc = keepawake.keep_awake(os.getpid(), print)
    try:
        assert proc is not None and proc.poll() is None
    finally:
        keepawake.release(proc)
