"""Fixtures the unit tests share."""

import os

import pytest


@pytest.fixture(autouse=True)
def _environment_as_it_was():
    """Each test leaves this process's environment as it found it, whatever ran before
    it: libraries set variables as they go (MLflow's set_tracking_uri sets
    $MLFLOW_TRACKING_URI; Ray, TensorFlow and tuner's S3 set theirs), and the commands a
    later test starts would inherit them (test_cli's failed after test_tracking's)."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def moto_endpoint(monkeypatch):
    """An in-process moto S3 server, with this process's AWS_* variables for it; yields
    (its endpoint URL, a boto3 client, the server). moto's buckets outlive a server in one
    process: each test uses its own."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required"}.items():
            monkeypatch.setenv(key, value)
        yield endpoint, boto3.client("s3", endpoint_url=endpoint), server
    finally:
        server.stop()
