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
  only the files changed since its last upload, and only once the experiment moved on
  (``incremental_experiment_sync``, ``experiment_changed``).
- Ray Tune's and Ray Train's storage check (``StorageContext._create_validation_file``),
  made to put Tune's marker file on S3 without directory markers or a read-back, and
  Train's not at all (``marker_free_storage_check``).
- Ray Train's look for its checkpoint list
  (``CheckpointManager._maybe_load_state_from_storage``), made one read on S3
  (``one_request_snapshot_probe``).
- The end-of-run analysis's read of each trial's results
  (``ExperimentAnalysis._fetch_trial_dataframe``), made from the driver's staging folder
  where the file is (``local_trial_results``).
- Ray Train's checkpoint upload (``StorageContext.persist_current_checkpoint``), made to
  put each file in one request on S3, without directory markers
  (``marker_free_checkpoint_upload``), and its deletion of old checkpoints
  (``checkpoint_manager.delete_fs_path``), made to list and delete their files, without
  probes or markers (``marker_free_checkpoint_delete``).

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

import functools
import hashlib
import importlib
import importlib.util
import itertools
import json
import logging
import math
import os
import posixpath
import sys
import time
import weakref
from dataclasses import dataclass

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


# `TUNER_RAY_PATCHES=off`: run on Ray as it ships, every patch below left out.
PATCHES_VAR = "TUNER_RAY_PATCHES"
OFF = ("off", "0", "false", "no")
TESTED_RAY = ("2.60",)  # the Ray releases (major.minor) each patch was written against

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch:
    """A change to Ray's internals that saves time or S3 requests and that nothing needs:
    without it, Ray does the same work its own way (``loses`` says what that costs).
    ``targets``: what it replaces or reads, as ``module:Name.attr`` or, where the
    parameters matter, ``module:Name.attr(a, b)``; ``?module``: a module that must be
    there, not imported to check."""

    name: str
    loses: str
    targets: tuple[str, ...]


PATCHES: dict[str, Patch] = {}
_USABLE: dict[str, str | None] = {}  # patch -> its problem here (None: usable)


def declare(name: str, loses: str, *targets: str) -> None:
    """Register a patch that its caller applies itself where ``usable(name)``."""
    PATCHES[name] = Patch(name, loses, targets)


def patch(loses: str, *targets: str):
    """Register the decorated function as a patch: it runs only where ``usable`` says its
    targets still have the shape it was written for, and returns whether it did."""
    def register(fn):
        PATCHES[fn.__name__] = Patch(fn.__name__, loses, targets)

        @functools.wraps(fn)
        def guarded(*args, **kwargs) -> bool:
            if not usable(fn.__name__):
                return False
            fn(*args, **kwargs)
            return True

        return guarded

    return register


def _replace(owner, **attributes) -> None:
    """Set ``attributes`` on ``owner`` (a Ray class or module): what every patch does."""
    for name, value in attributes.items():
        setattr(owner, name, value)


def switched_off() -> bool:
    return os.environ.get(PATCHES_VAR, "").strip().lower() in OFF


def problem(p: Patch) -> str | None:
    """Why patch ``p`` cannot be used in this process (None: it can)."""
    if switched_off():
        return f"{PATCHES_VAR}={os.environ[PATCHES_VAR]}"
    import ray

    if not ray.__version__.startswith(tuple(v + "." for v in TESTED_RAY)):
        return f"Ray {ray.__version__} is not one it was tested on ({', '.join(TESTED_RAY)})"
    for target in p.targets:
        missing = _missing(target)
        if missing:
            return missing
    return None


def _missing(target: str) -> str | None:
    """What of ``target`` (``module:Name.attr(params)``) is not as expected, or None."""
    if target.startswith("?"):
        return None if _module_file(target[1:]) else f"{target[1:]} is gone"
    where, _, params = target.partition("(")
    module, _, path = where.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError:
        return f"{module} is gone"
    for part in path.split(".") if path else ():
        if not hasattr(obj, part):
            return f"{where} is gone"
        obj = getattr(obj, part)
    if params:
        import inspect

        want = [n.strip() for n in params.rstrip(")").split(",") if n.strip()]
        try:
            have = list(inspect.signature(obj).parameters)  # type: ignore[arg-type]  # a callable, or TypeError
        except (TypeError, ValueError):
            return f"{where} has no signature to check"
        if have != want:
            return f"{where} takes ({', '.join(have)}), not ({', '.join(want)})"
    return None


