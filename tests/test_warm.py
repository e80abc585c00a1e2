"""Warm starts from earlier experiments: which trials fit (tuner.warm), reading them from
storage (tuner.experiment.warm_start), and what each searcher does with them."""

import json

import pytest

from tuner import experiment, results, storage, warm
from tuner.experiment import UsageError
from tuner.search import UnitCubeSearch, searcher_for
from tuner.spec import load_spec

SPACE = ["search.space.learning_rate={loguniform: [1.0e-4, 1.0e-2]}", "search.space.optimizer={choice: [adam, sgd]}",
         "search.space.width={choice: [64, 128]}", "search.space.batch_size=32", "search.space.dropout=0.1",
         "search.space.depth=1", "search.space.schedule=constant"]


def spec(*over):
    return load_spec("quick", [*SPACE, *over])


def config(lr=1e-3, optimizer="adam", width=64, **other):
    space = spec().search.space
    base = {n: d.values[0] for n, d in space.items()}
    base.update(learning_rate=lr, optimizer=optimizer, width=width, momentum=0.9 if optimizer == "sgd" else None,
                decay_epochs=None, decay_rate=None, staircase=None)
    return {**base, **other}


def trial(source, value, best=None, **kw):
    return {"config": config(**kw), "value": value, "best": value if best is None else best, "source": source}


def test_only_trials_of_this_space_are_points_each_configuration_once_and_the_best_run_first():
    s = spec().search.space
    trials = [trial("a/1", 0.90, lr=1e-3), trial("a/2", 0.95, lr=2e-3), trial("a/3", 0.97, lr=2e-3),  # the same twice
              trial("a/4", 0.99, lr=5e-2),  # outside the range
              trial("b/1", 0.93, width=256),  # outside the choices
              {**trial("b/2", 0.96), "config": {k: v for k, v in config().items() if k != "width"}},
              {**trial("b/3", 0.96), "config": {**config(), "filters": 8}}]
    found = warm.select(s, trials, "max", top=2)
    assert [p.source for p in found.points] == ["a/3", "a/1"]
    assert found.first == [config(lr=2e-3), config(lr=1e-3)]
    assert found.warnings == [
        "search.warm_start: 1 of the 4 finished trials of `a` do not fit this search space and are left out (1 have a "
        "`learning_rate` outside its range).",
        "search.warm_start: 3 of the 3 finished trials of `b` do not fit this search space and are left out (1 have a "
        "`width` outside its choices; 1 miss `width`; 1 have `filters`, which this space lacks)."]
    lowest = warm.select(s, trials[:3], "min", top=1)
    assert lowest.first == [config(lr=1e-3)]
    assert warm.misfit(s, config(optimizer="sgd", momentum=None)) == "have no value for `momentum`"
    assert warm.misfit(s, {**config(), "dropout": 0.2}) == "have another `dropout` than this space's fixed 0.1"
    tail = spec("search.space.depth={choice: [1, 2]}", "search.space.width_2={choice: [16, 32], when: {depth: [2]}}")
    assert warm.misfit(tail.search.space, config(width_2=None)) is None
    assert warm.misfit(tail.search.space, config(depth=2, width_2=16)) is None
    assert warm.misfit(tail.search.space, config(width_2=16)) == ("have a `width_2` where this space's conditions "
                                                                 "leave it out")


def test_random_search_runs_the_first_configurations_then_never_a_known_one():
    s = spec("search.space.learning_rate=0.001").search.space  # only optimizer x width: 4 points
    known = [config(width=128), config(optimizer="sgd", width=64)]
    searcher = UnitCubeSearch(s, "random", seed=0, first=[config()], known=known)
    drawn = [searcher.suggest(str(i)) for i in range(4)]
    assert drawn[0] == config()
    assert all(warm.key(c) not in {warm.key(k) for k in [*known, config()]} for c in drawn[1:])
    # Its state (Tune saves it with the experiment) carries the warm start.
    again = UnitCubeSearch(s, "random", seed=0)
    again.set_state(json.loads(json.dumps(searcher.get_state())))
    assert again.suggest("x") == searcher.suggest("x")


@pytest.mark.parametrize("algorithm", ["tpe"])
def test_optuna_learns_from_the_points_before_it_suggests_and_runs_the_first_ones_first(algorithm):
    pytest.importorskip("optuna")
    s = spec(f"search.algorithm={algorithm}", "search.num_samples=6")
    points = warm.select(s.search.space, [trial(f"a/{i}", 0.9 + i / 100, lr=1e-3 * (1 + i)) for i in range(5)]
                         + [trial("a/9", 0.5, optimizer="sgd")], "max", top=1)
    limiter, _ = searcher_for(s, 2, "val_accuracy", "max", warm_start=points)
    optuna_search = limiter.searcher
    study = optuna_search._ot_study
    # The 6 points as finished trials, and the best one queued to run first.
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6 + ["WAITING"]
    assert study.best_value == pytest.approx(0.94)
    assert {"learning_rate": 1e-3, "optimizer": "sgd", "width": 64} in [t.params for t in study.trials]
    first = limiter.suggest("t0")
    assert first == points.first[0]


