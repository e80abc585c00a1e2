"""The tuning job end to end: real local Ray, real S3 server, real MNIST subset."""

import io
import json
import math
import re
import zipfile

import boto3
import pyarrow.parquet as pq
import pytest
from conftest import keras_scores, mlflow_runs, run_tuner

# On Ray as it ships: none of tuner's Ray patches (conftest.ray_as_it_ships).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_as_it_ships")]

# Two learning rates: one that learns and one that barely moves, twice each, so that
# ASHA meets the slow one at rung 1 after a fast one has set the bar.
E2E_ARGS = [
    "--config", "quick",
    "--set", "search.algorithm=grid",
    "--set", "search.num_samples=2",
    "--set", "search.space.learning_rate={choice: [0.003, 0.00001]}",
    "--set", "search.space.optimizer=adam",
    "--set", "search.space.schedule=constant",
    "--set", "search.space.dropout=0.1",
    "--set", "search.space.width=64",
    "--set", "search.space.depth=1",
    "--set", "search.space.batch_size={choice: [64]}",
    "--set", "asha.max_t=3",
    "--set", "asha.grace_period=1",
    "--set", "asha.reduction_factor=2",
    "--set", "scaling.workers=2",
    "--set", "scaling.max_concurrent_trials=1",
]


# Start-up and per-report chatter of TensorFlow, MultiWorkerMirroredStrategy, Ray Train
# and Ray that `tuner` keeps off the console unless --verbose.
CHATTER = re.compile("|".join([
    r"oneDNN custom operations", r"cuInit", r"Could not find cuda drivers", r"absl::InitializeLog",
    r"MultiWorkerMirroredStrategy with cluster_spec", r"Enabled multi-worker collective ops",
    r"Using MirroredStrategy", r"Reporting training result", r"Checkpoint successfully created",
    r"TrainingReport\(", r"placement group", r"Started distributed worker processes",
    r"Trial status:", r"Trial .* started with configuration", r"Wrote the latest version of all result files",
]))


def assert_readable_console(proc, trials: int) -> None:
    """The default console: a line per trial start and end, no library chatter, short."""
    lines = (proc.stdout + proc.stderr).splitlines()
    noisy = [line for line in lines if CHATTER.search(line)]
    assert not noisy, "\n".join(noisy[:20])
    started = [line for line in lines if re.search(r"\] trial \S+ started: ", line)]
    ended = [line for line in lines if re.search(r"\] trial \S+ (finished|stopped by|failed)", line)]
    assert len(started) == trials and len(ended) == trials, "\n".join(lines)
    assert len(lines) <= 80, "\n".join(lines)


def s3_client(env):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def get(client, key: str) -> bytes:
    return client.get_object(Bucket="tuner", Key=key)["Body"].read()