def _module_file(name: str) -> bool:
    """Whether module ``name`` is there, found without importing it or its package
    (``find_spec`` of a submodule would run the package's ``__init__``)."""
    parent, _, leaf = name.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent)
    except ImportError:
        return False
    places = (spec and spec.submodule_search_locations) or []
    return any(os.path.exists(os.path.join(p, leaf + ".py")) or os.path.isdir(os.path.join(p, leaf)) for p in places)


def checked(name: str) -> str | None:
    """``problem`` of patch ``name``, found once per process, before it is applied (the
    patched target no longer has Ray's shape)."""
    if name not in _USABLE:
        _USABLE[name] = problem(PATCHES[name])
        if _USABLE[name] is not None:
            log.debug("Ray patch %s is off (%s)", name, _USABLE[name])
    return _USABLE[name]


def usable(name: str) -> bool:
    """Whether patch ``name`` can be applied in this process."""
    return checked(name) is None


def report() -> list[str]:
    """One line per patch that stays off, for the experiment's driver to show once: its
    name, why, and what the run loses; a single line when all are switched off."""
    if switched_off():
        return [f"Ray patches are off ({PATCHES_VAR}={os.environ[PATCHES_VAR]}): S3 requests per trial are higher "
                "and trial start-up is slower; results are the same."]
    return [f"Ray patch {p.name} is off ({why}): {p.loses}." for p in PATCHES.values()
            if (why := checked(p.name)) is not None]


@patch("each trial's driver and Train controller import TensorFlow (about 2.5 s of CPU each, before its workers start)",
       "ray.train:__path__", "?ray.train.tensorflow", "?ray.train.tensorflow.config")
def lazy_tensorflow() -> None:
    """Register Ray Train's ``ray.train.tensorflow`` package without running its
    ``__init__`` (see the module's docstring)."""
    if PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None:  # checked by the patch's targets; here for the reader
        return
    loader = spec.loader
    package = importlib.util.module_from_spec(spec)
    state = {"loaded": False}

    def __getattr__(name: str):
        if name.startswith("__") or state["loaded"]:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        state["loaded"] = True
        loader.exec_module(package)  # the real __init__: imports TensorFlow
        return getattr(package, name)

    _replace(package, __getattr__=__getattr__)
    sys.modules[PACKAGE] = package
    _replace(sys.modules["ray.train"], tensorflow=package)
    # Imported once the package is registered: not through its __init__.
    _replace(package, TensorflowConfig=importlib.import_module(f"{PACKAGE}.config").TensorflowConfig)


def install(role: str, state_period: float = 2.0, local_results=None) -> None:
    """Apply the patches one kind of process uses (each only where ``usable``):

    - "driver", the experiment's: Tune's experiment state saved every ``state_period``
      seconds or as its size asks, its folder uploaded by change, one storage marker,
      and the end-of-run analysis reading ``local_results(trial)`` where it can;
    - "trial", a trial's driver (builds the trainer): one storage marker;
    - "controller", Ray Train's (unpickles ``Config``): checkpoint deletes, its storage
      check and its checkpoint-list probe, each with the fewest S3 requests;
    - "worker", a Train worker: checkpoints uploaded without folder markers.

    TensorFlow's lazy import is installed where this module is imported, in all of them.
    """
    if role == "driver":
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


lazy_tensorflow()

from ray.train.tensorflow.config import TensorflowConfig  # noqa: E402


class Config(TensorflowConfig):
    """``TensorflowConfig`` whose pickle names this module, so it unpickles TF-free; where
    it unpickles (the Train controller), old checkpoints are deleted marker-free."""

    def __reduce__(self):
        return _unpickled_config, (self.__dict__.copy(),)


