"""``install(role)``: the patches one kind of process applies."""

from tuner.raycompat.experiment_sync import adaptive_experiment_state_period, incremental_experiment_sync
from tuner.raycompat.results import callbacks_counted_by_name, local_trial_results
from tuner.raycompat.s3_requests import (
    marker_free_checkpoint_delete,
    marker_free_checkpoint_upload,
    marker_free_storage_check,
    one_request_snapshot_probe,
)


def install(role: str, state_period: float = 2.0, local_results=None) -> None:
    """Apply the patches one kind of process uses (each only where ``usable``):

    - "driver", the experiment's: Ray's usage count of callbacks without importing
      MLflow, Tune's experiment state saved every ``state_period`` seconds or as its
      size asks, its folder uploaded by change, one storage marker, and the end-of-run
      analysis reading ``local_results(trial)`` where it can;
    - "trial", a trial's driver (builds the trainer): one storage marker;
    - "controller", Ray Train's (unpickles ``Config``): checkpoint deletes, its storage
      check and its checkpoint-list probe, each with the fewest S3 requests;
    - "worker", a Train worker: checkpoints uploaded without folder markers.

    TensorFlow's lazy import (``train.lazy_tensorflow``) is installed wherever the
    package is imported, in all of them.
    """
    if role == "driver":
        callbacks_counted_by_name()
        adaptive_experiment_state_period(state_period)
        incremental_experiment_sync()
        marker_free_storage_check()
        if local_results is not None:
            local_trial_results(local_results)
    elif role == "trial":
        marker_free_storage_check()
    elif role == "controller":
        marker_free_checkpoint_delete()
        marker_free_storage_check()
        one_request_snapshot_probe()
    elif role == "worker":
        marker_free_checkpoint_upload()
    else:
        raise ValueError(f"unknown role {role!r}")
