"""Every use of a private Ray API, in one package, for Ray 2.60 (``tests/test_raycompat.py``
pins the version and exercises each), split by concern:

- ``patches``: the register of patches. Each is an optimisation that checks its targets'
  shape before it is applied and otherwise stays off, saying once what the run loses;
  ``TUNER_RAY_PATCHES=off`` leaves Ray as it ships.
- ``roles``: ``install(role)``, the patches of one kind of process (the experiment's
  driver, a trial's driver, Ray Train's controller, a Train worker).
- ``train``: Ray Train's ``TensorflowTrainer`` without a TensorFlow import where no
  model runs, and without the dataset manager a trial does not use. Importing it (and
  so this package) installs the lazy ``ray.train.tensorflow`` package in the process.
- ``experiment_sync``: Tune's experiment state, saved at a period that follows its size
  and uploaded only when the experiment moved on, then only what changed.
- ``s3_requests``: Ray Train's checkpoint uploads, deletes, storage check and
  checkpoint-list probe with the fewest S3 requests.
- ``results``: Ray's usage count of a run's callbacks without importing MLflow, and the
  end-of-run analysis reading the trials' results where the driver has them.
- ``restore``: a ``Tuner.restore`` that reads no trial's results before ``fit``, and
  what ``tuner`` reads back from the restored ``Tuner``.
- ``shutdown``: Ray stopped at the end of a run without its exit-time waits.
- ``records``: ASHA's, the median rule's and PB2's records, and the searchers'
  live-trial counts (accessors, no patch).

And here: the environment variables Ray reads that ``tuner`` sets or reads (the
preemption watcher switch, the state API's address, a submitted job's config).
"""

from __future__ import annotations

import json
import os

from tuner.raycompat.experiment_sync import (
    STATE_UPLOAD_RATE,
    adaptive_experiment_state_period,
    experiment_changed,
    incremental_experiment_sync,
    read_state,
    upload_changed,
)
from tuner.raycompat.patches import PATCHES, PATCHES_VAR, RAY_VERSION, checked, patch, problem, report, usable
from tuner.raycompat.records import (
    asha_brackets,
    bracket_rungs,
    count_as_live,
    median_keys,
    median_results,
    pb2_explore,
    put_in_bracket,
    set_bracket_rungs,
)
from tuner.raycompat.restore import restore_tuner, restored_run_config, restored_search_alg
from tuner.raycompat.results import callbacks_counted_by_name, local_trial_results
from tuner.raycompat.roles import install
from tuner.raycompat.s3_requests import (
    marker_free_checkpoint_delete,
    marker_free_checkpoint_upload,
    marker_free_storage_check,
    one_request_snapshot_probe,
)
from tuner.raycompat.shutdown import shutdown
from tuner.raycompat.train import Config, lazy_tensorflow, trainer

__all__ = [
    "API_SERVER_ADDRESS", "HEALTH_CHECK_INTERVAL", "JOB_CONFIG_VAR", "NO_PREEMPTION_WATCHER", "PATCHES", "PATCHES_VAR",
    "RAY_VERSION", "STATE_UPLOAD_RATE", "Config", "adaptive_experiment_state_period", "asha_brackets", "bracket_rungs",
    "callbacks_counted_by_name", "checked", "count_as_live", "experiment_changed", "incremental_experiment_sync",
    "install", "job_runtime_env", "lazy_tensorflow", "local_trial_results", "marker_free_checkpoint_delete",
    "marker_free_checkpoint_upload", "marker_free_storage_check", "median_keys", "median_results",
    "one_request_snapshot_probe", "patch", "pb2_explore", "problem", "put_in_bracket", "read_state", "report",
    "restore_tuner", "restored_run_config", "restored_search_alg", "set_bracket_rungs", "shutdown", "trainer",
    "upload_changed", "usable",
]

# ray.train.v2._internal.constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR.
NO_PREEMPTION_WATCHER = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# ray.train.v2._internal.constants.HEALTH_CHECK_INTERVAL_S_ENV_VAR: how often a Train
# controller polls its workers, for their reports and for their end (Ray's default 2 s).
HEALTH_CHECK_INTERVAL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# ray._private.ray_constants.RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE: where the state
# API (used by Ray Train's placement-group cleaner) is.
API_SERVER_ADDRESS = "RAY_API_SERVER_ADDRESS"
# ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR: a submitted job's
# config, runtime environment included, as its driver gets it.
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_runtime_env() -> dict:
    """The runtime environment of the submitted job this driver runs in ({} if none)."""
    return json.loads(os.environ.get(JOB_CONFIG_VAR) or "{}").get("runtime_env") or {}


def __getattr__(name: str):
    # The S3 client lives in tuner.storage now.
    if name in ("boto3_client", "delete_s3_folder"):
        from tuner import storage

        return getattr(storage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
