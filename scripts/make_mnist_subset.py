"""Rebuild the class-balanced MNIST subset shipped in tuner/mnist_subset/.

    python scripts/make_mnist_subset.py ../shared/data/mnist

Takes the first PER_CLASS_TRAIN training and PER_CLASS_TEST test images of each digit,
in the original order, from the original IDX files (checked against their sha256).
"""

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

from tuner import data

PER_CLASS_TRAIN = 300
PER_CLASS_TEST = 100
OUT = Path(__file__).resolve().parent.parent / "tuner" / "mnist_subset"


def take(images, labels, per_class):
    idx = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
    return images[idx], labels[idx]


def main(src: str) -> None:
    arrays = data.read_source(data.UriSource("original", data.MNIST_SHA256, uri=src))
    parts = {
        "train": take(arrays["train_images"], arrays["train_labels"], PER_CLASS_TRAIN),
        "test": take(arrays["test_images"], arrays["test_labels"], PER_CLASS_TEST),
    }
    sums = []
    for key, filename in data.FILES.items():
        part, kind = key.split("_")
        array = parts[part][0 if kind == "images" else 1]
        # mtime=0 keeps the bytes, and so the checksums, reproducible.
        raw = gzip.compress(data.encode_idx(array), compresslevel=9, mtime=0)
        (OUT / filename).write_bytes(raw)
        sums.append(f"{hashlib.sha256(raw).hexdigest()}  {filename}")
    (OUT / "SHA256SUMS").write_text("\n".join(sorted(sums, key=lambda s: s.split()[1])) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
