"""What ``Tuner.restore`` forgets, kept so an interrupted experiment resumes as if it
had never stopped.

Tune saves its trials and the searcher with the experiment, but not the scheduler:
the restored ASHA starts with empty rungs, and resumed trials would be judged
against nobody (and so promoted). Tune saves the state of *callbacks*, though, and
``tuner.pkl`` pickles the scheduler, the searcher and the callbacks in one go, so a
callback holding the scheduler holds the very object the restored run uses.
``Keeper`` is that callback: it saves ASHA's rungs with every experiment checkpoint
and puts them back before Tune re-adds the trials.

It also carries this run's concurrency. Tune re-adds unfinished and errored trials
as pending without asking the searcher, and the restored searcher keeps the first
run's limit; more trials than fit would start worker groups that wait out Ray
Train's start-up timeout and fail again. ``Slots`` (a named actor) admits at most
``max_concurrent`` trials into ``fit()``; the others wait before asking for workers.

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import asyncio
import logging

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

log = logging.getLogger(__name__)


class ResumableASHA(ASHAScheduler):
    """ASHA (Li et al., MLSys 2020, https://arxiv.org/abs/1810.05934) whose rungs can
    be saved and loaded as plain data."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bracket_of: dict[str, int] = {}  # trial id -> bracket index, kept after a trial ends

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        # A trial that comes back after a restore stays in the bracket it was judged in.
        if trial.trial_id in self._bracket_of:
            self._trial_info[trial.trial_id] = self._brackets[self._bracket_of[trial.trial_id]]
        else:
            self._bracket_of[trial.trial_id] = self._brackets.index(self._trial_info[trial.trial_id])

    def rungs(self) -> list[list[tuple[float, dict[str, float]]]]:
        """Per bracket, its rungs (highest milestone first): (milestone, {trial id: reward})."""
        return [[(m, dict(recorded)) for m, recorded in b._rungs] for b in self._brackets]

    def state(self) -> dict:
        return {"rungs": self.rungs(), "bracket_of": dict(self._bracket_of)}

    def load(self, state: dict) -> None:
        saved = state["rungs"]
        ours = [[m for m, _ in b._rungs] for b in self._brackets]
        if [[m for m, _ in rungs] for rungs in saved] != ours:
            # Cannot happen through the CLI (a changed spec is refused); never judge
            # trials against rungs of another shape.
            raise ValueError(f"saved ASHA rungs {saved} do not match this scheduler's milestones {ours}")
        for bracket, rungs in zip(self._brackets, saved):
            bracket._rungs = [(m, dict(recorded)) for m, recorded in rungs]
        self._bracket_of.update(state["bracket_of"])


@ray.remote(num_cpus=0)
class Slots:
    """A counting semaphore over trial ids; re-acquiring a held slot is a no-op (a
    trial whose function Tune runs again keeps its place)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.holders: set[str] = set()
        self.changed = asyncio.Condition()

    async def acquire(self, trial_id: str) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: trial_id in self.holders or len(self.holders) < self.capacity)
            self.holders.add(trial_id)

    async def release(self, trial_id: str) -> None:
        async with self.changed:
            self.holders.discard(trial_id)
            self.changed.notify_all()

    async def held(self) -> list[str]:
        return sorted(self.holders)


class Keeper(tune.Callback):
    """Saves ASHA's rungs with the experiment; frees a trial's slot when Tune is done
    with it (a trial ASHA stops is killed without running its own ``finally``).

    Args:
        scheduler: the experiment's ASHA, or None (FIFO keeps no state).
        searcher: the experiment's ``BasicVariantGenerator``.
        max_concurrent: trials at once for this run.
        slots_name: the ``Slots`` actor of this run.
    """

    def __init__(self, scheduler: ResumableASHA | None, searcher, max_concurrent: int, slots_name: str,
                 driver_bundle: dict):
        self.scheduler = scheduler
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.slots_name = slots_name
        self.driver_bundle = driver_bundle
        self._slots = None
        self._started = False

    def this_run(self, max_concurrent: int, slots_name: str, driver_bundle: dict) -> None:
        """Point a restored keeper at this run's concurrency, slots and driver bundle."""
        self.max_concurrent, self.slots_name, self.driver_bundle = max_concurrent, slots_name, driver_bundle
        self._started = False

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_slots"] = None  # an actor handle of a cluster that will be gone
        return state

    def get_state(self) -> dict | None:
        return {"asha": self.scheduler.state()} if self.scheduler is not None else None

    def set_state(self, state: dict) -> None:
        if self.scheduler is not None and state.get("asha"):
            self.scheduler.load(state["asha"])
            log.info("Restored ASHA's rungs: %s", [[(m, len(r)) for m, r in b] for b in self.scheduler.rungs()])
        # Tune restored the searcher, with the first run's limit, just before this.
        if self.searcher is not None:
            self.searcher.max_concurrent = self.max_concurrent

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._started:
            return
        self._started = True
        # Restored trials ask for the driver bundle of the run that created them (say,
        # a local Ray's driver slots), which this cluster may not have: ask for today's.
        for trial in trials:
            if trial.status in ("PENDING", "PAUSED") and trial.placement_group_factory.required_resources != \
                    {k: float(v) for k, v in self.driver_bundle.items()}:
                trial.update_resources(self.driver_bundle)

    def _release(self, trial) -> None:
        try:
            if self._slots is None:
                self._slots = ray.get_actor(self.slots_name)
            self._slots.release.remote(trial.trial_id)
        except ValueError:  # no such actor: nothing to free
            log.warning("No trial slots %r to free %s's in", self.slots_name, trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial)


def start_slots(name: str, capacity: int):
    """The ``Slots`` actor for this run. It lives while the returned handle does: keep it."""
    return Slots.options(name=name).remote(capacity)


def acquire_slot(name: str, trial_id: str) -> None:
    """Wait until ``trial_id`` may start its worker group."""
    ray.get(ray.get_actor(name).acquire.remote(trial_id))


def release_slot(name: str, trial_id: str) -> None:
    try:
        ray.get_actor(name).release.remote(trial_id)
    except ValueError:  # the driver, and with it the actor, is gone
        pass


def restored_keeper(tuner, max_concurrent: int, slots_name: str, driver_bundle: dict) -> Keeper:
    """The ``Keeper`` unpickled with a restored ``Tuner``, pointed at this run (Tune offers
    no public way to reach a restored run's callbacks; a test pins this to Ray 2.60).
    An experiment stored without one gets one that keeps no rungs."""
    run_config = tuner._local_tuner.get_run_config()
    keepers = [c for c in run_config.callbacks or [] if isinstance(c, Keeper)]
    if keepers:
        keepers[0].this_run(max_concurrent, slots_name, driver_bundle)
        return keepers[0]
    keeper = Keeper(None, None, max_concurrent, slots_name, driver_bundle)
    run_config.callbacks = [*(run_config.callbacks or []), keeper]
    return keeper