def test_tune_end_to_end_on_s3(moto_s3, optional_mlflow, unique_name, tmp_path):
    # Tracked to MLflow where the server is installed (always in CI).
    tracked = {"MLFLOW_TRACKING_URI": optional_mlflow} if optional_mlflow else {}
    proc = run_tuner(["tune", *E2E_ARGS, "--name", unique_name, "--storage", "s3://tuner/exp"],
                     env={**moto_s3, **tracked}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Best trial" in proc.stdout
    assert "tuner: warning: Ray patches are off (TUNER_RAY_PATCHES=off)" in proc.stderr
    assert_readable_console(proc, trials=4)

    client = s3_client(moto_s3)
    prefix = f"exp/{unique_name}"
    summary = json.loads(get(client, f"{prefix}/summary.json"))
    rows = pq.read_table(io.BytesIO(get(client, f"{prefix}/results.parquet"))).to_pylist()
    trials = summary["trials"]
    train_rows = 2750  # the shipped subset: 3000 training images less 1/12 for validation

    # Four trials, two workers each; ASHA stopped at least one before max_t.
    assert len(trials) == 4 and all(t["status"] == "terminated" for t in trials)
    assert any(t["stopped_early"] and t["epochs"] < 3 for t in trials)
    assert any(t["epochs"] == 3 for t in trials)
    for t in trials:
        assert t["workers"] == 2 and t["global_batch"] == 2 * t["per_worker_batch"] == 128
        assert t["steps_per_epoch"] == math.ceil(train_rows / 128) == 22

    # results.parquet holds one row per reported epoch and agrees with the summary.
    assert len(rows) == sum(t["epochs"] for t in trials) == summary["epochs_spent"]
    for row in rows:
        assert row["workers"] == 2 and row["global_batch"] == 2 * row["per_worker_batch"]
        assert row["steps_per_epoch"] == 22
    by_trial = {t["trial_id"]: t for t in trials}
    for trial_id, t in by_trial.items():
        epochs = sorted(r["epoch"] for r in rows if r["trial_id"] == trial_id)
        assert epochs == list(range(1, t["epochs"] + 1))
    # ASHA's rungs (max_t 3, reduction factor 2: rungs at epochs 1 and 2) hold every
    # trial that got there, with its accuracy then.
    (rungs,) = summary["asha_rungs"]
    assert [r["epoch"] for r in rungs] == [1, 2]
    for rung in rungs:
        reached = {r["trial_id"]: r["val_accuracy"] for r in rows if r["epoch"] == rung["epoch"]}
        assert rung["recorded"] == pytest.approx(reached)
    best = summary["best"]
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert best["val_accuracy"] > 0.7 and best["config"]["learning_rate"] == 0.003

    # Checkpoints are in the bucket, and the two workers held identical weights.
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="tuner", Prefix=f"{prefix}/runs/")
            for o in page.get("Contents", [])]
    ckpt = best["checkpoint_uri"].removeprefix("s3://tuner/")
    assert f"{ckpt}/model.keras" in keys
    state = json.loads(get(client, f"{ckpt}/state.json"))
    assert len(state["replica_weights_sha256"]) == 2
    assert set(state["replica_weights_sha256"]) == {state["metrics"]["weights_sha256"]}
    for row in rows:
        assert row["checkpoint_path"] and row["weights_sha256"]

    # The exported best model reloads and reproduces the summary's test accuracy.
    import tf_keras

    import tuner.training  # noqa: F401 - registers the learning-rate schedule its optimizer carries

    local = tmp_path / "best.keras"
    local.write_bytes(get(client, f"{prefix}/best_model.keras"))
    # The Keras v3 zip, not HDF5 under a .keras name (tf_keras falls back to HDF5 when
    # its saving module was imported on another thread).
    assert zipfile.is_zipfile(local)
    net = tf_keras.models.load_model(local)
    splits = _splits(tmp_path)
    # Plain tf_keras scores the stored model as tuner reported it.
    scores = keras_scores(net, *splits["test"])
    # Keras keeps its metrics in float32: equal to float32 rounding.
    assert scores["accuracy"] == pytest.approx(best["test_accuracy"], abs=1e-6)
    assert scores["loss"] == pytest.approx(best["test_loss"], rel=1e-5)
    # Its validation score, which the two workers computed half each, on one process.
    scores = keras_scores(net, *splits["validation"])
    assert scores["accuracy"] == pytest.approx(best["val_accuracy"], abs=1.5 / len(splits["validation"][1]))
    epoch = int(best["checkpoint_uri"].rsplit("epoch-", 1)[1])
    (row,) = [r for r in rows if r["trial_id"] == best["trial_id"] and r["epoch"] == epoch]
    assert scores["loss"] == pytest.approx(row["val_loss"], rel=1e-4)

    # TensorBoard event files, one folder per trial, stepped by epoch.
    events = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="tuner", Prefix=f"{prefix}/")
              for o in page.get("Contents", []) if "/events.out.tfevents." in o["Key"]]
    assert len({k.rsplit("/", 1)[0] for k in events}) == len(trials), events
    import tensorflow as tf

    for key in events:
        path = tmp_path / key.rsplit("/", 1)[1]
        path.write_bytes(get(client, key))
        steps = [e.step for e in tf.compat.v1.train.summary_iterator(str(path))
                 for v in e.summary.value if v.tag == "ray/tune/val_accuracy"]
        assert steps and steps == list(range(1, len(steps) + 1)), (key, steps)

    # `tuner report` writes its page next to the results, in S3.
    page = run_tuner(["report", "--storage", "s3://tuner/exp", "--name", unique_name], env=moto_s3)
    assert page.returncode == 0 and page.stdout.strip() == f"s3://tuner/exp/{unique_name}/report/report.html", page.stderr
    assert get(client, f"{prefix}/report/report.html").count(b"data:image/png;base64,") == 4

    # `tuner best` prints the same best trial.
    shown = run_tuner(["best", "--storage", "s3://tuner/exp", "--name", unique_name], env=moto_s3)
    assert shown.returncode == 0 and json.loads(shown.stdout)["trial_id"] == best["trial_id"]

    # The same command again (a RayJob retry, say) reports the finished experiment and
    # runs nothing; with another spec under the same name it is refused. Nothing changes.
    again = run_tuner(["tune", *E2E_ARGS, "--name", unique_name, "--storage", "s3://tuner/exp"], env=moto_s3, cwd=tmp_path)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr
    assert json.loads(again.stdout[again.stdout.index("{"):])["trial_id"] == best["trial_id"]
    other = run_tuner(["tune", *E2E_ARGS, "--set", "asha.max_t=2", "--name", unique_name, "--storage", "s3://tuner/exp"],
                      env=moto_s3, cwd=tmp_path)
    assert other.returncode == 2 and "with a different spec (`asha.max_t` differ)" in other.stderr, other.stderr
    assert json.loads(get(client, f"{prefix}/summary.json")) == summary
    if optional_mlflow:
        check_mlflow(optional_mlflow, unique_name, proc.stdout, prefix, by_trial, rows, best, local, tmp_path)


