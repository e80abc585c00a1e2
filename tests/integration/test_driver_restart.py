"""The `tuner tune` driver dies mid-experiment (with its whole in-process Ray, as when a
RayJob's cluster goes); the identical command, run again, finishes the experiment."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

# On Ray as it ships: none of tuner's Ray patches (conftest.ray_as_it_ships).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_as_it_ships")]

# Three trials, one at a time: the first finishes before the kill, the second is cut off
# mid-trial, the third starts only in the re-run.
NUM_SAMPLES = 3
# Enough epochs that the second trial is still training 2.5 s after its first checkpoint:
# its configuration trains an epoch in about 0.5 s here.
MAX_T = 12
# No early stopping (grace period = budget), so the interrupted trial has epochs left.
ARGS = ["tune", "--config", "quick", "--set", f"search.num_samples={NUM_SAMPLES}", "--set", f"asha.max_t={MAX_T}",
        "--set", f"asha.grace_period={MAX_T}", "--set", "scaling.max_concurrent_trials=1"]


def session_pids(sid: int) -> list[int]:
    """Processes whose session is ``sid`` (the killed driver started a new one)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":  # zombies are dead, awaiting wait()
                    pids.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def kill_session(sid: int) -> None:
    for _ in range(50):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes of session {sid} survived SIGKILL: {session_pids(sid)}")


def checkpoints(client, prefix: str) -> dict[str, dict[str, str]]:
    """trial id -> {checkpoint file key: ETag} under <prefix>/runs/."""
    out: dict[str, dict[str, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="tuner", Prefix=f"{prefix}/runs/"):
        for o in page.get("Contents", []):
            parts = o["Key"][len(prefix) + len("/runs/"):].split("/")
            if len(parts) == 3 and parts[1].startswith("epoch-"):
                out.setdefault(parts[0], {})[o["Key"]] = o["ETag"]
    return out


def test_rerun_after_driver_death_resumes_the_experiment(moto_s3, tmp_path, unique_name):
    client = boto3.client("s3", endpoint_url=moto_s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    prefix = f"restart/{unique_name}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}, **moto_s3}
    cmd = [sys.executable, "-m", "tuner", *ARGS, "--name", unique_name, "--storage", "s3://tuner/restart"]

    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 900
    before = {}
    try:
        # The same command while the first runs: refused at once, in one line, before Ray.
        while first.poll() is None and not client.list_objects_v2(Bucket="tuner", Prefix=f"{prefix}/lease.json").get(
                "Contents") and time.time() < deadline:
            time.sleep(0.3)
        again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 2, again.stdout[-3000:] + again.stderr[-3000:]
        (line,) = again.stderr.strip().splitlines()
        assert line.startswith(f"tuner: error: The experiment `{unique_name}` is being run by another `tuner` "
                               f"(host {socket.gethostname()}, process {first.pid},"), line
        # Trials run one at a time: once a second trial has a checkpoint, the first has
        # finished. A little later (the experiment state is saved every 2 s; an epoch
        # takes 0.5 to 1 s here), kill it all, mid-trial.
        while first.poll() is None and time.time() < deadline:
            before = checkpoints(client, prefix)
            if len(before) >= 2:
                time.sleep(2.5)
                before = checkpoints(client, prefix)
                break
            time.sleep(0.5)
        assert first.poll() is None, "the first run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert len(before) >= 2, "no second trial started in time"
    finally:
        kill_session(first.pid)
        first.wait(timeout=30)
        log.close()
    # Trial ids do not sort by start: the finished trials are those with the last epoch's
    # checkpoint (no early stopping here), the one that was running is the other.
    last = f"/epoch-{MAX_T:04d}/"
    done_before = [t for t, keys in before.items() if any(last in k for k in keys)]
    (running,) = set(before) - set(done_before)

    # The killed run's lease is still stored; its process is gone, so the same command
    # takes it over at once.
    assert client.head_object(Bucket="tuner", Key=f"{prefix}/lease.json")
    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Resuming the interrupted experiment" in second.stdout
    assert "Took over the lease" in second.stderr
    assert not client.list_objects_v2(Bucket="tuner", Prefix=f"{prefix}/lease.json").get("Contents")

    summary = json.loads(client.get_object(Bucket="tuner", Key=f"{prefix}/summary.json")["Body"].read())
    trials = {t["trial_id"]: t for t in summary["trials"]}
    assert len(trials) == NUM_SAMPLES
    assert all(t["status"] == "terminated" for t in trials.values()), summary["trials"]
    assert summary["best"]["test_accuracy"] > 0.3

    after = checkpoints(client, prefix)
    # Finished trials did not run again: their checkpoints are exactly as they were.
    for trial_id in done_before:
        assert after[trial_id] == before[trial_id], trial_id
    rows = pq.read_table(f"tuner/{prefix}/results.parquet", filesystem=_fs(moto_s3)).to_pylist()
    for trial_id in done_before:
        mine = [r for r in rows if r["trial_id"] == trial_id]
        assert sorted(r["epoch"] for r in mine) == list(range(1, len(mine) + 1)), mine
    # The interrupted trial went on from its newest checkpoint: at most one epoch lost.
    newest_before = max(int(k.split("/epoch-")[1][:4]) for k in before[running])
    assert trials[running]["epochs"] == MAX_T
    resumed = [r["resumed_from_epoch"] for r in rows if r["trial_id"] == running]
    print(f"interrupted trial {running}: newest checkpoint before the kill {newest_before}, "
          f"rows after the re-run resumed from {resumed}")
    assert max(resumed) >= max(newest_before - 1, 1), (newest_before, resumed)


def _fs(env):
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                             region="us-east-1")
