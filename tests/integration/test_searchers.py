"""Each search algorithm, with a different scheduler each, through the real `tuner tune`
on the shipped MNIST subset (real local Ray, 1-worker trials, one at a time). `random`,
the presets' own, under ASHA: `test_ray_cluster.py`'s in-process run checks its trials
with ``assert_first_suggestions``."""

import importlib.util
import json

import pyarrow.parquet as pq
import pytest
from conftest import REQUIRE_SERVICES, run_tuner

from tuner import search
from tuner.spec import load_spec

pytestmark = pytest.mark.slow

TRIALS = 2
SPACE = [
    "search.space.learning_rate={loguniform: [1.0e-3, 1.0e-2]}",
    "search.space.optimizer={choice: [adam, sgd]}",
    "search.space.momentum={uniform: [0.8, 0.95]}",
    "search.space.schedule={choice: [constant, exponential]}",
    "search.space.dropout={uniform: [0.0, 0.3]}",
    "search.space.width={loguniform: [32, 128]}",
    "search.space.depth=1",
    "search.space.batch_size=64",
    f"search.num_samples={TRIALS}",
    "search.seed=7",
    "asha.max_t=2",
    "asha.grace_period=1",
    "asha.reduction_factor=2",
    "scaling.workers=1",
    "scaling.max_concurrent_trials=1",
]


@pytest.mark.parametrize("algorithm, scheduler", [
    ("quasi_random", ["scheduler.kind=hyperband"]),
    ("tpe", ["scheduler.kind=median_stopping", "scheduler.median_min_trials=1"]),
    ("bayesian", ["scheduler.kind=fifo", "asha.max_t=5", "scheduler.plateau_patience=1", "scheduler.plateau_min_delta=0.5"]),
])
def test_a_search_runs_its_trials_in_bounds_and_in_the_seeded_order(algorithm, scheduler, unique_name, tmp_path):
    if algorithm == "bayesian" and importlib.util.find_spec("torch") is None:
        if REQUIRE_SERVICES:
            pytest.fail("PyTorch is required here (TUNER_REQUIRE_SERVICES=1); .ci/run installs it")
        pytest.skip("search.algorithm bayesian needs PyTorch")
    overrides = [f"search.algorithm={algorithm}", *SPACE, *scheduler]
    args = ["tune", "--config", "quick", "--name", unique_name, "--storage", str(tmp_path / "store")]
    proc = run_tuner([*args, *(a for o in overrides for a in ("--set", o))], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    summary = json.loads((tmp_path / "store" / unique_name / "summary.json").read_text())
    trials = summary["trials"]
    assert len(trials) == TRIALS and all(t["status"] == "terminated" for t in trials)
    assert_first_suggestions(load_spec("quick", overrides), trials)
    # The scheduler (and with FIFO, the plateau rule) decided how far each trial went.
    assert summary["spec"]["scheduler"]["kind"] == scheduler[0].split("=")[1]
    epochs = [t["epochs"] for t in trials]
    if algorithm == "bayesian":  # FIFO, but min_delta 0.5 is never met: the plateau rule stops
        assert all(e < 5 for e in epochs), epochs  # every trial after epoch 1 + patience
    rows = pq.read_table(tmp_path / "store" / unique_name / "results.parquet").to_pylist()
    assert len(rows) == sum(epochs)


def assert_first_suggestions(spec, trials: list[dict]) -> None:
    """The summary's ``trials`` are in the spec's bounds, with the conditional ones set only
    where their condition holds, and got the searcher's first suggestions for its seed
    (startup points for tpe and bayesian, which do not depend on results)."""
    decay = ("schedule", "exponential")
    conditional = {"momentum": ("optimizer", "sgd"), "decay_epochs": decay, "decay_rate": decay, "staircase": decay}
    for t in trials:
        c = t["config"]
        for name, dim in spec.search.space.items():
            if name in conditional and c[conditional[name][0]] != conditional[name][1]:
                assert c[name] is None, (name, c)
            elif dim.kind in ("uniform", "loguniform"):
                assert dim.values[0] <= c[name] <= dim.values[1], (name, c)
            else:
                assert c[name] in dim.values, (name, c)
    fresh, _ = search.searcher_for(spec, len(trials), "val_accuracy", "max")
    fresh.set_search_properties("val_accuracy", "max", {})
    expected = [fresh.suggest(f"x{i}") for i in range(len(trials))]
    by_lr = lambda c: c["learning_rate"]  # noqa: E731
    assert sorted((t["config"] for t in trials), key=by_lr) == sorted(expected, key=by_lr)
