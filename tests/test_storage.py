"""Storage URIs and the pre-flight check on local paths."""

import os

import pyarrow.fs as pafs
import pytest

from tuner import storage


@pytest.mark.parametrize(
    "uri, scheme, path",
    [
        ("s3://bucket/a/b", "s3", "bucket/a/b"),
        ("s3://bucket/a/b/", "s3", "bucket/a/b"),
        ("s3://bucket", "s3", "bucket"),
        ("/tmp/x", "file", "/tmp/x"),
    ],
)
def test_parse(uri, scheme, path):
    loc = storage.parse(uri)
    assert (loc.scheme, loc.path) == (scheme, path)


@pytest.mark.parametrize(
    "uri, message",
    [("gs://b/x", "not supported"), ("s3://", "names no bucket"), ("", "must be a local path"), ("http://h/x", "not supported")],
)
def test_bad_uris(uri, message):
    assert message in storage.check_uri(uri)
    with pytest.raises(storage.StorageError):
        storage.parse(uri)


def test_join_and_absolute(tmp_path, monkeypatch):
    assert storage.join("s3://b/p/", "x", "/y/") == "s3://b/p/x/y"
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("rel") == str(tmp_path / "rel")
    assert storage.absolute("s3://b/p") == "s3://b/p"


def test_s3_filesystem_takes_endpoint_explicitly(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    fs, path = storage.filesystem("s3://bucket/prefix")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/prefix"
    settings = fs.__reduce__()[1][0]  # pyarrow exposes its settings only through pickling
    assert (settings["endpoint_override"], settings["scheme"]) == ("127.0.0.1:9", "http")
    assert (settings["access_key"], settings["force_virtual_addressing"]) == ("k", False)
    env = storage.worker_env()
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and env["AWS_SECRET_ACCESS_KEY"] == "s"
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"


def test_preflight_local_leaves_nothing_behind(tmp_path):
    storage.preflight(storage.Location(str(tmp_path / "new" / "dir")))
    assert os.listdir(tmp_path) == []  # the folders it made to write its marker are gone
    (tmp_path / "there").mkdir()
    storage.preflight(storage.Location(str(tmp_path / "there")))
    assert os.listdir(tmp_path / "there") == []


def test_preflight_unwritable(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/tuner-cannot-write-here"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = str(tmp_path / "ro" / "x")
    with pytest.raises(storage.StorageError, match="Cannot use storage"):
        storage.preflight(storage.Location(target))


def test_write_bytes_is_atomic_locally(tmp_path):
    target = str(tmp_path / "a" / "f.json")
    storage.write_json(target, {"x": 1})
    assert storage.read_json(target) == {"x": 1}
    assert os.listdir(tmp_path / "a") == ["f.json"]


def test_worker_env_forwards_credentials_unless_told_not_to(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://s3.local:9000")
    env = storage.worker_env()
    assert env["AWS_ACCESS_KEY_ID"] == "id" and env["AWS_SECRET_ACCESS_KEY"] == "secret"
    # Where every node has the Secret (Kubernetes), keep credentials out of Ray's runtime env.
    monkeypatch.setenv("TUNER_FORWARD_CREDENTIALS", "0")
    env = storage.worker_env()
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["AWS_ENDPOINT_URL"] == "http://s3.local:9000"


def test_pickled_s3_filesystem_keeps_retries_and_drops_credentials(monkeypatch):
    import pickle

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE12")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    fs = storage.s3_filesystem("http://127.0.0.1:9")
    blob = pickle.dumps(fs)
    # Ray ships these pickles to its actors and Tune stores one in the results bucket.
    assert b"very-secret-value" not in blob and b"AKIAEXAMPLE" not in blob
    rebuild, (settings,) = storage._reduce_s3(fs)
    assert rebuild is storage._s3_from_settings and settings["endpoint_override"] == "127.0.0.1:9"
    assert isinstance(pickle.loads(blob), pafs.S3FileSystem)


def test_preflight_on_s3_leaves_the_bucket_as_it_found_it(moto_endpoint):
    endpoint, s3, _ = moto_endpoint
    s3.create_bucket(Bucket="preflight")
    storage.preflight(storage.Location("s3://preflight/a/b/c", endpoint))
    assert s3.list_objects_v2(Bucket="preflight").get("KeyCount") == 0  # no marker, no folder marker


def test_a_checkpoint_is_copied_on_s3_by_the_server(moto_endpoint):
    """A PBT exploit's copy: the model by a server-side copy, a state.json that names its
    source; whatever an interrupted copy left in the new run goes first."""
    import json

    from tuner import checkpoints

    endpoint, s3, _ = moto_endpoint
    s3.create_bucket(Bucket="ckpt")
    s3.put_object(Bucket="ckpt", Key="exp/runs/a/epoch-0004/model.keras", Body=b"weights")
    s3.put_object(Bucket="ckpt", Key="exp/runs/a/epoch-0004/state.json", Body=json.dumps({"epoch": 4, "metrics": {}}))
    s3.put_object(Bucket="ckpt", Key="exp/runs/b-g1/epoch-0006/model.keras", Body=b"left over")
    checkpoints.copy_checkpoint("ckpt/exp/runs/a/epoch-0004", storage.Location("s3://ckpt/exp/runs/b-g1", endpoint), 4,
                                {"trial": "a", "epoch": 4})
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="ckpt", Prefix="exp/runs/b-g1/")["Contents"])
    assert keys == ["exp/runs/b-g1/epoch-0004/model.keras", "exp/runs/b-g1/epoch-0004/state.json"]
    assert s3.get_object(Bucket="ckpt", Key=keys[0])["Body"].read() == b"weights"
    state = json.loads(s3.get_object(Bucket="ckpt", Key=keys[1])["Body"].read())
    assert state["copied_from"] == {"trial": "a", "epoch": 4, "path": "ckpt/exp/runs/a/epoch-0004"}
    assert checkpoints.stored_epochs(storage.Location("s3://ckpt/exp/runs/b-g1", endpoint)) == [4]
    assert checkpoints.stored_records(storage.Location("s3://ckpt/exp/runs/b-g1", endpoint), [4]) == {}
    with pytest.raises(ValueError, match="holds epoch 4, not 5"):
        checkpoints.copy_checkpoint("ckpt/exp/runs/a/epoch-0004", storage.Location("s3://ckpt/exp/runs/b-g2", endpoint), 5, {})
