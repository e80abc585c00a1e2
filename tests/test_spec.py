"""Spec loading, overrides and validation: tables of bad input -> expected message."""

import json

import pytest

from tuner.spec import Dim, SpecError, apply_overrides, build_spec, load_raw, load_spec, preset_names, require_fixed

PBT = {"scheduler": {"kind": "pbt"}, "search": {"space": {"learning_rate": {"loguniform": [1e-4, 1e-2]}}}}


def problems(raw):
    with pytest.raises(SpecError) as e:
        build_spec(raw)
    return e.value.problems


def test_presets_load_and_validate():
    assert {"quick", "mnist", "seed-baseline"} <= set(preset_names())
    for name in preset_names():
        spec = load_spec(name)
        assert spec.name


def test_defaults_round_trip_through_to_dict():
    spec = load_spec("quick")
    assert build_spec(spec.to_dict()) == spec
    conditional = load_spec("quick", ["search.space.depth={choice: [1, 2]}",
                                      "search.space.width_2={int_uniform: [16, 64], when: {depth: [2]}}"])
    assert build_spec(json.loads(json.dumps(conditional.to_dict()))) == conditional  # as spec.json stores it


def test_seed_baseline_is_the_tutorial():
    spec = load_spec("seed-baseline")
    space = {k: d.values[0] for k, d in spec.search.space.items()}
    assert all(d.is_fixed for d in spec.search.space.values())
    assert space["learning_rate"] == 1e-3 and space["optimizer"] == "adam" and space["batch_size"] == 32
    assert space["schedule"] == "exponential" and space["decay_rate"] == 0.5 and space["staircase"] is True
    assert space["decay_epochs"] == pytest.approx(1000 * 32 / 60000)
    assert (space["width"], space["depth"], space["dropout"]) == (128, 1, 0.2)
    assert spec.asha.max_t == 10 and spec.scaling.workers == 1


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"asha": {"grace_period": 0}}, "The value of `asha.grace_period` is 0, but must be >= 1."),
        ({"asha": {"max_t": 3, "grace_period": 5}}, "The value of `asha.grace_period` is 5, but must be <= `asha.max_t` (3)"),
        ({"asha": {"reduction_factor": 1}}, "The value of `asha.reduction_factor` is 1, but must be >= 2."),
        ({"asha": {"max_t": "ten"}}, "The value of `asha.max_t` is 'ten', but must be a whole number."),
        ({"asha": {"grace": 1}}, "Unknown key `asha.grace`; known keys under `asha`: max_t, grace_period, reduction_factor."),
        ({"ashaa": {}}, "Unknown key `ashaa`"),
        ({"search": {"num_samples": 0}}, "The value of `search.num_samples` is 0, but must be >= 1."),
        ({"search": {"algorithm": "bayes"}}, "The value of `search.algorithm` is 'bayes', but must be one of: random, grid, quasi_random, tpe, bayesian, nsga2."),
        ({"search": {"space": {"learning_rate": 0}}}, "The value of `search.space.learning_rate` is 0.0, but must be > 0 and <= 10."),
        ({"search": {"space": {"learning_rate": {"loguniform": [0, 1]}}}}, "The value of `search.space.learning_rate.loguniform` is 0.0, but must be > 0"),
        ({"search": {"space": {"learning_rate": {"loguniform": [1e-2, 1e-4]}}}}, "The range of `search.space.learning_rate` is [0.01, 0.0001], but low must be < high."),
        ({"search": {"space": {"optimizer": "adamw"}}}, "The value of `search.space.optimizer` is 'adamw', but must be one of: adam, rmsprop, adagrad, sgd."),
        ({"search": {"space": {"optimizer": {"uniform": [0, 1]}}}}, "`search.space.optimizer` takes no uniform range; use `choice: [...]`."),
        ({"search": {"space": {"schedule": "cosine"}}}, "must be one of: constant, exponential."),
        ({"search": {"space": {"batch_size": 32.5}}}, "The value of `search.space.batch_size` is 32.5, but must be a whole number."),
        ({"search": {"space": {"width": {"choice": []}}}}, "The value of `search.space.width.choice` must be a non-empty list."),
        ({"search": {"space": {"width": {"grid": [1]}}}}, "`search.space.width` has `grid`, but must be a value or one of"),
        ({"search": {"space": {"filters": {"int_uniform": [8.5, 64]}}}}, "but `int_uniform` ranges need whole numbers"),
        ({"search": {"space": {"filters": {"int_loguniform": [0, 64]}}}}, "but `int_loguniform` ranges must start > 0"),
        ({"search": {"space": {"units": {"uniform": ["a", "b"]}}}}, "The value of `search.space.units.uniform` is 'a', but must be a number."),
        ({"search": {"space": {"units": [1, 2]}}}, "The value of `search.space.units` is [1, 2], but must be a number, a string or true/false."),
        ({"search": {"space": {"batch_size": {"int_uniform": [0, 8]}}}}, "The value of `search.space.batch_size.int_uniform` is 0, but must be >= 1"),
        ({"model": {"builder": "my_models.build"}}, "The value of `model.builder` is 'my_models.build', but must be `module:function`"),
        ({"model": {"builder": "my-models:build"}}, "must be `module:function`"),
        ({"objective": {"mode": "maximise"}}, "The value of `objective.mode` is 'maximise', but must be max or min."),
        ({"objective": {"metric": "accuracy"}}, "The value of `objective.metric` is 'accuracy', but must be a validation metric"),
        ({"objective": {"metric": "val_loss", "mode": "max"}}, "but `val_loss` is better when lower; use min"),
        ({"search": {"algorithm": "grid", "space": {"dropout": {"uniform": [0, 0.5]}}}}, "`search.space.dropout` is a uniform range, but grid search needs"),
        ({"scaling": {"workers": 0}}, "The value of `scaling.workers` is 0, but must be >= 1."),
        ({"scaling": {"cpus_per_worker": 0}}, "The value of `scaling.cpus_per_worker` is 0.0, but must be > 0."),
        ({"scaling": {"use_gpu": "yes"}}, "The value of `scaling.use_gpu` is 'yes', but must be true or false."),
        ({"scaling": {"max_concurrent_trials": 0}}, "The value of `scaling.max_concurrent_trials` is 0, but must be >= 1"),
        ({"training": {"lr_scaling": "cubic"}}, "The value of `training.lr_scaling` is 'cubic', but must be one of: none, linear, sqrt."),
        ({"training": {"warmup_epochs": 20}}, "The value of `training.warmup_epochs` is 20, but must be < `asha.max_t` (10)."),
        ({"storage": {"uri": "gs://bucket/x"}}, "the scheme `gs://` is not supported"),
        ({"storage": {"uri": "s3:///x"}}, "it names no bucket"),
        ({"storage": {"endpoint": "127.0.0.1:9000"}}, "The value of `storage.endpoint` is '127.0.0.1:9000', but must start with http:// or https://."),
        ({"data": {"validation_fraction": 1.5}}, "The value of `data.validation_fraction` is 1.5, but must be > 0 and < 1."),
        ({"checkpoint": {"num_to_keep": 0}}, "The value of `checkpoint.num_to_keep` is 0, but must be >= 1."),
        ({"checkpoint": {"upload": "later"}}, "The value of `checkpoint.upload` is 'later', but must be one of: async, sync."),
        ({"failure": {"controller_failure_limit": -1}}, "would retry forever"),
        ({"failure": {"worker_start_timeout": 0}}, "The value of `failure.worker_start_timeout` is 0.0, but must be > 0 (seconds)."),
        ({"name": "a/b"}, "The value of `name` is 'a/b'"),
        # Population-based training.
        (PBT | {"pbt": {"mutate": ["learning_rate", "width"]}},
         "`pbt.mutate` names `width`, a model hyperparameter: it shapes the weights a member copies"),
        (PBT | {"pbt": {"mutate": ["optimizer"]}}, "`pbt.mutate` names `optimizer`, which a member cannot change"),
        (PBT | {"pbt": {"mutate": "learning_rate"}}, "The value of `pbt.mutate` is 'learning_rate', but must be a list"),
        (PBT | {"pbt": {"interval": 0}}, "The value of `pbt.interval` is 0, but must be >= 1"),
        (PBT | {"pbt": {"interval": 10}}, "The value of `pbt.interval` is 10, but must be >= 1 and < `asha.max_t` (10)"),
        (PBT | {"pbt": {"quantile": 0.6}}, "The value of `pbt.quantile` is 0.6, but must be > 0 and <= 0.5."),
        (PBT | {"pbt": {"resample_probability": 2}}, "The value of `pbt.resample_probability` is 2.0, but must be"),
        ({**PBT, "search": {**PBT["search"], "algorithm": "grid", "space": {"batch_size": {"choice": [32, 64]}}}},
         "`scheduler.kind: pbt` draws its first population with `search.algorithm` random or quasi_random, not grid"),
        ({"scheduler": {"kind": "pbt"}}, "Population-based training changes hyperparameters as it trains, but nothing "
                                         "is mutable"),
        ({"scheduler": {"kind": "pb2"}, "search": {"space": {"batch_size": {"choice": [32, 64]}}}},
         "`scheduler.kind: pb2` chooses numeric values by a GP bandit, but no mutated hyperparameter is a range"),
        (PBT | {"scheduler": {"kind": "pbt", "plateau_patience": 2}}, "`scheduler.plateau_patience` is set, but"),
        (PBT | {"training": {"hyperparameter_schedule": [{"epoch": 2, "learning_rate": 0.1}]}},
         "`training.hyperparameter_schedule` is set, but `scheduler.kind: pbt` changes the hyperparameters itself"),
        # A replayed schedule.
        ({"training": {"hyperparameter_schedule": [{"epoch": 2, "width": 3}]}},
         "`training.hyperparameter_schedule[0]` sets `width`, but a schedule changes only learning_rate"),
        ({"training": {"hyperparameter_schedule": [{"epoch": 3, "learning_rate": 0.1}, {"epoch": 2, "batch_size": 8}]}},
         "`training.hyperparameter_schedule[1]` is {'epoch': 2, 'batch_size': 8}, but each entry must be"),
        ({"training": {"hyperparameter_schedule": [{"epoch": 10, "learning_rate": 0.1}]}},
         "`training.hyperparameter_schedule` has an entry at epoch 10, but trials train `asha.max_t` (10) epochs"),
        ({"training": {"hyperparameter_schedule": [{"epoch": 2, "learning_rate": -1}]}},
         "The value of `training.hyperparameter_schedule[0].learning_rate` is -1.0, but must be > 0"),
        ({"training": {"hyperparameter_schedule": {"epoch": 2}}}, "but must be a list of {epoch: E, <knob>: value"),
        # Warm starts.
        ({"search": {"warm_start": {"experiments": ["x"], "top": -1}}}, "The value of `search.warm_start.top` is -1"),
        ({"search": {"warm_start": {"experiments": ["mnist-asha"]}}},
         "`search.warm_start.experiments` names this experiment, `mnist-asha`; name earlier ones."),
        ({"search": {"warm_start": {"experiments": ["a/b"]}}}, "names 'a/b', which is not an experiment name."),
        ({"search": {"warm_start": {"experiments": ["x"], "storage": "gs://b"}}}, "`search.warm_start.storage` is 'gs://b'"),
        ({"search": {"warm_start": {"experiments": ["x"], "top": 9}}},
         "The value of `search.warm_start.top` is 9, but only `search.num_samples` (8) trials run; lower it."),
    ],
)
def test_bad_values_have_one_clear_line(raw, message):
    found = problems(raw)
    assert any(message in p for p in found), found


