"""Each search algorithm, with a different scheduler each, through the real `tuner tune`
on the shipped MNIST subset (real local Ray, 1-worker trials, one at a time)."""

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
    ("random", ["scheduler.kind=asha"]),
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
    spec = load_spec("quick", overrides)
    for t in trials:
        c = t["config"]
        assert 1e-3 <= c["learning_rate"] <= 1e-2 and 0.0 <= c["dropout"] <= 0.3 and 32 <= c["width"] <= 128
        assert (c["momentum"] is None) == (c["optimizer"] != "sgd")
        assert c["momentum"] is None or 0.8 <= c["momentum"] <= 0.95
        assert (c["decay_epochs"] is None) == (c["schedule"] != "exponential")
    # The trials got the searcher's first suggestions for this seed (startup points for
    # tpe and bayesian, which do not depend on results).
    fresh, _ = search.searcher_for(spec, TRIALS, "val_accuracy", "max")
    fresh.set_search_properties("val_accuracy", "max", {})
    expected = [fresh.suggest(f"x{i}") for i in range(TRIALS)]
    by_lr = lambda c: c["learning_rate"]  # noqa: E731
    assert sorted((t["config"] for t in trials), key=by_lr) == sorted(expected, key=by_lr)
    # The scheduler (and with FIFO, the plateau rule) decided how far each trial went.
    assert summary["spec"]["scheduler"]["kind"] == scheduler[0].split("=")[1]
    epochs = [t["epochs"] for t in trials]
    if algorithm == "bayesian":  # FIFO, but min_delta 0.5 is never met: the plateau rule stops
        assert all(e < 5 for e in epochs), epochs  # every trial after epoch 1 + patience
    rows = pq.read_table(tmp_path / "store" / unique_name / "results.parquet").to_pylist()
    assert len(rows) == sum(epochs)