def _unpickled_config(state: dict) -> Config:
    install("controller")
    config = Config()
    config.__dict__.update(state)
    return config


declare("trainer_without_dataset_manager", "each trial starts one more actor process (about 1 s of CPU)",
        "ray.train.v2._internal.callbacks:DatasetsCallback",
        "ray.train.v2.tensorflow.tensorflow_trainer:TensorflowTrainer._create_default_callbacks(self)")


def trainer(**kwargs):
    """A ``TensorflowTrainer`` that starts only the helper actors a trial uses.

    Ray Train 2.60 starts a ``DatasetManager`` actor for every run, with or without Ray
    Datasets; the trials read their Parquet shards themselves, so that is one more
    Python process booting (~1 s of CPU) while the workers start. It is left out when
    the trainer has no datasets.
    """
    from ray.train.v2.tensorflow.tensorflow_trainer import TensorflowTrainer

    if not usable("trainer_without_dataset_manager"):
        return TensorflowTrainer(**kwargs)
    from ray.train.v2._internal.callbacks import DatasetsCallback

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


def pb2_explore(data, bounds: dict, current, base: str, old: str, config: dict):
    """Ray's PB2 explore step (``ray.tune.schedulers.pb2._explore``): the GP-UCB choice of
    ``bounds``' values for ``old`` continuing ``base``, from ``data`` (a DataFrame of
    Trial, Time, the values, Reward at each perturbation point); returns (the chosen
    values, ``data`` with the choice added)."""
    from ray.tune.schedulers.pb2 import _explore

    # Ray annotates base and old as Trials; it only uses them as keys of the data.
    return _explore(data, bounds, current, base, old, config)  # type: ignore[arg-type]


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


declare("restore_tuner", "a resumed run first reads every trial's results from storage (12.7 s for 300 trials on S3)",
        "ray.tune.impl.tuner_internal:ExperimentAnalysis")


def restore_tuner(path: str, trainable, **kwargs):
    """``tune.Tuner.restore(path, trainable, **kwargs)`` without first reading every
    trial's results.

    Tune 2.60's restore builds an ``ExperimentAnalysis`` of the interrupted run (every
    trial's ``result.json`` read from storage and parsed into a DataFrame) for a
    ``Tuner.get_results()`` before ``fit``, which `tuner` never calls; ``fit`` builds its
    own at the end. With 300 stub trials on S3 (150 finished) that took 12.7 s of the
    restore's 18.1 s, and it grows with every trial the experiment has had. Here Tune's
    restore finds no analysis to build, which it takes as an unreadable one (None).
    """
    from ray import tune

    if not usable("restore_tuner"):
        return tune.Tuner.restore(path, trainable, **kwargs)
    from ray.tune.impl import tuner_internal

    analysis = tuner_internal.ExperimentAnalysis

    def skipped(*args, **kw):
        raise LookupError("tuner: results are read after fit, not on restore")

    _replace(tuner_internal, ExperimentAnalysis=skipped)
    try:
        return tune.Tuner.restore(path, trainable, **kwargs)
    finally:
        _replace(tuner_internal, ExperimentAnalysis=analysis)


def restored_run_config(tuner):
    """The ``RunConfig`` a ``Tuner.restore`` unpickled (its callbacks included)."""
    return tuner._local_tuner.get_run_config()


def restored_search_alg(tuner):
    return tuner._local_tuner._tune_config.search_alg


# --- Tune's upload of the experiment folder -----------------------------------------------


@patch("Tune uploads its whole experiment folder at every save of its state: S3 requests grow with the trials",
       "ray.train._internal.storage:_FilesystemSyncer._sync_up_command(self, local_path, uri, exclude)",
       "ray.train._internal.storage:_FilesystemSyncer.__getstate__(self)")
