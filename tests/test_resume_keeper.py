"""ASHA's rungs and this run's concurrency survive a restore (pure parts: no cluster)."""

import pytest
import ray.cloudpickle as pickle
from ray.tune.callback import CallbackList
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from tuner.resume import Keeper
from tuner.schedulers import ResumableASHA

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


class FakeTrial:
    """What ASHA and the keeper read of a trial."""

    def __init__(self, trial_id, status="PENDING", last_result=None):
        self.trial_id, self.status, self.last_result = trial_id, status, last_result or {}


def asha():
    return ResumableASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=9, grace_period=1,
                         reduction_factor=3)


def report(scheduler, trial, epoch, acc):
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_accuracy": acc})


def started_experiment():
    """What Tune pickles into tuner.pkl when an experiment starts: scheduler, searcher
    and callbacks in one pickle."""
    scheduler, searcher = asha(), BasicVariantGenerator(max_concurrent=2)
    keeper = Keeper(scheduler, searcher, 2, "slots-1")
    return scheduler, keeper, pickle.dumps({"scheduler": scheduler, "searcher": searcher, "callbacks": [keeper]})


def test_rungs_survive_a_restore_and_decide_as_before(tmp_path):
    scheduler, keeper, tuner_pkl = started_experiment()
    trials = {name: FakeTrial(name) for name in "abcd"}
    for t in trials.values():
        scheduler.on_trial_add(None, t)
    for name, acc in zip("abc", (0.9, 0.8, 0.7)):
        report(scheduler, trials[name], 1, acc)
    for name in "ab":
        for epoch in (2, 3):
            report(scheduler, trials[name], epoch, 0.95)
    CallbackList([keeper]).save_to_dir(str(tmp_path), session_str="s")  # Tune's experiment checkpoint

    # A new driver restores: the pickle, then the callback state, then re-adds the trials.
    restored = pickle.loads(tuner_pkl)
    keeper2 = restored["callbacks"][0]
    assert keeper2.scheduler is restored["scheduler"] and keeper2.searcher is restored["searcher"]
    keeper2.this_run(4, "slots-2")
    CallbackList([keeper2]).restore_from_dir(str(tmp_path))
    scheduler2 = restored["scheduler"]
    for t in trials.values():
        scheduler2.on_trial_add(None, t)
    assert scheduler2.rungs() == scheduler.rungs()
    # Before the first step: this run's limit, and the re-added trials count against it.
    keeper2.on_step_begin(iteration=0, trials=list(trials.values()))
    assert restored["searcher"].max_concurrent == 4
    assert set(trials) <= restored["searcher"]._live_trials

    # Trial d reaches rung 1 after the restore with the worst accuracy so far: ASHA
    # stops it, as the uninterrupted run does. A restore without the rungs promotes it.
    assert report(scheduler2, trials["d"], 1, 0.5) == report(scheduler, trials["d"], 1, 0.5) == STOP
    forgetful = pickle.loads(tuner_pkl)["scheduler"]
    forgetful.on_trial_add(None, trials["d"])
    assert report(forgetful, trials["d"], 1, 0.5) == CONTINUE
    # Trial c resumes at epoch 3: judged against a and b's rung-3 records.
    assert report(scheduler2, trials["c"], 3, 0.6) == report(scheduler, trials["c"], 3, 0.6) == STOP


def test_rungs_of_another_shape_are_refused():
    other = ResumableASHA(time_attr="epoch", metric="val_accuracy", mode="max", max_t=27, grace_period=1,
                          reduction_factor=3)
    with pytest.raises(ValueError, match="do not match"):
        other.load(asha().state())


def test_rungs_that_do_not_load_leave_asha_empty_rather_than_fail_the_restore(caplog):
    # An exception out of set_state would make Tune start the experiment over.
    keeper = Keeper(asha(), None, 1, "slots")
    keeper.set_state({"asha": {"rungs": [[(27, {})]], "bracket_of": {}}})
    assert keeper.scheduler.rungs() == asha().rungs()
    assert "Could not restore the ResumableASHA's records" in caplog.text


def test_keeper_pickles_without_its_actor_handle():
    keeper = Keeper(None, None, 1, "slots")
    keeper._slots = object()  # a live handle: must not travel with tuner.pkl
    assert pickle.loads(pickle.dumps(keeper))._slots is None


class FakeSlots:
    """Records the epochs a keeper tells ``resume.Slots`` its driver took in, and the
    trials it added."""

    def __init__(self):
        self.noted, self.new = {}, []
        outer = self

        self.gates = {}

        class Note:
            def remote(self, epochs, gates=None):
                outer.noted.update(epochs)
                outer.gates.update(gates or {})

        class Added:
            def remote(self, trial_ids):
                outer.new.extend(trial_ids)

        self.note, self.added = Note(), Added()


