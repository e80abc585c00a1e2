"""A user's table as a source: a CSV file, a Parquet file, or a folder / ``s3://`` prefix
of Parquet files, turned into features, labels and splits. Pure but for reading the
source; every problem is a ``DataError`` of one line.

Features are either numeric scalar columns (stacked into one float32 vector per row) or
one fixed-shape tensor column: Arrow's ``fixed_shape_tensor`` (its shape is in the type),
or a list / fixed-size-list column of equal lengths (flat, or shaped by ``feature_shape``).
The label is integer or string classes (mapped to 0..K-1, sorted) or a float target
(regression). A ``split`` column (train / validation / test) is used as given; otherwise
validation and test are carved off by a seeded permutation, per class for classification.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tuner import storage
from tuner.data.errors import DataError

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "split"


@dataclass(frozen=True)
class TableSource:
    location: storage.Location  # a .csv or .parquet file, or a folder / prefix of .parquet files

    def __post_init__(self) -> None:  # a URI alone is a Location through $AWS_ENDPOINT_URL
        object.__setattr__(self, "location", storage.at(self.location))

    @property
    def description(self) -> str:
        return self.location.uri


@dataclass
class Examples:
    """A source's rows as arrays, before splitting."""

    x: np.ndarray  # (n, *shape): uint8 or float32
    y: np.ndarray  # (n,): the label column's values as read
    split: np.ndarray | None  # (n,) of "train" / "validation" / "test", or None
    feature_names: tuple[str, ...]
    sha256: str  # of the source's bytes (of each file's digest, for a folder)


def read_table(source: TableSource) -> tuple[pa.Table, str]:
    """The source as one Arrow table, and its sha256."""
    import pyarrow.csv as pcsv
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    uri = source.location.uri
    try:
        fs, path = source.location.filesystem()
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"The source {uri} does not exist.")
        if info.type == pafs.FileType.File:
            raw = source.location.read_bytes()
            digest = hashlib.sha256(raw).hexdigest()
            if uri.lower().endswith(".csv"):
                try:
                    return pcsv.read_csv(io.BytesIO(raw)), digest
                except pa.ArrowInvalid as e:
                    raise DataError(f"The source {uri} is not a CSV file that can be read: {_first(e)}") from None
            try:
                return pq.read_table(io.BytesIO(raw)), digest
            except pa.ArrowInvalid as e:
                raise DataError(f"The source {uri} is not a Parquet file (give a .csv or .parquet file, or a folder "
                                f"of .parquet files): {_first(e)}") from None
        files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                       if i.type == pafs.FileType.File and i.path.lower().endswith((".parquet", ".pq")))
        if not files:
            raise DataError(f"The source {uri} is a folder without .parquet files; give a .csv or .parquet file, "
                            "or a folder of .parquet files.")
        tables, digests = [], []
        for f in files:
            with fs.open_input_file(f) as stream:  # one GET on S3 (a stream reads in many)
                raw = stream.read()
            digests.append(f"{hashlib.sha256(raw).hexdigest()}  {posixpath.relpath(f, path)}")
            tables.append(pq.read_table(io.BytesIO(raw)))
        try:
            table = pa.concat_tables(tables, promote_options="default")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise DataError(f"The Parquet files under {uri} do not share one schema: {_first(e)}") from None
        return table, hashlib.sha256("\n".join(digests).encode()).hexdigest()
    except OSError as e:
        raise DataError(f"Cannot read the source {uri}: {_first(e)}") from None


def examples(table: pa.Table, label: str, features: list[str] | None = None,
             feature_shape: tuple[int, ...] | None = None, sha256: str = "") -> Examples:
    """The table's features, labels and (if it has one) split column."""
    columns = table.column_names
    if label not in columns:
        raise DataError(f"The label column `{label}` is not in the source; its columns: {', '.join(columns)}.")
    if features is None:
        features = [c for c in columns if c not in (label, SPLIT_COLUMN)]
    if not features:
        raise DataError("The source has no feature columns besides the label; name them with --features.")
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"The feature column `{missing[0]}` is not in the source; its columns: {', '.join(columns)}.")
    if label in features:
        raise DataError(f"`{label}` is the label column; leave it out of --features.")
    y = _labels(table.column(label), label)
    split = _split_column(table) if SPLIT_COLUMN in columns and SPLIT_COLUMN not in features else None
    tensors = [c for c in features if _is_tensor_type(table.schema.field(c).type)]
    if tensors:
        if len(features) > 1:
            raise DataError(f"The feature column `{tensors[0]}` holds a tensor per row; a tensor feature must be the "
                            f"only one: --features {tensors[0]}.")
        x = _tensor(table.column(tensors[0]), tensors[0], feature_shape)
    else:
        if feature_shape is not None:
            raise DataError("--feature-shape applies to one list or tensor column, but the features are scalar columns.")
        x = np.stack([_scalar(table.column(c), c) for c in features], axis=1)
    return Examples(x=x, y=y, split=split, feature_names=tuple(features), sha256=sha256)


