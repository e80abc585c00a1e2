"""Through Tune's own save and restore: ASHA's rungs survive, and the slots hold back
trials beyond this run's concurrency. A tiny function trainable stands in for the
TensorFlow trials (their resume is test_driver_restart's)."""

import os
import sys
import time

import pytest
import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from tuner import resume

pytestmark = pytest.mark.slow
# Ray's workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MAX_T = 9


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def trainable(config):
    # The weak trial fails before its first report while the flag file exists.
    if config["score"] < 0.5 and os.path.exists(config["flag"]):
        raise RuntimeError("injected failure")
    for epoch in range(1, MAX_T + 1):
        tune.report({"epoch": epoch, "val_accuracy": config["score"] * (1 - 0.5 / epoch)})


def test_restored_asha_judges_a_retried_trial_against_the_rungs_of_the_first_run(local_ray, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    scheduler = resume.ResumableASHA(time_attr="epoch", max_t=MAX_T, grace_period=1, reduction_factor=3)
    searcher = BasicVariantGenerator(max_concurrent=1)  # the strong trial first, then the weak one
    slots = resume.start_slots("slots-first", 1)  # noqa: F841 (alive while the run needs it)
    keeper = resume.Keeper(scheduler, searcher, 1, "slots-first", {"CPU": 1})
    first = tune.Tuner(
        trainable,
        param_space={"score": tune.grid_search([0.9, 0.1]), "flag": str(flag)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", scheduler=scheduler, search_alg=searcher),
        run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), callbacks=[keeper]),
    ).fit()
    assert sorted(r.error is not None for r in first) == [False, True]
    recorded = {m: set(r) for m, r in scheduler.rungs()[0]}
    assert len(recorded[1]) == len(recorded[3]) == 1  # the strong trial's

    flag.unlink()
    slots = resume.start_slots("slots-second", 1)  # noqa: F841
    restored = tune.Tuner.restore(str(tmp_path / "exp"), trainable, resume_errored=True)
    keeper2 = resume.restored_keeper(restored, 1, "slots-second", {"CPU": 1})
    # The callback unpickled with the restored run holds the scheduler that run uses.
    assert keeper2.scheduler is restored._local_tuner._tune_config.scheduler
    grid = restored.fit()
    epochs = {r.config["score"]: r.metrics["epoch"] for r in grid}
    # The weak trial, run again, meets the strong one's rung-1 record and stops there.
    # With the rungs forgotten it would have been promoted to the full budget.
    assert epochs == {0.9: MAX_T, 0.1: 1}, epochs
    assert recorded[1] < set(keeper2.scheduler.rungs()[0][-1][1])


def test_slots_admit_at_most_capacity_and_let_a_holder_back_in(local_ray):
    slots = resume.start_slots("slots-capacity", 1)
    ray.get(slots.acquire.remote("a"))
    waiting = slots.acquire.remote("b")
    ready, _ = ray.wait([waiting], timeout=1.0)
    assert not ready
    ray.get(slots.acquire.remote("a"), timeout=5)  # a trial run again keeps its slot
    resume.release_slot("slots-capacity", "a")
    ray.get(waiting, timeout=5)
    assert ray.get(slots.held.remote()) == ["b"]
    # Tune is done with b (ASHA stopped it, say): the keeper frees the slot.
    keeper = resume.Keeper(None, None, 1, "slots-capacity", {"CPU": 1})
    keeper.on_trial_complete(iteration=0, trials=[], trial=type("T", (), {"trial_id": "b"})())
    deadline = time.time() + 5
    while ray.get(slots.held.remote()) and time.time() < deadline:
        time.sleep(0.05)
    assert ray.get(slots.held.remote()) == []