def test_every_problem_is_reported_at_once():
    found = problems({"asha": {"grace_period": 0, "reduction_factor": 1}, "scaling": {"workers": 0}})
    assert len(found) == 3


def test_the_objectives_mode_follows_its_metric_when_left_out():
    assert build_spec({"objective": {"metric": "val_mae"}}).objective.mode == "min"
    assert build_spec({"objective": {"metric": "val_accuracy"}}).objective.mode == "max"
    assert build_spec({}).objective.mode == "max"


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    raw = apply_overrides({}, ["asha.max_t=5", "search.space.width={choice: [64, 128]}", "scaling.use_gpu=true"])
    spec = build_spec(raw)
    assert spec.asha.max_t == 5
    assert spec.search.space["width"] == Dim("choice", (64, 128), int)
    assert spec.scaling.use_gpu is True
    for bad, message in [
        ("asha.maxt=3", "Unknown key `asha.maxt`"),
        ("nosuch.key=1", "Unknown key `nosuch.key`"),
        ("search.space.colour-x=1", "The hyperparameter name `search.space.colour-x` must be an identifier"),
        ("asha", "must look like `dotted.key=value`"),
    ]:
        with pytest.raises(SpecError) as e:
            apply_overrides({}, [bad])
        assert message in e.value.problems[0]


