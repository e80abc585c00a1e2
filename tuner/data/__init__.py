"""Data: sources, staging, and reading a staged split back.

A source is MNIST (``builtin``, ``download``, or a folder / ``s3://`` prefix of the four
IDX files; ``tuner.data.mnist``) or a user's table (a CSV or Parquet file, or a folder /
prefix of Parquet files; ``tuner.data.tables``). Staging reads and checks the whole
source first (``mnist_dataset`` / ``table_dataset``: nothing is written if anything is
wrong), then writes the layout of ``tuner.data.staged``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuner import storage
from tuner.data import mnist, shards, staged, tables
from tuner.data.errors import DataError
from tuner.data.mnist import (
    FILES,
    MNIST_SHA256,
    SPLIT_SEED,
    BuiltinSource,
    DownloadSource,
    Source,
    UriSource,
    encode_idx,
    is_mnist_source,
    parse_idx,
    read_source,
    sha256,
    source_for,
    split_validation,
    subset_checksums,
    verify,
)
from tuner.data.staged import MANIFEST, SplitReader, from_table, input_spec, load_split, read_manifest, staged_manifest, to_table
from tuner.data.tables import SPLITS, TableSource
from tuner.tasks import TASKS

__all__ = [
    "DataError", "Prepared", "SplitReader", "shards", "mnist_dataset", "table_dataset", "stage", "read_manifest",
    "staged_manifest", "load_split", "input_spec",
    "is_mnist_source", "source_for", "TableSource", "MANIFEST", "SPLITS", "TASKS", "FILES", "MNIST_SHA256",
    "SPLIT_SEED", "Source", "BuiltinSource", "DownloadSource", "UriSource", "encode_idx", "parse_idx", "read_source",
    "sha256", "split_validation", "subset_checksums", "verify", "from_table", "to_table",
]


@dataclass
class Prepared:
    """A source read and checked, held in memory until ``write``."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (features, labels)
    meta: dict  # the manifest's description of the source, features and label

    def write(self, dataset: storage.Location | str) -> dict:
        return staged.write(dataset, self.splits, self.meta, self.stats())

    def rows(self, split: str) -> int:
        return len(self.splits[split][1])

    def stats(self) -> tuple:
        if not hasattr(self, "_stats"):
            self._stats = staged.input_stats(self.splits["train"][0])
        return self._stats

    def matches(self, manifest: dict) -> bool:
        """Whether ``manifest`` is this dataset staged already: the same source, features
        (columns, shape, dtype), label and splits. A manifest from before the current
        layout (MNIST only) matches the same MNIST source and validation split."""
        x = self.splits["train"][0]
        if manifest.get("format") is None:
            return (self.meta.get("dataset") == "mnist" == manifest.get("dataset")
                    and manifest.get("source_sha256") == self.meta.get("source_sha256")
                    and manifest.get("validation_fraction") == self.meta.get("validation_fraction"))
        features = {**self.meta["features"], "shape": list(x.shape[1:]), "dtype": str(x.dtype)}
        keys = ("source_sha256", "label", "validation_fraction", "test_fraction", "split_seed", "split_column")
        return manifest.get("features") == features and all(manifest.get(k) == self.meta.get(k) for k in keys)

    def input_spec(self):
        return staged.input_spec({**self.meta, "features": {**self.meta["features"],
                                                            "shape": list(self.splits["train"][0].shape[1:])},
                                  "stats": dict(zip(("mean", "std"), self.stats()))})


def mnist_input_spec():
    """MNIST's ``InputSpec`` as staging will make it, known before any file is read
    (without the pixel statistics, which tuner's own builders do not use)."""
    from tuner.models import InputSpec

    return InputSpec(shape=mnist.IMAGE_SHAPE, task="classification", num_classes=10, classes=tuple(range(10)),
                     feature_names=("image",), mean=None, std=None)


def mnist_dataset(source: mnist.Source, validation_fraction: float) -> Prepared:
    splits = mnist.read_splits(source, validation_fraction)
    return Prepared(splits, {
        "dataset": "mnist",
        "source": source.description,
        "source_sha256": dict(source.checksums),
        "validation_fraction": validation_fraction,
        "split_seed": mnist.SPLIT_SEED,
        "features": {"columns": ["image"]},
        "label": {"column": "label", "task": "classification", "classes": list(range(10))},
    })


def stage(source: mnist.Source, dataset: storage.Location | str, validation_fraction: float) -> dict:
    """Stage MNIST from ``source``; returns the manifest."""
    return mnist_dataset(source, validation_fraction).write(dataset)


def table_dataset(source: TableSource, label: str, features: list[str] | None = None,
                  feature_shape: tuple[int, ...] | None = None, task: str | None = None,
                  validation_fraction: float = 1 / 12, test_fraction: float = 1 / 12, seed: int = 0) -> Prepared:
    """A CSV or Parquet source read, checked and split (see ``tuner.data.tables``)."""
    table, digest = tables.read_table(source)
    ex = tables.examples(table, label, features, feature_shape, digest)
    task = tables.task_of(ex.y, task)
    y, classes = tables.encode_labels(ex.y, task, label)
    split = ex.split if ex.split is not None else tables.carve(y, task, validation_fraction, test_fraction, seed)
    splits = {name: (ex.x[split == name], y[split == name]) for name in SPLITS}
    meta: dict[str, Any] = {
        "dataset": posixpath.splitext(posixpath.basename(source.location.uri.rstrip("/")))[0],
        "source": source.description,
        "source_sha256": digest,
        "features": {"columns": list(ex.feature_names)},
        "label": {"column": label, "task": task, "classes": classes},
    }
    if ex.split is None:
        meta.update(validation_fraction=validation_fraction, test_fraction=test_fraction, split_seed=seed)
    else:
        meta["split_column"] = tables.SPLIT_COLUMN
    return Prepared(splits, meta)
