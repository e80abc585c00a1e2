"""Tune's start and end of a run in the experiment's driver: Ray's usage count of the
run's callbacks, and the end-of-run analysis's read of each trial's results."""

from __future__ import annotations

from tuner.raycompat.patches import _replace, patch

# Ray's usage statistics name these built-in callbacks; it imports each one's module to
# tell them apart, MLflow's among them.
NAMED_CALLBACKS = ("WandbLoggerCallback", "MLflowLoggerCallback", "CometLoggerCallback", "AimLoggerCallback")


@patch("each run's start imports MLflow for Ray's usage count of its callbacks (about 1 s of CPU here)",
       "ray.air._internal.usage:tag_callbacks(callbacks)", "ray.air._internal.usage:_count_callbacks(callbacks)",
       "ray.tune.utils.callback:DEFAULT_CALLBACK_CLASSES")
def callbacks_counted_by_name() -> None:
    """Ray Tune's start counts the run's callbacks by class name for its usage statistics
    (``ray.air._internal.usage._count_callbacks``), importing MLflow, W&B, Comet and Aim's
    integrations to list their names: the same count from the names alone."""
    from ray.air._internal import usage
    from ray.tune.utils.callback import DEFAULT_CALLBACK_CLASSES

    def _count_callbacks(callbacks) -> dict[str, int]:
        from ray.tune import Callback
        from ray.tune.logger import LoggerCallback

        names = {*NAMED_CALLBACKS, *(cls.__name__ for cls in DEFAULT_CALLBACK_CLASSES)}
        counts: dict[str, int] = {}
        for callback in callbacks or []:
            if not isinstance(callback, Callback):
                continue
            name = type(callback).__name__
            key = name if name in names else "CustomLoggerCallback" if isinstance(callback, LoggerCallback) \
                else "CustomCallback"
            counts[key] = counts.get(key, 0) + 1
        return counts

    _replace(usage, _count_callbacks=_count_callbacks)


@patch("the end-of-run analysis reads every trial's results back from storage (3 S3 requests per trial)",
       "ray.tune.analysis.experiment_analysis:ExperimentAnalysis._fetch_trial_dataframe(self, trial)")
def local_trial_results(local_results) -> None:
    """Make the analysis Tune builds at the end of ``fit`` take each trial's results from
    ``local_results(trial)`` where it has them: the rows of the trial's ``result.json``
    as this process wrote it ([] for none), or None, and then the stored file is read, as
    Ray does.

    Ray 2.60 reads every trial's file back from storage: on S3 a probe and a read, 3
    requests per trial (``bench/run.py s3``), or for a trial without a file two probes
    and a warning. ``tensorboard.local_results`` has the files of the trials this
    driver ran.
    """
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    if getattr(ExperimentAnalysis, "tuner_local_results", False):
        return
    fetch = ExperimentAnalysis._fetch_trial_dataframe

    def _fetch_trial_dataframe(self, trial):
        import pandas as pd

        rows = local_results(trial)
        if rows is None:
            return fetch(self, trial)
        return pd.json_normalize(rows, sep="/") if rows else pd.DataFrame()

    _replace(ExperimentAnalysis, _fetch_trial_dataframe=_fetch_trial_dataframe, tuner_local_results=True)