def check_mlflow(url, name, stdout, prefix, by_trial, rows, best, model, tmp_path):
    """The experiment's MLflow run, a nested run per trial with its params, one
    val_accuracy per epoch run and its outcome; the best model, summary, spec and report
    on the experiment's run."""
    import tf_keras

    mlflow, parent, children = mlflow_runs(url, name)
    assert parent.info.status == "FINISHED" and parent.data.tags["tuner.experiment_uri"] == f"s3://tuner/{prefix}"
    assert f"{url}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}" in stdout
    assert set(children) == set(by_trial)
    for trial_id, run in children.items():
        t = by_trial[trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["tuner.outcome"] == ("stopped" if t["stopped_early"] else "finished")
        assert float(run.data.params["learning_rate"]) == t["config"]["learning_rate"]
        assert run.data.params["global_batch"] == "128"
        history = mlflow.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, t["epochs"] + 1))
        assert [m.value for m in history] == pytest.approx(
            [r["val_accuracy"] for r in sorted(rows, key=lambda r: r["epoch"]) if r["trial_id"] == trial_id])
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(best["test_accuracy"])
    assert parent.data.params["search.num_samples"] == "2" and parent.data.params["asha.max_t"] == "3"
    shown = {a.path for a in mlflow.list_artifacts(parent.info.run_id)} | \
        {a.path for a in mlflow.list_artifacts(parent.info.run_id, "report")}
    assert {"best_model.keras", "summary.json", "spec.json", "report/report.html"} <= shown
    logged = mlflow.download_artifacts(parent.info.run_id, "best_model.keras", str(tmp_path))
    assert open(logged, "rb").read() == model.read_bytes()
    tf_keras.models.load_model(logged)


def _splits(tmp_path):
    from tuner import data

    uri = str(tmp_path / "ds")
    data.stage(data.source_for("builtin"), uri, 1 / 12)
    return {split: data.load_split(uri, split) for split in ("validation", "test")}