def test_load_raw_errors(tmp_path):
    with pytest.raises(SpecError, match="neither a YAML file nor a preset"):
        load_raw("nope")
    with pytest.raises(SpecError, match="does not exist"):
        load_raw(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("asha: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_raw(str(bad))


def test_cli_flags_win_over_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: a\nstorage: {uri: /x}\n")
    spec = load_spec(str(f), ["name=b"], **{"name": "c", "storage.uri": "/y"})
    assert spec.name == "c" and spec.storage.uri == "/y"


def test_train_needs_fixed_values():
    assert require_fixed(load_spec("seed-baseline")) == []
    found = require_fixed(load_spec("quick"))
    assert any("--set search.space.learning_rate=VALUE" in p for p in found)
    # One value, with a condition: still one configuration.
    assert require_fixed(load_spec("seed-baseline", ["search.space.tail={choice: [8], when: {depth: 2}}",
                                                     "search.space.depth={choice: [2]}"])) == []


def test_dataset_uri_default_follows_source_and_storage():
    assert load_spec("quick").dataset_uri().endswith("datasets/mnist-subset")
    spec = load_spec("mnist", **{"storage.uri": "s3://b/p"})
    assert spec.dataset_uri() == "s3://b/p/datasets/mnist"


def test_a_population_spec_and_a_schedule_that_fit():
    spec = build_spec(PBT | {"pbt": {"interval": 3, "mutate": ["learning_rate"]}})
    assert (spec.pbt.interval, spec.pbt.mutate) == (3, ["learning_rate"])
    spec = build_spec({"training": {"hyperparameter_schedule": [{"epoch": 2, "learning_rate": 1e-2, "batch_size": 64}]}})
    assert spec.training.hyperparameter_schedule == [{"epoch": 2, "learning_rate": 0.01, "batch_size": 64}]
    assert build_spec(spec.to_dict()) == spec
