"""How a staged split is cut into files and row groups, and which rows each Train worker
reads (pure functions: no I/O, no TensorFlow).

A split is written as ``<split>/part-NNNNN.parquet`` files of row groups sized for
streaming (``layout``). A trial's N workers each take one contiguous range of the split's
rows, ``[floor(r * R / N), floor((r + 1) * R / N))``: the shares differ by at most one
row, and together they cover every row exactly once. A range is a list of ``Piece``s,
slices of row groups; a row group on a boundary between two workers is read by both,
each keeping its own slice. The rows were put in a seeded random order when staged, so a
contiguous range is a random sample of the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Row groups are the unit a worker reads and shuffles: about this many bytes of features
# each (fewer when the split is small, see MIN_TRAIN_ROW_GROUPS).
ROW_GROUP_BYTES = 8 << 20
# The training split has at least this many row groups (if it has as many rows), so that
# up to 64 workers each get a share of several row groups (a row group on a boundary
# between two shares is read by both).
MIN_TRAIN_ROW_GROUPS = 64
# Row groups per file: files of about 128 MiB at the target row-group size.
ROW_GROUPS_PER_FILE = 16


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of row group ``row_group`` of file ``file`` (indices into
    the split's file list)."""

    file: int
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def layout(rows: int, row_bytes: int, min_row_groups: int = 1) -> list[list[int]]:
    """Row counts of each row group of each file for a split of ``rows`` rows."""
    per_group = max(1, min(ROW_GROUP_BYTES // max(row_bytes, 1), rows // min_row_groups))
    groups = [min(per_group, rows - start) for start in range(0, rows, per_group)] or [0]
    return [groups[i:i + ROW_GROUPS_PER_FILE] for i in range(0, len(groups), ROW_GROUPS_PER_FILE)]


def share(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The range of the split's rows that worker ``rank`` of ``world`` reads."""
    return rows * rank // world, rows * (rank + 1) // world


def assign(row_groups: list[list[int]], world: int, rank: int) -> list[Piece]:
    """The pieces worker ``rank`` of ``world`` reads, in the split's order.

    Args:
        row_groups: the row counts of each row group, per file (the manifest's listing).
    """
    total = sum(map(sum, row_groups))
    first, last = share(total, world, rank)
    pieces, offset = [], 0
    for f, groups in enumerate(row_groups):
        for g, n in enumerate(groups):
            start, stop = max(first, offset), min(last, offset + n)
            if start < stop:
                pieces.append(Piece(f, g, start - offset, stop - offset))
            offset += n
            if offset >= last:
                return pieces
    return pieces


def pass_order(pieces: list[Piece], seed: int, rank: int, epoch: int) -> list[Piece]:
    """``pieces`` in the seeded random order of one pass (epoch) of one worker."""
    order = np.random.default_rng([seed, rank, epoch]).permutation(len(pieces))
    return [pieces[i] for i in order]


def row_order(piece: Piece, seed: int, rank: int, epoch: int) -> np.ndarray:
    """A seeded random order of ``piece``'s rows for one pass."""
    return np.random.default_rng([seed, rank, epoch, piece.file, piece.row_group]).permutation(piece.rows)


def shuffle_buffer(pieces: list[Piece], row_bytes: int, row_groups: int, limit_bytes: int) -> int:
    """Rows in a worker's shuffle buffer: as many as its ``row_groups`` largest pieces
    hold, at most its whole share and at most ``limit_bytes`` of features."""
    largest = sorted((p.rows for p in pieces), reverse=True)[:row_groups]
    return max(1, min(sum(largest), limit_bytes // max(row_bytes, 1)))