def test_keeper_tells_the_slots_which_epochs_the_driver_took_in():
    """A resumed trial's workers ask ``Slots`` which of their stored epochs to report
    again: the restored trials' last epochs before the first step, then each result."""
    keeper = Keeper(None, None, 1, "slots")
    keeper._slots = FakeSlots()
    restored, fresh = FakeTrial("a", last_result={"epoch": 3}), FakeTrial("b")
    keeper.on_step_begin(iteration=0, trials=[restored, fresh])
    assert keeper._slots.noted == {"a": 3}
    keeper.on_trial_result(iteration=1, trials=[restored, fresh], trial=fresh, result={"epoch": 1})
    keeper.on_trial_result(iteration=1, trials=[restored, fresh], trial=fresh, result={"done": True})
    assert keeper._slots.noted == {"a": 3, "b": 1}
    # Saved with the scheduler's records, which can be newer than Tune's saved trials:
    # the next run's keeper takes the newer of the two.
    again = Keeper(None, None, 1, "slots")
    again._slots = FakeSlots()
    again.set_state({**keeper.get_state(), "epochs": {"a": 3, "b": 2}})
    again.on_step_begin(iteration=0, trials=[restored, FakeTrial("b", last_result={"epoch": 1})])
    assert again._slots.noted == {"a": 3, "b": 2}


def test_only_trials_this_driver_added_start_without_looking_for_checkpoints():
    """In a run that resumed nothing, the trials there at the first step may have stored
    checkpoints; a trial added later has none at its first start, but may at any start after it (a worker
    group restarted, a trial Tune runs again); a mark that comes after the first start is
    ignored."""
    import asyncio

    from tuner.resume import Slots

    keeper = Keeper(None, None, 1, "slots")
    keeper._slots = FakeSlots()
    restored, added = FakeTrial("a", last_result={"epoch": 3}), FakeTrial("b")
    keeper.on_step_begin(iteration=0, trials=[restored])
    keeper.on_step_begin(iteration=1, trials=[restored])
    keeper.on_step_begin(iteration=2, trials=[restored, added])
    keeper.on_step_begin(iteration=3, trials=[added, restored])  # Tune may reorder its list
    assert keeper._slots.new == ["b"]
    restored = pickle.loads(pickle.dumps(keeper))
    assert restored._known == set()
    # A resumed run marks nothing: a restored grid search hands out its trial ids again.
    restored.this_run(1, "slots")
    restored._slots = FakeSlots()
    restored.on_step_begin(iteration=0, trials=[FakeTrial("a")])
    restored.on_step_begin(iteration=1, trials=[FakeTrial("a"), FakeTrial("d")])
    assert restored._slots.new == []

    async def starts():
        slots = Slots.__ray_metadata__.modified_class(capacity=1)
        await slots.note({"a": 3})
        await slots.added(["b"])
        first = [await slots.start(t) for t in ("a", "b", "b")]
        await slots.start("c")
        await slots.added(["c"])  # after its first start
        return first + [await slots.start("c")]

    assert asyncio.run(starts()) == [(3, True), (0, False), (0, True), (0, True)]


def test_a_pbt_members_workers_wait_at_a_perturbation_point_for_the_drivers_decision():
    """Keyed by the member's Train run (a generation after an exploit has its own), the
    driver's epochs and PBT's decisions reach ``Slots``; a worker's ``gate`` returns once
    the driver took its epoch in: go on, or pause."""
    import asyncio

    from tuner.resume import Slots

    class Scheduler:
        def gate(self, trial_id):
            return {"a": (2, False), "b": (2, True)}.get(trial_id)

        def state(self):
            return {}

    keeper = Keeper(Scheduler(), None, 1, "slots")
    keeper._slots = FakeSlots()
    member = FakeTrial("a")
    member.config = {"pbt_generation": 1}
    keeper.on_step_begin(iteration=0, trials=[member])
    keeper.on_trial_result(iteration=1, trials=[member], trial=member, result={"epoch": 2, "generation": 1})
    assert keeper._slots.noted == {"a-g1": 2} and keeper._slots.gates == {"a-g1": (2, False)}

    async def gates():
        slots = Slots.__ray_metadata__.modified_class(capacity=1)
        waiting = asyncio.ensure_future(slots.gate("a-g1", 2, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # the driver has not taken epoch 2 in yet
        await slots.note({"a-g1": 2, "b": 2}, {"a-g1": (2, False), "b": (2, True)})
        return [await waiting, await slots.gate("b", 2, timeout=5), await slots.gate("c", 4, timeout=0.05)]

    assert asyncio.run(gates()) == [False, True, True]  # c: no answer in time, goes on
