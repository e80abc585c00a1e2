"""TensorBoard event files per trial, stepped by epoch.

Tune already writes them (``TBXLoggerCallback``, into each trial's folder beside
``result.json``), but steps them by ``training_iteration``: the count of reports since
the trial's function started, which starts again after an experiment is resumed. The
epoch is what the curves are about. Passing this subclass keeps Tune from adding its own.

    tensorboard --logdir <storage>/<name>     # one run per trial folder

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import contextlib
import sys

from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TIMESTEPS_TOTAL


class EpochTensorBoard(TBXLoggerCallback):
    def __init__(self, time_attr: str):
        with _torch_hidden():  # Tune's callback imports tensorboardX here
            super().__init__()
        self.time_attr = time_attr

    def log_trial_result(self, iteration, trial, result) -> None:
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
