"""ASHA's rung arithmetic in epochs, shared by the run (its console), the results and the
report: pure, no Ray."""

from __future__ import annotations

# What every scheduler and result counts progress in: the epochs a trial has trained.
TIME_ATTR = "epoch"


def milestones(asha: dict) -> list[int]:
    """ASHA's milestones in epochs: grace_period x reduction_factor^k, up to max_t."""
    out, r = [], asha["grace_period"]
    while r < asha["max_t"]:
        out.append(int(r))
        r *= asha["reduction_factor"]
    return [*out, asha["max_t"]]


def rung_ladder(trials: list[dict], milestones: list[int]) -> list[dict]:
    """How many trials reached each rung (and were therefore promoted past the one before)."""
    return [{"rung": m, "trials": sum(1 for t in trials if t["epochs"] >= m)} for m in milestones]


def last_rung(epochs: int, milestones: list[int]) -> int:
    reached = [m for m in milestones if epochs >= m]
    return reached[-1] if reached else 0
