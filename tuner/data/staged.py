"""A staged dataset: ``train``/``validation``/``test`` Parquet files plus ``manifest.json``
under one URI (local or ``s3://``), written once by ``stage`` and read by every worker.

Each split is a folder of Parquet files (``train/part-00000.parquet``, ...) in row groups
sized for streaming (``tuner.data.shards``); the manifest lists every file with its row
count per row group, so a worker knows its share without reading data. Each holds two
columns: ``x``, one example's features as raw little-endian bytes
of the manifest's dtype (uint8 or float32) and shape (a fixed-size binary column: no
per-value overhead, decoded without a copy), and ``y``, the class index (int32) or the
target (float32). The manifest records the feature columns, shape and dtype, the label
column, the task and its classes, the input statistics, the row counts and checksums,
and the source's sha256. It is written last: its presence means the dataset is whole.

Datasets staged in an older layout are read as they are: format 2 (one file per split)
and format 1 (MNIST only: ``image``/``label`` columns, no ``format`` in the manifest).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tuner import storage
from tuner.data import shards
from tuner.data.errors import DataError
from tuner.data.tables import SPLITS

MANIFEST = "manifest.json"
FORMAT = 3  # 3: each split in several files of row groups (2: one file per split)
LEGACY_MNIST = {"shape": [28, 28], "dtype": "uint8", "columns": ["image"]}


def to_table(x: np.ndarray, y: np.ndarray) -> pa.Table:
    flat = np.ascontiguousarray(x).reshape(len(x), -1)
    width = flat.shape[1] * flat.itemsize
    column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(flat), [None, pa.py_buffer(flat.tobytes())])
    return pa.table({"x": column, "y": pa.array(y)})


def from_table(table: pa.Table, shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, *shape) of dtype, labels) of one staged split's table."""
    name = "x" if "x" in table.column_names else "image"  # "image": the legacy MNIST layout
    column = table.column(name).combine_chunks()
    width = column.type.byte_width
    values = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * width,
                           offset=column.offset * width)
    x = values.view(np.dtype(dtype).newbyteorder("<")).reshape((len(column), *shape))
    y = table.column("y" if "y" in table.column_names else "label").to_numpy()
    return x, (y.astype(np.int32) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32))


def input_stats(x: np.ndarray, chunk: int = 4096) -> tuple:
    """(mean, std) of the model's input over ``x`` (uint8 scaled to [0, 1]): per feature
    for 1-D features, else over every value. Summed in chunks, in float64."""
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    per_feature = x.ndim == 2
    total = np.zeros(x.shape[1] if per_feature else 1)
    squares = np.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start:start + chunk].astype(np.float64).reshape(-1, x.shape[1] if per_feature else 1) / scale
        total += part.sum(axis=0)
        squares += np.square(part).sum(axis=0)
    count = len(x) * (1 if per_feature else int(np.prod(x.shape[1:])))
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - np.square(mean), 0.0))
    if per_feature:
        return mean.round(7).tolist(), std.round(7).tolist()
    return round(float(mean[0]), 7), round(float(std[0]), 7)


def write(dataset: storage.Location | str, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict,
          stats: tuple | None = None) -> dict:
    """Write the three splits (see ``tuner.data.shards.layout``) and then the manifest
    (``meta`` plus what the arrays tell; ``stats``: ``input_stats`` of the training split,
    if known). The training rows are written in a seeded random order (``meta``'s
    ``split_seed``): a worker's contiguous share of them is then a random sample."""
    dataset = storage.at(dataset)
    x_train = splits["train"][0]
    mean, std = stats or input_stats(x_train)
    manifest = {
        "format": FORMAT,
        **meta,
        "features": {**meta["features"], "shape": list(x_train.shape[1:]), "dtype": str(x_train.dtype)},
        "stats": {"mean": mean, "std": std},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "splits": {},
    }
    classes = meta["label"].get("classes")
    for name in SPLITS:
        x, y = splits[name]
        if name == "train":
            order = np.random.default_rng(meta.get("split_seed", 0)).permutation(len(y))
            x, y = x[order], y[order]
        row_bytes = int(np.prod(x.shape[1:])) * x.itemsize
        plan = shards.layout(len(y), row_bytes, shards.MIN_TRAIN_ROW_GROUPS if name == "train" else 1)
        files, offset = [], 0
        for i, groups in enumerate(plan):
            path = f"{name}/part-{i:05d}.parquet"
            raw = _parquet(x[offset:offset + sum(groups)], y[offset:offset + sum(groups)], groups)
            dataset.join(path).write_bytes(raw)
            files.append({"path": path, "rows": sum(groups), "row_groups": groups, "sha256": storage_sha256(raw)})
            offset += sum(groups)
        entry = {"rows": int(len(y)), "files": files}
        if classes is not None:
            entry["class_counts"] = np.bincount(y, minlength=len(classes)).tolist()
        manifest["splits"][name] = entry
    dataset.join(MANIFEST).write_json(manifest)
    return manifest


def _parquet(x: np.ndarray, y: np.ndarray, row_groups: list[int]) -> bytes:
    """One Parquet file of the rows, in row groups of the given sizes."""
    table = to_table(x, y)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as out:
        offset = 0
        for n in row_groups:
            out.write_table(table.slice(offset, n), row_group_size=max(n, 1))
            offset += n
    return sink.getvalue()