def _first(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _is_tensor_type(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or isinstance(t, pa.FixedShapeTensorType))


def _scalar(column: pa.ChunkedArray, name: str) -> np.ndarray:
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t) or pa.types.is_binary(t):
        raise DataError(f"The feature column `{name}` holds strings, but features must be numbers; encode it "
                        "(e.g. one column per category) before staging, or leave it out with --features.")
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)):
        raise DataError(f"The feature column `{name}` has type {t}, but features must be numbers.")
    if column.null_count:
        raise DataError(f"The feature column `{name}` has {column.null_count} missing values; fill or drop them first.")
    values = column.cast(pa.float64()).to_numpy().astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise DataError(f"The feature column `{name}` holds NaN or infinite values; fill or drop them first.")
    return values


def _tensor(column: pa.ChunkedArray, name: str, feature_shape: tuple[int, ...] | None) -> np.ndarray:
    column = column.combine_chunks()
    n = len(column)
    if column.null_count:
        raise DataError(f"The feature column `{name}` has {column.null_count} missing rows; drop them first.")
    if isinstance(column.type, pa.FixedShapeTensorType):
        shape = tuple(column.type.shape)
        values = column.storage.flatten()
    else:
        values, shape = column, ()
        while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths.min() != lengths.max()):
                raise DataError(f"The feature column `{name}` is ragged: its rows hold {lengths.min()} to {lengths.max()} "
                                "values; every row needs the same shape.")
            shape += (int(lengths[0]) if len(lengths) else 0,)
            values = values.flatten()
        if feature_shape is not None:
            if int(np.prod(feature_shape)) != int(np.prod(shape)):
                raise DataError(f"--feature-shape {','.join(map(str, feature_shape))} has {int(np.prod(feature_shape))} "
                                f"values, but each row of `{name}` holds {int(np.prod(shape))}.")
            shape = tuple(feature_shape)
    t = values.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"The feature column `{name}` holds {t} values, but features must be numbers.")
    if values.null_count:
        raise DataError(f"The feature column `{name}` has missing values inside its rows; fill them first.")
    flat = values.to_numpy(zero_copy_only=False)
    dtype = np.uint8 if pa.types.is_uint8(t) else np.float32
    flat = flat.astype(dtype, copy=False)
    if dtype == np.float32 and not np.all(np.isfinite(flat)):
        raise DataError(f"The feature column `{name}` holds NaN or infinite values; fill or drop them first.")
    return flat.reshape((n, *shape))


def _labels(column: pa.ChunkedArray, name: str) -> np.ndarray:
    if column.null_count:
        raise DataError(f"The label column `{name}` has {column.null_count} missing values; drop those rows first.")
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.cast(t.value_type)
        t = t.value_type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_boolean(t)):
        raise DataError(f"The label column `{name}` has type {t}, but must hold integer or string classes, "
                        "or float targets.")
    return np.asarray(column.to_numpy(zero_copy_only=False))


def _split_column(table: pa.Table) -> np.ndarray:
    values = np.asarray(table.column(SPLIT_COLUMN).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    unknown = sorted({str(v) for v in values} - set(SPLITS))
    if unknown:
        raise DataError(f"The `{SPLIT_COLUMN}` column holds {unknown[0]!r}, but must hold only train, validation "
                        "and test; rename the column to carve the splits instead.")
    for name in SPLITS:
        if not np.any(values == name):
            raise DataError(f"The `{SPLIT_COLUMN}` column has no `{name}` rows; give it some, or drop the column "
                            "to carve the splits.")
    return values


def task_of(y: np.ndarray, task: str | None) -> str:
    """The given task, else classification for integer, string and boolean labels and
    regression for floats."""
    if task is not None:
        return task
    return "regression" if np.issubdtype(y.dtype, np.floating) else "classification"


def encode_labels(y: np.ndarray, task: str, label: str) -> tuple[np.ndarray, list | None]:
    """(labels as int32 class indices or float32 targets, the class list or None)."""
    if task == "regression":
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise DataError(f"The label column `{label}` holds strings, but a regression target must be numbers.")
        values = y.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise DataError(f"The label column `{label}` holds NaN or infinite values; drop those rows first.")
        return values, None
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise DataError(f"The label column `{label}` holds NaN or infinite values; drop those rows first.")
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        shown = classes[0].item() if len(classes) and hasattr(classes[0], "item") else (classes[0] if len(classes) else "none")
        raise DataError(f"The label column `{label}` has one class ({shown!r}); classification needs at least two.")
    return index.astype(np.int32), [c.item() if hasattr(c, "item") else c for c in classes]


def carve(y: np.ndarray, task: str, validation_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """A split name per row: validation and test carved off by a seeded permutation, per
    class for classification (so each split keeps the class balance)."""
    rng = np.random.default_rng(seed)
    out = np.full(len(y), "train", dtype=object)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if task == "classification" else [np.arange(len(y))]
    for rows in groups:
        order = rows[rng.permutation(len(rows))]
        n_val = int(round(len(rows) * validation_fraction))
        n_test = int(round(len(rows) * test_fraction))
        out[order[:n_val]] = "validation"
        out[order[n_val:n_val + n_test]] = "test"
    for name in SPLITS:
        if not np.any(out == name):
            raise DataError(f"The source's {len(y)} rows leave none for {name} at --validation-fraction "
                            f"{validation_fraction:g} and --test-fraction {test_fraction:g}; raise the fractions "
                            "or give a larger source.")
    return out
