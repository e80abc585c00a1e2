"""The spec's ``scheduler`` as Ray Tune schedulers, and the plateau stopper.

``asha`` (``ResumableASHA``: Ray's ASHA whose rungs are saved and loaded as plain data),
``asha_promote`` (``PromotingASHA``: the paper's promotion rule, trials wait paused at a
rung until promoted), ``hyperband`` (asynchronous, one bracket per halving rate),
``median_stopping``, ``fifo``, and ``pbt`` / ``pb2`` (``PopulationScheduler`` over
``tuner.population``'s rules); the ``Plateau`` stopper combines with any of them but PBT.
All but FIFO, and the stopper, keep their state across a resume through ``resume.Keeper``.
ASHA is asynchronous successive halving (Li et al., MLSys 2020, https://arxiv.org/abs/1810.05934).

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from tuner import pareto, raycompat, storage
from tuner.spec import Spec

log = logging.getLogger(__name__)


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


def scheduler_for(spec: Spec, search: bool, time_attr: str, runs: storage.Location | None = None):
    """The spec's scheduler (ASHA, Hyperband, median stopping and PBT resumable), FIFO for
    a single training run. ``runs``: ``<storage>/<name>/runs`` (PBT copies checkpoints
    there)."""
    a, kind = spec.asha, spec.scheduler.kind if search else "fifo"
    if kind in ("pbt", "pb2"):
        if runs is None:
            raise ValueError("a population needs the experiment's runs folder: its members copy checkpoints there")
        return population_for(spec, time_attr, runs)
    if kind == "asha" and spec.objective.more:
        return MultiObjectiveASHA(time_attr=time_attr, max_t=a.max_t, grace_period=a.grace_period,
                                  reduction_factor=a.reduction_factor, objectives=spec.objective.all)
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


class _Objective:
    """The objective of a scheduler that Tune tells its metric and mode (``_metric``,
    ``_mode``), and a result's reward: higher is better, NaN or missing the worst."""

    _metric: str | None
    _mode: str | None

    def set_search_properties(self, metric, mode, **spec) -> bool:
        if self._metric and metric and self._metric != metric or self._mode and mode and self._mode != mode:
            return False
        self._metric, self._mode = self._metric or metric, self._mode or mode
        return True

    def _reward(self, value) -> float:
        if value is None or not math.isfinite(value):
            return -math.inf
        return value if self._mode == "max" else -value


class PromotingASHA(_Objective, FIFOScheduler):
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
        self._rungs: list[tuple[int, dict[str, float]]] = [(grace_period * reduction_factor ** k, {})
                                                            for k in reversed(range(count))]
        self._promoted: dict[int, set[str]] = {m: set() for m, _ in self._rungs}
        self._waiting: dict[str, int] = {}  # paused at a rung: trial id -> milestone
        self._resume: set[str] = set()  # promoted from waiting, not yet running again
        # Ended while waiting. Tune saves their state as it was (PAUSED), and a later
        # restore would re-add them as PENDING and run them on.
        self._ended_waiting: set[str] = set()

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


