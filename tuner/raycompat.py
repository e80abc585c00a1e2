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
- Tune's experiment-folder upload (``_FilesystemSyncer._sync_up_command``), made to send
  only the files changed since its last upload (``incremental_experiment_sync``).
- Ray Train's checkpoint upload (``StorageContext.persist_current_checkpoint``), made to
  put each file in one request on S3, without directory markers
  (``marker_free_checkpoint_upload``).

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

import hashlib
import importlib
import importlib.util
import json
import os
import posixpath
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


# --- Tune's upload of the experiment folder -----------------------------------------------


def incremental_experiment_sync() -> None:
    """Make Tune's driver upload only what changed in its experiment folder.

    At every save of the experiment state (``TUNE_GLOBAL_CHECKPOINT_S``) Tune 2.60 uploads
    the whole folder again: every trial's ``params.*``, ``result.json``, ``progress.csv``
    and event files, finished trials' included, plus a directory marker per level. On S3
    that is ~27 requests per save with one trial and grows with every trial the
    experiment has had. Here a syncer remembers each file's size, modification time and
    sha256 as it last uploaded it, and sends a file again only when its bytes changed
    (read after the stat, so a file Tune appends to meanwhile is sent again next time);
    directories are made once. Restores, excludes (Tune passes none here) and downloads
    are Ray's own.
    """
    from ray.train._internal.storage import _FilesystemSyncer

    if getattr(_FilesystemSyncer, "tuner_incremental", False):
        return
    full = _FilesystemSyncer._sync_up_command

    def _sync_up_command(self, local_path: str, uri: str, exclude=None):
        if exclude:
            return full(self, local_path, uri, exclude)
        sent = self.__dict__.setdefault("tuner_sent", {"files": {}, "dirs": set()})
        return upload_changed, {"local_path": local_path, "fs": self.storage_filesystem, "fs_path": uri,
                                "sent": sent}

    _FilesystemSyncer._sync_up_command = _sync_up_command
    _FilesystemSyncer.tuner_incremental = True


def upload_changed(local_path: str, fs, fs_path: str, sent: dict) -> int:
    """Upload the files under ``local_path`` whose (size, mtime) differ from ``sent``'s
    record of this destination; returns how many were sent."""
    files, dirs = sent["files"], sent["dirs"]
    count = 0
    for source, rel in _files_under(local_path):
        try:
            st = os.stat(source)
        except FileNotFoundError:  # removed since the listing
            continue
        mark = (fs_path, st.st_size, st.st_mtime_ns)
        last = files.get(rel)
        if last is not None and last[0] == mark:
            continue
        with open(source, "rb") as src:
            body = src.read()
        digest = hashlib.sha256(body).digest()
        if last is not None and last[1] == (fs_path, digest):  # rewritten, the same bytes
            files[rel] = (mark, last[1])
            continue
        dest = posixpath.join(fs_path, rel)
        parent = posixpath.dirname(dest)
        if parent not in dirs:
            fs.create_dir(parent)
            dirs.add(parent)
        with fs.open_output_stream(dest, compression=None) as out:
            out.write(body)
        files[rel] = (mark, (fs_path, digest))
        count += 1
    return count


def _files_under(local_path: str):
    """(path, path relative to ``local_path`` with '/' separators) of every file under it,
    in a stable order."""
    for root, _, names in os.walk(local_path):
        for name in sorted(names):
            source = os.path.join(root, name)
            yield source, os.path.relpath(source, local_path).replace(os.sep, "/")


# --- Ray Train's checkpoint upload ---------------------------------------------------------


def marker_free_checkpoint_upload() -> None:
    """Make a Train worker upload a checkpoint to S3 as one PUT per file.

    Ray Train 2.60 checks its storage marker (a HEAD), then ``create_dir``s the
    checkpoint folder and ``pyarrow.fs.copy_files`` it: on S3, pyarrow looks for and puts
    a directory marker at each level of the path, about 8 requests per checkpoint besides
    its files (``bench/run.py data``: 19.3 -> 11.3 requests per extra trial-epoch). S3
    has no directories (a listing finds the folder by its files' keys, as Ray's and
    ``tuner``'s restores do), so on an ``S3FileSystem`` the files are streamed to their
    keys and nothing else; any other filesystem takes Ray's path.
    """
    import pyarrow.fs as pafs
    from ray.train.v2._internal.execution.storage import StorageContext

    if getattr(StorageContext, "tuner_marker_free", False):
        return
    persist = StorageContext.persist_current_checkpoint

    def persist_current_checkpoint(self, checkpoint, checkpoint_dir_name: str):
        if (self.read_only or not isinstance(self.storage_filesystem, pafs.S3FileSystem)
                or not isinstance(checkpoint.filesystem, pafs.LocalFileSystem)):
            return persist(self, checkpoint, checkpoint_dir_name)
        from ray.train import Checkpoint

        path = self.build_checkpoint_path_from_name(checkpoint_dir_name)
        upload_files(checkpoint.path, self.storage_filesystem, path)
        return Checkpoint(filesystem=self.storage_filesystem, path=path)

    StorageContext.persist_current_checkpoint = persist_current_checkpoint
    StorageContext.tuner_marker_free = True


def upload_files(local_path: str, fs, fs_path: str, chunk: int = 64 << 20) -> None:
    """Copy every file under ``local_path`` to ``fs_path`` on ``fs``, one stream each, its
    bytes as they are (no compression guessed from the name)."""
    for source, rel in _files_under(local_path):
        with open(source, "rb") as src, fs.open_output_stream(posixpath.join(fs_path, rel), compression=None) as out:
            while block := src.read(chunk):
                out.write(block)
