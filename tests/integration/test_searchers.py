"""Each search algorithm, with a different scheduler each, through the real `tuner tune`
on the shipped MNIST subset staged into moto (real local Ray, 2-worker trials, one at a
time), over a space with conditions: the training knobs' own and a model
hyperparameter's ``when``, which the builder checks from inside the trial. `random`, the
presets' own, under ASHA: `test_ray_cluster.py`'s in-process run checks its trials with
``assert_first_suggestions``."""

import importlib.util
import json

import pyarrow.parquet as pq
import pytest
from conftest import REQUIRE_SERVICES, run_tuner

from tuner import search, storage
from tuner.spec import load_spec

pytestmark = pytest.mark.slow

TRIALS = 2
COMMON = [
    "search.space.optimizer={choice: [adam, sgd]}",
    "search.space.schedule={choice: [constant, exponential]}",
    "search.space.dropout={uniform: [0.0, 0.3]}",
    "search.space.width={loguniform: [32, 128]}",
    "search.space.depth={choice: [1, 2]}",
    "search.space.width_2={int_uniform: [16, 64], when: {depth: [2]}}",
    "search.space.batch_size=64",
    "search.seed=7",
    "asha.max_t=2",
    "asha.grace_period=1",
    "asha.reduction_factor=2",
    "scaling.max_concurrent_trials=1",
    "model.builder=conditional_mlp:build",
]
SPACE = [*COMMON, "search.space.learning_rate={loguniform: [1.0e-3, 1.0e-2]}",
         "search.space.momentum={uniform: [0.8, 0.95]}", f"search.num_samples={TRIALS}"]
# A grid of two points (width_2 counts at depth 2 alone), each once.
GRID = [*COMMON, "search.space.learning_rate=0.003", "search.space.optimizer=adam", "search.space.schedule=constant",
        "search.space.dropout=0.1", "search.space.width=64", "search.space.width_2={choice: [32], when: {depth: [2]}}",
        "search.num_samples=1"]

# The built-in MLP, with a second layer's width that counts at depth 2 alone: a trial
# whose `hp` has width_2 where it should not (or lacks it where it should) fails.
BUILDER = """
from tuner.models import mnist_mlp


def build(hp, inputs):
    if ("width_2" in hp) != (hp["depth"] == 2):
        raise AssertionError(f"width_2 in hp at depth {hp['depth']}: {dict(hp)}")
    hp.get("width_2")
    return mnist_mlp(hp, inputs)


build.defaults = mnist_mlp.defaults
"""


