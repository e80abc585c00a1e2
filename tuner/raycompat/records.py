"""The records of Ray Tune's schedulers and searchers that ``tuner`` saves, restores or
counts on: ASHA's brackets and rungs, the median stopping rule's results, PB2's explore
step, and the live-trial counts of the ``BasicVariantGenerator`` and the
``ConcurrencyLimiter``. Plain accessors: no patch, nothing to switch off."""

from __future__ import annotations

# --- ASHA (AsyncHyperBandScheduler, _Bracket) and the median stopping rule --------------


def asha_brackets(scheduler) -> list:
    return scheduler._brackets


def bracket_rungs(bracket) -> list[tuple[float, dict]]:
    """A bracket's rungs, highest milestone first: (milestone, {trial id: reward})."""
    return bracket._rungs


def set_bracket_rungs(bracket, rungs: list[tuple[float, dict]]) -> None:
    bracket._rungs = rungs


def put_in_bracket(scheduler, trial_id: str, bracket) -> None:
    """Judge ``trial_id`` in ``bracket`` (Ray draws one when the trial is added)."""
    scheduler._trial_info[trial_id] = bracket


def median_results(rule) -> dict:
    """MedianStoppingRule's records: trial -> [result, ...]."""
    return rule._results


def median_keys(rule) -> tuple[str, str]:
    """(time attribute, metric) of a MedianStoppingRule."""
    return rule._time_attr, rule._metric


def pb2_explore(data, bounds: dict, current, base: str, old: str, config: dict):
    """Ray's PB2 explore step (``ray.tune.schedulers.pb2._explore``): the GP-UCB choice of
    ``bounds``' values for ``old`` continuing ``base``, from ``data`` (a DataFrame of
    Trial, Time, the values, Reward at each perturbation point); returns (the chosen
    values, ``data`` with the choice added)."""
    from ray.tune.schedulers.pb2 import _explore

    # Ray annotates base and old as Trials; it only uses them as keys of the data.
    return _explore(data, bounds, current, base, old, config)  # type: ignore[arg-type]


# --- searchers' live-trial counts, and the restored Tuner --------------------------------


def count_as_live(searcher, trial_ids: set[str]) -> None:
    """Count ``trial_ids`` as running against ``searcher``'s concurrency limit
    (``BasicVariantGenerator`` or ``ConcurrencyLimiter``)."""
    if hasattr(searcher, "_live_trials"):  # BasicVariantGenerator
        searcher._live_trials.update(trial_ids)
    elif hasattr(searcher, "live_trials"):  # ConcurrencyLimiter
        new = trial_ids - searcher.live_trials
        searcher.live_trials.update(new)
        searcher.num_unfinished_live_trials += len(new)
