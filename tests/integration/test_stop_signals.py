"""A run stopped by a signal, as people stop runs (Ctrl-C in a terminal, SIGTERM from
Kubernetes or `timeout`), exits 130/143 with one line naming the command that resumes
it, writes no summary, and the same command then goes on with the experiment; stopped
again, again, until it finishes.

Real `tuner tune` processes, each with its own in-process Ray; moto S3."""

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import boto3
import pyarrow.parquet as pq
import pytest
from conftest import free_port, mlflow_runs

# On Ray as it ships: none of tuner's Ray patches (conftest.ray_as_it_ships).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_as_it_ships")]

MAX_T = 3
# Two trials, one at a time, no early stopping: the first stop comes in the first trial,
# the second after the resumed run's first checkpoint, the last run has the rest to do.
ARGS = ["tune", "--config", "quick", "--set", "search.num_samples=2", "--set", f"asha.max_t={MAX_T}",
        "--set", f"asha.grace_period={MAX_T}", "--set", "scaling.max_concurrent_trials=1"]


def client(env):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def keys(s3, prefix: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="tuner", Prefix=prefix)
            for o in page.get("Contents", [])]


def checkpoints(s3, prefix: str) -> set[str]:
    return {k for k in keys(s3, f"{prefix}/runs/") if k.endswith("/state.json")}


def stop_when(s3, prefix: str, log, cmd, env, tmp_path, send):
    """Run ``cmd`` (output to ``log``) and call ``send(proc)`` once a checkpoint is stored
    that was not there before; returns (its exit code, its output, seconds from the signal
    to the exit)."""
    before = checkpoints(s3, prefix)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            if checkpoints(s3, prefix) - before:
                break
            time.sleep(0.3)
        assert proc.poll() is None, "the run ended before it could be stopped:\n" + log.read_text()[-3000:]
        sent = time.time()
        send(proc)
        code = proc.wait(timeout=120)
    text = log.read_text()
    assert not keys(s3, f"{prefix}/summary.json"), "an interrupted run wrote a summary"
    return code, text, time.time() - sent


def test_ctrl_c_then_sigterm_twice_then_the_same_command_finishes(moto_s3, optional_mlflow, tmp_path, unique_name):
    """One experiment stopped twice: by Ctrl-C, then (resumed) by two SIGTERMs beside a
    stale Ray address file; the third run of the same command finishes it. With MLflow
    tracking where the server is installed: the stopped runs' MLflow runs end as
    interrupted, and the re-runs continue them."""
    s3 = client(moto_s3)
    prefix = f"interrupt/{unique_name}"
    tracked = {"MLFLOW_TRACKING_URI": optional_mlflow} if optional_mlflow else {}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}, **moto_s3, **tracked}
    cmd = [sys.executable, "-m", "tuner", *ARGS, "--name", unique_name, "--storage", "s3://tuner/interrupt"]
    python = os.path.basename(sys.executable)
    resume_line = (f"Interrupted; run the same command to resume: {python} -m tuner {' '.join(ARGS)} "
                   f"--name {unique_name} --storage s3://tuner/interrupt")

    def interrupted_in_mlflow():
        if not optional_mlflow:
            return
        _, parent, children = mlflow_runs(optional_mlflow, unique_name)
        assert parent.info.status == "KILLED" and children
        assert {(r.info.status, r.data.tags["tuner.outcome"]) for r in children.values()
                if "tuner.outcome" in r.data.tags} <= {("KILLED", "interrupted"), ("FINISHED", "finished")}

    # A terminal's Ctrl-C reaches the whole foreground process group, Ray's processes too.
    code, text, seconds = stop_when(s3, prefix, tmp_path / "first.log", cmd, env, tmp_path,
                                    lambda p: os.killpg(p.pid, signal.SIGINT))
    assert code == 130, text[-3000:]
    assert [line for line in text.splitlines() if line.startswith("Interrupted; ")] == [resume_line], text[-3000:]
    assert "Tuner.restore" not in text  # Tune's own hint names an API the user never saw
    print(f"Ctrl-C: stopped {seconds:.1f} s after the signal")
    interrupted_in_mlflow()

    # A `ray start` cluster that died without `ray stop` leaves Ray's `ray_current_cluster`
    # file naming it. Ray reads it from $TMPDIR/ray; a short folder (Ray's unix sockets
    # go under it too).
    temp = tempfile.mkdtemp(prefix="tst-", dir="/tmp")
    os.makedirs(f"{temp}/ray")
    with open(f"{temp}/ray/ray_current_cluster", "w") as f:
        f.write(f"127.0.0.1:{free_port()}")

    def twice(proc):  # the second stops at once, without waiting for Tune
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)

    code, text, seconds = stop_when(s3, prefix, tmp_path / "second.log", cmd, {**env, "TMPDIR": temp}, tmp_path,
                                    twice)
    assert code == 143, text[-3000:]
    assert "Resuming the interrupted experiment" in text
    assert resume_line in text.splitlines(), text[-3000:]
    assert "Timed out while waiting for GCS" not in text
    print(f"SIGTERM twice: stopped {seconds:.1f} s after the first signal")
    interrupted_in_mlflow()

    third = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "Resuming the interrupted experiment" in third.stdout
    summary = json.loads(s3.get_object(Bucket="tuner", Key=f"{prefix}/summary.json")["Body"].read())
    assert [(t["status"], t["epochs"], t["error"]) for t in summary["trials"]] == [("terminated", MAX_T, None)] * 2
    resumed = [e for t in summary["trials"] for e in t["resumed_from_epochs"]]
    # The stopped trials went on from their checkpoints (at epoch 1 or later), not from scratch.
    assert resumed and min(resumed) >= 1, summary["trials"]
    assert summary["best"]["test_accuracy"] > 0.3
    print(f"resumed from epochs {resumed}")
    # Every epoch in the results, once: those whose results a stopped run never took in
    # (stored just before the stop) were reported again from their checkpoints.
    rows = pq.read_table(io.BytesIO(s3.get_object(Bucket="tuner", Key=f"{prefix}/results.parquet")["Body"].read()))
    epochs = {}
    for r in rows.select(["trial_id", "epoch"]).to_pylist():
        epochs.setdefault(r["trial_id"], []).append(r["epoch"])
    assert [sorted(e) for e in epochs.values()] == [list(range(1, MAX_T + 1))] * 2, epochs
    print(f"{sum(bool(r) for r in rows.column('replayed').to_pylist())} epochs reported again from checkpoints")
    if not optional_mlflow:
        return
    # The re-runs continued the MLflow runs of the first: one for the experiment, one per
    # trial, each epoch logged once.
    mlflow, parent, children = mlflow_runs(optional_mlflow, unique_name)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for run in children.values():
        assert run.info.status == "FINISHED" and run.data.tags["tuner.outcome"] == "finished"
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(1, MAX_T + 1)), steps
