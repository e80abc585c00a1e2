"""Batch arithmetic and the learning-rate schedule, in epochs. Pure: no TensorFlow.

A schedule counted in steps changes meaning with the batch size and the number of
workers (the tutorial's 1000-step decay dies after ~3 epochs at batch 32). Here every
schedule is a function of the epoch, a float that the optimizer step maps onto through
``steps_per_epoch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class BatchPlan:
    """How one trial's data parallelism divides an epoch."""

    workers: int
    per_worker_batch: int
    train_rows: int

    @property
    def global_batch(self) -> int:
        return self.per_worker_batch * self.workers

    @property
    def steps_per_epoch(self) -> int:
        # Every worker runs the same number of steps; the last global batch of an
        # epoch wraps into the next pass of the shuffled shard rather than shrinking.
        return math.ceil(self.train_rows / self.global_batch)


def check_plan(plan: BatchPlan) -> str | None:
    if plan.global_batch > plan.train_rows:
        return (
            f"The global batch {plan.global_batch} ({plan.per_worker_batch} per worker x {plan.workers} workers) "
            f"exceeds the {plan.train_rows} training rows; lower `search.space.batch_size` or `scaling.workers`."
        )
    return None


def scale_learning_rate(base: float, global_batch: int, rule: str, reference_batch: int) -> float:
    """The peak learning rate for ``global_batch`` under the scaling rule."""
    ratio = global_batch / reference_batch
    if rule == "none":
        return base
    if rule == "linear":
        return base * ratio
    if rule == "sqrt":
        return base * math.sqrt(ratio)
    raise ValueError(f"unknown learning-rate scaling rule {rule!r}")


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to ``peak``, then constant or exponential decay, all in epochs."""

    peak: float
    kind: str = "constant"  # "constant" or "exponential"
    decay_epochs: float = 1.0
    decay_rate: float = 0.5
    staircase: bool = True
    warmup_epochs: float = 0.0

    def __call__(self, epoch: float) -> float:
        lr = self.peak
        if self.kind == "exponential":
            exponent = epoch / self.decay_epochs
            if self.staircase:
                exponent = math.floor(exponent)
            lr = lr * self.decay_rate**exponent
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            lr = lr * epoch / self.warmup_epochs
        return lr


def schedule_for(params: dict, plan: BatchPlan, lr_scaling: str, reference_batch: int, warmup_epochs: float) -> Schedule:
    """The schedule of one trial's hyperparameters under its batch plan (the decay
    settings are None when the schedule is constant)."""
    decay = {k: params[k] for k in ("decay_epochs", "decay_rate", "staircase") if params.get(k) is not None}
    return Schedule(
        peak=scale_learning_rate(params["learning_rate"], plan.global_batch, lr_scaling, reference_batch),
        kind=params["schedule"],
        warmup_epochs=warmup_epochs,
        **decay,
    )


@dataclass(frozen=True)
class Stretch:
    """Epochs ``[start, end)`` of a trial trained with ``params``."""

    start: int
    end: int
    params: dict


def stretches(params: Mapping[str, Any], hp_schedule: list[dict] | None, max_t: int) -> list[Stretch]:
    """A trial's epochs cut where ``training.hyperparameter_schedule`` (``[{epoch: E,
    knob: value, ...}]``, increasing epochs) changes its knobs; one stretch without it. A
    knob its trial does not use (momentum without sgd) stays unused (None)."""
    from tuner.space import active

    out, current, start = [], dict(params), 0
    for step in hp_schedule or []:
        if step["epoch"] >= max_t:
            break
        if step["epoch"] > start:
            out.append(Stretch(start, step["epoch"], current))
            start = step["epoch"]
        current = {**current, **{k: v for k, v in step.items() if k != "epoch" and active(k, current)}}
    out.append(Stretch(start, max_t, current))
    return out


def stretch_at(stretches: list[Stretch], epoch: int) -> Stretch:
    """The stretch that trains the epoch after ``epoch`` (the last one at the budget)."""
    return next((s for s in stretches if s.start <= epoch < s.end), stretches[-1])
