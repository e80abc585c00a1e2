"""Write digits.parquet: scikit-learn's 1,797 handwritten digits (8x8 images, 10 classes),
which ship inside its wheel (no download).

    python prepare.py                 # -> ./digits.parquet

The image column is an Arrow fixed-shape tensor: its 8x8 shape travels in the file, so
`tuner stage-data` needs no --feature-shape.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_digits

digits = load_digits()
images = digits.images.astype(np.float32) / 16.0  # pixel intensities 0..16 -> 0..1
table = pa.table({
    "image": pa.FixedShapeTensorArray.from_numpy_ndarray(images),
    "digit": pa.array(digits.target.astype(np.int64)),
})
pq.write_table(table, "digits.parquet")
print(f"digits.parquet: {table.num_rows} rows, image {images.shape[1:]}, digits 0-9")
