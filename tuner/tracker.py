"""``Tracker``: the MLflow callback of ``tuner.tracking`` (see its docstring), apart
because Ray's ``MLflowLoggerCallback`` imports mlflow, about 2 s of a run's start,
which an untracked run does without. ``tuner.tracking.Tracker`` is this class.
"""

from __future__ import annotations

import os
import sys
import time

from ray.air.integrations.mlflow import MLflowLoggerCallback

from tuner import storage
from tuner.mlflow_runs import (
    END_TAGS,
    EPOCH_METRICS,
    PARENT_TAG,
    PAUSE_S,
    RUN_FILE,
    RUN_RETRIES,
    RUN_TIMEOUT_S,
    TAG_EXPERIMENT,
    TAG_GENERATION,
    TAG_LAST_EPOCH,
    TAG_OUTCOME,
    TAG_TRIAL,
    TRIAL_PARAMS,
    Target,
    _error_reason,
    _exists,
    _http,
    _log_batch,
    _number,
    _quiet_env,
    _reason,
    end_of,
    flat,
    read_run_file,
    trial_runs,
)


class Tracker(MLflowLoggerCallback):
    """Ray Tune's ``MLflowLoggerCallback``, nested under a parent run and resumable (see
    the module's docstring).

    Args:
        where: the tracking server and experiment.
        experiment: where the experiment is stored (``mlflow.json`` is written there).
        spec_params: the spec's settings, flattened, for the parent run's params.
        max_t: a trial's epoch budget (fewer epochs at its end: stopped early).
        stopper: what stops trials early, as the console names it ("ASHA", ...).
    """

    def __init__(self, where: Target, experiment: storage.Location, spec_params: dict, max_t: int, stopper: str):
        super().__init__(tracking_uri=where.uri, experiment_name=where.experiment,
                         tags={TAG_EXPERIMENT: experiment.uri})
        self.where = where
        self.experiment = experiment
        self.spec_params = spec_params
        self.max_t, self.stopper = max_t, stopper
        self._fresh()

    def _fresh(self) -> None:
        self._client = None
        self.parent_id: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._logged: dict[str, int] = {}  # trial id -> the last epoch logged
        self._stale: dict[str, list[str]] = {}  # trial id -> tags of an earlier end, to drop on its restart
        self._open: set[str] = set()  # trial ids whose runs this process has not ended
        self._paused_until = 0.0  # after a failed call: no call before this time
        self._skipped = 0  # calls not made while paused
        self._warned = False

    def __getstate__(self) -> dict:  # Tune pickles its callbacks with the experiment
        state = dict(self.__dict__)
        for k in ("_client", "parent_id", "_runs", "_logged", "_stale", "_open", "_paused_until", "_skipped",
                  "_warned", "_trial_runs", "mlflow_util"):
            state.pop(k, None)  # mlflow_util holds the mlflow module
        return state

    def __setstate__(self, state: dict) -> None:
        if "experiment" not in state:  # pickled before storage.Location: the URI and the endpoint
            state["experiment"] = storage.Location(state.pop("experiment_uri"), state.pop("endpoint", None))
        # Without mlflow importable: a run resumed with tracking off drops this callback.
        self.__dict__.update(state, mlflow_util=None)
        self._fresh()

    # --- set-up: the parent run, and the trials' runs of a resumed experiment ------------

    def setup(self, *args, **kwargs):
        _quiet_env()
        if self.mlflow_util is None:
            from ray.air._internal.mlflow import _MLflowLoggerUtil

            self.mlflow_util = _MLflowLoggerUtil()
        self._guarded("start the experiment's run", self._start_parent)

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.where.uri)
        return self._client

    def _start_parent(self) -> None:
        # The experiment by its name (created if missing); Ray's set-up would prefer
        # $MLFLOW_EXPERIMENT_ID, which is not the experiment the pre-flight checked.
        experiment_id = os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        try:
            super().setup()
        finally:
            if experiment_id is not None:
                os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
        record = read_run_file(self.experiment)
        client = self.client
        same = record is not None and (record.get("tracking_uri"), record.get("experiment_id")) == (
            self.where.uri, self.mlflow_util.experiment_id)
        if record is not None and same and _exists(client, record["run_id"]):
            self.parent_id = record["run_id"]
            client.update_run(self.parent_id, status="RUNNING")
            for trial, (run_id, epoch, tags) in trial_runs(client, self.mlflow_util.experiment_id,
                                                          self.parent_id).items():
                self._runs[trial], self._logged[trial] = run_id, epoch
                self._stale[trial] = [t for t in END_TAGS if t in tags and t != TAG_OUTCOME]
            return
        name = self.experiment.uri.rstrip("/").rsplit("/", 1)[-1]
        run = client.create_run(self.mlflow_util.experiment_id, run_name=name, tags=self.tags)
        self.parent_id = run.info.run_id
        _log_batch(client, self.parent_id, params=self.spec_params)
        self.experiment.join(RUN_FILE).write_json({"tracking_uri": self.where.uri, "run_id": self.parent_id,
                                                   "experiment_id": self.mlflow_util.experiment_id})

    def _guarded(self, what: str, call, *args) -> None:
        """``call(*args)``, with short retries; a failure is a warning (the first only),
        and for ``PAUSE_S`` after it no call is tried."""
        if time.monotonic() < self._paused_until:
            self._skipped += 1
            return
        try:
            with _http(RUN_RETRIES, RUN_TIMEOUT_S):
                call(*args)
        except Exception as e:  # noqa: BLE001 - tracking must not stop the training
            self._paused_until = time.monotonic() + PAUSE_S
            if not self._warned:
                print(f"tuner: warning: MLflow: could not {what} at {self.where.uri}: {_reason(e)}; the run goes on, "
                      f"and tries MLflow again in {PAUSE_S} s (further MLflow errors are not shown).",
                      file=sys.stderr, flush=True)
                self._warned = True

    # --- Tune's hooks (through LoggerCallback) -----------------------------------------------

    def log_trial_start(self, trial):
        self._guarded(f"start the run of trial {trial.trial_id}", self._start_trial, trial)

    def _start_trial(self, trial) -> None:
        if self.parent_id is None:
            return
        client = self.client
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            run = client.create_run(self.mlflow_util.experiment_id, run_name=str(trial),
                                    tags={**(self.tags or {}), PARENT_TAG: self.parent_id, TAG_TRIAL: trial.trial_id})
            run_id = self._runs[trial.trial_id] = run.info.run_id
            _log_batch(client, run_id, params=flat(trial.config or {}))
        elif trial.trial_id not in self._open:  # resumed, or promoted from a rung
            client.update_run(run_id, status="RUNNING")
            for tag in self._stale.pop(trial.trial_id, []):  # a failed trial, retried
                client.delete_tag(run_id, tag)
        self._open.add(trial.trial_id)

    def log_trial_result(self, iteration, trial, result):
        epoch = result.get("epoch")
        # Each epoch once: a resumed trial reports again the stored epochs its driver had
        # not taken in as far as the saved experiment state knows, and MLflow may have some.
        if epoch is None or int(epoch) <= self._logged.get(trial.trial_id, 0):
            return
        self._guarded(f"log epoch {epoch} of trial {trial.trial_id}", self._log_epoch, trial, result, int(epoch))

    def _log_epoch(self, trial, result: dict, epoch: int) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        resumed = int(result.get("resumed_from_epoch") or 0)
        for missed in range(self._logged.get(trial.trial_id, 0) + 1, min(resumed, epoch - 1) + 1):
            # An epoch whose result the interrupted run stored with its checkpoint but
            # never took in (stopped in between): logged from the checkpoint's record.
            stored = self._stored_metrics(trial.trial_id, missed, int(result.get("generation") or 0))
            if stored is not None:
                self._log_metrics(trial.trial_id, run_id, stored, missed)
        self._log_metrics(trial.trial_id, run_id, result, epoch)

    def _stored_metrics(self, trial_id: str, epoch: int, generation: int = 0) -> dict | None:
        from tuner import checkpoints, population

        try:
            run = self.experiment.join(checkpoints.RUNS_DIR, population.run_name(trial_id, generation))
            return checkpoints.stored_metrics(run, epoch)  # None: copied from another trial
        except Exception:  # noqa: BLE001 - not kept (checkpoint.num_to_keep), or unreadable: not logged
            return None

    def _log_metrics(self, trial_id: str, run_id: str, result: dict, epoch: int) -> None:
        metrics = {k: _number(v) for k, v in result.items() if k.startswith("val_") or k in EPOCH_METRICS}
        # The first epoch this run reports (a resumed trial's first after its restart).
        first = "startup_seconds" in result
        params = {k: str(result[k]) for k in TRIAL_PARAMS if k in result} if first else {}
        tags = {TAG_LAST_EPOCH: str(epoch)}
        if result.get("generation") is not None:
            # A PBT member: its batch (and other knobs) change with its generation, and
            # MLflow's params cannot change; they are metrics, stepped by epoch, instead.
            metrics.update({k: _number(result.get(k)) for k in ("generation", "per_worker_batch", "global_batch")})
            params = params if not result["generation"] else {}
            tags[TAG_GENERATION] = str(result["generation"])
        _log_batch(self.client, run_id, metrics={k: v for k, v in metrics.items() if v is not None}, step=epoch,
                   params=params, tags=tags)
        self._logged[trial_id] = epoch

    def log_trial_end(self, trial, failed: bool = False):
        self._guarded(f"end the run of trial {trial.trial_id}", self._end_trial, trial, failed)

    def _end_trial(self, trial, failed: bool) -> None:
        run_id = self._runs.get(trial.trial_id)
        if run_id is None:
            return
        epoch = int((trial.last_result or {}).get("epoch") or 0)
        status, tags = end_of(failed, epoch, self.max_t, self.stopper, _error_reason(trial) if failed else None)
        _log_batch(self.client, run_id, tags=tags)
        self.client.set_terminated(run_id, status=status)
        self._open.discard(trial.trial_id)

    def on_experiment_end(self, trials, **info):
        if self._skipped:
            print(f"tuner: warning: MLflow: {self._skipped} call(s) were not made while {self.where.uri} did not "
                  "answer; the experiment's own results are complete in its storage.", file=sys.stderr, flush=True)
