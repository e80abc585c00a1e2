"""A full run against Ceph RGW, which checks every request's signature."""

import json

import boto3
import pytest

from conftest import run_tuner

pytestmark = pytest.mark.slow


def test_full_run_on_ceph(ceph_s3, mnist_source, unique_name, tmp_path):
    args = [
        "tune", "--config", "quick", "--name", unique_name, "--storage", "s3://tuner/ceph",
        "--set", "search.num_samples=2", "--set", "asha.max_t=2", "--set", "scaling.max_concurrent_trials=1",
    ]
    proc = run_tuner(args, env=ceph_s3, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    client = boto3.client("s3", endpoint_url=ceph_s3["AWS_ENDPOINT_URL"], aws_access_key_id=ceph_s3["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=ceph_s3["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    summary = json.loads(client.get_object(Bucket="tuner", Key=f"ceph/{unique_name}/summary.json")["Body"].read())
    assert len(summary["trials"]) == 2 and summary["best"]["test_accuracy"] > 0.5
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="tuner", Prefix=f"ceph/{unique_name}/", MaxKeys=1000)["Contents"]}
    assert f"ceph/{unique_name}/best_model.keras" in keys
    assert "ceph/datasets/mnist-subset/manifest.json" in {
        o["Key"] for o in client.list_objects_v2(Bucket="tuner", Prefix="ceph/datasets/")["Contents"]}
    assert summary["best"]["checkpoint_uri"].startswith(f"s3://tuner/ceph/{unique_name}/runs/")
