"""Every use of a private Ray API, in one place, for Ray 2.60 (``tests/test_raycompat.py``
pins the version and exercises each).

- Ray Train's ``TensorflowConfig`` without a TensorFlow import where no model runs (the
  ``sys.modules`` patch below), and a trainer without the ``DatasetsCallback``.
- ASHA's and the median rule's records (``_brackets``, ``_rungs``, ``_trial_info``,
  ``_results``), which ``tuner.schedulers`` saves and restores.
- The ``ConcurrencyLimiter``'s and ``BasicVariantGenerator``'s live-trial counts, and the
  restored ``Tuner``'s run config and searcher (``tuner.resume``).
- Environment variables Ray reads: the preemption watcher switch, the state API's address
  and a submitted job's config.

``ray/train/tensorflow/__init__.py`` imports TensorFlow (for its checkpoint and dataset
helpers), so building a ``TensorflowTrainer`` in a trial driver and unpickling its config
in the Train controller each cost a full TensorFlow import (~2.5 s of CPU here), in
series before the workers start. The config module itself needs no TensorFlow.

``install()`` registers the ``ray.train.tensorflow`` package without running its
``__init__``; the first access to anything else in the package runs the real
``__init__`` then, so the package behaves as usual wherever more of it is used.
``Config`` is the trainer's backend config; unpickling it (in the controller) imports
this module first, which installs the same lazy package there.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys

RAY_VERSION = "2.60"  # what this module was written against
PACKAGE = "ray.train.tensorflow"
# ray.train.v2._internal.constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR.
NO_PREEMPTION_WATCHER = ("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# ray._private.ray_constants.RAY_API_SERVER_ADDRESS_ENVIRONMENT_VARIABLE: where the state
# API (used by Ray Train's placement-group cleaner) is.
API_SERVER_ADDRESS = "RAY_API_SERVER_ADDRESS"
# ray._private.runtime_env.constants.RAY_JOB_CONFIG_JSON_ENV_VAR: a submitted job's
# config, runtime environment included, as its driver gets it.
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def install() -> None:
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    package = importlib.util.module_from_spec(spec)
    state = {"loaded": False}

    def __getattr__(name: str):
        if name.startswith("__") or state["loaded"]:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        state["loaded"] = True
        spec.loader.exec_module(package)  # the real __init__: imports TensorFlow
        return getattr(package, name)

    package.__getattr__ = __getattr__
    sys.modules[PACKAGE] = package
    setattr(sys.modules["ray.train"], "tensorflow", package)
    package.TensorflowConfig = importlib.import_module(f"{PACKAGE}.config").TensorflowConfig


install()

from ray.train.tensorflow.config import TensorflowConfig  # noqa: E402


class Config(TensorflowConfig):
    """``TensorflowConfig`` whose pickle names this module, so it unpickles TF-free."""


def trainer(**kwargs):
    """A ``TensorflowTrainer`` that starts only the helper actors a trial uses.

    Ray Train 2.60 starts a ``DatasetManager`` actor for every run, with or without Ray
    Datasets; the trials read their Parquet shards themselves, so that is one more
    Python process booting (~1 s of CPU) while the workers start. It is left out when
    the trainer has no datasets.
    """
    from ray.train.v2._internal.callbacks import DatasetsCallback
    from ray.train.v2.tensorflow.tensorflow_trainer import TensorflowTrainer

    class Trainer(TensorflowTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return Trainer(**kwargs)


def job_runtime_env() -> dict:
    """The runtime environment of the submitted job this driver runs in ({} if none)."""
    return json.loads(os.environ.get(JOB_CONFIG_VAR) or "{}").get("runtime_env") or {}


# --- ASHA (AsyncHyperBandScheduler, _Bracket) and the median stopping rule --------------


def asha_brackets(scheduler) -> list:
    return scheduler._brackets


def bracket_rungs(bracket) -> list[tuple[float, dict]]:
    """A bracket's rungs, highest milestone first: (milestone, {trial id: reward})."""
    return bracket._rungs


def set_bracket_rungs(bracket, rungs: list[tuple[float, dict]]) -> None:
    bracket._rungs = rungs


def put_in_bracket(scheduler, trial_id: str, bracket) -> None:
    """Judge ``trial_id`` in ``bracket`` (Ray draws one when the trial is added)."""
    scheduler._trial_info[trial_id] = bracket


def median_results(rule) -> dict:
    """MedianStoppingRule's records: trial -> [result, ...]."""
    return rule._results


def median_keys(rule) -> tuple[str, str]:
    """(time attribute, metric) of a MedianStoppingRule."""
    return rule._time_attr, rule._metric


# --- searchers' live-trial counts, and the restored Tuner --------------------------------


def count_as_live(searcher, trial_ids: set[str]) -> None:
    """Count ``trial_ids`` as running against ``searcher``'s concurrency limit
    (``BasicVariantGenerator`` or ``ConcurrencyLimiter``)."""
    if hasattr(searcher, "_live_trials"):  # BasicVariantGenerator
        searcher._live_trials.update(trial_ids)
    elif hasattr(searcher, "live_trials"):  # ConcurrencyLimiter
        new = trial_ids - searcher.live_trials
        searcher.live_trials.update(new)
        searcher.num_unfinished_live_trials += len(new)


def restored_run_config(tuner):
    """The ``RunConfig`` a ``Tuner.restore`` unpickled (its callbacks included)."""
    return tuner._local_tuner.get_run_config()


def restored_search_alg(tuner):
    return tuner._local_tuner._tune_config.search_alg
