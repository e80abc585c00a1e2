"""What ``Tuner.restore`` forgets, kept so an interrupted experiment resumes as if it
had never stopped.

Tune saves its trials and the searcher with the experiment, but not the scheduler:
the restored ASHA starts with empty rungs, and resumed trials would be judged
against nobody (and so promoted). Tune saves the state of *callbacks*, though, and
``tuner.pkl`` pickles the scheduler, the searcher and the callbacks in one go, so a
callback holding the scheduler holds the very object the restored run uses.
``Keeper`` is that callback: it saves ASHA's rungs with every experiment checkpoint
and puts them back before Tune re-adds the trials. It also tells the experiment's
upload when a trial moved on (``raycompat.experiment_changed``): a save in which none
did stays on the driver's disk.

It also carries this run's concurrency. Tune re-adds unfinished and errored trials
as pending without telling the searcher (which counts only trials it created and
that have not ended), and the restored searcher keeps the first run's limit; more
trials than fit would start worker groups that wait out Ray Train's start-up timeout
and fail again. Before the first step the keeper sets the searcher's limit to this
run's and counts the re-added trials as live; ``Slots`` (a named actor) admits at
most ``max_concurrent`` trials into ``fit()``, the others wait before asking for
workers.

``Slots`` also holds, per trial, the newest epoch this run's driver has taken in (from
the restored trials, then from each result). A trial's workers read it when they
start from a checkpoint: epochs stored before the stop whose results never reached
Tune (the driver died in between) are reported again from their checkpoints, so ASHA
records them at their rungs and the results and trackers show them. And in a run that
resumes nothing, it knows the trials the driver added that have not started yet: their
workers have no stored checkpoint to look for (one storage listing less per trial). In a
resumed run every trial looks: a restored grid search hands out its trial ids again,
so a trial added anew may be one whose checkpoints a stopped run stored.

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import cast

import ray
from ray import tune

from tuner import raycompat
from tuner.population import generation_of, run_name

log = logging.getLogger(__name__)
_GONE: set[str] = set()  # `Slots` actors found gone (warned about once)


@ray.remote(num_cpus=0)
class Slots:
    """A counting semaphore over trial ids; re-acquiring a held slot is a no-op (a
    trial whose function Tune runs again keeps its place). A trial released while
    still waiting (its driver died mid-wait) never takes a slot: Ray does not cancel
    the dead caller's pending ``acquire``."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.holders: set[str] = set()
        self.ended: set[str] = set()
        self.paused: set[str] = set()  # freed by `pause`: will acquire again
        self.reported: dict[str, int] = {}  # trial id -> newest epoch the driver took in
        self.new: set[str] = set()  # added by this driver, not started: nothing stored
        self.started: set[str] = set()  # whose workers asked `start`
        self.gates: dict[str, tuple[int, bool]] = {}  # run -> (a perturbation point, whether it goes on)
        self.changed = asyncio.Condition()

    async def acquire(self, trial_id: str) -> bool:
        async with self.changed:
            await self.changed.wait_for(lambda: trial_id in self.holders or trial_id in self.ended
                                        or len(self.holders) < self.capacity)
            if trial_id in self.ended:
                return False
            self.holders.add(trial_id)
            self.paused.discard(trial_id)
            return True

    async def release(self, trial_id: str) -> None:
        """The trial's own release, from its ``finally``: as ``end``, except for a trial
        the scheduler paused, whose slot ``pause`` freed and which may run again."""
        async with self.changed:
            if trial_id not in self.holders and trial_id not in self.paused:
                self.ended.add(trial_id)
            self.holders.discard(trial_id)
            self.changed.notify_all()

    async def end(self, trial_id: str) -> None:
        """Tune is done with the trial: free its slot; if it is still waiting for one
        (its driver died mid-wait, and Ray does not cancel the dead caller's ``acquire``),
        it never takes one."""
        async with self.changed:
            if trial_id not in self.holders:
                self.ended.add(trial_id)
            self.holders.discard(trial_id)
            self.changed.notify_all()

    async def pause(self, trial_id: str) -> None:
        """Free the slot of a trial that will run again (paused by the scheduler)."""
        async with self.changed:
            self.holders.discard(trial_id)
            self.paused.add(trial_id)
            self.changed.notify_all()

    async def held(self) -> list[str]:
        return sorted(self.holders)

    async def note(self, epochs: dict[str, int], gates: dict | None = None) -> None:
        """The driver took in these epochs ({run: epoch}); ``gates``: {run: (epoch, goes
        on)}, PBT's decisions at perturbation points."""
        async with self.changed:
            for run, epoch in epochs.items():
                self.reported[run] = max(epoch, self.reported.get(run, 0))
            self.gates.update({run: (int(epoch), bool(go)) for run, (epoch, go) in (gates or {}).items()})
            self.changed.notify_all()

    async def gate(self, run: str, epoch: int, timeout: float) -> bool:
        """Whether ``run`` goes on past ``epoch``, a perturbation point, once the driver took
        that epoch in (True after ``timeout`` seconds without it)."""
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.reported.get(run, 0) >= epoch), timeout)
            except asyncio.TimeoutError:
                return True
            return self.gates.get(run, (epoch, True)) != (epoch, False)

    async def added(self, trial_ids: list[str]) -> None:
        """The driver added these trials (new ones, not restored ones)."""
        self.new.update(set(trial_ids) - self.started)

    async def start(self, trial_id: str) -> tuple[int, bool]:
        """A worker group of ``trial_id`` starts: (the newest epoch of it the driver took
        in, 0 if none; whether it may have stored checkpoints, False only the first time
        a trial this driver added starts)."""
        stored = trial_id not in self.new
        self.new.discard(trial_id)
        self.started.add(trial_id)
        self.gates.pop(trial_id, None)  # a decision about an earlier start's epochs
        return self.reported.get(trial_id, 0), stored


