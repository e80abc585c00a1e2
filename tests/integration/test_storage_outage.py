"""Ceph RGW (the S3 server, which checks every request's signature) goes away for 30 s in
the middle of a run and comes back on the same port with the same data: the run rides it
out (S3 requests retry with backoff), the workers' streaming reads of the dataset among
them. The run stages MNIST onto Ceph itself and leaves its results there (the whole run
against a signature-checking server; test_examples.py tunes a user's dataset on Ceph)."""

import json
import os
import subprocess
import sys
import time

import boto3
import pyarrow.parquet as pq
import pytest
from conftest import CEPH_SCRIPT

# On Ray as it ships: none of tuner's Ray patches (conftest.ray_as_it_ships).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_as_it_ships")]

MAX_T = 8  # the outage starts after epoch 2: epochs are left to wait on it
OUTAGE_S = 30


def test_run_survives_a_30_s_storage_outage(ceph_s3, tmp_path, unique_name):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}, **ceph_s3}
    client = boto3.client("s3", endpoint_url=ceph_s3["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=ceph_s3["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=ceph_s3["AWS_SECRET_ACCESS_KEY"])
    prefix = f"outage/{unique_name}"
    cmd = [sys.executable, "-m", "tuner", "train", "--config", "seed-baseline", "--name", unique_name,
           "--storage", "s3://tuner/outage", "--set", "data.source=builtin", "--set", f"asha.max_t={MAX_T}",
           "--set", f"asha.grace_period={MAX_T}", "--set", "scaling.workers=2", "--set", "scaling.cpus_per_worker=0.5"]
    log = open(tmp_path / "tuner.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    ceph = ["bash", str(CEPH_SCRIPT)]
    outage = None
    try:
        deadline = time.time() + 600
        while proc.poll() is None and time.time() < deadline:
            keys = [o["Key"] for o in client.list_objects_v2(Bucket="tuner", Prefix=f"{prefix}/runs/").get("Contents", [])]
            if any("/epoch-0002/" in k for k in keys):
                subprocess.run([*ceph, "stop-rgw", ceph_s3["TUNER_TEST_CEPH_DIR"]], check=True, timeout=60)
                outage = time.time()
                time.sleep(OUTAGE_S)
                subprocess.run([*ceph, "start-rgw", ceph_s3["TUNER_TEST_CEPH_DIR"]], check=True, timeout=120)
                outage = (outage, time.time())
                break
            time.sleep(0.3)
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    output = (tmp_path / "tuner.log").read_text()
    assert outage is not None, "the run ended before the outage:\n" + output[-3000:]
    assert code == 0, output[-5000:]

    summary = json.loads(client.get_object(Bucket="tuner", Key=f"{prefix}/summary.json")["Body"].read())
    (trial,) = summary["trials"]
    assert (trial["status"], trial["epochs"]) == ("terminated", MAX_T), trial
    assert summary["best"]["test_accuracy"] > 0.5
    assert summary["best"]["checkpoint_uri"].startswith(f"s3://tuner/{prefix}/runs/")
    stored = {o["Key"] for o in client.list_objects_v2(Bucket="tuner", Prefix="outage/")["Contents"]}
    assert {f"{prefix}/best_model.keras", "outage/datasets/mnist-subset/manifest.json"} <= stored
    # Every epoch's checkpoint is whole: its model and state are there.
    for epoch in range(1, MAX_T + 1):
        folder = f"{prefix}/runs/{trial['trial_id']}/epoch-{epoch:04d}"
        keys = {o["Key"].rsplit("/", 1)[1] for o in client.list_objects_v2(Bucket="tuner", Prefix=folder + "/").get("Contents", [])}
        assert not keys or {"model.keras", "state.json"} <= keys, (folder, keys)
    table = pq.read_table(f"tuner/{prefix}/results.parquet", filesystem=_fs(ceph_s3)).to_pylist()
    starts = [r["resumed_from_epoch"] for r in table if r["startup_seconds"] is not None]
    print(f"outage {outage[1] - outage[0]:.0f} s; worker-group starts resumed from {starts}; "
          f"epochs reported {[r['epoch'] for r in table]}")
    # Rode it out in place (one start), or restarted losing at most one epoch.
    assert len(starts) == 1 or min(starts[1:]) >= 1
    # Training and scoring read the dataset from storage every epoch (checkpoint uploads
    # are in neither figure): an epoch that waited out the outage waited on data reads.
    assert max(r["train_seconds"] + r["validation_seconds"] for r in table) > OUTAGE_S / 2, table


def _fs(env):
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"].removeprefix("http://"), scheme="http",
                             access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"],
                             region="us-east-1")
