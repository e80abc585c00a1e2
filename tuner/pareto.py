"""Several objectives at once: Pareto dominance, non-dominated sorting, the multi-objective
promotion rule at a rung, and the hypervolume. Pure: no Ray, no TensorFlow.

A point is a sequence of objective values; ``modes`` says per objective whether higher
(``max``) or lower (``min``) is better. Internally every objective is turned into one to
minimise (``_minimised``).

- Non-dominated sorting and crowding distance as in NSGA-II (Deb et al., IEEE TEC 2002).
- The rung rule of MO-ASHA (Schmucker et al., 2021; Syne Tune's ``MOASHA``): the points
  recorded at a rung ranked by non-dominated sorting, ties within a front broken by
  crowding distance (the more isolated first); a trial goes on when it is among the top
  1/reduction_factor of that ranking (rounded up, ahead of its equals), as Ray's
  single-objective ASHA keeps the trials that reach the rung's quantile.
- The hypervolume: the volume dominated by a front and bounded by a reference point, in
  any number of objectives (exact; by slicing along the first objective, which is fast
  enough for the few hundred points of an experiment).
"""

from __future__ import annotations

import math
from typing import Sequence

Point = Sequence[float]


def _minimised(points: Sequence[Point], modes: Sequence[str]) -> list[tuple[float, ...]]:
    sign = [-1.0 if m == "max" else 1.0 for m in modes]
    return [tuple(s * float(v) for s, v in zip(sign, p)) for p in points]


def dominates(a: Point, b: Point, modes: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    (x, y) = _minimised([a, b], modes)
    return all(u <= v for u, v in zip(x, y)) and any(u < v for u, v in zip(x, y))


def fronts(points: Sequence[Point], modes: Sequence[str]) -> list[list[int]]:
    """The indices of ``points`` by non-dominated front: the first front is dominated by
    no point, the second only by points of the first, and so on. A point with a NaN
    value is dominated by every other (it goes last, in a front of its own kind)."""
    finite = [i for i, p in enumerate(points) if all(math.isfinite(float(v)) for v in p)]
    x = dict(zip(finite, _minimised([points[i] for i in finite], modes)))
    dominated_by = {i: 0 for i in finite}
    dominating: dict[int, list[int]] = {i: [] for i in finite}
    for i in finite:
        for j in finite:
            if i != j and all(u <= v for u, v in zip(x[i], x[j])) and any(u < v for u, v in zip(x[i], x[j])):
                dominating[i].append(j)
                dominated_by[j] += 1
    out, current = [], [i for i in finite if dominated_by[i] == 0]
    while current:
        out.append(current)
        following = []
        for i in current:
            for j in dominating[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        current = sorted(following)
    rest = [i for i in range(len(points)) if i not in x]
    return out + ([rest] if rest else [])


def front(points: Sequence[Point], modes: Sequence[str]) -> list[int]:
    """The indices of the non-dominated points (the Pareto front), in their order."""
    layers = fronts(points, modes)
    if not layers or not all(math.isfinite(float(v)) for v in points[layers[0][0]]):
        return []
    return layers[0]


def crowding(points: Sequence[Point], members: Sequence[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each of ``members`` (indices of one front): the sum,
    over objectives, of the gap between its neighbours, normalised by the front's extent;
    the ends of each objective get infinity."""
    out = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for k in range(len(points[members[0]])):
        order = sorted(members, key=lambda i: (float(points[i][k]), i))
        low, high = float(points[order[0]][k]), float(points[order[-1]][k])
        out[order[0]] = out[order[-1]] = math.inf
        if high == low:
            continue
        for before, i, after in zip(order, order[1:], order[2:]):
            out[i] += (float(points[after][k]) - float(points[before][k])) / (high - low)
    return out


def ranked(points: Sequence[Point], modes: Sequence[str], favoured: int | None = None) -> list[int]:
    """The indices of ``points`` best first: by front, then the more isolated first
    (larger crowding distance), then ``favoured`` before its equals, then by index."""
    out: list[int] = []
    for layer in fronts(points, modes):
        distance = crowding(points, layer)
        out += sorted(layer, key=lambda i: (-distance[i], i != favoured, i))
    return out


def goes_on(points: Sequence[Point], index: int, modes: Sequence[str], reduction_factor: float) -> bool:
    """MO-ASHA at a rung: whether ``points[index]`` (one of the points recorded there,
    itself included) is among the top ceil(n / reduction_factor) of their ranking, ahead
    of its equals: as Ray's ASHA lets a trial go on whose value reaches the rung's
    quantile. The first point at a rung always goes on."""
    keep = max(1, math.ceil(len(points) / reduction_factor))
    return index in ranked(points, modes, favoured=index)[:keep]


def reference_point(points: Sequence[Point], modes: Sequence[str]) -> tuple[float, ...]:
    """A reference point for the hypervolume: per objective, the worst finite value among
    ``points`` (so every point contributes), moved 10% of the range further (the extreme
    points keep a volume)."""
    out = []
    for k, mode in enumerate(modes):
        values = [float(p[k]) for p in points if math.isfinite(float(p[k]))]
        if not values:
            raise ValueError(f"no finite value for objective {k}")
        low, high = min(values), max(values)
        margin = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
        out.append(low - margin if mode == "max" else high + margin)
    return tuple(out)


def hypervolume(points: Sequence[Point], modes: Sequence[str], reference: Point) -> float:
    """The volume dominated by ``points`` and bounded by ``reference`` (points that do
    not dominate the reference add nothing)."""
    ref = _minimised([reference], modes)[0]
    inside = [p for p in _minimised([p for p in points if all(math.isfinite(float(v)) for v in p)], modes)
              if all(u < r for u, r in zip(p, ref))]
    return _volume(inside, ref)


def _volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    # Slices along the first objective: between consecutive values, the points at or
    # below it dominate a (d-1)-dimensional volume in the other objectives.
    points = sorted(points)
    total = 0.0
    for i, p in enumerate(points):
        upper = points[i + 1][0] if i + 1 < len(points) else ref[0]
        if upper > p[0]:
            total += (upper - p[0]) * _volume([q[1:] for q in points[: i + 1]], ref[1:])
    return total
