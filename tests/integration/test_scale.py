"""The control plane at 36 trials: `bench/scale_stub.py`'s stub trials (the real
`tuner tune`, each trial's Ray Train run replaced by a loop that reports epochs) on a
`ray start` cluster with 64 fake GPUs, storage in moto S3 behind a counting proxy. The
driver is killed (SIGKILL) once half the trials ended and the same command resumes.
`bench/run.py scale` measures the same path at 100, 300 and 1,000 trials; this test
catches what breaks or grows with the trial count: a lost trial, an epoch trained
twice, ASHA's rungs lost with the driver, S3 requests that grow faster than trials.
"""

import io
import json
import re
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import ray_head as ray_head_service  # tests/services/, on the path through conftest
from conftest import REPO, missing

pytestmark = pytest.mark.slow

TRIALS, MAX_T = 36, 9
# Per trial, both runs together (bench/run.py scale: 10 at 100 trials without a lost
# driver). Re-uploading every trial's files at each save of the experiment state, as
# Tune does by default, costs 60 per trial at 100 trials and grows with the trials.
MAX_REQUESTS_PER_TRIAL = 25


def test_36_stub_trials_and_a_lost_driver(moto_s3, tmp_path, monkeypatch, unique_name):
    sys.path.insert(0, str(REPO / "bench"))
    from s3count import CountingProxy

    proxy = CountingProxy(moto_s3["AWS_ENDPOINT_URL"]).start()
    # The trial drivers get the cluster's environment.
    for key, value in {**moto_s3, "AWS_ENDPOINT_URL": proxy.url, "TUNER_STUB_STATE": str(tmp_path / "stub"),
                       "TUNER_STUB_EPOCH_SECONDS": "0.2"}.items():
        monkeypatch.setenv(key, value)
    try:
        head = ray_head_service.start(cpus=96, gpus=64)
    except FileNotFoundError as e:
        missing(str(e))
    try:
        storage = "s3://tuner/scale"
        cmd = [sys.executable, str(REPO / "bench" / "scale_stub.py"), "tune", "--config", "quick",
               "--name", unique_name, "--storage", storage, "--address", head.gcs,
               "--set", f"search.num_samples={TRIALS}", "--set", f"asha.max_t={MAX_T}",
               "--set", "asha.reduction_factor=3", "--set", "scaling.max_concurrent_trials=8",
               "--set", "scaling.use_gpu=true",
               "--set", "scaling.gpus_per_worker=1", "--set", "scaling.cpus_per_worker=1"]
        env = {**head.env}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ended = 0
        for line in proc.stdout:
            ended += bool(re.search(r"\] trial \S+ (stopped by|finished)", line))
            if ended == TRIALS // 2:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert ended == TRIALS // 2, "the run ended before half its trials did"
        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        _, log = proxy.take_log()
    finally:
        head.stop()
    # Exit 1: stub trials leave no checkpoint, so there is no best model.
    assert resumed.returncode == 1 and "Resuming the interrupted experiment" in resumed.stdout, \
        resumed.stdout[-3000:] + resumed.stderr[-3000:]

    from tuner import storage as store

    summary = json.loads(store.read_bytes(f"{storage}/{unique_name}/summary.json"))
    trials = summary["trials"]
    assert len(trials) == TRIALS and all(t["status"] == "terminated" for t in trials)
    assert {t["epochs"] for t in trials} <= {1, 3, 9}  # ASHA's milestones and the budget
    # ASHA's rungs survived the lost driver: every trial is recorded at the first one.
    assert len(summary["asha_rungs"][0][0]["recorded"]) == TRIALS
    table = pq.read_table(io.BytesIO(store.read_bytes(f"{storage}/{unique_name}/results.parquet")))
    rows = [(r["trial_id"], r["epoch"]) for r in table.select(["trial_id", "epoch"]).to_pylist()]
    assert len(rows) == len(set(rows)), "an epoch was reported twice"
    # Every epoch, once: those the killed driver never took in were reported again.
    assert len(rows) == summary["epochs_spent"], (len(rows), summary["epochs_spent"])
    print(f"{sum(bool(r) for r in table.column('replayed').to_pylist())} epochs reported again after the kill")
    requests = len(log)  # the dataset's staging and reads included
    assert requests / TRIALS <= MAX_REQUESTS_PER_TRIAL, requests / TRIALS
    proxy.stop()
