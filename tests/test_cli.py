"""The CLI's contract for bad input: one line per problem, exit 2, nothing written."""

import pytest

from tuner.cli import main


@pytest.mark.parametrize(
    "args, message",
    [
        (["tune", "--set", "asha.grace_period=0"], "The value of `asha.grace_period` is 0, but must be >= 1."),
        (["tune", "--set", "asha.grace=1"], "Unknown key `asha.grace`"),
        (["tune", "--config", "nope"], "is neither a YAML file nor a preset"),
        (["tune", "--storage", "gs://b/x"], "the scheme `gs://` is not supported"),
        (["train", "--config", "quick"], "`tuner train` needs one value"),
        (["tune", "--set", "search.space.batch_size=4096"], "exceeds the 2750 training rows"),
        (["tune", "--set", "scaling.workers=8"], "A trial needs 5 CPUs (1 driver + 8 workers x 0.5)"),
        (["tune", "--address", "ray://head:10001"], "is a Ray Client address, which tuner does not support"),
        # Port 9 (discard): nothing listens; refused at once.
        (["tune", "--set", "tracking.mlflow.uri=http://127.0.0.1:9"],
         "The MLflow tracking server at http://127.0.0.1:9 (from `tracking.mlflow.uri`) cannot be used: "),
        (["tune", "--set", "tracking.mlflow=http://127.0.0.1:9"],
         "The value of `tracking.mlflow` must be a mapping of its fields (uri, experiment)."),
        # Population-based training and warm starts (issue 32).
        (["tune", "--set", "scheduler.kind=pbt", "--set", "pbt.mutate=[learning_rate, width]"],
         "`pbt.mutate` names `width`, a model hyperparameter"),
        (["tune", "--set", "scheduler.kind=pbt", "--set", "pbt.interval=3"],
         "The value of `pbt.interval` is 3, but must be >= 1 and < `asha.max_t` (3)"),
        (["tune", "--set", "scheduler.kind=pbt", "--set", "search.algorithm=grid", "--set", "search.space.dropout=0.1",
          "--set", "search.space.learning_rate={choice: [0.001, 0.01]}"],
         "`scheduler.kind: pbt` draws its first population with `search.algorithm` random or quasi_random, not grid"),
        (["tune", "--set", "search.warm_start.experiments=[earlier]"],
         "The warm-start experiment `earlier` does not exist under"),
        # A value the built-in model refuses, found before MNIST is read (here from a folder
        # that does not exist) or staged.
        (["tune", "--config", "mnist", "--set", "search.space.dropout=1.5", "--set", "data.source=./no-mnist-here"],
         "The model builder `tuner.models:mnist_mlp` raised ValueError with dropout=1.5"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "scaling.workers=8" in args:
        # The resource check needs a cluster; give it a fake one instead of starting Ray.
        from tuner import tune

        def connect(address, spec, runtime_env=None, console="normal"):
            res = tune.TrialResources.of(spec)
            return tune.Cluster({"CPU": 2.0}, res, tune.concurrent_trials(res, {"CPU": 2.0}, spec.scaling.max_concurrent_trials))

        monkeypatch.setattr(tune, "connect", connect)
    code = main([*args, "--storage", str(tmp_path / "store")] if "--storage" not in args else args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert any(message in line for line in err), err
    assert all(line.startswith("tuner: error: ") for line in err)
    # Nothing written: no experiment, no dataset staged (a trial that fits no cluster is
    # refused before the MNIST subset would be staged), no folder left by the checks.
    assert not (tmp_path / "store").exists()


def test_spec_errors_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--set", "asha.max_t=0", "--set", "scaling.workers=0"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3  # max_t, grace > max_t, workers
    assert list(tmp_path.iterdir()) == []


def test_stage_data_builtin(tmp_path, capsys):
    assert main(["stage-data", "--dest", str(tmp_path / "ds")]) == 0
    assert "train 2750, validation 250, test 1000 rows" in capsys.readouterr().out
    assert (tmp_path / "ds" / "manifest.json").exists()


def test_best_without_summary(tmp_path, capsys):
    assert main(["best", "--storage", str(tmp_path), "--name", "none"]) == 2
    assert "No summary at" in capsys.readouterr().err


def test_experiment_state_and_what_a_rerun_may_change(tmp_path):
    import json

    from tuner import experiment
    from tuner.spec import load_spec

    spec = load_spec("quick", name="exp", **{"storage.uri": str(tmp_path)}).with_absolute_paths()
    assert experiment.experiment_state(spec) == "new"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / experiment.SPEC_FILE).write_text(json.dumps(experiment.spec_json(spec)))
    assert experiment.experiment_state(spec) == "interrupted"
    # How to run may change between runs; what to run may not.
    relaxed = load_spec("quick", ["failure.max_failures=3", "scaling.max_concurrent_trials=1"], name="exp",
                        **{"storage.uri": str(tmp_path)}).with_absolute_paths()
    assert experiment.experiment_state(relaxed) == "interrupted"
    other = load_spec("quick", ["asha.max_t=5"], name="exp", **{"storage.uri": str(tmp_path)}).with_absolute_paths()
    with pytest.raises(experiment.UsageError, match=r"different spec \(`asha.max_t` differ\)"):
        experiment.experiment_state(other)
    # Stored by an older tuner, without the fields added since: those count as defaults.
    older = experiment.spec_json(spec)
    del older["scheduler"], older["checkpoint"]["upload"]
    (tmp_path / "exp" / experiment.SPEC_FILE).write_text(json.dumps(older))
    assert experiment.experiment_state(spec) == "interrupted"
    with pytest.raises(experiment.UsageError, match=r"different spec \(`scheduler.kind` differ\)"):
        experiment.experiment_state(load_spec("quick", ["scheduler.kind=fifo"], name="exp",
                                       **{"storage.uri": str(tmp_path)}).with_absolute_paths())
    # Sync or async uploads change no result: a re-run may switch.
    assert experiment.experiment_state(load_spec("quick", ["checkpoint.upload=sync"], name="exp",
                                          **{"storage.uri": str(tmp_path)}).with_absolute_paths()) == "interrupted"
    summary = {"spec": experiment.spec_json(spec), "best": None,
               "trials": [{"trial_id": "a", "status": "error"}]}
    (tmp_path / "exp" / "summary.json").write_text(json.dumps(summary))
    assert experiment.experiment_state(spec) == "failed-trials"
    no_retry = load_spec("quick", ["failure.retry_errored_on_resume=false"], name="exp",
                         **{"storage.uri": str(tmp_path)}).with_absolute_paths()
    assert experiment.experiment_state(no_retry) == "finished"
