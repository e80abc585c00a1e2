"""Storage problems are one clear line and exit 2, before Ray or any trial starts."""

import pytest
from conftest import free_port, run_tuner, s3_env

pytestmark = pytest.mark.slow

QUICK = ["tune", "--config", "quick", "--name", "never"]


def check_refused(proc, message):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines[-1].startswith("tuner: error: Cannot use storage") and message in lines[-1], lines
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_missing_bucket(moto_s3, tmp_path):
    check_refused(run_tuner([*QUICK, "--storage", "s3://no-such-bucket/x"], env=moto_s3, cwd=tmp_path),
                  "the bucket does not exist")


def test_unreachable_endpoint(tmp_path):
    env = s3_env(f"http://127.0.0.1:{free_port()}", "k", "s")
    check_refused(run_tuner([*QUICK, "--storage", "s3://tuner/x"], env=env, cwd=tmp_path, timeout=120),
                  "the endpoint is unreachable")


def test_wrong_secret_on_ceph(ceph_s3, tmp_path):
    import boto3

    env = {**ceph_s3, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    check_refused(run_tuner([*QUICK, "--storage", "s3://tuner/wrong"], env=env, cwd=tmp_path), "access denied")
    client = boto3.client("s3", endpoint_url=ceph_s3["AWS_ENDPOINT_URL"], aws_access_key_id=ceph_s3["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=ceph_s3["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    assert client.list_objects_v2(Bucket="tuner", Prefix="wrong/").get("KeyCount", 0) == 0