def incremental_experiment_sync() -> None:
    """Make Tune's driver upload its experiment folder only when the experiment moved on,
    and then only what changed.

    At every save of the experiment state (``TUNE_GLOBAL_CHECKPOINT_S``) Tune 2.60 uploads
    the whole folder again: every trial's ``params.*``, ``result.json``, ``progress.csv``
    and event files, finished trials' included, plus a directory marker per level. On S3
    that is ~27 requests per save with one trial and grows with every trial the
    experiment has had. And the state file changes at every save even when no trial did
    (it holds Tune's step counter and clock).

    Here a syncer remembers each file's size, modification time and sha256 as it last
    uploaded it, and sends a file again only when its bytes changed (read after the
    stat, so a file Tune appends to meanwhile is sent again next time); directories are
    made once, and on S3 not at all (keys need none). Once ``experiment_changed`` has
    been called (``tuner.resume.Keeper`` calls it when a trial reports or ends, and at
    the next step after one is added or paused), a save uploads only if it has been called since the last
    upload or the syncer's ``sync_period`` (Tune's ``SyncConfig``, 300 s) has passed.
    The syncer pickles without what it sent, so the searcher's saved state (which holds
    it) changes only with the searcher. Restores, excludes (Tune passes none here) and
    downloads are Ray's own.
    """
    from ray.train._internal.storage import _FilesystemSyncer

    if getattr(_FilesystemSyncer, "tuner_incremental", False):
        return
    full = _FilesystemSyncer._sync_up_command

    def _sync_up_command(self, local_path: str, uri: str, exclude=None):
        if exclude:
            return full(self, local_path, uri, exclude)
        # Kept beside the syncer, not in it: Tune pickles the syncer with its experiment
        # into every save of the searcher's state.
        sent = _SENT.setdefault(self, {"files": {}, "dirs": set(), "at": -math.inf})
        now = time.monotonic()
        if _CHANGES["tracked"] and not _CHANGES["pending"] and now - sent["at"] < self.sync_period:
            return _nothing, {}
        _CHANGES["pending"] = False
        sent["at"] = now
        # Read here, on Tune's loop, right after the save: the upload runs in a thread
        # while Tune writes its next save.
        return upload_changed, {"local_path": local_path, "fs": self.storage_filesystem, "fs_path": uri,
                                "sent": sent, "state": read_state(local_path)}

    ray_getstate = _FilesystemSyncer.__getstate__

    def __getstate__(self):
        # Tune pickles the syncer into every save of the searcher's state: without its
        # last command (which holds what was sent) and sync times, that file changes only
        # when the searcher's state does.
        state = ray_getstate(self)
        state["_current_cmd"] = None
        state["last_sync_up_time"] = state["last_sync_down_time"] = float("-inf")
        return state

    _replace(_FilesystemSyncer, _sync_up_command=_sync_up_command, __getstate__=__getstate__, tuner_incremental=True)


# What each syncer has uploaded (see incremental_experiment_sync).
_SENT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# tracked: someone reports the experiment's changes; pending: one since the last upload.
_CHANGES = {"tracked": False, "pending": False}


_LAST_UPLOAD = {"bytes": 0}  # what the newest upload of the experiment folder sent
# Tune's experiment state goes up at this many bytes per second at most, on average.
STATE_UPLOAD_RATE = 2**20


@patch("the experiment state is saved at Tune's own period (at least 10 s): a lost driver may forget more finished trials",
       "ray.tune.execution.experiment_state:_ExperimentCheckpointManager.__init__",
       "ray.tune.execution.experiment_state:_ExperimentCheckpointManager._update_auto_checkpoint_time(self, time_taken)")
def adaptive_experiment_state_period(floor: float) -> None:
    """Make Tune's "auto" period between saves of the experiment state ``floor`` seconds,
    or as long as uploading the newest save's files takes at ``STATE_UPLOAD_RATE``
    (1 MiB/s), whichever is longer. Tune's own "auto" rule (19 times the last save's
    duration, at least 10 s) would depend on the machine's speed.

    The state grows with the trials (about 20 KB each, `bench/run.py scale`) and is
    written and uploaded whole at every save: with a fixed period, an experiment's total
    saving work grows with the square of its trials. Up to about 100 trials (2 MB) the
    period stays at ``floor``; at 1,000 it is about 21 s. Takes effect where
    ``TUNE_GLOBAL_CHECKPOINT_S`` is ``auto``.
    """
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    if getattr(_ExperimentCheckpointManager, "tuner_adaptive", False):
        return
    init = _ExperimentCheckpointManager.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = floor

    def _update_auto_checkpoint_time(self, time_taken: float):
        if self._auto_checkpoint_enabled:
            self._checkpoint_period = max(floor, _LAST_UPLOAD["bytes"] / STATE_UPLOAD_RATE)

    _replace(_ExperimentCheckpointManager, __init__=__init__, _update_auto_checkpoint_time=_update_auto_checkpoint_time,
             tuner_adaptive=True)


