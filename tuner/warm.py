"""Warm starts from earlier experiments: which of their finished trials fit this search
space, and which run first. Pure: no Ray, no storage (``tuner.experiment`` reads the
experiments' summaries and results and hands the trials here).

The searchers take the points (``tuner.search``): Optuna's TPE and GP get them as
finished trials of their study before they suggest anything; ``random`` and
``quasi_random`` do not suggest them again. The best ``top`` of them run first.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from tuner.space import Dim, active, ordered


@dataclass(frozen=True)
class Point:
    """A finished trial of an earlier experiment."""

    config: dict  # its hyperparameters, over this space's names
    value: float  # its last reported objective (what the searchers learn from, as in a run)
    best: float  # its best objective (what ranks the points for ``top``)
    source: str  # "<experiment>/<trial id>"


@dataclass(frozen=True)
class WarmStart:
    points: list[Point]  # every point that fits, each configuration once
    first: list[dict] = field(default_factory=list)  # the best ``top`` configurations: this run's first trials
    warnings: list[str] = field(default_factory=list)


def misfit(space: Mapping[str, Dim], config: Mapping[str, Any]) -> str | None:
    """Why a trial's ``config`` is not a point of ``space`` (a short reason that groups
    alike trials), or None."""
    for name in ordered(space):
        dim = space[name]
        if name not in config:
            return f"miss `{name}`"
        value = config[name]
        if value is None:
            if active(name, config, space):
                return f"have no value for `{name}`"
            continue
        if not active(name, config, space):
            return f"have a `{name}` where this space's conditions leave it out"
        if dim.is_fixed:
            if value != dim.values[0]:
                return f"have another `{name}` than this space's fixed {dim.values[0]!r}"
        elif dim.kind == "choice":
            if value not in dim.values:
                return f"have a `{name}` outside its choices"
        else:
            low, high = dim.values
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                return f"have a `{name}` outside its range"
            if dim.is_int and value != int(value):
                return f"have a fractional `{name}`"
    extra = sorted(set(config) - set(space))
    if extra:
        return f"have `{extra[0]}`, which this space lacks"
    return None


def key(config: Mapping[str, Any]) -> tuple:
    """A configuration as a hashable value (to find the same configuration twice)."""
    return tuple(sorted((k, repr(v)) for k, v in config.items()))


def select(space: Mapping[str, Dim], trials: list[dict], mode: str, top: int) -> WarmStart:
    """The points of ``space`` among earlier ``trials`` (``{"config", "value", "best",
    "source"}``, grouped by ``source``'s experiment for the warnings), each configuration
    once (its best-scoring trial), and the ``top`` best as the first trials to run."""
    sign = 1 if mode == "max" else -1
    kept: dict[tuple, Point] = {}
    left: dict[str, Counter] = {}
    counts: Counter = Counter()
    for t in trials:
        experiment = t["source"].split("/", 1)[0]
        counts[experiment] += 1
        config = {k: v for k, v in t["config"].items() if k in space or v is not None}
        why = misfit(space, config)
        if why is None and not all(math.isfinite(v) for v in (t["value"], t["best"])):
            why = "have no finite objective"
        if why is not None:
            left.setdefault(experiment, Counter())[why] += 1
            continue
        point = Point(dict(config), float(t["value"]), float(t["best"]), t["source"])
        same = kept.get(key(config))
        if same is None or sign * point.best > sign * same.best:
            kept[key(config)] = point
    warnings = []
    for experiment, reasons in left.items():
        why = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        warnings.append(f"search.warm_start: {sum(reasons.values())} of the {counts[experiment]} finished trials of "
                        f"`{experiment}` do not fit this search space and are left out ({why}).")
    points = sorted(kept.values(), key=lambda p: -sign * p.best)
    return WarmStart(points, [dict(p.config) for p in points[:top]], warnings)