class Keeper(tune.Callback):
    """Saves the scheduler's records (ASHA's and Hyperband's rungs, the median rule's
    results) and the plateau stopper's with the experiment; frees a trial's slot when
    Tune is done with it (a trial stopped early is killed without running its own
    ``finally``).

    Args:
        scheduler: the experiment's scheduler if it keeps records (has ``state()`` and
            ``load()``), else None.
        searcher: the search algorithm given to Tune (``BasicVariantGenerator`` or a
            ``ConcurrencyLimiter``).
        max_concurrent: trials at once for this run.
        slots_name: the ``Slots`` actor of this run.
        stopper: the experiment's ``search.Plateau`` stopper, or None.
    """

    def __init__(self, scheduler, searcher, max_concurrent: int, slots_name: str, stopper=None):
        self.scheduler = scheduler
        self.searcher = searcher
        self.max_concurrent = max_concurrent
        self.slots_name = slots_name
        self.stopper = stopper
        self._slots = None
        self._started = False
        self._epochs: dict[str, int] = {}  # trial id -> newest epoch the driver took in
        self._known: set[str] = set()  # trial ids seen by this driver
        self._resumed = False
        self._share_slots()

    def this_run(self, max_concurrent: int, slots_name: str) -> None:
        """Point a restored keeper at this run's concurrency and slots."""
        self.max_concurrent, self.slots_name = max_concurrent, slots_name
        self._started = False
        self._resumed = True
        self._share_slots()

    def _share_slots(self) -> None:
        if hasattr(self.scheduler, "max_concurrent"):  # PromotingASHA hands free trial slots out
            self.scheduler.max_concurrent = self.max_concurrent

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_slots"] = None  # an actor handle of a cluster that will be gone
        state["_known"] = set()
        state.pop("_paused", None)
        state.pop("_statuses", None)
        return state

    def get_state(self) -> dict | None:
        state = {}
        if getattr(self, "_epochs", None):
            # Saved beside the scheduler's records, which may be newer than the trials'
            # own saved state (`callback-states-*` goes up first): a resumed trial's
            # workers then report again none of the epochs those records hold.
            state["epochs"] = dict(self._epochs)
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state()
        if getattr(self, "stopper", None) is not None:  # keepers pickled before stoppers have none
            state["stopper"] = self.stopper.state()
        return state or None

    def set_state(self, state: dict) -> None:
        self._epochs = dict(state.get("epochs") or {})
        # "asha": what keepers saved before the scheduler became a choice.
        for key, target in (("scheduler", self.scheduler), ("asha", self.scheduler),
                            ("stopper", getattr(self, "stopper", None))):
            if target is None or not state.get(key):
                continue
            try:
                target.load(state[key])
            except (ValueError, KeyError, TypeError) as e:
                # Raising here would make Tune start the whole experiment over beside the
                # old trials; judging with empty records is the lesser harm.
                log.error("Could not restore the %s's records (%s); resumed trials are judged without them.",
                          type(target).__name__, e)
                continue
            log.info("Restored the %s's records.", type(target).__name__)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if not self._started:
            # Before any trial starts: what the restored trials had reported, as Tune's
            # saved state and this keeper's own (which may be newer) have it.
            saved = getattr(self, "_epochs", {})
            self._note({run_of(t): max(_epoch_of(t), saved.get(run_of(t), 0)) for t in trials})
            if self.searcher is not None:
                self._first_step(trials)
            self._started = True
            self._known = {t.trial_id for t in trials}  # restored: their workers look for checkpoints
        elif len(trials) > len(self._known) and not self._resumed:  # trials are only ever added
            self._added([t.trial_id for t in trials if t.trial_id not in self._known])
        # A status Tune changed without a callback (a trial added, or paused at a rung).
        # A trial's start is not a change worth a save: a resume runs a stored RUNNING
        # trial as a PENDING one, and its files change with its first result.
        statuses = ["PENDING" if t.status == "RUNNING" else t.status for t in trials]
        if statuses != getattr(self, "_statuses", None):
            self._statuses = statuses
            raycompat.experiment_changed()
        if hasattr(self.scheduler, "waiting"):
            self._follow_pauses(trials)

    def _first_step(self, trials) -> None:
        # The searcher was restored with the first run's limit and without the trials
        # Tune re-added (errored ones had left its count): this run's limit, and they
        # count against it. (Re-added trials ask for this run's driver bundle: Tune
        # derives it again from the trainable passed to `Tuner.restore`.)
        self.searcher.max_concurrent = self.max_concurrent
        raycompat.count_as_live(self.searcher, {t.trial_id for t in trials if t.status in ("PENDING", "PAUSED")})

    def _follow_pauses(self, trials) -> None:
        """With ``PromotingASHA``: free the slots of trials paused at a rung (Tune stops
        their actors without running the trial's own ``finally``), and let the searcher
        suggest new trials only for slots that promotions leave free (paused trials still
        count as live for it)."""
        paused = {t.trial_id for t in trials if t.status == "PAUSED"}
        for trial_id in paused - getattr(self, "_paused", set()):
            self._release(trial_id, paused=True)
        self._paused = paused
        if self.searcher is not None:
            self.searcher.max_concurrent = self.max_concurrent + self.scheduler.waiting()

    def _slots_actor(self):
        """This run's ``Slots``, or None (logged) when it is gone."""
        if self._slots is None:
            try:
                self._slots = ray.get_actor(self.slots_name)
            except ValueError:  # no such actor
                if self.slots_name not in _GONE:
                    _GONE.add(self.slots_name)
                    log.warning("Trial slots actor %r is gone", self.slots_name)
        return self._slots

    def _release(self, trial_id: str, paused: bool = False) -> None:
        slots = self._slots_actor()
        if slots is not None:
            (slots.pause if paused else slots.end).remote(trial_id)

    def _added(self, trial_ids: list[str]) -> None:
        """Tell ``Slots`` of trials this driver added in a run that resumed nothing:
        nothing of theirs is stored yet."""
        self._known.update(trial_ids)
        slots = self._slots_actor()
        if slots is not None:
            slots.added.remote(trial_ids)

    def _note(self, epochs: dict, gates: dict | None = None) -> None:
        """Tell ``Slots`` (and this keeper's saved state) the epochs the driver took in,
        and PBT's decisions at perturbation points (``gates``)."""
        epochs = {t: int(e) for t, e in epochs.items() if isinstance(e, (int, float)) and 0 < e < math.inf}
        if not hasattr(self, "_epochs"):  # a keeper pickled by an older tuner
            self._epochs = {}
        for t, e in epochs.items():
            self._epochs[t] = max(e, self._epochs.get(t, 0))
        slots = self._slots_actor() if epochs else None
        if slots is not None:
            slots.note.remote(epochs, gates) if gates else slots.note.remote(epochs)

    # Each tells the next save of the experiment state to go to storage.
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        raycompat.experiment_changed()
        run = run_name(trial.trial_id, result.get("generation") or 0)
        # PBT: the scheduler has decided on this result (Tune calls it before callbacks);
        # a member's workers wait at a perturbation point for that decision.
        gate = self.scheduler.gate(trial.trial_id) if hasattr(self.scheduler, "gate") else None
        self._note({run: result.get("epoch")}, {run: gate} if gate else None)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        raycompat.experiment_changed()
        self._release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        raycompat.experiment_changed()
        self._release(trial.trial_id)


