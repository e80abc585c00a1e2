"""A trial whose loss becomes NaN fails alone; the experiment finishes and reports it."""

import json
import re

import pyarrow.parquet as pq
import pytest
from conftest import run_tuner

pytestmark = pytest.mark.slow

DIVERGING_LR = 10.0  # the spec's highest learning rate
# Two configurations of a deep, wide MLP under SGD with momentum; at learning rate 10
# its activations overflow within the first epoch (NaN loss on every seed tried), while
# 0.03 learns. grace_period = max_t: ASHA stops no healthy trial early.
NAN_ARGS = [
    "--config", "quick",
    "--set", "search.algorithm=grid",
    "--set", "search.num_samples=1",
    "--set", f"search.space.learning_rate={{choice: [0.03, {DIVERGING_LR}]}}",
    "--set", "search.space.optimizer=sgd",
    "--set", "search.space.momentum=0.9",
    "--set", "search.space.schedule=constant",
    "--set", "search.space.dropout=0.1",
    "--set", "search.space.width=512",
    "--set", "search.space.depth=3",
    "--set", "search.space.batch_size=64",
    "--set", "asha.max_t=2",
    "--set", "asha.grace_period=2",
    "--set", "scaling.workers=2",
    # A diverged configuration diverges again: no worker-group restart for it.
    "--set", "failure.max_failures=0",
]


def test_diverged_trial_fails_alone(tmp_path, unique_name):
    proc = run_tuner(["tune", *NAN_ARGS, "--name", unique_name, "--storage", str(tmp_path), "--quiet"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Best trial" in proc.stdout
    assert "1 of 2 trial(s) failed" in proc.stderr and "DivergedError" in proc.stderr
    # --quiet: the failure as it happens, with its reason, and no other trial event.
    assert re.search(r"\] trial \S+ failed: .*DivergedError: training loss became nan", proc.stdout), proc.stdout
    assert not re.search(r"\] trial \S+ (started|epoch|finished)", proc.stdout), proc.stdout

    summary = json.loads((tmp_path / unique_name / "summary.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 2
    (diverged,) = [t for t in trials if t["config"]["learning_rate"] == DIVERGING_LR]
    healthy = [t for t in trials if t is not diverged]

    assert diverged["status"] == "error" and not diverged["stopped_early"], diverged
    # One line, naming the cause, not Ray's whole traceback.
    assert "DivergedError: training loss became nan in epoch" in diverged["error"], diverged["error"]
    assert "\n" not in diverged["error"]
    assert diverged["restarts"] == 0 and diverged["resumed_from_epochs"] == []
    for t in healthy:
        assert t["status"] == "terminated" and t["error"] is None and t["epochs"] == 2, t
        assert t["restarts"] == 0 and t["resumed_from_epochs"] == []

    best = summary["best"]
    assert best["trial_id"] in {t["trial_id"] for t in healthy}
    assert 0.1 < best["test_accuracy"] <= 1.0
    assert (tmp_path / unique_name / "best_model.keras").is_file()

    # results.parquet holds the healthy trials' epochs (and the diverged one's, if any).
    rows = pq.read_table(tmp_path / unique_name / "results.parquet").to_pylist()
    for t in trials:
        assert sorted(r["epoch"] for r in rows if r["trial_id"] == t["trial_id"]) == list(range(1, t["epochs"] + 1))
    assert summary["epochs_spent"] == len(rows)

    # The same command again retries the failed trial only (failure.retry_errored_on_resume):
    # it diverges again; the healthy trials are not rerun.
    checkpoints = sorted(p.relative_to(tmp_path) for p in (tmp_path / unique_name / "runs").rglob("model.keras"))
    again = run_tuner(["tune", *NAN_ARGS, "--name", unique_name, "--storage", str(tmp_path)], cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "Resuming the failed trials of the experiment" in again.stdout
    # The console names the failed trial's error file where the experiment is stored.
    (where,) = re.findall(r"\(traceback: (\S+)\)", again.stdout)
    assert "DivergedError" in open(where).read()
    retried = json.loads((tmp_path / unique_name / "summary.json").read_text())
    assert {t["trial_id"]: t["status"] for t in retried["trials"]} == {t["trial_id"]: t["status"] for t in trials}
    assert retried["best"]["trial_id"] == best["trial_id"]
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / unique_name / "runs").rglob("model.keras")) == checkpoints
