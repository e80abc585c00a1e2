"""The spec's ``scheduler`` as Ray Tune schedulers, and the plateau stopper.

``asha`` (``ResumableASHA``: Ray's ASHA whose rungs are saved and loaded as plain data),
``asha_promote`` (``PromotingASHA``: the paper's promotion rule, trials wait paused at a
rung until promoted), ``hyperband`` (asynchronous, one bracket per halving rate),
``median_stopping`` and ``fifo``; the ``Plateau`` stopper combines with any of them.
All but FIFO, and the stopper, keep their state across a resume through ``resume.Keeper``.
ASHA is asynchronous successive halving (Li et al., MLSys 2020, https://arxiv.org/abs/1810.05934).

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import math

import numpy as np
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from tuner import raycompat
from tuner.spec import Spec


class ResumableASHA(ASHAScheduler):
    """ASHA (Li et al., MLSys 2020, https://arxiv.org/abs/1810.05934) whose rungs can
    be saved and loaded as plain data. With several ``brackets`` (asynchronous
    Hyperband), new trials are spread over them by a generator seeded with ``seed``
    (Ray draws from NumPy's global one), as likely as in Ray."""

    def __init__(self, *args, seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._bracket_of: dict[str, int] = {}  # trial id -> bracket index, kept after a trial ends
        self._rng = np.random.default_rng(seed)

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        # A trial that comes back after a restore stays in the bracket it was judged in.
        if trial.trial_id not in self._bracket_of:
            brackets = raycompat.asha_brackets(self)
            sizes = np.array([len(raycompat.bracket_rungs(b)) for b in brackets])
            weights = np.e ** (sizes - sizes.max())  # Ray's AsyncHyperBandScheduler.on_trial_add
            self._bracket_of[trial.trial_id] = int(self._rng.choice(len(brackets), p=weights / weights.sum()))
        raycompat.put_in_bracket(self, trial.trial_id, raycompat.asha_brackets(self)[self._bracket_of[trial.trial_id]])

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_rng", np.random.default_rng(0))  # pickled before brackets were seeded
        self.__dict__.update(state)

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """Per bracket, its rungs (highest milestone first): (milestone, {trial id: reward})."""
        return [[(m, dict(recorded)) for m, recorded in raycompat.bracket_rungs(b)]
                for b in raycompat.asha_brackets(self)]

    def state(self) -> dict:
        return {"rungs": self.rungs(), "bracket_of": dict(self._bracket_of), "rng": self._rng.bit_generator.state}

    def load(self, state: dict) -> None:
        saved = state["rungs"]
        brackets = raycompat.asha_brackets(self)
        ours = [[m for m, _ in raycompat.bracket_rungs(b)] for b in brackets]
        if [[m for m, _ in rungs] for rungs in saved] != ours:
            # Cannot happen through the CLI (a changed spec is refused); never judge
            # trials against rungs of another shape.
            raise ValueError(f"saved ASHA rungs {saved} do not match this scheduler's milestones {ours}")
        for bracket, rungs in zip(brackets, saved):
            raycompat.set_bracket_rungs(bracket, [(m, dict(recorded)) for m, recorded in rungs])
        self._bracket_of.update(state["bracket_of"])
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]


def hyperband_brackets(max_t: int, grace_period: int, reduction_factor: int) -> int:
    """Hyperband's bracket count: one per halving rate, s = 0 .. floor(log_rf(max_t / grace))."""
    return int(math.floor(math.log(max_t / grace_period, reduction_factor) + 1e-9)) + 1


def scheduler_for(spec: Spec, search: bool, time_attr: str):
    """The spec's scheduler (ASHA, Hyperband and median stopping resumable), FIFO for a
    single training run."""
    a, kind = spec.asha, spec.scheduler.kind if search else "fifo"
    if kind == "asha":
        return ResumableASHA(time_attr=time_attr, max_t=a.max_t, grace_period=a.grace_period,
                             reduction_factor=a.reduction_factor)
    if kind == "asha_promote":
        return PromotingASHA(time_attr=time_attr, max_t=a.max_t, grace_period=a.grace_period,
                             reduction_factor=a.reduction_factor)
    if kind == "hyperband":
        return ResumableASHA(time_attr=time_attr, max_t=a.max_t, grace_period=a.grace_period,
                             reduction_factor=a.reduction_factor, seed=spec.search.seed,
                             brackets=hyperband_brackets(a.max_t, a.grace_period, a.reduction_factor))
    if kind == "median_stopping":
        return ResumableMedian(time_attr=time_attr, grace_period=a.grace_period,
                               min_samples_required=spec.scheduler.median_min_trials)
    if kind == "fifo":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {kind!r}")  # pragma: no cover - validated in the spec


class PromotingASHA(FIFOScheduler):
    """ASHA with the promotion rule of Li et al. (MLSys 2020, https://arxiv.org/abs/1810.05934,
    Algorithm 2): a trial reaching a rung goes on only if it is among the top
    1/reduction_factor of the trials recorded there and not promoted from there before;
    otherwise it pauses (Tune stops its actor, so its worker group is gone) and waits. When
    a trial slot frees, the best waiting trial that has become promotable (highest rung
    first) resumes from its newest checkpoint before any new trial starts. Once no new
    trial comes, none runs and none is promotable, the waiting trials end where they are.

    Ray's ASHA (``asha``) decides at once instead: a trial goes on unless it is below the
    top 1/reduction_factor of those recorded at the rung so far, so the first trial at a
    rung always goes on, and early trials are judged against few. Here each rung sends on
    at most floor(n / reduction_factor) of its n trials, as synchronous successive halving
    would, at the price of a worker-group start per resume.

    Rewards are the trials' ``metric`` at the rung's epoch (``time_attr``). ``max_concurrent``
    is the number of trial slots (set by ``tune.run``): free slots go to promotions first,
    and ``resume.Keeper`` lets the searcher suggest new trials only for slots left over.
    """

    def __init__(self, time_attr: str, max_t: int, grace_period: int, reduction_factor: int,
                 metric: str | None = None, mode: str | None = None, max_concurrent: int = 1):
        super().__init__()
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self.max_t, self.reduction_factor, self.max_concurrent = max_t, reduction_factor, max_concurrent
        count = hyperband_brackets(max_t, grace_period, reduction_factor)
        self._rungs = [(grace_period * reduction_factor ** k, {}) for k in reversed(range(count))]
        self._promoted: dict[int, set[str]] = {m: set() for m, _ in self._rungs}
        self._waiting: dict[str, int] = {}  # paused at a rung: trial id -> milestone
        self._resume: set[str] = set()  # promoted from waiting, not yet running again
        # Ended while waiting. Tune saves their state as it was (PAUSED), and a later
        # restore would re-add them as PENDING and run them on.
        self._ended_waiting: set[str] = set()

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if self._metric and metric and self._metric != metric or self._mode and mode and self._mode != mode:
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def _reward(self, value) -> float:
        if value is None or not math.isfinite(value):
            return -math.inf
        return value if self._mode == "max" else -value

    def _promotable(self, milestone: int, also: str | None = None) -> list[str]:
        """Waiting trials (and ``also``) among the rung's top floor(n / rf) not yet
        promoted from it, best first."""
        recorded = dict(self._rungs)[milestone]
        top = sorted(recorded, key=lambda t: recorded[t], reverse=True)[:len(recorded) // self.reduction_factor]
        return [t for t in top if t not in self._promoted[milestone]
                and (t == also or self._waiting.get(t) == milestone and t not in self._resume)]

    def _fill(self, tune_controller, leaving: str | None = None) -> None:
        """Give free trial slots to promotable waiting trials, highest rung first
        (``leaving``: a trial that ends now but may still show as running)."""
        busy = sum(1 for t in tune_controller.get_trials() if t.trial_id != leaving and (
            t.status in (Trial.RUNNING, Trial.PENDING) and t.trial_id not in self._waiting
            or t.status == Trial.PAUSED and t.trial_id in self._resume))
        for milestone, _ in self._rungs:
            for trial_id in self._promotable(milestone) if milestone < self.max_t else []:
                if busy >= self.max_concurrent:
                    return
                self._promote(trial_id, milestone)
                self._resume.add(trial_id)
                busy += 1

    def _promote(self, trial_id: str, milestone: int) -> None:
        self._promoted[milestone].add(trial_id)
        self._waiting.pop(trial_id, None)

    def on_trial_add(self, tune_controller, trial) -> None:
        # A resume re-adds unfinished trials as PENDING, and Tune starts every pending
        # trial: one that was waiting at a rung goes back to waiting.
        if trial.status != Trial.PENDING:
            return
        if trial.trial_id in self._ended_waiting:
            trial.set_status(Trial.TERMINATED)
        elif trial.trial_id in self._waiting and trial.trial_id not in self._resume:
            trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        trial_id, epoch = trial.trial_id, result[self._time_attr]
        self._resume.discard(trial_id)  # it runs
        for milestone, recorded in self._rungs:  # the highest rung reached decides, as in Ray's ASHA
            if epoch < milestone:
                continue
            if trial_id in recorded:  # judged there already (or reported again after a restart)
                break
            recorded[trial_id] = self._reward(result[self._metric])
            if milestone >= self.max_t:
                break
            above = [t for m, _ in self._rungs if milestone < m < self.max_t for t in self._promotable(m)]
            if not above and trial_id in self._promotable(milestone, also=trial_id):
                self._promote(trial_id, milestone)
                break
            self._waiting[trial_id] = milestone
            self._fill(tune_controller)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def _ended(self, tune_controller, trial) -> None:
        self._waiting.pop(trial.trial_id, None)
        self._resume.discard(trial.trial_id)
        self._fill(tune_controller, leaving=trial.trial_id)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._ended(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._ended(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._waiting.pop(trial.trial_id, None)
        self._resume.discard(trial.trial_id)

    def choose_trial_to_run(self, tune_controller):
        self._fill(tune_controller)
        trials = tune_controller.get_trials()
        for t in trials:
            if t.status == Trial.PAUSED and t.trial_id in self._resume:
                return t
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        if (not self._resume and tune_controller.search_alg.is_finished()
                and not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials)):
            for t in trials:  # nothing will come that could promote them
                if t.status == Trial.PAUSED:
                    self._ended_waiting.add(t.trial_id)
                    tune_controller.stop_trial(t)
        return None

    def waiting(self) -> int:
        """Paused trials that wait at a rung (they hold no trial slot)."""
        return len(self._waiting)

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """As ``ResumableASHA.rungs``: one bracket."""
        return [[(m, dict(recorded)) for m, recorded in self._rungs]]

    def state(self) -> dict:
        return {"rungs": self.rungs(), "promoted": {str(m): sorted(t) for m, t in self._promoted.items()},
                "waiting": dict(self._waiting), "resume": sorted(self._resume), "ended": sorted(self._ended_waiting)}

    def load(self, state: dict) -> None:
        (saved,) = state["rungs"]
        if [m for m, _ in saved] != [m for m, _ in self._rungs]:
            raise ValueError(f"saved rungs {saved} do not match this scheduler's milestones")
        self._rungs = [(m, dict(recorded)) for m, recorded in saved]
        self._promoted = {int(m): set(t) for m, t in state["promoted"].items()}
        self._waiting = {t: int(m) for t, m in state["waiting"].items()}
        # Promoted but not resumed when the run stopped: still promoted.
        self._resume = set(state["resume"])
        self._ended_waiting = set(state.get("ended", ()))

    def debug_string(self) -> str:
        return "Using ASHA with promotion: " + ", ".join(
            f"rung {m}: {len(r)} reached, {len(self._promoted[m])} promoted" for m, r in reversed(self._rungs)
            if m < self.max_t) + f"; {len(self._waiting)} waiting"


class ResumableMedian(MedianStoppingRule):
    """The median stopping rule (Golovin et al., KDD 2017: stop a trial whose best so far
    is below the median of the other trials' running means at the same epoch) whose
    records can be saved and loaded as plain data. It never pauses a trial: a pause
    would tear its worker group down."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, hard_stop=True, **kwargs)
        self._saved: dict[str, list] = {}  # loaded records of trials not re-added yet

    def _on_insufficient_samples(self, tune_controller, trial, time) -> str:
        return TrialScheduler.CONTINUE

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        saved = self._saved.pop(trial.trial_id, None)
        if saved:  # a trial re-added by a resume: its results so far
            time_attr, metric = raycompat.median_keys(self)
            raycompat.median_results(self)[trial] = [{time_attr: t, metric: m} for t, m in saved]

    def state(self) -> dict:
        time_attr, metric = raycompat.median_keys(self)
        records = {t.trial_id: [[r[time_attr], r[metric]] for r in results if r and time_attr in r and metric in r]
                   for t, results in raycompat.median_results(self).items()}
        return {"results": {**self._saved, **records}}

    def load(self, state: dict) -> None:
        self._saved = {k: [list(r) for r in v] for k, v in state["results"].items()}


class Plateau(tune.Stopper):
    """Stops a trial whose ``metric`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (as Keras' EarlyStopping; ``mode`` "max" or "min" says which way
    is better). Epochs come from the result's ``time_attr``, so a trial that resumes and
    reports an epoch again is judged by the epochs it trained, not by how many reports
    came in."""

    def __init__(self, metric: str, time_attr: str, patience: int, min_delta: float = 0.0, mode: str = "max"):
        self.metric, self.time_attr, self.patience, self.min_delta = metric, time_attr, patience, min_delta
        self.sign = 1.0 if mode == "max" else -1.0
        self.best: dict[str, list] = {}  # trial id -> [best value, its epoch]

    def __setstate__(self, state: dict) -> None:
        state.setdefault("sign", 1.0)  # pickled before the objective had a mode
        self.__dict__.update(state)

    def __call__(self, trial_id: str, result: dict) -> bool:
        value, epoch = result.get(self.metric), result.get(self.time_attr)
        if value is None or epoch is None or not math.isfinite(value):
            return False
        best = self.best.get(trial_id)
        if best is None or self.sign * (value - best[0]) > self.min_delta:
            self.best[trial_id] = [value, epoch]
            return False
        return epoch - best[1] >= self.patience

    def stop_all(self) -> bool:
        return False

    def state(self) -> dict:
        return {"best": {k: list(v) for k, v in self.best.items()}}

    def load(self, state: dict) -> None:
        self.best.update({k: list(v) for k, v in state["best"].items()})


def stopper_for(spec: Spec, metric: str, mode: str, time_attr: str) -> Plateau | None:
    s = spec.scheduler
    return Plateau(metric, time_attr, s.plateau_patience, s.plateau_min_delta, mode) if s.plateau_patience else None
