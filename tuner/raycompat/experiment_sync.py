"""Tune's experiment state on storage: saved at a period that follows its size, and
uploaded only when the experiment moved on, then only what changed."""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import posixpath
import time
import weakref

from tuner.raycompat.patches import _replace, patch
from tuner.storage import files_under


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
    for source, rel in files_under(local_path):
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
