"""Ray Train's ``TensorflowTrainer`` as a trial builds it: without a TensorFlow import in
the trial's driver and Train controller (``lazy_tensorflow``), and without the dataset
manager a trial that reads its own shards does not use.

``ray/train/tensorflow/__init__.py`` imports TensorFlow (for its checkpoint and dataset
helpers), so building a ``TensorflowTrainer`` in a trial driver and unpickling its config
in the Train controller each cost a full TensorFlow import (~2.5 s of CPU here), in
series before the workers start. The config module itself needs no TensorFlow.

``lazy_tensorflow()`` registers the ``ray.train.tensorflow`` package without running its
``__init__``; the first access to anything else in the package runs the real
``__init__`` then, so the package behaves as usual wherever more of it is used.
``Config`` is the trainer's backend config; unpickling it (in the controller) imports
this module first, which installs the same lazy package there, and the controller's
patches (``tuner.raycompat.roles``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from tuner.raycompat.patches import _replace, declare, patch, usable

PACKAGE = "ray.train.tensorflow"


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


lazy_tensorflow()

from ray.train.tensorflow.config import TensorflowConfig  # noqa: E402


class Config(TensorflowConfig):
    """``TensorflowConfig`` whose pickle names this module, so it unpickles TF-free; where
    it unpickles (the Train controller), old checkpoints are deleted marker-free."""

    def __reduce__(self):
        return _unpickled_config, (self.__dict__.copy(),)


def _unpickled_config(state: dict) -> Config:
    from tuner.raycompat.roles import install

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
