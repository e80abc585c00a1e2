"""``scheduler.kind: asha_promote`` in Ray Tune's real loop: trials pause at a rung, wait,
are promoted and resume where they paused; an interrupted run resumes with its waiting
trials still waiting. A tiny function trainable stands in for the TensorFlow trials and
keeps its progress in a file, as a trial keeps its checkpoints in storage."""

import json
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
import ray
from ray import tune

from tuner import resume, schedulers, search
from tuner.spec import load_spec

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRIALS, MAX_T = 9, 9  # reduction factor 3: rungs at epochs 1 and 3 send on 3 and 1


def trainable(config):
    """Resumes from the last epoch it wrote; every epoch is written before it is reported
    (as a checkpoint is stored before its metrics reach Tune), and logged. The earlier a
    trial first started, the better it is: the first trials wait at a rung and are
    promoted when later, worse ones arrive there."""
    trial_id = tune.get_context().get_trial_id()
    progress, order = Path(config["folder"], trial_id), Path(config["folder"], "order")
    start = int(progress.read_text()) if progress.exists() else 0
    if not start:
        with open(order, "a") as f:
            f.write(trial_id + "\n")
    quality = 0.99 - 0.01 * order.read_text().split().index(trial_id)
    for epoch in range(start + 1, MAX_T + 1):
        progress.write_text(str(epoch))
        with open(Path(config["folder"], "log"), "a") as log:
            log.write(json.dumps([trial_id, epoch, start]) + "\n")
        tune.report({"epoch": epoch, "val_accuracy": quality - 0.1 / epoch})


class Interrupt(tune.Callback):
    """Ctrl-C (Tune saves its state and stops) once ``after`` trials have paused or ended,
    while ``flag`` exists."""

    def __init__(self, flag: str, after: int):
        self.flag, self.after, self.seen = flag, after, set()

    def on_step_end(self, iteration, trials, **info):
        self.seen |= {t.trial_id for t in trials if t.status in ("PAUSED", "TERMINATED")}
        if os.path.exists(self.flag) and len(self.seen) >= self.after:
            os.remove(self.flag)
            os.kill(os.getpid(), signal.SIGINT)


def spec():
    return load_spec("quick", ["scheduler.kind=asha_promote", f"asha.max_t={MAX_T}", "asha.grace_period=1",
                               "asha.reduction_factor=3", "search.seed=5", f"search.num_samples={TRIALS}",
                               "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-1]}"])


def run(folder: Path, name: str, callbacks=()):
    """One experiment as `tuner.tune.run` sets it up: one trial slot."""
    folder.mkdir()
    slots_name = f"tuner-slots-{uuid.uuid4().hex[:8]}"
    slots = resume.start_slots(slots_name, 1)  # noqa: F841 (alive until fit returns)
    s = spec()
    scheduler = schedulers.scheduler_for(s, True, "epoch")
    searcher, _ = search.searcher_for(s, 1, "val_accuracy", "max")
    keeper = resume.Keeper(scheduler, searcher, 1, slots_name)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.5}),
        param_space={"folder": str(folder)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", scheduler=scheduler,
                                    search_alg=searcher, num_samples=TRIALS),
        run_config=tune.RunConfig(name=name, storage_path=str(folder.parent / "store"),
                                  callbacks=[keeper, *callbacks]),
    )
    return tuner.fit()


def log(folder: Path):
    return [json.loads(line) for line in (folder / "log").read_text().splitlines()]


def reached(entries):
    last = {}
    for trial_id, epoch, _ in entries:
        last[trial_id] = max(epoch, last.get(trial_id, 0))
    return last


def test_trials_wait_at_a_rung_until_promoted_and_resume_where_they_paused(local_ray, tmp_path):
    grid = run(tmp_path / "whole", "whole")
    assert len(grid) == TRIALS and all(r.error is None for r in grid)
    entries = log(tmp_path / "whole")
    epochs = reached(entries)
    order = (tmp_path / "whole" / "order").read_text().split()
    # Synchronous halving's counts: 9 trials at epoch 1, 3 at epoch 3, 1 at epoch 9, and
    # no epoch trained twice.
    assert sorted(epochs.values()) == [1] * 6 + [3] * 2 + [9]
    assert len(entries) == sum(epochs.values()) == 9 + 3 * 2 + 6
    # The first trial waited at epoch 1: the next trial started before its epoch 2 ...
    assert [e[:2] for e in entries[:2]] == [[order[0], 1], [order[1], 1]]
    # ... and, the best, it was promoted from each rung and resumed where it had paused.
    assert epochs[order[0]] == MAX_T
    assert sorted({start for t, _, start in entries if t == order[0]}) == [0, 1, 3]
    assert {t for t, e in epochs.items() if e >= 3} == set(order[:3])
    best = max(grid, key=lambda r: r.metrics["val_accuracy"])
    assert best.metrics["epoch"] == MAX_T
    # Restored after the end (as a re-run that retries failed trials does), the trials
    # ended while waiting stay ended: nothing trains again.
    restore(tmp_path / "store" / "whole").fit()
    assert log(tmp_path / "whole") == entries


def restore(path: Path):
    slots_name = f"tuner-slots-{uuid.uuid4().hex[:8]}"
    restore.slots = resume.start_slots(slots_name, 1)  # alive until the next restore
    tuner = tune.Tuner.restore(str(path), tune.with_resources(trainable, {"CPU": 0.5}), resume_unfinished=True)
    resume.restored_keeper(tuner, 1, slots_name)
    return tuner


def test_an_interrupted_run_resumes_with_its_waiting_trials_still_waiting(local_ray, tmp_path):
    run(tmp_path / "whole", "whole")
    flag = tmp_path / "interrupt"
    flag.touch()
    folder = tmp_path / "split"
    run(folder, "split", [Interrupt(str(flag), 4)])
    before = reached(log(folder))
    assert len(before) < TRIALS and not flag.exists()

    grid = restore(tmp_path / "store" / "split").fit()
    assert len(grid) == TRIALS and all(r.error is None for r in grid)
    # The same trials went as far as in the uninterrupted run: the rungs, the promotions
    # and the waiting trials came back.
    whole = sorted(reached(log(tmp_path / "whole")).values())
    assert sorted(reached(log(folder)).values()) == whole
