"""Tune's files per trial: TensorBoard event files stepped by epoch (``EpochTensorBoard``),
and ``result.json`` kept whole across a resume (``TrialResults``).

Tune already writes them (``TBXLoggerCallback``, into each trial's folder beside
``result.json``), but steps them by ``training_iteration``: the count of reports since
the trial's function started, which starts again after an experiment is resumed. The
epoch is what the curves are about. Passing this subclass keeps Tune from adding its own.

    tensorboard --logdir <storage>/<name>     # one run per trial folder

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import sys
from pathlib import Path

from ray.air.constants import EXPR_PARAM_FILE, EXPR_RESULT_FILE
from ray.tune.logger import JsonLoggerCallback, TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL
from ray.tune.utils.util import SafeFallbackEncoder

log = logging.getLogger(__name__)


class TrialResults(JsonLoggerCallback):
    """Tune's ``result.json`` per trial (what ``ExperimentAnalysis``, and so
    ``results.parquet``, reads), kept whole when an experiment resumes on a new Ray.

    Tune writes the file in the driver's staging folder, which belongs to the Ray
    session, and uploads it whole. Into a new session it takes the stored file back only
    for trials with a Tune checkpoint, and ``tuner``'s trials report none (their
    checkpoints are Ray Train's). So after a resume on a new Ray (``tuner tune`` run
    again in-process, a RayJob retried on a new cluster) each resumed trial's upload
    would replace the stored file with one holding only the new run's epochs. Here a
    trial fetches the stored one when it first starts in this process: in a resumed run
    every trial (``fetch_stored``: the stored file may hold epochs that Tune's saved
    state of the trial does not), else a trial that reported before.

    Each trial's files go up with the experiment's next save, so each file made costs a
    PUT on S3: ``result.json`` is made with the trial's first result (Tune's callback
    makes it empty at the start, then uploads it again), and ``params.pkl`` is not
    written (``params.json`` is; nothing reads the pickle).
    """

    def __init__(self, fetch_stored: bool = False):
        super().__init__()
        self.fetch_stored = fetch_stored

    def log_trial_start(self, trial):
        if trial in self._trial_files:
            self._trial_files.pop(trial).close()
        trial.init_local_path()
        self.update_config(trial, trial.config)
        local = Path(trial.local_path, EXPR_RESULT_FILE)
        # The first start in this process of a trial that may have stored results: the
        # stored file, which a local one (left in the same Ray session by an earlier
        # driver) may lag behind, if the experiment went on elsewhere since.
        if (self.fetch_stored or has_reported(trial)) and str(local) not in _STARTED_HERE:
            fs = trial.storage.storage_filesystem
            stored = posixpath.join(trial.storage.trial_fs_path, EXPR_RESULT_FILE)
            try:
                with fs.open_input_file(stored) as f:  # read whole: no ranged requests
                    local.write_bytes(f.read())
            except FileNotFoundError:
                pass
            except Exception as e:  # noqa: BLE001 - the run goes on; the file starts over
                log.warning("Could not fetch the stored results of trial %s (%s: %s); its earlier epochs "
                            "may be missing from results.parquet.", trial.trial_id, type(e).__name__, e)
        _STARTED_HERE.add(str(local))

    def log_trial_result(self, iteration, trial, result):
        # The file is made with the first result, not at the start: an empty file would be
        # uploaded once more (a PUT per trial on S3).
        if trial not in self._trial_configs:
            self.log_trial_start(trial)
        if trial not in self._trial_files:
            self._trial_files[trial] = Path(trial.local_path, EXPR_RESULT_FILE).open("at")
        super().log_trial_result(iteration, trial, result)

    def update_config(self, trial, config):
        # Tune's own writes params.pkl beside params.json: nothing reads it (Tune's
        # restore takes configs from the experiment state), and on S3 it is a PUT per trial.
        self._trial_configs[trial] = config
        with Path(trial.local_path, EXPR_PARAM_FILE).open("w") as f:
            json.dump(config, f, indent=2, sort_keys=True, cls=SafeFallbackEncoder)


# The result.json files of the trials a TrialResults of this process started.
_STARTED_HERE: set[str] = set()


def local_results(trial) -> list[dict] | None:
    """The rows of ``trial``'s ``result.json`` as this process wrote it ([] where it has
    none and the trial never reported), or None where this process did not run the trial
    (a resumed experiment's trials that had ended) or lost its file: then storage has
    them (``raycompat.local_trial_results``)."""
    try:
        local = str(Path(trial.local_path, EXPR_RESULT_FILE))
    except Exception:  # noqa: BLE001 - no staging folder outside a Ray session
        return None
    if local not in _STARTED_HERE:
        return None
    try:
        text = Path(local).read_text()
    except FileNotFoundError:
        return None if has_reported(trial) else []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def has_reported(trial) -> bool:
    """Whether Tune took in a result of ``trial`` (restored with the experiment, or in this
    run). Not ``trial.last_result``: it is never empty, Tune fills in the trial's id."""
    return any(k != "trial_id" for k in trial.run_metadata.last_result)


class EpochTensorBoard(TBXLoggerCallback):
    def __init__(self, time_attr: str):
        with _torch_hidden():  # Tune's callback imports tensorboardX here
            super().__init__()
        self.time_attr = time_attr

    def log_trial_start(self, trial) -> None:
        # The writer (and its file) is made with the trial's first result: made here, its
        # header alone would be uploaded once more (a PUT per trial on S3).
        if trial in self._trial_writer:
            self._trial_writer.pop(trial).close()
            self._trial_result.pop(trial, None)

    def log_trial_result(self, iteration, trial, result) -> None:
        if trial not in self._trial_writer:
            super().log_trial_start(trial)
        if self.time_attr in result:
            # Tune's logger steps by `timesteps_total` when a result has one; only this
            # logger's copy gets it.
            result = {**result, TIMESTEPS_TOTAL: result[self.time_attr]}
        super().log_trial_result(iteration, trial, result)

    def __getstate__(self):
        # Pickled into tuner.pkl with the run config: open writers stay behind, and so
        # does tensorboardX's writer class, which a restore would import with PyTorch
        # (5 to 11 s of a resumed driver's start in profiles here).
        state = self.__dict__.copy()
        state["_trial_writer"], state["_trial_result"] = {}, {}
        state.pop("_summary_writer_cls", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        with _torch_hidden():
            from tensorboardX import SummaryWriter
        self._summary_writer_cls = SummaryWriter


@contextlib.contextmanager
def _torch_hidden():
    """Load tensorboardX without PyTorch: tensorboardX 2.6 imports it, where installed,
    for a type annotation only (``writer.numpy_compatible``), which took 1.6-4 s of a
    run's start here; it imports PyTorch again when given a torch tensor. Nothing is
    hidden once either is loaded."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]