@pytest.fixture(scope="module")
def staged(moto_s3):
    """The shipped MNIST subset, staged once into moto for the module's runs."""
    dataset = "s3://tuner/searchers/mnist-subset"
    proc = run_tuner(["stage-data", "--source", "builtin", "--dest", dataset], env=moto_s3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dataset


@pytest.mark.parametrize("algorithm, scheduler", [
    ("quasi_random", ["scheduler.kind=hyperband"]),
    # Two objectives: MOTPE under MO-ASHA.
    ("tpe", ["scheduler.kind=asha", "objective=[{metric: val_accuracy}, {metric: params}]"]),
    ("bayesian", ["scheduler.kind=fifo", "asha.max_t=5", "scheduler.plateau_patience=1", "scheduler.plateau_min_delta=0.5"]),
    ("grid", ["scheduler.kind=median_stopping", "scheduler.median_min_trials=1"]),
])
def test_a_search_runs_its_trials_in_bounds_and_in_the_seeded_order(algorithm, scheduler, staged, moto_s3,
                                                                    unique_name, tmp_path, monkeypatch):
    if algorithm == "bayesian" and importlib.util.find_spec("torch") is None:
        if REQUIRE_SERVICES:
            pytest.fail("PyTorch is required here (TUNER_REQUIRE_SERVICES=1); .ci/run installs it")
        pytest.skip("search.algorithm bayesian needs PyTorch")
    (tmp_path / "conditional_mlp.py").write_text(BUILDER)
    overrides = [f"search.algorithm={algorithm}", *(GRID if algorithm == "grid" else SPACE), *scheduler,
                 f"data.uri={staged}"]
    args = ["tune", "--config", "quick", "--name", unique_name, "--storage", "s3://tuner/searchers"]
    proc = run_tuner([*args, *(a for o in overrides for a in ("--set", o))], env=moto_s3, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    for key, value in moto_s3.items():  # this process reads what the run wrote
        monkeypatch.setenv(key, value)
    experiment = storage.Location(f"s3://tuner/searchers/{unique_name}", moto_s3["AWS_ENDPOINT_URL"])
    summary = experiment.join("summary.json").read_json()
    trials = summary["trials"]
    assert len(trials) == TRIALS and all(t["status"] == "terminated" for t in trials), trials
    assert_first_suggestions(load_spec("quick", overrides), trials)
    if algorithm == "grid":
        assert sorted((t["config"]["depth"], t["config"]["width_2"]) for t in trials) == [(1, None), (2, 32)]
    # The scheduler (and with FIFO, the plateau rule) decided how far each trial went.
    assert summary["spec"]["scheduler"]["kind"] == scheduler[0].split("=")[1]
    epochs = [t["epochs"] for t in trials]
    if algorithm == "bayesian":  # FIFO, but min_delta 0.5 is never met: the plateau rule stops
        assert all(e < 5 for e in epochs), epochs  # every trial after epoch 1 + patience
    fs, path = experiment.join("results.parquet").filesystem()
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    assert len(rows) == sum(epochs)
    assert all((r["config/width_2"] is None) == (r["config/depth"] == 1) for r in rows), rows
    if algorithm == "tpe":  # the summary's front: the trials no other beats at their last epoch
        last = {t["trial_id"]: max((r for r in rows if r["trial_id"] == t["trial_id"]), key=lambda r: r["epoch"])
                for t in trials}
        ends = {i: (r["val_accuracy"], r["params"]) for i, r in last.items()}
        brute = {i for i, (acc, size) in ends.items()
                 if not any(a >= acc and s <= size and (a, s) != (acc, size) for a, s in ends.values())}
        front = summary["pareto_front"]
        assert {e["trial_id"] for e in front} == brute, (front, ends)
        assert all((e["val_accuracy"], e["params"]) == ends[e["trial_id"]] for e in front)
        assert summary["best"]["trial_id"] == front[0]["trial_id"] and summary["hypervolume"]["value"] > 0
    # The cost metrics every epoch reports: the model's size follows its depth, and the
    # worker-seconds held grow from epoch to epoch.
    assert all(r["params"] > 0 and r["epoch_seconds"] > 0 for r in rows), rows
    for t in trials:
        mine = sorted((r for r in rows if r["trial_id"] == t["trial_id"]), key=lambda r: r["epoch"])
        assert all(a["worker_seconds"] < b["worker_seconds"] for a, b in zip(mine, mine[1:])), mine
        assert mine[0]["worker_seconds"] > 2 * mine[0]["epoch_seconds"]  # 2 workers, start-up included


def assert_first_suggestions(spec, trials: list[dict]) -> None:
    """The summary's ``trials`` are in the spec's bounds, with the conditional ones set only
    where their conditions hold, and got the searcher's first suggestions for its seed
    (startup points for tpe and bayesian, which do not depend on results)."""
    space = spec.search.space
    for t in trials:
        c = t["config"]
        for name, dim in space.items():
            if not search.active(name, c, space):
                assert c[name] is None, (name, c)
            elif dim.is_range:
                assert dim.values[0] <= c[name] <= dim.values[1], (name, c)
            else:
                assert c[name] in dim.values, (name, c)
    fresh, _ = search.searcher_for(spec, len(trials), "val_accuracy", "max")
    fresh.set_search_properties("val_accuracy", "max", {})
    expected = [fresh.suggest(f"x{i}") for i in range(len(trials))]
    key = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    assert sorted((t["config"] for t in trials), key=key) == sorted(expected, key=key)
