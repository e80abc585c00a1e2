"""Through Tune's own save and restore: an interrupted search continues where it was, with
the same suggestions as a search that never stopped. A tiny function trainable stands in
for the TensorFlow trials."""

import math
import os
import signal
import sys

import pytest
import ray
from ray import tune

from tuner import search
from tuner.spec import load_spec

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRIALS, SPLIT = 6, 3


def trainable(config):
    score = 1 - abs(math.log10(config["learning_rate"]) + 2.5) / 3 - abs(config["dropout"] - 0.2)
    tune.report({"epoch": 1, "val_accuracy": score})


class Interrupt(tune.Callback):
    """Interrupts the experiment as Ctrl-C does (Tune saves its state and stops) once
    ``after`` trials have completed, while ``flag`` exists (the restored run unpickles it
    with the flag gone). Not a stopper's ``stop_all``: Tune marks such a search finished."""

    def __init__(self, flag: str, after: int):
        self.flag, self.after, self.done = flag, after, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if os.path.exists(self.flag) and self.done == self.after:
            os.kill(os.getpid(), signal.SIGINT)


def tuner(spec, path, name, callbacks=()):
    searcher, space = search.searcher_for(spec, 1, "val_accuracy", "max")
    return tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.5}),
        param_space=space,
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", search_alg=searcher, num_samples=TRIALS),
        run_config=tune.RunConfig(name=name, storage_path=str(path), callbacks=list(callbacks)),
    )


def configs(grid):
    return sorted((r.config for r in grid), key=lambda c: c["learning_rate"])


@pytest.mark.parametrize("algorithm", ["quasi_random", "tpe"])
def test_an_interrupted_search_resumes_with_the_suggestions_of_an_uninterrupted_one(local_ray, tmp_path, algorithm):
    spec = load_spec("quick", [f"search.algorithm={algorithm}", "search.seed=3",
                               "search.space.learning_rate={loguniform: [1.0e-4, 1.0e-1]}",
                               "search.space.dropout={uniform: [0.0, 0.5]}"])
    whole = tuner(spec, tmp_path, "whole").fit()
    assert len(whole) == TRIALS

    flag = tmp_path / "interrupt"
    flag.touch()
    first = tuner(spec, tmp_path, "split", [Interrupt(str(flag), SPLIT)]).fit()
    assert SPLIT <= len(first) < TRIALS
    flag.unlink()
    resumed = tune.Tuner.restore(str(tmp_path / "split"), tune.with_resources(trainable, {"CPU": 0.5}),
                                 resume_unfinished=True).fit()
    assert len(resumed) == TRIALS
    assert all(r.error is None for r in resumed)
    # The searcher's state came back: the search went on, not over from its first point.
    assert configs(resumed) == configs(whole)
