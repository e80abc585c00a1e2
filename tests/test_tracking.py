"""MLflow tracking's settings and checks (the runs themselves: tests/integration/test_e2e.py
and test_stop_signals.py, against a real MLflow server)."""

import pickle
import sys
import time

import pytest

from tuner import tracking
from tuner.spec import SpecError, build_spec, load_spec
from tuner.storage import Location


def test_the_spec_section_and_its_defaults(monkeypatch):
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    assert tracking.target(build_spec({})) is None
    spec = build_spec({"name": "exp", "tracking": {"mlflow": {"uri": "http://mlflow:5000"}}})
    assert tracking.target(spec) == tracking.Target("http://mlflow:5000", "exp")  # the experiment's name
    spec = load_spec("quick", ["tracking.mlflow.uri=http://a:1", "tracking.mlflow.experiment=team"])
    assert tracking.target(spec) == tracking.Target("http://a:1", "team")
    assert build_spec(spec.to_dict()) == spec  # round-trips, as the stored spec.json does


def test_the_environment_variable_turns_it_on_and_the_spec_wins(monkeypatch):
    monkeypatch.setenv(tracking.ENV_URI, "http://from-env:5000")
    assert tracking.target(build_spec({"name": "e"})) == tracking.Target("http://from-env:5000", "e")
    spec = build_spec({"name": "e", "tracking": {"mlflow": {"uri": "http://spec:1"}}})
    assert tracking.target(spec).uri == "http://spec:1"


@pytest.mark.parametrize("raw, message", [
    ({"mlflow": 3}, "The value of `tracking.mlflow` must be a mapping of its fields (uri, experiment)."),
    ({"mlflow": {"url": "x"}}, "Unknown key `tracking.mlflow.url`; known keys under `tracking.mlflow`: uri, experiment."),
    ({"mlflow": {"uri": " "}}, "The value of `tracking.mlflow.uri` is empty; set it or leave it out."),
    ({"mlflow": {"experiment": 5}}, "The value of `tracking.mlflow.experiment` is 5, but must be a string."),
])
def test_bad_sections_are_one_line_each(raw, message):
    with pytest.raises(SpecError) as e:
        build_spec({"tracking": raw})
    assert e.value.problems == [message]


def test_an_unreachable_server_is_one_line_within_seconds(monkeypatch):
    monkeypatch.setenv(tracking.ENV_URI, "http://127.0.0.1:9")
    started = time.time()
    with pytest.raises(tracking.TrackingError) as e:
        tracking.preflight(build_spec({}))
    assert time.time() - started < tracking.PREFLIGHT_TIMEOUT_S + 5  # no retries with backoff
    text = str(e.value)
    assert "\n" not in text and text.startswith("The MLflow tracking server at http://127.0.0.1:9 (from "
                                                "$MLFLOW_TRACKING_URI) cannot be used: ")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in __import__("os").environ  # restored


def test_without_mlflow_installed_the_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(tracking.TrackingError, match=r"mlflow is not installed; run: pip install 'tuner\[mlflow\]'"):
        tracking.preflight(build_spec({"tracking": {"mlflow": {"uri": "http://x:1"}}}))


def test_the_callback_pickles_without_its_runs():
    t = tracking.Tracker(tracking.Target("http://x:1", "e"), Location("s3://b/e"), {"a": "1"}, 5, "ASHA")
    t.parent_id, t._runs = "p", {"t1": "r1"}
    back = pickle.loads(pickle.dumps(t))
    assert (back.parent_id, back._runs, back.where, back.max_t) == (None, {}, t.where, 5)
    assert back.mlflow_util is None  # made in setup: unpickling needs no mlflow
    # Pickled by a tuner before storage.Location, with the experiment's URI and endpoint.
    old = t.__getstate__()
    del old["experiment"]
    old.update(experiment_uri="s3://b/e", endpoint="http://s3:9")
    t.__setstate__(old)
    assert t.experiment == Location("s3://b/e", "http://s3:9")


def test_an_experiment_pickled_with_the_callback_in_tracking_still_loads():
    # Before tuner/tracker.py, the class was tuner.tracking.Tracker in saved experiments.
    from tuner.tracker import Tracker

    assert pickle.loads(b"ctuner.tracking\nTracker\n.") is Tracker is tracking.Tracker


def test_an_untracked_run_loads_neither_mlflow_nor_pytorch():
    """What an untracked run's driver imports to set Tune up: MLflow (Ray's callback) and
    PyTorch (tensorboardX's type annotation) took 2 and 4 s of its start (tuner/tracker.py,
    tuner/tensorboard.py)."""
    import subprocess

    probe = ("import sys; from tuner import tracking, tune; from tuner.tensorboard import EpochTensorBoard; "
             "EpochTensorBoard('epoch'); assert not tracking.is_tracker(object()); "
             "print(sorted(m for m in ('mlflow', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]"]


