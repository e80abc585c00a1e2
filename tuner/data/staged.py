"""A staged dataset: ``train``/``validation``/``test`` Parquet files plus ``manifest.json``
under one URI (local or ``s3://``), written once by ``stage`` and read by every worker.

Each split holds two columns: ``x``, one example's features as raw little-endian bytes
of the manifest's dtype (uint8 or float32) and shape (a fixed-size binary column: no
per-value overhead, decoded without a copy), and ``y``, the class index (int32) or the
target (float32). The manifest records the feature columns, shape and dtype, the label
column, the task and its classes, the input statistics, the row counts and checksums,
and the source's sha256. It is written last: its presence means the dataset is whole.

Datasets staged before this layout (MNIST only: ``image``/``label`` columns, no
``format`` in the manifest) are read as they are.
"""

from __future__ import annotations

import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tuner import storage
from tuner.data.errors import DataError
from tuner.data.tables import SPLITS

MANIFEST = "manifest.json"
FORMAT = 2
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


def write(dataset_uri: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict,
          endpoint: str | None = None, stats: tuple | None = None) -> dict:
    """Write the three splits and then the manifest (``meta`` plus what the arrays tell;
    ``stats``: ``input_stats`` of the training split, if known)."""
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
        sink = io.BytesIO()
        pq.write_table(to_table(x, y), sink, compression="zstd")
        raw = sink.getvalue()
        storage.write_bytes(storage.join(dataset_uri, f"{name}.parquet"), raw, endpoint)
        entry = {"file": f"{name}.parquet", "rows": int(len(y)), "sha256": storage_sha256(raw)}
        if classes is not None:
            entry["class_counts"] = np.bincount(y, minlength=len(classes)).tolist()
        manifest["splits"][name] = entry
    storage.write_json(storage.join(dataset_uri, MANIFEST), manifest, endpoint)
    return manifest


def storage_sha256(raw: bytes) -> str:
    import hashlib

    return hashlib.sha256(raw).hexdigest()


def read_manifest(dataset_uri: str, endpoint: str | None = None) -> dict | None:
    try:
        return storage.read_json(storage.join(dataset_uri, MANIFEST), endpoint)
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


def load_split(dataset_uri: str, split: str, endpoint: str | None = None,
               manifest: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, *shape) in the stored dtype and labels (n,) of one staged split."""
    manifest = manifest or read_manifest(dataset_uri, endpoint)
    if manifest is None:
        raise DataError(f"No staged dataset at {dataset_uri} (no {MANIFEST}); stage it with `tuner stage-data`.")
    f = features(manifest)
    entry = manifest["splits"][split]
    target = storage.join(dataset_uri, entry.get("file", f"{split}.parquet"))
    fs, path = storage.filesystem(target, endpoint)
    try:
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise DataError(f"The staged file {target} is missing; stage the dataset again.") from None
    x, y = from_table(table, tuple(f["shape"]), f["dtype"])
    if len(y) != entry["rows"]:
        raise DataError(f"The staged file {target} has {len(y)} rows, but its manifest lists {entry['rows']}; "
                        "stage the dataset again.")
    return x, y