def run_of(trial) -> str:
    """The Train run a trial's workers use now (a PBT member's current generation's)."""
    return run_name(trial.trial_id, generation_of(getattr(trial, "config", None)))


def _epoch_of(trial) -> int:
    """The newest epoch Tune took in of the trial's current run (0 for a PBT member whose
    new generation has not reported yet)."""
    last = trial.last_result or {}
    if (last.get("generation") or 0) != generation_of(getattr(trial, "config", None)):
        return 0
    return last.get("epoch") or 0


def start_slots(name: str, capacity: int):
    """The ``Slots`` actor for this run, on the calling driver's node (not a preemptible
    worker node). It lives while the returned handle does: keep it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Slots.options(name=name, scheduling_strategy=here).remote(capacity)  # type: ignore[attr-defined]  # an actor class


def gate(name: str, run: str, epoch: int, timeout: float = 120) -> bool:
    """For a PBT member's worker at a perturbation point: whether it goes on past
    ``epoch`` (the driver's decision, once it took the epoch in). True when the run's
    ``Slots`` actor does not answer within ``timeout`` seconds (gone with its driver)."""
    try:
        return bool(ray.get(ray.get_actor(name).gate.remote(run, epoch, timeout), timeout=timeout + 30))
    except (ValueError, ray.exceptions.RayError):
        return True


def acquire_slot(name: str, trial_id: str) -> None:
    """Wait until ``trial_id`` may start its worker group."""
    if not ray.get(ray.get_actor(name).acquire.remote(trial_id)):
        raise RuntimeError(f"trial {trial_id} ended while it waited for a slot; run the same command again to retry it")


def start(name: str, trial_id: str) -> tuple[int, bool]:
    """For a worker group of ``trial_id`` that starts: (the newest epoch of it that the
    run's driver has taken in, whether it may have stored checkpoints), as ``Slots.start``.
    (0, True) when the run's ``Slots`` actor ``name`` does not answer (gone with its
    driver, or not within 60 s): then the run's checkpoints are looked for, every stored
    epoch is reported again, and the driver's results, MLflow and schedulers take each
    epoch once."""
    try:
        reported, stored = cast("tuple[int, bool]", ray.get(ray.get_actor(name).start.remote(trial_id), timeout=60))
        return reported, stored
    except (ValueError, ray.exceptions.RayError):
        return 0, True


def release_slot(name: str, trial_id: str) -> None:
    try:
        ray.get_actor(name).release.remote(trial_id)
    except ValueError:  # the driver, and with it the actor, is gone
        pass


def restored_keeper(tuner, max_concurrent: int, slots_name: str) -> Keeper:
    """The ``Keeper`` unpickled with a restored ``Tuner``, pointed at this run (Tune offers
    no public way to reach a restored run's callbacks).
    An experiment stored without one gets one that keeps no rungs."""
    run_config = raycompat.restored_run_config(tuner)
    keepers = [c for c in run_config.callbacks or [] if isinstance(c, Keeper)]
    if keepers:
        keepers[0].this_run(max_concurrent, slots_name)
        return keepers[0]
    keeper = Keeper(None, raycompat.restored_search_alg(tuner), max_concurrent, slots_name)
    keeper.this_run(max_concurrent, slots_name)
    run_config.callbacks = [*(run_config.callbacks or []), keeper]
    return keeper


def __getattr__(name: str):
    # Experiments interrupted under an older tuner pickled their scheduler as
    # tuner.resume.ResumableASHA; it lives in tuner.schedulers now.
    if name == "ResumableASHA":
        from tuner.schedulers import ResumableASHA

        return ResumableASHA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