def storage_sha256(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()


def read_manifest(dataset: storage.Location | str) -> dict | None:
    """The staged dataset's manifest, or None."""
    try:
        return storage.at(dataset).join(MANIFEST).read_json()
    except FileNotFoundError:
        return None


def features(manifest: dict) -> dict:
    """The manifest's feature description (columns, shape, dtype), legacy ones included."""
    return manifest.get("features") or LEGACY_MNIST


def task(manifest: dict) -> str:
    return (manifest.get("label") or {}).get("task", "classification")


def input_spec(manifest: dict):
    """The ``tuner.InputSpec`` of a staged dataset."""
    from tuner.models import InputSpec

    label = manifest.get("label") or {"task": "classification", "classes": list(range(10))}
    classes = label.get("classes")
    stats = manifest.get("stats") or {}
    return InputSpec(shape=tuple(features(manifest)["shape"]), task=label["task"],
                     num_classes=len(classes) if classes is not None else None,
                     classes=tuple(classes) if classes is not None else None,
                     feature_names=tuple(features(manifest).get("columns", ())),
                     mean=stats.get("mean"), std=stats.get("std"))


class SplitReader:
    """Reads one staged split by row group, each file opened once (its footer read once);
    every S3 request goes through ``tuner.storage``'s retrying filesystem."""

    def __init__(self, dataset: storage.Location | str, manifest: dict, split: str):
        f = features(manifest)
        self.shape, self.dtype = tuple(f["shape"]), f["dtype"]
        self.label_dtype = "int32" if task(manifest) == "classification" else "float32"  # as from_table gives
        self.split = split
        dataset = storage.at(dataset)
        self._fs, _ = dataset.filesystem()  # one S3 client for every file
        self._handles: dict[int, pq.ParquetFile] = {}
        entry = manifest["splits"][split]
        self.rows = entry["rows"]
        if "files" in entry:
            self.files = [dataset.join(e["path"]).uri for e in entry["files"]]
            self.row_groups = [list(e["row_groups"]) for e in entry["files"]]
        else:  # formats 1 and 2: one file per split, its row groups known from its footer
            self.files = [dataset.join(entry.get("file", f"{split}.parquet")).uri]
            self._handles[0] = self._parquet_file(self.files[0])
            meta = self._handles[0].metadata
            self.row_groups = [[meta.row_group(i).num_rows for i in range(meta.num_row_groups)]]
        if sum(map(sum, self.row_groups)) != self.rows:
            raise DataError(f"The staged files of the {split} split hold {sum(map(sum, self.row_groups))} rows, but "
                            f"the manifest lists {self.rows}; stage the dataset again.")

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def _parquet_file(self, uri: str) -> pq.ParquetFile:
        try:
            source = self._fs.open_input_file(storage.parse(uri).path)
        except FileNotFoundError:
            raise DataError(f"The staged file {uri} is missing; stage the dataset again.") from None
        try:
            return pq.ParquetFile(source, pre_buffer=True)
        except pa.ArrowInvalid as e:
            raise DataError(f"The staged file {uri} is not a whole Parquet file ({e}); stage the dataset "
                            "again.") from None

    def _open(self, i: int) -> pq.ParquetFile:
        if i not in self._handles:
            handle = self._parquet_file(self.files[i])
            listed = self.row_groups[i]
            found = [handle.metadata.row_group(g).num_rows for g in range(handle.metadata.num_row_groups)]
            if found != listed:
                raise DataError(f"The staged file {self.files[i]} has {sum(found)} rows in {len(found)} row groups, "
                                f"but the manifest lists {sum(listed)} in {len(listed)}; stage the dataset again.")
            self._handles[i] = handle
        return self._handles[i]

    def check(self, pieces) -> None:
        """Open the files ``pieces`` read: a missing or short file fails here, by name."""
        for i in sorted({p.file for p in pieces}):
            self._open(i)

    def read(self, piece) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one ``tuner.data.shards.Piece``."""
        table = self._open(piece.file).read_row_group(piece.row_group, columns=None)
        return from_table(table.slice(piece.start, piece.rows), self.shape, self.dtype)

    def pieces(self) -> list:
        """Every row group of the split, whole, in order."""
        return shards.assign(self.row_groups, 1, 0)

    def chunks(self):
        """The whole split as (features, labels) arrays, one row group at a time."""
        return map(self.read, self.pieces())


def load_split(dataset: storage.Location | str, split: str,
               manifest: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, *shape) in the stored dtype and labels (n,) of one staged split, in
    memory (for baselines and tests; trials stream theirs with ``SplitReader``)."""
    reader = SplitReader(dataset, manifest or staged_manifest(dataset), split)
    xs, ys = zip(*reader.chunks())
    return np.concatenate(xs), np.concatenate(ys)


def staged_manifest(dataset: storage.Location | str) -> dict:
    """The manifest of a dataset that must be staged already.

    Raises:
        DataError: there is none.
    """
    manifest = read_manifest(dataset)
    if manifest is None:
        raise DataError(f"No staged dataset at {dataset} (no {MANIFEST}); stage it with `tuner stage-data`.")
    return manifest
