"""IDX parsing, checksums, the validation split and Parquet staging."""

import gzip

import numpy as np
import pytest

from tuner import data


def test_idx_round_trip():
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(data.parse_idx(data.encode_idx(array)), array)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00\x00", "shorter than its 4-byte magic"),
        (b"\x00\x00\x0d\x01" + b"\x00\x00\x00\x01" + b"\x00" * 4, "Not an unsigned-byte IDX"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "header is truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05" + b"\x01\x02", "body has 2 bytes, but its header promises 5"),
    ],
)
def test_bad_idx(raw, message):
    with pytest.raises(data.DataError, match=message):
        data.parse_idx(raw)


def test_checksum_failure_names_the_file():
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz has sha256 .* but 440fca"):
        data.verify("train-images-idx3-ubyte.gz", b"not mnist", data.MNIST_SHA256)


def test_builtin_subset_is_real_balanced_mnist():
    arrays = data.read_source(data.source_for("builtin"))
    assert arrays["train_images"].shape == (3000, 28, 28)
    assert arrays["test_images"].shape == (1000, 28, 28)
    assert np.bincount(arrays["train_labels"]).tolist() == [300] * 10
    assert np.bincount(arrays["test_labels"]).tolist() == [100] * 10


def test_validation_split_is_fixed_and_disjoint():
    a_train, a_val = data.split_validation(60000, 1 / 12)
    b_train, b_val = data.split_validation(60000, 1 / 12)
    assert len(a_val) == 5000 and len(a_train) == 55000
    assert np.array_equal(a_val, b_val)
    assert not set(a_train) & set(a_val)


@pytest.mark.parametrize("dtype, labels", [(np.uint8, np.array([0, 1, 2, 3, 9], np.int32)),
                                           (np.float32, np.array([0.5, 1, 2, 3, -9], np.float32))])
def test_table_round_trip(dtype, labels):
    x = (np.random.default_rng(0).random((5, 28, 28)) * 255).astype(dtype)
    table = data.to_table(x, labels)
    back_x, back_y = data.from_table(table.slice(1, 3), (28, 28), np.dtype(dtype).name)
    assert np.array_equal(back_x, x[1:4]) and back_x.dtype == dtype
    assert back_y.tolist() == labels[1:4].tolist() and back_y.dtype == labels.dtype


def test_stage_builtin_then_load(tmp_path):
    uri = str(tmp_path / "ds")
    manifest = data.stage(data.source_for("builtin"), uri, 1 / 12)
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 2750, "validation": 250, "test": 1000}
    assert data.read_manifest(uri) == manifest
    x, y = data.load_split(uri, "validation")
    assert x.shape == (250, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int32


def test_stage_rejects_a_corrupt_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in data.FILES.values():
        (src / name).write_bytes(gzip.compress(b"junk"))
    with pytest.raises(data.DataError, match="sha256"):
        data.stage(data.source_for(str(src)), str(tmp_path / "ds"), 0.1)
    assert not (tmp_path / "ds").exists()


def test_missing_source_file(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.stage(data.source_for(str(tmp_path)), str(tmp_path / "ds"), 0.1)
