"""Which rows each Train worker streams: every row once per epoch across the workers, for
any worker count and file layout; the same step count on every worker."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuner import data, schedule
from tuner.data import shards


def _rows(row_groups, pieces):
    """Global row indices the pieces cover."""
    starts, offset = {}, 0
    for f, groups in enumerate(row_groups):
        for g, n in enumerate(groups):
            starts[f, g] = offset
            offset += n
    return [starts[p.file, p.row_group] + i for p in pieces for i in range(p.start, p.stop)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=6), min_size=1, max_size=8),
       st.integers(1, 64))
def test_every_row_once_across_the_workers(row_groups, world):
    total = sum(map(sum, row_groups))
    covered = [r for rank in range(world) for r in _rows(row_groups, shards.assign(row_groups, world, rank))]
    assert covered == list(range(total))
    sizes = [sum(p.rows for p in shards.assign(row_groups, world, rank)) for rank in range(world)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world", [1, 2, 3, 7, 64])
def test_the_staged_layout_gives_up_to_64_workers_row_groups_of_their_own(world):
    # MNIST's training split: 55,000 rows of 784 bytes.
    layout = shards.layout(55_000, 784, shards.MIN_TRAIN_ROW_GROUPS)
    assert sum(map(sum, layout)) == 55_000 and sum(map(len, layout)) >= 64
    assert sum(map(len, shards.layout(1_000, 784, 64))) >= 64
    assert all(len(f) <= shards.ROW_GROUPS_PER_FILE for f in layout)
    per_worker = [shards.assign(layout, world, r) for r in range(world)]
    # A worker reads at most its share plus one row group on each boundary.
    most = max(n for f in layout for n in f)
    for pieces in per_worker:
        assert sum(p.rows for p in pieces) <= math.ceil(55_000 / world)
        assert len(pieces) <= math.ceil(55_000 / world / most) + 2


def test_large_rows_cap_row_groups_by_bytes():
    layout = shards.layout(1_000, 1 << 20, shards.MIN_TRAIN_ROW_GROUPS)  # 1 MiB rows
    assert {n for f in layout for n in f} == {shards.ROW_GROUP_BYTES >> 20}
    assert shards.layout(0, 10) == [[0]]


@pytest.mark.parametrize("rows,workers,batch", [(55_000, 2, 32), (101, 3, 4), (10, 7, 1), (999, 64, 2)])
def test_steps_per_epoch_are_the_same_on_every_worker_and_cover_the_share(rows, workers, batch):
    plan = schedule.BatchPlan(workers, batch, rows)
    layout = shards.layout(rows, 784, shards.MIN_TRAIN_ROW_GROUPS)
    shares = [sum(p.rows for p in shards.assign(layout, workers, r)) for r in range(workers)]
    # Every worker runs plan.steps_per_epoch steps of `batch` rows from an endless
    # stream of its share: enough for its whole share, at most one batch more.
    assert plan.steps_per_epoch == math.ceil(rows / (batch * workers))
    for share in shares:
        assert share <= plan.steps_per_epoch * batch < share + batch + 1


def test_each_pass_reads_the_pieces_in_its_own_seeded_order():
    pieces = shards.assign([[10] * 8], 1, 0)
    first, again, second = (shards.pass_order(pieces, 0, 0, e) for e in (0, 0, 1))
    assert first == again and first != second and sorted(first, key=lambda p: p.row_group) == pieces


def test_the_shuffle_buffer_holds_a_few_row_groups_up_to_its_bytes():
    mnist = shards.assign(shards.layout(55_000, 784, shards.MIN_TRAIN_ROW_GROUPS), 2, 0)
    assert shards.shuffle_buffer(mnist, 784, 4, 64 << 20) == 4 * (55_000 // 64)
    assert shards.shuffle_buffer(mnist[:2], 784, 4, 64 << 20) == sum(p.rows for p in mnist[:2])  # a whole share
    large = shards.assign(shards.layout(1_100_000, 784, shards.MIN_TRAIN_ROW_GROUPS), 2, 0)
    assert shards.shuffle_buffer(large, 784, 16, 64 << 20) == (64 << 20) // 784


def _stage(tmp_path, rows=1000):
    x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    y = np.arange(rows, dtype=np.float32)  # a regression target: the row's index
    prepared = data.Prepared({"train": (x, y), "validation": (x[:10], y[:10]), "test": (x[:5], y[:5])}, {
        "dataset": "t", "source_sha256": "0", "split_seed": 3, "features": {"columns": list("abcd")},
        "label": {"column": "y", "task": "regression", "classes": None}})
    uri = str(tmp_path / "ds")
    return uri, prepared.write(uri)


def test_staging_writes_row_groups_listed_in_the_manifest(tmp_path):
    uri, manifest = _stage(tmp_path)
    train = manifest["splits"]["train"]
    assert train["rows"] == 1000 and len(train["files"]) >= 2
    for entry in train["files"]:
        meta = pq.ParquetFile(tmp_path / "ds" / entry["path"]).metadata
        assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == entry["row_groups"]
    reader = data.SplitReader(uri, manifest, "train")
    x, y = data.load_split(uri, "train")
    # Written in a seeded random order; every row there once, its features with it.
    assert sorted(y) == list(range(1000)) and list(y) != list(range(1000))
    assert np.array_equal(x[:, 0], y * 4)
    # Two workers' pieces read back exactly the two halves.
    halves = [np.concatenate([reader.read(p)[1] for p in shards.assign(reader.row_groups, 2, r)]) for r in (0, 1)]
    assert np.array_equal(np.concatenate(halves), y)


def test_a_missing_or_short_file_is_one_line_naming_it(tmp_path):
    uri, manifest = _stage(tmp_path)
    listed = manifest["splits"]["train"]["files"]
    (tmp_path / "ds" / listed[1]["path"]).unlink()
    reader = data.SplitReader(uri, manifest, "train")
    with pytest.raises(data.DataError, match=r"^The staged file .*train/part-00001.parquet is missing; stage"):
        reader.check(shards.assign(reader.row_groups, 1, 0))
    first = tmp_path / "ds" / listed[0]["path"]
    table = pq.read_table(first)
    pq.write_table(table.slice(0, 3), first)
    reader = data.SplitReader(uri, manifest, "train")
    with pytest.raises(data.DataError, match=r"train/part-00000.parquet has 3 rows in 1 row groups, but the manifest"):
        reader.check(shards.assign(reader.row_groups, 4, 0))  # the first quarter: in the first file
    first.write_bytes(first.read_bytes()[:100])  # torn
    reader = data.SplitReader(uri, manifest, "train")
    with pytest.raises(data.DataError, match=r"train/part-00000.parquet is not a whole Parquet file \(.*\); stage"):
        reader.check(shards.assign(reader.row_groups, 4, 0))
    manifest["splits"]["train"]["rows"] = 999
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(data.DataError, match=r"hold 1000 rows, but the manifest lists 999"):
        data.SplitReader(uri, manifest, "train")


@pytest.mark.parametrize("world,batch", [(2, 7), (3, 64)])
def test_each_pass_of_the_stream_gives_every_row_of_the_share_once(tmp_path, world, batch):
    from tuner import training, worker

    uri, manifest = _stage(tmp_path)
    reader = data.SplitReader(uri, manifest, "train")
    everyone = []
    for rank in range(world):
        pieces = shards.assign(reader.row_groups, world, rank)
        share = sum(p.rows for p in pieces)
        ds = training.streaming_dataset(worker.stream_pieces(reader, pieces, 0, rank, 0), reader.shape, reader.dtype,
                                        reader.label_dtype, batch, shuffle_rows=share // 3, seed=rank)
        labels = np.concatenate([y.numpy() for _, y in ds.take(2 * math.ceil(share / batch) + 1)])
        first, second = labels[:share], labels[share:2 * share]
        # Each pass: the share, once, mixed (a buffer of a third of it), in its own order.
        assert sorted(first) == sorted(second) and len(set(first)) == share
        assert not np.array_equal(first, second) and not np.array_equal(np.sort(first), first)
        everyone.append(first)
    assert np.array_equal(np.sort(np.concatenate(everyone)), np.arange(1000))


@pytest.mark.parametrize("rows,world", [(250, 2), (4097, 2), (5000, 3), (3, 8)])
def test_validation_shares_sum_to_the_whole_split_in_equal_passes(rows, world):
    """Each worker scores its share of the validation split; the sums add up to the whole
    split's scores, and every worker runs as many forward passes (a BatchNormalization
    model all-reduces at each), padded past its rows."""
    import tf_keras

    from tuner import training, worker

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype("float32")
    y = rng.integers(0, 3, rows).astype("int32")
    calls = []

    class Counted(tf_keras.layers.Layer):
        def call(self, inputs):
            calls.append(len(inputs))
            return inputs

    tf_keras.utils.set_random_seed(0)
    net = tf_keras.Sequential([tf_keras.Input((4,)), Counted(), tf_keras.layers.Dense(3)])
    whole = training.evaluate(net, [(x, y)])
    # Staged as files of uneven row groups: shares cut through row groups.
    row_groups = [[rows // 3, rows - rows // 3 - rows // 5], [rows // 5]]
    reader = type("Reader", (), {"rows": rows, "row_groups": row_groups, "shape": (4,), "dtype": "float32"})()
    bounds = np.cumsum([0] + [n for file in row_groups for n in file])
    groups = [(f, g) for f, file in enumerate(row_groups) for g in range(len(file))]

    def read(piece):
        lo = bounds[groups.index((piece.file, piece.row_group))] + piece.start
        return x[lo:lo + piece.rows], y[lo:lo + piece.rows]

    total, passes = np.zeros(3), []
    for rank in range(world):
        pieces = shards.assign(row_groups, world, rank)
        share = worker.ValidationShare(reader, pieces, world)
        calls.clear()
        total += training.score_sums(net, map(read, pieces), batches=share.batches, shape=(4,), dtype="float32")
        passes.append(len(calls))
        own = math.ceil(sum(p.rows for p in pieces) / training.EVAL_BATCH)
        assert sum(calls[:own]) == sum(p.rows for p in pieces) and set(calls[own:]) <= {1}
    assert passes == [math.ceil(math.ceil(rows / world) / training.EVAL_BATCH)] * world
    assert total[2] == rows
    scores = training.scores(total, "classification")
    assert scores["accuracy"] == whole["accuracy"]
    assert scores["loss"] == pytest.approx(whole["loss"], rel=1e-5)
