"""MNIST as a source: the four standard IDX ``.gz`` files (the subset shipped in the
package, a local folder, an ``s3://`` prefix, or a public mirror), checked against their
sha256, with a fixed validation split carved off the training images.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
from dataclasses import dataclass
from importlib import resources

import numpy as np

from tuner import storage
from tuner.data.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The published checksums of the original files.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
SUBSET_PACKAGE = "tuner.mnist_subset"
IMAGE_SHAPE = (28, 28)
SPLIT_SEED = 20260101  # fixes the validation split for good; part of the manifest


# --- pure parts -------------------------------------------------------------------


def parse_idx(raw: bytes) -> np.ndarray:
    """Parse an uncompressed IDX file (uint8 data) into an array of its shape."""
    if len(raw) < 4:
        raise DataError("IDX data is shorter than its 4-byte magic number.")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"Not an unsigned-byte IDX file (magic {raw[:4].hex()}).")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("IDX header is truncated.")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataError(f"IDX body has {len(raw) - header} bytes, but its header promises {size}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """The inverse of ``parse_idx`` (used to build the shipped subset)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(name: str, data: bytes, expected: dict[str, str]) -> None:
    got = sha256(data)
    if expected.get(name) != got:
        raise DataError(
            f"{name} has sha256 {got}, but {expected.get(name, 'no checksum is known')} was expected; "
            "the file is corrupt or not the original MNIST."
        )


def split_validation(n_train: int, fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and the validation rows: a fixed, seeded permutation."""
    n_val = int(round(n_train * fraction))
    if not 0 < n_val < n_train:
        raise DataError(f"A validation fraction of {fraction:g} leaves {n_val} of {n_train} rows for validation.")
    order = np.random.default_rng(seed).permutation(n_train)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# --- reading the sources ------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the four IDX files come from and which checksums they must match."""

    description: str
    checksums: dict[str, str]

    def read(self, filename: str) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class BuiltinSource(Source):
    def read(self, filename: str) -> bytes:
        return resources.files(SUBSET_PACKAGE).joinpath(filename).read_bytes()


@dataclass(frozen=True)
class UriSource(Source):
    location: storage.Location = storage.Location("")

    def read(self, filename: str) -> bytes:
        target = self.location.join(filename)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{target} does not exist; the source must hold the four MNIST .gz files.") from None
        except OSError as e:
            raise DataError(f"Cannot read {target}: {str(e).splitlines()[0]}") from None


@dataclass(frozen=True)
class DownloadSource(Source):
    def read(self, filename: str) -> bytes:
        errors = []
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + filename, timeout=60) as r:
                    return r.read()
            except OSError as e:
                errors.append(f"{mirror}: {e}")
        raise DataError(f"Could not download {filename}: " + "; ".join(errors))


def subset_checksums() -> dict[str, str]:
    text = resources.files(SUBSET_PACKAGE).joinpath("SHA256SUMS").read_text()
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if line.strip())}


def is_mnist_source(source: storage.Location | str) -> bool:
    """Whether ``source`` names MNIST (builtin, download, or a folder / prefix that holds
    the four IDX files), as opposed to a CSV or Parquet source."""
    where = storage.at(source)
    if where.uri in ("builtin", "download"):
        return True
    if where.uri.lower().endswith((".csv", ".parquet", ".pq")):
        return False
    return where.join(FILES["train_images"]).exists()


def source_for(source: storage.Location | str) -> Source:
    """The MNIST source that ``source`` names: ``builtin``, ``download``, or a folder / prefix."""
    where = storage.at(source)
    if where.uri == "builtin":
        return BuiltinSource("builtin MNIST subset shipped with tuner", subset_checksums())
    if where.uri == "download":
        return DownloadSource("download from public MNIST mirrors", MNIST_SHA256)
    return UriSource(where.uri, MNIST_SHA256, location=where)


def read_source(source: Source) -> dict[str, np.ndarray]:
    """Read, verify and parse the four files."""
    arrays = {}
    for key, filename in FILES.items():
        raw = source.read(filename)
        verify(filename, raw, source.checksums)
        try:
            arrays[key] = parse_idx(gzip.decompress(raw))
        except (OSError, EOFError) as e:
            raise DataError(f"{filename} is not a valid gzip file: {e}") from None
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[1:] != IMAGE_SHAPE or len(images) != len(labels):
            raise DataError(f"The {part} images {images.shape} and labels {labels.shape} do not match.")
    return arrays


def read_splits(source: Source, validation_fraction: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images (n, 28, 28) uint8, labels (n,) int32): the test set as published,
    the validation split carved off the training images by a fixed seed."""
    arrays = read_source(source)
    train_idx, val_idx = split_validation(len(arrays["train_labels"]), validation_fraction)
    return {
        "train": (arrays["train_images"][train_idx], arrays["train_labels"][train_idx].astype(np.int32)),
        "validation": (arrays["train_images"][val_idx], arrays["train_labels"][val_idx].astype(np.int32)),
        "test": (arrays["test_images"], arrays["test_labels"].astype(np.int32)),
    }
