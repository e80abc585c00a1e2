"""MLflow tracking: ``tracking.mlflow`` in the spec, or ``$MLFLOW_TRACKING_URI``.

An experiment is one MLflow run (the parent) with a nested run per trial:

- a trial's run has its hyperparameters as params, the epoch's metrics stepped by epoch
  (``val_*``, the training loss and metric, the learning rate, timings), and at its end
  the status FINISHED (tag ``tuner.outcome``: ``finished``, or ``stopped`` with
  ``tuner.stopped_at_epoch`` and ``tuner.stopped_by``) or FAILED (with the reason);
- the parent has the spec's settings as params, the best trial's scores (validation and
  test) as metrics, and, once the experiment ends, the best model
  (``best_model.keras``), ``summary.json``, ``spec.json`` and the report as artifacts.

``Tracker`` (in ``tuner/tracker.py``) extends Ray Tune's ``MLflowLoggerCallback``
(experiment set-up, run creation and ending are its). What it changes: runs are nested under the parent; a
resumed experiment continues its runs (the parent's ID is kept in the experiment's
storage as ``mlflow.json``, the trials' runs are found by their tag); one ``log_batch``
per epoch instead of one request per metric (Tune's result holds some 40 keys); the
time axis is the reported epoch, which restarts do not reset, and each epoch is logged
once (the run's tag ``tuner.last_epoch`` says which epochs an interrupted run logged;
an epoch stored with a checkpoint whose result Tune never took in before the stop is
logged from the checkpoint's record when the trial resumes from it).

Tracking never stops a run that is under way: a failed call is a warning line.
Before any trial starts, ``preflight`` checks that the server answers (one line, exit 2).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

# The run's names, tags and server calls (re-exported: the spec's checks, the run and
# the tests use them from here).
from tuner.mlflow_runs import (  # noqa: F401
    ENV_URI,
    PREFLIGHT_TIMEOUT_S,
    TAG_OUTCOME,
    Target,
    TrackingError,
    _close_open_runs,
    _http,
    _log_batch,
    _number,
    _quiet_env,
    _warn,
    end_of,
    flat,
    is_tracker,
    preflight,
    read_run_file,
    target,
)

# --- the experiment's end: the best trial on the parent run ---------------------------------


def interrupted(spec) -> None:
    """A run stopped by a signal: its MLflow runs still open end as KILLED, with the tag
    ``tuner.outcome`` ``interrupted``. The same command, run again, reopens them."""
    where = target(spec)
    if where is None:
        return
    try:
        record = read_run_file(spec.experiment_location())
        if not record:
            return
        from mlflow import MlflowClient

        client = MlflowClient(where.uri)
        with _http(retries=0, timeout=PREFLIGHT_TIMEOUT_S):  # the process is on its way out
            _close_open_runs(client, record, lambda trial: ("KILLED", {TAG_OUTCOME: "interrupted"}))
            client.set_terminated(record["run_id"], status="KILLED")
    except Exception:  # noqa: BLE001 - left RUNNING; the re-run reopens them all the same
        pass


def finish(spec, summary: dict, stopper: str) -> str | None:
    """Log the best trial's scores and model, ``summary.json``, ``spec.json`` and the
    report to the parent run, end the trials' runs an MLflow outage left open as the
    summary has them, and end the parent run. Returns where that run is (for the
    console), or None (no tracking, or it failed: a warning line; the results are in
    storage). ``stopper``: what stopped trials early (``tuner.tune.stopper_name``)."""

    where = target(spec)
    if where is None:
        return None
    exp = spec.experiment_location()
    exp_uri = exp.uri
    from mlflow import MlflowClient

    _quiet_env()
    client = MlflowClient(where.uri)
    try:
        record = read_run_file(exp)
    except Exception as e:  # noqa: BLE001
        _warn("find the experiment's run", where, e, exp_uri)
        return None
    if record is None:  # the run could not be started (a warning said so)
        return None
    run_id, best = record["run_id"], summary.get("best") or {}
    try:
        _log_results(client, run_id, spec, summary)
    except Exception as e:  # noqa: BLE001
        _warn("log the results", where, e, exp_uri)
        logged = False
    else:
        logged = True
    try:
        ends = {t["trial_id"]: end_of(t["status"] == "error", int(t.get("epochs") or 0), spec.asha.max_t, stopper,
                                      t.get("error")) for t in summary.get("trials", [])}
        _close_open_runs(client, record, ends.get)
        failed = any(t.get("status") == "error" for t in summary.get("trials", []))
        client.set_terminated(run_id, status="FAILED" if not best and failed else "FINISHED")
    except Exception as e:  # noqa: BLE001
        if logged:
            _warn("end the experiment's run", where, e, exp_uri)
        return None
    if where.uri.startswith(("http://", "https://")):  # the run's page in MLflow's web UI
        return f"{where.uri.rstrip('/')}/#/experiments/{record['experiment_id']}/runs/{run_id}"
    return f"run {run_id} of experiment {where.experiment!r} at {where.uri}"


def _log_results(client, run_id: str, spec, summary: dict) -> None:
    """The best trial's scores (a multi-objective run: its front too), its model,
    ``summary.json``, ``spec.json`` and the report, on the parent run."""
    from tuner import results

    exp, best = spec.experiment_location(), summary.get("best") or {}
    scores = {f"best_{k}": _number(v) for k, v in best.items() if k.startswith(("val_", "test_"))}
    metrics = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    tags = {"tuner.best_trial": best.get("trial_id", ""), "tuner.summary_uri": exp.join(results.SUMMARY).uri}
    front = summary.get("pareto_front")
    if front is not None:
        metrics.update(_front_metrics(summary))
        tags["tuner.pareto_front"] = ",".join(t["trial_id"] for t in front)
    _log_batch(client, run_id, metrics=metrics, step=int(best.get("epoch") or 0), tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        if front is not None:
            Path(tmp, "pareto_front.json").write_text(json.dumps(front, indent=2))
            client.log_artifact(run_id, str(Path(tmp, "pareto_front.json")))
        for name in (results.BEST_MODEL, results.SUMMARY, "spec.json"):
            stored = exp.join(name)
            if stored.exists():
                Path(tmp, name).write_bytes(stored.read_bytes())
                client.log_artifact(run_id, str(Path(tmp, name)))
        if best:
            client.log_artifacts(run_id, str(_report(spec, Path(tmp, "report"))), "report")


def _front_metrics(summary: dict) -> dict:
    """A multi-objective run's front, as the parent run's metrics: its size and hypervolume."""
    volume = (summary.get("hypervolume") or {}).get("value")
    return {"pareto_front_trials": len(summary["pareto_front"]), **({"hypervolume": volume} if volume is not None else {})}


def _report(spec, folder: Path) -> Path:
    """The experiment's report, written to its storage and into ``folder``."""
    from tuner import report

    files: dict = {}
    report.write_report(spec.storage.location, spec.name, files)
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def __getattr__(name: str):
    # ``Tracker`` lives in tuner/tracker.py, loaded (with mlflow) only when asked for:
    # by a tracked run, and by the unpickling of an experiment saved with it here.
    if name == "Tracker":
        from tuner.tracker import Tracker

        return Tracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
