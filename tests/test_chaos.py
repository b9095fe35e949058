"""The chaos soak, short (~2 minutes): random kill -9 / SIGTERM of daemon and child while 6 jobs run, a poison file
dropped into jobs/pending/ with each kill."""

from __future__ import annotations


def test_short_chaos_soak_every_job_once_tensor_identical_never_two_trainers(tiny_model, tmp_path):
    from bench.chaos import soak

    figures = soak(
        0.5, model=tiny_model, seed=1, workdir=tmp_path, interval=(2.0, 5.0), drain_timeout=600, min_strikes=5
    )
    assert figures["problems"] == [], figures
    assert figures["kills_total"] >= 5 and figures["daemons_started"] >= 2
    assert figures["done"] >= 5 and figures["adapters_compared"] == figures["done"] and figures["divergences"] == 0
    assert figures["max_trainers_at_once"] == 1 and figures["watcher_samples"] > 100
    assert figures["orphans"] == 0 and figures["temp_files"] == 0
    assert figures["poison_refused"] == figures["poison_files"] == figures["kills_total"]  # one per kill, all refused
    assert figures["unexpected_daemon_exits"] == 0 and figures["max_reports_at_once"] <= 1
