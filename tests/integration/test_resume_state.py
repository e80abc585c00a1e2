"""Through Tune's own save and restore: ASHA's rungs survive, and the slots hold back
trials beyond this run's concurrency. A tiny function trainable stands in for the
TensorFlow trials (their resume is test_driver_restart's)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.tune.search.basic_variant import BasicVariantGenerator

from tuner import resume, schedulers

pytestmark = pytest.mark.slow
# Ray's workers cannot import this test module: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

MAX_T = 9


@pytest.fixture(scope="module")
def local_ray():
    # Two driver resources: the first run's trials ask for one, the re-run's for the other.
    ray.init(address="local", num_cpus=2, resources={"first": 3, "second": 3}, include_dashboard=False,
             log_to_driver=False)
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
    scheduler = schedulers.ResumableASHA(time_attr="epoch", max_t=MAX_T, grace_period=1, reduction_factor=3)
    searcher = BasicVariantGenerator(max_concurrent=1)  # the strong trial first, then the weak one
    slots = resume.start_slots("slots-first", 1)  # noqa: F841 (alive while the run needs it)
    keeper = resume.Keeper(scheduler, searcher, 1, "slots-first")
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
    keeper2 = resume.restored_keeper(restored, 1, "slots-second")
    # The callback unpickled with the restored run holds the scheduler that run uses.
    assert keeper2.scheduler is restored._local_tuner._tune_config.scheduler
    grid = restored.fit()
    epochs = {r.config["score"]: r.metrics["epoch"] for r in grid}
    # The weak trial, run again, meets the strong one's rung-1 record and stops there.
    # With the rungs forgotten it would have been promoted to the full budget.
    assert epochs == {0.9: MAX_T, 0.1: 1}, epochs
    assert recorded[1] < set(keeper2.scheduler.rungs()[0][-1][1])


def slot_trainable(config):
    """Fails at once while the flag exists; else holds its slot (as TrialRunner does) for a
    second and records when, and with which resources."""
    if os.path.exists(config["flag"]):
        raise RuntimeError("injected failure")
    trial_id = tune.get_context().get_trial_id()
    slots = Path(config["slots_file"]).read_text()
    resume.acquire_slot(slots, trial_id)
    try:
        start = time.time()
        time.sleep(1.0)
        held = list(ray.get_runtime_context().get_assigned_resources())
        Path(config["log"], trial_id).write_text(json.dumps({"start": start, "end": time.time(), "resources": held}))
        tune.report({"epoch": 1, "val_accuracy": 0.5})
    finally:
        resume.release_slot(slots, trial_id)


def test_a_rerun_holds_retried_trials_to_its_own_concurrency_and_driver_bundle(local_ray, tmp_path):
    flag, slots_file, log = tmp_path / "fail", tmp_path / "slots-name.txt", tmp_path / "log"
    flag.touch()
    log.mkdir()
    slots_file.write_text("slots-wide")
    wide = resume.start_slots("slots-wide", 3)  # noqa: F841 (alive while the run needs it)
    searcher = BasicVariantGenerator(max_concurrent=3)
    keeper = resume.Keeper(None, searcher, 3, "slots-wide")
    first = tune.Tuner(
        tune.with_resources(slot_trainable, {"CPU": 0.25, "first": 1}),
        param_space={"i": tune.grid_search([0, 1, 2]), "flag": str(flag), "slots_file": str(slots_file), "log": str(log)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=searcher),
        run_config=tune.RunConfig(name="slots", storage_path=str(tmp_path), callbacks=[keeper]),
    ).fit()
    assert all(r.error is not None for r in first)

    # The re-run retries all three with one slot, on another driver resource.
    flag.unlink()
    slots_file.write_text("slots-narrow")
    narrow = resume.start_slots("slots-narrow", 1)  # noqa: F841
    bundle = {"CPU": 0.25, "second": 1}
    restored = tune.Tuner.restore(str(tmp_path / "slots"), tune.with_resources(slot_trainable, bundle),
                                  resume_errored=True)
    resume.restored_keeper(restored, 1, "slots-narrow")
    grid = restored.fit()
    assert all(r.error is None for r in grid), [r.error for r in grid]
    records = [json.loads(p.read_text()) for p in log.iterdir()]
    assert len(records) == 3
    # Tune gives re-added trials the resources of the trainable passed to restore (the
    # first run's local driver resource may not exist on the cluster of a re-run).
    for r in records:
        assert any("second" in k for k in r["resources"]) and not any("first" in k for k in r["resources"]), r
    spans = sorted((r["start"], r["end"]) for r in records)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans


def held_soon(slots, expected: list, timeout: float = 5.0) -> list:
    """The holders once they are ``expected`` (releases are fire-and-forget), or at timeout."""
    deadline = time.time() + timeout
    while (held := ray.get(slots.held.remote())) != expected and time.time() < deadline:
        time.sleep(0.05)
    return held


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
    keeper = resume.Keeper(None, None, 1, "slots-capacity")
    keeper.on_trial_complete(iteration=0, trials=[], trial=type("T", (), {"trial_id": "b"})())
    assert held_soon(slots, []) == []
    # A trial released while it still waited (its driver died) never takes a slot.
    ray.get(slots.acquire.remote("c"))
    waiting = slots.acquire.remote("d")
    resume.release_slot("slots-capacity", "d")
    assert ray.get(waiting, timeout=5) is False
    resume.release_slot("slots-capacity", "c")
    assert held_soon(slots, []) == []
    # A trial paused at a rung frees its slot and may take one again, even if its own
    # release comes late.
    ray.get(slots.acquire.remote("e"))
    ray.get(slots.pause.remote("e"))
    resume.release_slot("slots-capacity", "e")
    assert ray.get(slots.acquire.remote("f"), timeout=5) is True
    waiting = slots.acquire.remote("e")
    resume.release_slot("slots-capacity", "f")
    assert ray.get(waiting, timeout=5) is True
