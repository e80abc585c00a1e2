"""MLflow runs as ``tuner`` keeps them (see ``tuner.tracking``): their names and tags,
the calls made to the tracking server (short timeouts, few retries, one ``log_batch`` per
epoch) and what a trial's run says at its end. Used by the run's callback
(``tuner/tracker.py``) and by the experiment's start and end (``tuner.tracking``); imports
no mlflow until a call needs it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass

from tuner import storage

ENV_URI = "MLFLOW_TRACKING_URI"
RUN_FILE = "mlflow.json"  # <storage>/<name>/mlflow.json: the tracking server and the parent run
TAG_EXPERIMENT = "tuner.experiment_uri"
TAG_TRIAL = "tuner.trial_id"
TAG_OUTCOME = "tuner.outcome"
TAG_LAST_EPOCH = "tuner.last_epoch"  # the last epoch logged, for a resumed experiment
TAG_GENERATION = "tuner.generation"  # a PBT member's generation (tuner.population)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: its UI nests the run under this one
# Per-epoch metrics beyond the `val_*` ones; what stays the same over a trial (workers,
# batches, steps per epoch) is logged once, as params.
EPOCH_METRICS = ("loss", "accuracy", "mae", "learning_rate", "train_seconds", "validation_seconds",
                 "samples_per_second", "peak_rss_mb", "startup_seconds", "checkpoint_save_seconds")
TRIAL_PARAMS = ("workers", "per_worker_batch", "global_batch", "steps_per_epoch")
PREFLIGHT_TIMEOUT_S = 10
# While trials run: a call MLflow cannot make within these is given up, and after a
# failure no call is tried for PAUSE_S, so that a server that went down holds Tune's
# loop up for seconds, not minutes per event.
RUN_RETRIES, RUN_TIMEOUT_S, PAUSE_S = 2, 30, 60


class TrackingError(RuntimeError):
    """The tracking server cannot be used; one line, printed before anything runs."""


@dataclass(frozen=True)
class Target:
    uri: str  # the tracking URI
    experiment: str  # the MLflow experiment's name


def target(spec) -> Target | None:
    """Where this spec's runs are tracked, or None (no tracking)."""
    m = spec.tracking.mlflow
    uri = m.uri or os.environ.get(ENV_URI)
    return Target(uri, m.experiment or spec.name) if uri else None


def _quiet_env() -> None:
    # MLflow draws a progress bar per artifact upload and download, and prints two lines
    # (the run's and the experiment's web page) per ended run, after one more request;
    # `finish` names the experiment's run once.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


@contextlib.contextmanager
def _http(retries: int, timeout: int):
    """MLflow's retries and per-request timeout, for the calls inside (MLflow reads them
    at each request; its defaults, 7 retries with backoff and 120 s, can hold a call for
    minutes)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def preflight(spec) -> None:
    """Check that the tracking server answers and its experiment can take runs.

    Raises:
        TrackingError: one line naming what is wrong and what to do.
    """
    where = target(spec)
    if where is None:
        return
    source = "`tracking.mlflow.uri`" if spec.tracking.mlflow.uri else f"${ENV_URI}"
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise TrackingError(f"MLflow tracking is on ({source} is {where.uri!r}), but mlflow is not installed; run: "
                            "pip install 'tuner[mlflow]'") from None
    _quiet_env()
    try:
        with _http(retries=0, timeout=PREFLIGHT_TIMEOUT_S):  # one quick try
            found = MlflowClient(where.uri).get_experiment_by_name(where.experiment)
    except Exception as e:  # noqa: BLE001 - any failure here is the same line to the user
        raise TrackingError(f"The MLflow tracking server at {where.uri} (from {source}) cannot be used: {_reason(e)}. "
                            f"Start it or correct the URI, or unset it to run without tracking.") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise TrackingError(f"The MLflow experiment {where.experiment!r} at {where.uri} is deleted; restore it "
                            "(mlflow experiments restore) or set `tracking.mlflow.experiment` to another name.")


def _reason(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def flat(params: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]  # MLflow's limit for a param's value
    return out


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "item"):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


END_TAGS = (TAG_OUTCOME, "tuner.error", "tuner.stopped_at_epoch", "tuner.stopped_by")


def end_of(failed: bool, epoch: int, max_t: int, stopper: str, error: str | None = None) -> tuple[str, dict]:
    """(MLflow status, tags) of a trial's run at its end."""
    if failed:
        return "FAILED", {TAG_OUTCOME: "failed", **({"tuner.error": error} if error else {})}
    if epoch >= max_t:
        return "FINISHED", {TAG_OUTCOME: "finished"}
    return "FINISHED", {TAG_OUTCOME: "stopped", "tuner.stopped_at_epoch": str(epoch), "tuner.stopped_by": stopper}


def _error_reason(trial) -> str | None:
    from tuner.console import reason

    try:
        with open(trial.error_file) as f:
            return reason(f.read())
    except (OSError, TypeError):
        return None


def _exists(client, run_id: str) -> bool:
    try:
        return client.get_run(run_id).info.lifecycle_stage != "deleted"
    except Exception:  # noqa: BLE001 - MlflowException(RESOURCE_DOES_NOT_EXIST), or the server's 404
        return False


def _log_batch(client, run_id: str, metrics: dict | None = None, step: int = 0, params: dict | None = None,
               tags: dict | None = None) -> None:
    """One request (MLflow's client splits what exceeds a request's limits)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in (metrics or {}).items()],
                     params=[Param(k, v) for k, v in (params or {}).items()],
                     tags=[RunTag(k, v) for k, v in (tags or {}).items()])


def _children(client, experiment_id: str, parent_id: str, running_only: bool = False):
    """The runs nested under ``parent_id`` (those still RUNNING: ``running_only``)."""
    query = f"tags.`{PARENT_TAG}` = '{parent_id}'" + (" and attributes.status = 'RUNNING'" if running_only else "")
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def trial_runs(client, experiment_id: str, parent_id: str) -> dict[str, tuple[str, int, dict]]:
    """trial id -> (run id, the last epoch it logged, its tags), of the runs nested under
    ``parent_id``."""
    return {run.data.tags[TAG_TRIAL]: (run.info.run_id, int(run.data.tags.get(TAG_LAST_EPOCH, 0)), run.data.tags)
            for run in _children(client, experiment_id, parent_id) if TAG_TRIAL in run.data.tags}


def _close_open_runs(client, record: dict, end) -> None:
    """End the trials' runs still RUNNING: ``end(trial_id)`` gives (status, tags), or None
    to leave the run as it is."""
    for run in _children(client, record["experiment_id"], record["run_id"], running_only=True):
        ending = end(run.data.tags.get(TAG_TRIAL))
        if ending is not None:
            _log_batch(client, run.info.run_id, tags=ending[1])
            client.set_terminated(run.info.run_id, status=ending[0])


def read_run_file(experiment: storage.Location) -> dict | None:
    """The experiment's ``mlflow.json`` (where its MLflow run is), or None."""
    run_file = experiment.join(RUN_FILE)
    return run_file.read_json() if run_file.exists() else None


def _warn(what: str, where: Target, e: Exception, exp_uri: str) -> None:
    print(f"tuner: warning: MLflow: could not {what} at {where.uri}: {_reason(e)}; the experiment's results are "
          f"stored under {exp_uri}.", file=sys.stderr, flush=True)


def is_tracker(callback) -> bool:
    """Whether ``callback`` is a ``Tracker``, without loading mlflow to find out."""
    loaded = sys.modules.get("tuner.tracker")
    return loaded is not None and isinstance(callback, loaded.Tracker)
