"""Ray Train's ``TensorflowConfig`` without a TensorFlow import where no model runs.

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
import sys

PACKAGE = "ray.train.tensorflow"


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