def write_experiment(root, name, trials, objective=("val_accuracy", "max"), task="classification", summary=True):
    uri = storage.join(str(root), name)
    storage.write_json(storage.join(uri, experiment.SPEC_FILE), {}, None)
    if not summary:
        return
    storage.write_json(storage.join(uri, results.SUMMARY), {
        "objective": {"metric": objective[0], "mode": objective[1]}, "task": task, "spec": {},
        "trials": [{"trial_id": f"t{i}", "status": status, "config": c, f"best_{objective[0]}": best}
                   for i, (c, best, status) in enumerate(trials)]})
    results.write_results(load_spec("quick", ["storage.uri=" + str(root), f"name={name}"]),
                          [{"trial_id": f"t{i}", "epoch": e, objective[0]: best - (3 - e) / 100}
                           for i, (_, best, _) in enumerate(trials) for e in (1, 2, 3)])


def test_earlier_experiments_are_read_and_their_problems_are_one_line_each(tmp_path):
    write_experiment(tmp_path, "good", [(config(lr=1e-3), 0.95, "terminated"), (config(lr=2e-3), 0.97, "terminated"),
                                        (config(lr=3e-3), 0.99, "error")])
    write_experiment(tmp_path, "loss", [(config(), 0.3, "terminated")], objective=("val_loss", "min"))
    write_experiment(tmp_path, "failed", [(config(), 0.9, "error")])
    write_experiment(tmp_path, "running", [], summary=False)
    here = spec(f"storage.uri={tmp_path}", "name=new", "search.warm_start.experiments=[good]")
    found = experiment.warm_start(here, "classification")
    assert [p.source for p in found.points] == ["good/t1", "good/t0"]  # the failed trial is not a point
    assert [p.value for p in found.points] == [pytest.approx(0.97), pytest.approx(0.95)]  # the last reported
    with pytest.raises(UsageError) as e:
        experiment.warm_start(spec(f"storage.uri={tmp_path}", "name=new",
                                   "search.warm_start.experiments=[good, loss, failed, running, nowhere]"),
                              "classification")
    assert [p.split(" ")[3] for p in e.value.problems] == ["`loss`", "`failed`", "`running`", "`nowhere`"]
    assert "tuned classification for val_loss (min), this one classification for val_accuracy (max)" in e.value.problems[0]
    assert "has no finished trials" in e.value.problems[1] and "has not finished" in e.value.problems[2]
    assert "does not exist under" in e.value.problems[3]
    with pytest.raises(UsageError, match="tuned classification for val_accuracy"):
        experiment.warm_start(here, "regression")
    # Read, never written.
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    experiment.warm_start(here, "classification")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_pbt_experiment_gives_each_members_first_configuration_and_its_own_scores(tmp_path):
    from tuner import population as pop

    write_experiment(tmp_path, "pbt", [(config(lr=1e-3), 0.95, "terminated"), (config(lr=2e-3), 0.97, "terminated")])
    uri = storage.join(str(tmp_path), "pbt")
    summary = storage.read_json(storage.join(uri, results.SUMMARY))
    summary["spec"] = {"scheduler": {"kind": "pbt"}}
    # t1 continued t0's checkpoint at epoch 2 with another learning rate: its score after
    # that is not its first configuration's.
    summary["trials"][1]["lineage"] = [{"generation": 0, "config": config(lr=2e-3)},
                                       {"generation": 1, "config": config(lr=5e-3)}]
    summary["trials"][1]["config"] = config(lr=5e-3)
    storage.write_json(storage.join(uri, results.SUMMARY), summary)
    rows = [{"trial_id": "t0", "epoch": e, "val_accuracy": 0.9 + e / 100, "generation": 0} for e in (1, 2, 3)]
    rows += [{"trial_id": "t1", "epoch": 1, "val_accuracy": 0.5, "generation": 0},
             {"trial_id": "t1", "epoch": 2, "val_accuracy": 0.6, "generation": 0},
             {"trial_id": "t1", "epoch": 3, "val_accuracy": 0.99, "generation": 1}]
    results.write_results(load_spec("quick", [f"storage.uri={tmp_path}", "name=pbt"]), rows)
    found = experiment.warm_start(spec(f"storage.uri={tmp_path}", "name=new", "search.warm_start.experiments=[pbt]"),
                                  "classification")
    assert [(p.source, p.config["learning_rate"], p.value, p.best) for p in found.points] == [
        ("pbt/t0", 1e-3, pytest.approx(0.93), pytest.approx(0.93)), ("pbt/t1", 2e-3, 0.6, 0.6)]
    assert pop.GENERATION_KEY not in found.points[0].config
    with pytest.raises(UsageError, match="trained with another `training.hyperparameter_schedule`"):
        experiment.warm_start(spec(f"storage.uri={tmp_path}", "name=new", "search.warm_start.experiments=[pbt]",
                                   "training.hyperparameter_schedule=[{epoch: 2, learning_rate: 0.001}]"),
                              "classification")