def experiment_changed() -> None:
    """The experiment moved on (a trial was added, reported, paused or ended): the next
    save of its state goes to storage."""
    _CHANGES["tracked"] = _CHANGES["pending"] = True


def _nothing() -> int:
    return 0


def upload_changed(local_path: str, fs, fs_path: str, sent: dict, state: list | None = None) -> int:
    """Upload the files under ``local_path`` whose (size, mtime) differ from ``sent``'s
    record of this destination; returns how many were sent. ``state`` is the folder's own
    files as ``read_state`` read them when the save was made (read now if not given): Tune
    writes its next save while this upload runs in its sync thread, and an upload that
    mixed two saves could store trials newer than the ASHA rungs beside them. If an
    upload fails, the next save uploads again."""
    try:
        return _upload_changed(local_path, fs, fs_path, sent, read_state(local_path) if state is None else state)
    except BaseException:
        _CHANGES["pending"] = True
        raise


def read_state(local_path: str) -> list[tuple[str, tuple[int, int], bytes]]:
    """(name, (size, mtime), bytes) of each file at the top of ``local_path`` (Tune's
    experiment state, searcher and callbacks), read together."""
    files = []
    for entry in sorted(os.scandir(local_path), key=lambda e: e.name):
        try:
            if not entry.is_file():
                continue
            st = entry.stat()
            with open(entry.path, "rb") as src:
                files.append((entry.name, (st.st_size, st.st_mtime_ns), src.read()))
        except FileNotFoundError:  # removed since the listing
            continue
    return files


def _upload_changed(local_path: str, fs, fs_path: str, sent: dict, state: list) -> int:
    import pyarrow.fs as pafs

    files, dirs = sent["files"], sent["dirs"]
    count = sent_bytes = 0
    for rel, stat, body in itertools.chain(_trial_files(local_path), state):
        mark = (fs_path, *stat)
        last = files.get(rel)
        if last is not None and last[0] == mark:
            continue
        body = body() if callable(body) else body
        if body is None:  # removed since the listing
            continue
        digest = hashlib.sha256(body).digest()
        if last is not None and last[1] == (fs_path, digest):  # rewritten, the same bytes
            files[rel] = (mark, last[1])
            continue
        dest = posixpath.join(fs_path, rel)
        parent = posixpath.dirname(dest)
        if parent not in dirs:
            if not isinstance(fs, pafs.S3FileSystem):  # S3 has no folders: keys are enough
                fs.create_dir(parent)
            dirs.add(parent)
        with fs.open_output_stream(dest, compression=None) as out:
            out.write(body)
        files[rel] = (mark, (fs_path, digest))
        count += 1
        sent_bytes += len(body)
    _LAST_UPLOAD["bytes"] = sent_bytes
    return count


def _trial_files(local_path: str):
    """(path relative to ``local_path``, (size, mtime), a function that reads it) of each
    file in its folders (the trials' results), read as the upload reaches them: after the
    experiment state, so never older than what it counts on."""
    for source, rel in _files_under(local_path):
        if "/" not in rel:
            continue
        try:
            st = os.stat(source)
        except FileNotFoundError:  # removed since the listing
            continue
        yield rel, (st.st_size, st.st_mtime_ns), functools.partial(_read_or_none, source)


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as src:
            return src.read()
    except FileNotFoundError:
        return None