class MultiObjectiveASHA(FIFOScheduler):
    """ASHA over several objectives (MO-ASHA: Schmucker et al., 2021, Syne Tune's
    ``MOASHA``): at each milestone a trial's objective values are recorded, and it goes on
    when ``tuner.pareto.goes_on`` ranks it among the top 1/reduction_factor of the trials
    recorded there (non-dominated sorting, then crowding distance), else it stops. Like
    Ray's ASHA it never pauses a trial, and its rungs are saved and loaded as plain data.
    A missing or NaN value ranks last."""

    def __init__(self, time_attr: str, max_t: int, grace_period: int, reduction_factor: float,
                 objectives: list[tuple[str, str]]):
        from tuner.rungs import milestones

        super().__init__()
        self._time_attr, self.max_t, self.reduction_factor = time_attr, max_t, reduction_factor
        self.metrics, self.modes = [m for m, _ in objectives], [mode for _, mode in objectives]
        ladder = milestones({"grace_period": grace_period, "max_t": max_t, "reduction_factor": reduction_factor})
        # Highest milestone first, as Ray's ASHA keeps them: (milestone, {trial id: values}).
        self._rungs: list[tuple[int, dict[str, list[float]]]] = [(m, {}) for m in reversed(ladder[:-1])]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # Tune names the first objective; this scheduler follows every one

    def _point(self, result: dict) -> list[float]:
        values = [result.get(m) for m in self.metrics]
        return [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values]

    def _judge(self, trial_id: str, result: dict) -> str:
        epoch = result.get(self._time_attr)
        if epoch is None:
            return TrialScheduler.CONTINUE
        if epoch >= self.max_t:
            return TrialScheduler.STOP
        for milestone, recorded in self._rungs:
            if epoch < milestone or trial_id in recorded:
                continue
            recorded[trial_id] = self._point(result)
            ids = list(recorded)
            keep = pareto.goes_on([recorded[i] for i in ids], ids.index(trial_id), self.modes, self.reduction_factor)
            return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._judge(trial.trial_id, result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        if result:
            self._judge(trial.trial_id, result)

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """As ``ResumableASHA.rungs``, with each trial's first objective (the summary's
        ``asha_rungs``); ``state`` keeps every objective."""
        return [[(m, {t: v[0] for t, v in recorded.items()}) for m, recorded in self._rungs]]

    def state(self) -> dict:
        return {"rungs": [[m, dict(recorded)] for m, recorded in self._rungs], "metrics": self.metrics}

    def load(self, state: dict) -> None:
        saved = [(int(m), {t: list(v) for t, v in recorded.items()}) for m, recorded in state["rungs"]]
        if [m for m, _ in saved] != [m for m, _ in self._rungs] or state.get("metrics") != self.metrics:
            raise ValueError(f"saved MO-ASHA rungs {state} do not match this scheduler's milestones and objectives")
        self._rungs = saved

    def debug_string(self) -> str:
        return "Using MO-ASHA: " + ", ".join(f"rung {m}: {len(r)} reached" for m, r in reversed(self._rungs))


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


class PopulationScheduler(_Objective, FIFOScheduler):
    """Population-based training over multi-worker trials (``scheduler.kind`` pbt / pb2):
    Tune's side of ``tuner.population.Population``, which decides.

    At a member's perturbation point (every ``pbt.interval`` epochs) it either exploits:
    the donor's newest checkpoint is copied in storage (``checkpoints.copy_checkpoint``: the
    model by a server-side copy, never through this process) into the member's next
    generation's Train run, the member's config becomes the explored one and it pauses;
    when it runs again, its workers restore that checkpoint and retune the optimizer to
    the new hyperparameters. Or it goes on, unless the trial slots are all busy while a
    member with less progress waits, or the population is not all added yet: then it
    pauses so that one can run (Ray's PBT time-multiplexes the population the same way).
    Waiting members run least progress first.

    Args:
        population: the rules and the members' state (saved by ``resume.Keeper``).
        time_attr: the reported epoch.
        runs: ``<storage>/<name>/runs``: where each trial's Train runs are.
        max_concurrent: trial slots (set by ``resume.Keeper`` for this run).
    """

    def __init__(self, population, time_attr: str, runs: storage.Location, metric: str | None = None,
                 mode: str | None = None, max_concurrent: int = 1):
        super().__init__()
        self.population = population
        self._time_attr, self._metric, self._mode = time_attr, metric, mode
        self.runs = runs
        self.max_concurrent = max_concurrent
        self._paused: set[str] = set()  # paused by this scheduler, not started again yet
        self._staged: set[str] = set()  # chosen to run, not running yet (Tune marks them PENDING)
        self.exploits: dict[str, object] = {}  # trial id -> its newest Exploit (for the console; not saved)
        self._gates: dict[str, tuple[int, bool]] = {}  # trial id -> (its newest perturbation point, goes on)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["exploits"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        if "runs" not in state:  # pickled before storage.Location: the URI and the endpoint
            state["runs"] = storage.Location(state.pop("runs_uri"), state.pop("endpoint", None))
        self.__dict__.update(state)

    def on_trial_add(self, tune_controller, trial) -> None:
        from tuner import population as pop

        member = self.population.members.get(trial.trial_id)
        if member is not None and trial.status == Trial.PENDING:
            # Re-added by a resumed run: it is a member waiting to run (a failed one is
            # retried), and its configuration, saved with the trial, is the truth: a
            # population saved after an exploit whose trial was not (a driver killed
            # between the two uploads) goes back to the trial's generation.
            member.done = False
            self._paused.discard(trial.trial_id)
            self.population.reconcile(trial.trial_id, pop.generation_of(trial.config), trial.config or {},
                                      (trial.last_result or {}).get(self._time_attr) or 0)
        self.population.add(trial.trial_id, trial.config or {})

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._time_attr not in result or self._metric not in result:
            return TrialScheduler.CONTINUE
        from tuner import population as pop

        epoch = int(result[self._time_attr])
        if result.get("generation", 0) != pop.generation_of(trial.config):
            return TrialScheduler.CONTINUE  # a late report of the generation before an exploit
        due = self.population.report(trial.trial_id, epoch, self._reward(result[self._metric]),
                                     result.get("checkpoint_path"))
        if not due:  # a perturbation point replayed from its checkpoint is one too (its decision was lost)
            return TrialScheduler.CONTINUE
        exploit = self.population.decide(trial.trial_id)
        if exploit is not None and self._copy(exploit):
            self.population.apply(exploit)
            trial.set_config({**exploit.config, pop.GENERATION_KEY: exploit.generation})
            self.exploits[trial.trial_id] = exploit
            return self._pause(trial, epoch)
        if self._others_wait(tune_controller, trial, epoch):
            return self._pause(trial, epoch)
        self._gates[trial.trial_id] = (epoch, True)
        return TrialScheduler.CONTINUE

    def _pause(self, trial, epoch: int) -> str:
        self._paused.add(trial.trial_id)
        self._gates[trial.trial_id] = (epoch, False)
        return TrialScheduler.PAUSE

    def gate(self, trial_id: str) -> tuple[int, bool] | None:
        """(The member's newest perturbation point, whether it goes on past it), for its
        workers, which wait there for it (``resume.gate``): a member that pauses trains
        no further while Tune stops it."""
        return self._gates.get(trial_id)

    def _copy(self, exploit) -> bool:
        """The donor's checkpoint into the member's next generation's run; False (and
        no exploit) when it cannot be read or written."""
        from tuner import checkpoints
        from tuner import population as pop

        target = self.runs.join(pop.run_name(exploit.trial, exploit.generation))
        try:
            checkpoints.copy_checkpoint(exploit.checkpoint, target, exploit.epoch,
                                        {"trial": exploit.donor, "epoch": exploit.epoch})
        except Exception as e:  # noqa: BLE001 - the donor's checkpoint may be gone (retention); the member goes on
            log.warning("trial %s could not copy trial %s's checkpoint of epoch %s (%s: %s); it goes on as it is",
                        exploit.trial, exploit.donor, exploit.epoch, type(e).__name__, e)
            return False
        return True

    def _others_wait(self, tune_controller, trial, epoch: int) -> bool:
        """Every trial slot is busy, and a member with less progress waits for one (or
        the searcher has members still to add)."""
        trials = tune_controller.get_trials()
        if sum(1 for t in trials if t.status == Trial.RUNNING) < self.max_concurrent:
            return False
        if not self.population.complete:
            return True
        return any(t is not trial and t.status in (Trial.PENDING, Trial.PAUSED)
                   and self.population.progress(t.trial_id) < epoch for t in trials)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self.population.end(trial.trial_id)
        self._paused.discard(trial.trial_id)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.population.end(trial.trial_id)
        self._paused.discard(trial.trial_id)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._paused.discard(trial.trial_id)

    def choose_trial_to_run(self, tune_controller):
        """The waiting member with the least progress (a new one first), once a trial slot
        is free. Tune asks at every step and starts the trial's driver at once where the
        cluster has room for it (on a cluster more than the slots), so a paused member is
        chosen only while fewer than the slots run or are starting; and while members are
        still to be added, only new ones: a paused member chosen then would take the next
        free slot before the searcher adds one."""
        trials = tune_controller.get_trials()
        self._staged &= {t.trial_id for t in trials if t.status == Trial.PENDING}
        busy = sum(1 for t in trials if t.status == Trial.RUNNING) + len(self._staged)
        adding = not self.population.complete and not tune_controller.search_alg.is_finished()
        waiting = [t for t in trials if t.status == Trial.PENDING and t.trial_id not in self._staged
                   and (not adding or t.trial_id not in self._paused)
                   or t.status == Trial.PAUSED and not adding and busy < self.max_concurrent]
        if not waiting:
            return None
        chosen = min(waiting, key=lambda t: self.population.progress(t.trial_id))  # ties: the earliest added
        self._paused.discard(chosen.trial_id)
        self._staged.add(chosen.trial_id)
        return chosen

    def waiting(self) -> int:
        """Members paused at a perturbation point (they hold no trial slot)."""
        return len(self._paused)

    def state(self) -> dict:
        return {"population": self.population.state(), "paused": sorted(self._paused)}

    def load(self, state: dict) -> None:
        self.population.load(state["population"])
        self._paused = set(state.get("paused", ()))
        self._staged = set()

    def debug_string(self) -> str:
        return f"Using population-based training: {len(self.population.members)} members"


class PB2Explorer:
    """PB2's explore (Parker-Holder et al., NeurIPS 2020, https://arxiv.org/abs/2002.02518;
    Ray's ``PB2``): the mutated numeric ranges of the donor's configuration are chosen by
    a GP bandit (Ray's time-varying GP-UCB on the members' improvement per epoch at their
    perturbation points; log ranges on a log scale), the mutated choices as PBT does. Until
    the donor's configuration has two perturbation points to learn from, it explores as PBT.

    Needs scikit-learn (``pip install 'tuner[pb2]'``).
    """

    def __init__(self, space, names: list[str], resample_probability: float):
        self.names = list(names)
        self.numeric = [n for n in names if space[n].is_range]
        self.resample_probability = resample_probability
        self.rows: list[dict] = []  # PB2's data: Trial, Time, the numeric values (PB2's scale), Reward
        self.current: Any = None  # PB2's current configurations (a NumPy array)
        self.last_time = 0

    @staticmethod
    def _scaled(dim, value: float) -> float:
        return math.log10(value) if dim.is_log else float(value)

    @staticmethod
    def _unscaled(dim, value: float):
        low, high = dim.values
        value = 10 ** float(value) if dim.is_log else float(value)
        value = min(max(value, low), high)
        return int(round(value)) if dim.is_int else value

    def observe(self, trial_id: str, epoch: int, config: dict, reward: float) -> None:
        if math.isfinite(reward):
            self.rows.append({"Trial": trial_id, "Time": epoch, "Reward": reward,
                              **{n: None if config.get(n) is None else config[n] for n in self.numeric}})

    def __call__(self, population, trial_id: str, donor_id: str) -> dict:
        from tuner.population import perturb

        space = population.space
        config = dict(population.members[donor_id].config)
        for name in self.names:
            if name not in self.numeric:
                config[name] = perturb(space[name], config.get(name), population.rng, self.resample_probability)
        names = [n for n in self.numeric if config.get(n) is not None]
        chosen = None
        if names:
            try:
                chosen = self._gp_bandit(population, trial_id, donor_id, config, names)
            except Exception as e:  # noqa: BLE001 - the GP's fit can fail on degenerate data: explore as PBT
                log.warning("PB2 could not choose for trial %s (%s: %s); it explores as PBT does", trial_id,
                            type(e).__name__, e)
        if chosen is None:  # nothing to learn from yet (or no numeric range counts): PBT's explore
            for name in names:
                config[name] = perturb(space[name], config[name], population.rng, self.resample_probability)
            return config
        config.update(chosen)
        return config

    def _gp_bandit(self, population, trial_id: str, donor_id: str, config: dict, names: list[str]) -> dict | None:
        """Ray's PB2 choice of ``names`` for ``trial_id`` continuing ``donor_id``, or None
        when the donor's configuration has no improvement to learn from yet."""
        import numpy as np
        import pandas as pd

        space = population.space
        rows = [r for r in self.rows if all(r.get(n) is not None for n in names)]
        data = pd.DataFrame([{"Trial": r["Trial"], "Time": r["Time"],
                              **{n: self._scaled(space[n], r[n]) for n in names}, "Reward": r["Reward"]}
                             for r in rows], columns=["Trial", "Time", *names, "Reward"])
        bounds = {n: tuple(self._scaled(space[n], v) for v in space[n].values) for n in names}
        current = {n: self._scaled(space[n], config[n]) for n in names}
        if self.current is not None and (self.current.shape[1] != len(names) or data["Time"].max() > self.last_time):
            self.current = None
        np.random.seed(population.rng.randrange(2**32))  # Ray's acquisition optimiser draws from NumPy's
        chosen, data = raycompat.pb2_explore(data, bounds, self.current, donor_id, trial_id, current)
        if chosen == current:
            return None
        # PB2 records the member's new configuration with the donor's time and reward; the
        # rows keep every numeric hyperparameter (others than these stay as they were).
        added = data.iloc[-1].to_dict()
        self.rows.append({"Trial": str(added["Trial"]), "Time": int(added["Time"]), "Reward": float(added["Reward"]),
                          **{n: config.get(n) for n in self.numeric},
                          **{n: self._unscaled(space[n], added[n]) for n in names}})
        new = np.array([[chosen[n] for n in names]])
        if data["Time"].max() > self.last_time or self.current is None:
            self.last_time, self.current = int(data["Time"].max()), new
        else:
            self.current = np.concatenate((self.current, new), axis=0)
        return {n: self._unscaled(space[n], float(chosen[n])) for n in names}

    def state(self) -> dict:
        return {"rows": list(self.rows), "last_time": self.last_time,
                "current": None if self.current is None else self.current.tolist()}

    def load(self, state: dict) -> None:
        import numpy as np

        self.rows, self.last_time = list(state["rows"]), state["last_time"]
        self.current = None if state.get("current") is None else np.array(state["current"])


def population_for(spec: Spec, time_attr: str, runs: storage.Location):
    """The ``PopulationScheduler`` of a pbt / pb2 spec."""
    from tuner.population import Population, mutated

    p = spec.pbt
    names = mutated(spec.search.space, p.mutate)
    explorer = PB2Explorer(spec.search.space, names, p.resample_probability) if spec.scheduler.kind == "pb2" else None
    population = Population(spec.search.space, spec.search.num_samples, p.interval, p.quantile,
                            p.resample_probability, p.mutate, spec.asha.max_t, seed=spec.search.seed, explorer=explorer)
    return PopulationScheduler(population, time_attr, runs)