def test_a_restored_run_loads_no_pytorch_with_its_tensorboard_callback(tmp_path):
    """A resumed run unpickles its callbacks from tuner.pkl: tensorboardX's writer class
    is not in the pickle (it would import PyTorch), and the unpickled callback has it back."""
    import subprocess

    from tuner.tensorboard import EpochTensorBoard

    (tmp_path / "cb.pkl").write_bytes(pickle.dumps(EpochTensorBoard("epoch")))
    probe = ("import pickle, sys; cb = pickle.load(open(sys.argv[1], 'rb')); "
             "print(cb._summary_writer_cls.__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "cb.pkl")], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["SummaryWriter", "False"]


def test_how_a_trial_run_ends():
    assert tracking.end_of(False, 5, 5, "ASHA") == ("FINISHED", {"tuner.outcome": "finished"})
    assert tracking.end_of(False, 1, 5, "ASHA") == (
        "FINISHED", {"tuner.outcome": "stopped", "tuner.stopped_at_epoch": "1", "tuner.stopped_by": "ASHA"})
    assert tracking.end_of(True, 2, 5, "ASHA", "DivergedError: loss nan") == (
        "FAILED", {"tuner.outcome": "failed", "tuner.error": "DivergedError: loss nan"})


def test_params_are_flat_strings():
    assert tracking.flat({"a": 1, "b": {"c": [1, 2], "d": None}}) == {"a": "1", "b.c": "[1, 2]", "b.d": "None"}


def test_a_server_that_stops_answering_costs_one_warning_not_the_run(tmp_path, capsys):
    """Every hook against a server that refuses connections (port 9): nothing raises, one
    warning, then no call for PAUSE_S, and the experiment's end counts what was skipped."""
    from types import SimpleNamespace

    t = tracking.Tracker(tracking.Target("http://127.0.0.1:9", "e"), Location(str(tmp_path / "exp")), {}, 3, "ASHA")
    trial = SimpleNamespace(trial_id="t1", config={"learning_rate": 0.1}, last_result={"epoch": 1}, error_file=None,
                            status="RUNNING")
    started = time.time()
    t.setup()
    t.log_trial_start(trial)
    t.log_trial_result(1, trial, {"epoch": 1, "val_accuracy": 0.5})
    t.log_trial_end(trial)
    t.on_experiment_end([trial])
    assert time.time() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert err[0].startswith("tuner: warning: MLflow: could not start the experiment's run at http://127.0.0.1:9: ")
    assert err[1].startswith("tuner: warning: MLflow: 3 call(s) were not made while http://127.0.0.1:9 did not answer")


def test_a_resumed_trial_on_a_new_ray_keeps_its_stored_results(tmp_path):
    """A new Ray session has an empty staging folder: a trial that reported before takes
    its stored result.json back and appends to it, rather than uploading a file of only
    the new run's epochs over it; a new trial reads nothing from storage (Tune's
    ``last_result`` is never empty: it holds the trial's id). Each trial's files are
    made only when they have something to upload: params.json at the start, result.json
    with the first result, and no params.pkl."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import pyarrow.fs as pafs

    from tuner.tensorboard import TrialResults, local_results

    stored = tmp_path / "storage" / "trial_a"
    stored.mkdir(parents=True)
    (stored / "result.json").write_text(json.dumps({"epoch": 1}) + "\n")
    reads = []

    class Storage(pafs.LocalFileSystem):
        def open_input_file(self, path):
            reads.append(path)
            return super().open_input_file(path)

    class Trial(SimpleNamespace):  # what the logger reads of Tune's trial; hashable, as Tune's is
        __hash__ = object.__hash__

    def trial(name, reported):
        local = tmp_path / "session-2" / name
        local.mkdir(parents=True)  # Tune makes it when it adds the trial
        storage = SimpleNamespace(storage_filesystem=Storage(), trial_fs_path=str(tmp_path / "storage" / name))
        return Trial(trial_id=name, config={"lr": 0.1}, last_result={"trial_id": name, **reported},
                     run_metadata=SimpleNamespace(last_result=reported), local_path=str(local), storage=storage,
                     checkpoint=None, init_local_path=lambda: local.mkdir(parents=True, exist_ok=True))

    resumed, fresh = trial("trial_a", {"epoch": 1}), trial("trial_b", {})
    logger = TrialResults()
    for t in (resumed, fresh):
        logger.log_trial_start(t)
        if t is fresh:
            assert [p.name for p in Path(t.local_path).iterdir()] == ["params.json"]
        logger.log_trial_result(1, t, {"epoch": 2})
        logger.log_trial_end(t)
    assert reads == [str(stored / "result.json")]
    session = tmp_path / "session-2"
    assert [json.loads(line)["epoch"] for line in (session / "trial_a" / "result.json").open()] == [1, 2]
    assert [json.loads(line)["epoch"] for line in (session / "trial_b" / "result.json").open()] == [2]
    assert sorted(p.name for p in (session / "trial_b").iterdir()) == ["params.json", "result.json"]
    assert json.loads((session / "trial_b" / "params.json").read_text()) == {"lr": 0.1}
    # What the end-of-run analysis takes (not storage's copy): the files this process wrote.
    assert [r["epoch"] for r in local_results(resumed)] == [1, 2] and local_results(fresh) == [{"epoch": 2}]
    assert local_results(trial("trial_c", {"epoch": 1})) is None  # ended before this run: read from storage
    silent = trial("trial_d", {})
    logger.log_trial_start(silent)
    assert local_results(silent) == []

    # A resumed run in the same Ray session: an earlier driver's local file may lag behind
    # the stored one (the experiment went on elsewhere meanwhile): the stored one wins.
    (stored.parent / "trial_e").mkdir()
    (stored.parent / "trial_e" / "result.json").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in (1, 2)))
    stale = trial("trial_e", {"epoch": 2})
    (session / "trial_e" / "result.json").write_text(json.dumps({"epoch": 1}) + "\n")
    TrialResults(fetch_stored=True).log_trial_start(stale)
    assert [r["epoch"] for r in local_results(stale)] == [1, 2]


def test_the_tensorboard_file_is_made_with_the_first_result(tmp_path):
    """Not at the trial's start: a file of only its header would go up to storage once
    more. Steps are epochs, and a trial ended before any result leaves no file."""
    from types import SimpleNamespace

    import tensorflow as tf

    from tuner.tensorboard import EpochTensorBoard

    class Trial(SimpleNamespace):
        __hash__ = object.__hash__

    def trial(name):
        local = tmp_path / name
        return Trial(trial_id=name, local_path=str(local), evaluated_params={"lr": 0.1},
                     init_local_path=lambda: local.mkdir(parents=True, exist_ok=True))

    reported, silent = trial("a"), trial("b")
    board = EpochTensorBoard("epoch")
    for t in (reported, silent):
        board.log_trial_start(t)
    assert not (tmp_path / "a").exists()
    board.log_trial_result(1, reported, {"epoch": 3, "training_iteration": 1, "val_accuracy": 0.5})
    for t in (reported, silent):
        board.log_trial_end(t)
    assert not (tmp_path / "b").exists()
    [events] = (tmp_path / "a").glob("events.out.tfevents.*")
    scalars = [(e.step, v.tag, round(v.simple_value, 6)) for e in tf.compat.v1.train.summary_iterator(str(events))
               for v in e.summary.value if v.HasField("simple_value")]
    assert (3, "ray/tune/val_accuracy", 0.5) in scalars


def test_a_multi_objective_run_logs_its_front_on_the_parent_run(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    import mlflow

    calls = []

    class Client:  # MlflowClient's calls that finish() makes, recorded
        def __init__(self, uri):
            pass

        def log_batch(self, run_id, metrics=(), params=(), tags=()):
            calls.append(("batch", {m.key: m.value for m in metrics}, {t.key: t.value for t in tags}))

        def log_artifact(self, run_id, path):
            calls.append(("artifact", Path(path).name, Path(path).read_text() if path.endswith(".json") else None))

        def log_artifacts(self, run_id, path, folder):
            pass

        def search_runs(self, *args, **kwargs):
            return type("Page", (list,), {"token": None})()

        def set_terminated(self, run_id, status):
            calls.append(("end", status))

    monkeypatch.setattr(mlflow, "MlflowClient", Client)
    monkeypatch.setattr(tracking, "_report", lambda spec, folder: folder)
    spec = load_spec("quick", ["objective=[{metric: val_accuracy}, {metric: params}]", f"storage.uri={tmp_path}",
                               "tracking.mlflow.uri=http://127.0.0.1:9"])
    spec.experiment_location().join("mlflow.json").write_json({"run_id": "r", "experiment_id": "1"})
    front = [{"trial_id": "a", "epoch": 2, "val_accuracy": 0.9, "params": 900, "config": {}, "checkpoint_uri": "x"},
             {"trial_id": "b", "epoch": 2, "val_accuracy": 0.8, "params": 100, "config": {}, "checkpoint_uri": "y"}]
    summary = {"best": {"trial_id": "a", "epoch": 2, "val_accuracy": 0.9}, "trials": [], "pareto_front": front,
               "hypervolume": {"value": 12.5, "reference": {}}}
    assert tracking.finish(spec, summary, "ASHA")
    (batch,) = [c for c in calls if c[0] == "batch"]
    assert batch[1]["pareto_front_trials"] == 2 and batch[1]["hypervolume"] == 12.5
    assert batch[2]["tuner.pareto_front"] == "a,b"
    assert ("artifact", "pareto_front.json", json.dumps(front, indent=2)) in calls and ("end", "FINISHED") in calls