def _files_under(local_path: str):
    """(path, path relative to ``local_path`` with '/' separators) of every file under it,
    in a stable order: the files in its folders (each trial's results) before its own
    (Tune's experiment state), so that an upload cut short never leaves a stored state
    newer than the trial results it counts on."""
    top = []
    for root, _, names in os.walk(local_path):
        for name in sorted(names):
            source = os.path.join(root, name)
            rel = os.path.relpath(source, local_path).replace(os.sep, "/")
            if root == local_path:
                top.append((source, rel))
            else:
                yield source, rel
    yield from top


# --- Ray Train's checkpoint upload ---------------------------------------------------------


@patch("each checkpoint costs about 8 more S3 requests (folder markers)",
       "ray.train.v2._internal.execution.storage:StorageContext.persist_current_checkpoint"
       "(self, checkpoint, checkpoint_dir_name)",
       "ray.train.v2._internal.execution.storage:StorageContext.build_checkpoint_path_from_name")
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

    _replace(StorageContext, persist_current_checkpoint=persist_current_checkpoint, tuner_marker_free=True)


@patch("each trial costs about 6 more S3 requests (Train's storage marker and folder markers)",
       "ray.train._internal.storage:_VALIDATE_STORAGE_MARKER_FILENAME",
       "ray.train._internal.storage:StorageContext._create_validation_file(self)",
       "ray.train._internal.storage:StorageContext._check_validation_file(self)",
       "ray.train.v2._internal.constants:VALIDATE_STORAGE_MARKER_FILENAME",
       "ray.train.v2._internal.execution.storage:StorageContext._create_validation_file(self)",
       "ray.train.v2._internal.execution.storage:StorageContext._check_validation_file(self)")
def marker_free_storage_check() -> None:
    """Make Ray Tune's storage check put one marker file on S3, and only that, and Ray
    Train's put none there.

    Each ``StorageContext`` (Tune's per experiment run, Train's per trial) checks its
    storage when it is made: it ``create_dir``s its folder, which on S3 puts a directory
    marker at each level of the path (4 for a trial's Train run), puts a marker file and
    reads it back (a HEAD): 6 requests per trial (``bench/run.py s3``). On S3 every node
    reads the same bucket, so the read-back in the writing process finds what the PUT
    stored, and S3 has no directories to make. On an ``S3FileSystem``, Tune's check puts
    the marker file (a PUT that fails raises, as Ray's check would) and nothing else.
    Train's run folder is inside the experiment's, on the bucket that check (and
    ``tuner``'s pre-flight) has just written to: there it puts nothing, and a node that
    cannot write fails its trial at the first checkpoint, with the server's error. Any
    other filesystem (a local path, where the check finds a head-node-only folder) takes
    Ray's path.
    """
    import pyarrow.fs as pafs
    from ray.train._internal.storage import _VALIDATE_STORAGE_MARKER_FILENAME
    from ray.train._internal.storage import StorageContext as TuneStorage
    from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME
    from ray.train.v2._internal.execution.storage import StorageContext as TrainStorage

    for cls, marker in ((TuneStorage, _VALIDATE_STORAGE_MARKER_FILENAME),
                        (TrainStorage, VALIDATE_STORAGE_MARKER_FILENAME)):
        if getattr(cls, "tuner_marker_free_check", False):
            continue
        create, check = cls._create_validation_file, cls._check_validation_file

        def _create_validation_file(self, create=create, marker=marker, put=cls is TuneStorage):
            if not isinstance(self.storage_filesystem, pafs.S3FileSystem):
                return create(self)
            if put:
                with self.storage_filesystem.open_output_stream(posixpath.join(self.experiment_fs_path, marker)):
                    pass  # closed here: a failed PUT raises
            self.tuner_marker_put = True

        def _check_validation_file(self, check=check):
            # Set where the check was made the way above; the flag travels with pickled
            # copies, whose filesystem Tune may swap.
            put = getattr(self, "tuner_marker_put", False)
            if not (put and isinstance(self.storage_filesystem, pafs.S3FileSystem)):
                return check(self)

        _replace(cls, _create_validation_file=_create_validation_file, _check_validation_file=_check_validation_file,
                 tuner_marker_free_check=True)


def upload_files(local_path: str, fs, fs_path: str, chunk: int = 64 << 20) -> None:
    """Copy every file under ``local_path`` to ``fs_path`` on ``fs``, one stream each, its
    bytes as they are (no compression guessed from the name)."""
    for source, rel in _files_under(local_path):
        with open(source, "rb") as src, fs.open_output_stream(posixpath.join(fs_path, rel), compression=None) as out:
            while block := src.read(chunk):
                out.write(block)


@patch("each checkpoint that num_to_keep drops costs about 5 more S3 requests",
       "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:delete_fs_path(fs, fs_path)")
def marker_free_checkpoint_delete() -> None:
    """Make Ray Train's controller delete an old checkpoint from S3 with one listing and
    a DELETE per file.

    Ray Train 2.60 deletes a checkpoint that ``num_to_keep`` drops through pyarrow: it
    probes whether the path is a folder (a HEAD and a listing), and pyarrow's
    ``delete_dir`` probes again, lists, deletes, deletes the folder's marker and puts
    one for its parent: 7 requests for a checkpoint of 2 files, one per epoch once
    ``num_to_keep`` checkpoints exist. On an ``S3FileSystem`` the files are listed and
    deleted with boto3 instead (one request per file: a batch delete needs a checksum
    header not every S3 server accepts); errors are logged, as Ray does.
    """
    from ray.train.v2._internal.execution.checkpoint import checkpoint_manager

    if getattr(checkpoint_manager, "tuner_marker_free", False):
        return
    delete = checkpoint_manager.delete_fs_path

    def delete_fs_path(fs, fs_path: str):
        import pyarrow.fs as pafs

        if not isinstance(fs, pafs.S3FileSystem):
            return delete(fs=fs, fs_path=fs_path)
        from tuner.storage import delete_s3_folder

        try:
            delete_s3_folder(fs, fs_path)
        except Exception:  # noqa: BLE001 - as Ray's: a checkpoint left behind is not an error
            logging.getLogger(__name__).exception("Could not delete the checkpoint at %s", fs_path)

    _replace(checkpoint_manager, delete_fs_path=delete_fs_path, tuner_marker_free=True)


@patch("each trial start costs 1 more S3 request",
       "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:CheckpointManager"
       "._maybe_load_state_from_storage(self)",
       "ray.train.v2._internal.execution.checkpoint.checkpoint_manager:CheckpointManager._load_state")
def one_request_snapshot_probe() -> None:
    """Make Ray Train's controller look for its checkpoint list on S3 with one request.

    A Train run's checkpoint manager starts by looking for the list it keeps
    (``checkpoint_manager_snapshot.json``, which a run with the same name left): Ray
    2.60 probes for it (on S3 a HEAD, then a listing when it is not there, as it could
    be a folder) and then reads it (a HEAD and a GET). Every new trial pays the 2
    requests of a miss. On an ``S3FileSystem`` it is read straight away here: one
    request when it is not there (the read's HEAD), two when it is. Any other
    filesystem takes Ray's path.
    """
    import pyarrow.fs as pafs
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import CheckpointManager

    if getattr(CheckpointManager, "tuner_one_request_probe", False):
        return
    load = CheckpointManager._maybe_load_state_from_storage

    def _maybe_load_state_from_storage(self):
        storage = self._storage_context
        if not isinstance(storage.storage_filesystem, pafs.S3FileSystem):
            return load(self)
        try:
            with storage.storage_filesystem.open_input_stream(storage.checkpoint_manager_snapshot_path) as f:
                state = f.read().decode("utf-8")
        except FileNotFoundError:
            return
        self._load_state(state)

    _replace(CheckpointManager, _maybe_load_state_from_storage=_maybe_load_state_from_storage, tuner_one_request_probe=True)


# --- Tune's results at the end of a run ----------------------------------------------------


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


def __getattr__(name: str):
    # The S3 client lives in tuner.storage now.
    if name in ("boto3_client", "delete_s3_folder"):
        from tuner import storage

        return getattr(storage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
