"""Model builders: the user's plug-in point, and the built-in ones.

A builder is a plain function in a module of its own, named in the spec as
``model.builder: "module:function"``::

    def build(hp: dict, inputs: tuner.InputSpec) -> tf_keras.Model

It returns an *uncompiled* ``tf_keras`` model whose output fits the task: logits of shape
(batch, ``inputs.num_classes``) for classification, (batch,) or (batch, 1) for
regression. ``hp`` holds the trial's model hyperparameters (every name in
``search.space`` that is not a training knob); reading one that is not there raises
``MissingHyperparameter`` naming it. ``tuner`` owns the rest: optimizer, learning-rate
schedule, batch scaling, compilation under the distribution strategy, checkpoints and
reports. A builder may carry ``defaults`` (a dict attribute): values for model
hyperparameters the spec leaves out, whose types also type ranges over them.

Built-in: ``tuner.models:mnist_mlp`` (the default) and ``tuner.models:mnist_cnn``.
Importing this package loads no TensorFlow; checking a builder does.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from tuner.models.mnist import mnist_cnn, mnist_mlp

__all__ = ["InputSpec", "MissingHyperparameter", "BuilderError", "load_builder", "mnist_mlp", "mnist_cnn"]

DEFAULT_BUILDER = "tuner.models:mnist_mlp"


@dataclass(frozen=True)
class InputSpec:
    """What a builder's model receives and must predict.

    Attributes:
        shape: one example's feature shape, e.g. (30,) for 30 numeric columns or (28, 28).
        dtype: what the model is fed: always "float32" (uint8 images arrive scaled to [0, 1]).
        task: "classification" or "regression".
        num_classes: the number of classes (None for regression); labels are 0..K-1.
        classes: the class names in label order, as the source had them (None for regression).
        feature_names: the source columns the features came from.
        mean, std: the training split's mean and standard deviation of the model's input,
            per feature for 1-D features, else one number each; for a
            ``tf_keras.layers.Normalization(mean=..., variance=std**2)``.
    """

    shape: tuple[int, ...]
    task: str = "classification"
    num_classes: int | None = None
    dtype: str = "float32"
    classes: tuple | None = None
    feature_names: tuple[str, ...] = ()
    mean: Any = None
    std: Any = None

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "task": self.task, "num_classes": self.num_classes, "dtype": self.dtype,
                "classes": None if self.classes is None else list(self.classes),
                "feature_names": list(self.feature_names), "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, d: Mapping) -> "InputSpec":
        return cls(shape=tuple(d["shape"]), task=d["task"], num_classes=d.get("num_classes"),
                   dtype=d.get("dtype", "float32"), classes=None if d.get("classes") is None else tuple(d["classes"]),
                   feature_names=tuple(d.get("feature_names") or ()), mean=d.get("mean"), std=d.get("std"))


class MissingHyperparameter(KeyError):
    """A builder read a hyperparameter that the search space does not have, or that does
    not count in this trial (its ``when`` does not hold)."""

    def __init__(self, name: str, available: list[str], inactive: bool = False):
        super().__init__(name)
        self.name, self.available, self.inactive = name, available, inactive

    def __str__(self) -> str:
        if self.inactive:
            return (f"the builder reads the model hyperparameter `{self.name}`, which does not count in this trial "
                    f"(its `when` in `search.space` does not hold); read it only where it holds, or with "
                    f"hp.get('{self.name}', DEFAULT)")
        have = ", ".join(self.available) or "none"
        return (f"the builder reads the model hyperparameter `{self.name}`, which `search.space` does not have "
                f"(it has: {have}); add it, e.g. --set search.space.{self.name}=VALUE")


class HyperParameters(dict):
    """The ``hp`` a builder gets: a dict that names a missing key clearly (and one that
    does not count in this trial as such), and remembers which keys were read."""

    def __init__(self, *args, inactive: frozenset[str] | set[str] = frozenset(), **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()
        self.inactive = frozenset(inactive)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "HyperParameters":
        """A trial's model hyperparameters, None for one that does not count in it: those
        left out, and named as such when read."""
        return cls({k: v for k, v in config.items() if v is not None},
                   inactive={k for k, v in config.items() if v is None})

    def __getitem__(self, name):
        if name not in self:
            raise MissingHyperparameter(name, sorted(self), inactive=name in self.inactive)
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        if name in self:
            self.read.add(name)
        return super().get(name, default)


class BuilderError(ValueError):
    """A builder that cannot be used; the message is one line naming it."""


@dataclass
class Builder:
    """A loaded builder and where it came from."""

    path: str  # "module:function"
    function: Callable
    module_file: str | None  # the module's file, if it has one
    defaults: dict = field(default_factory=dict)

    def __call__(self, config: Mapping[str, Any], inputs: InputSpec):
        """The model for a trial's model hyperparameters (None: one that does not count)."""
        return self.function(HyperParameters.of(config), inputs)


def parse_path(path: str) -> tuple[str, str]:
    """("module", "function") of "module:function"; raises BuilderError."""
    module, sep, name = (path or "").partition(":")
    if not sep or not module or not name or not all(p.isidentifier() for p in [*module.split("."), name]):
        raise BuilderError(f"The value of `model.builder` is {path!r}, but must be `module:function` "
                           "(e.g. `my_models:build`, for my_models.py in the working directory).")
    return module, name


def load_builder(path: str, search_path: str | None = None) -> Builder:
    """Import ``module:function`` (``search_path`` first on ``sys.path``).

    Raises:
        BuilderError: the path is malformed, the module cannot be imported, or it has no
            such function.
    """
    module_name, name = parse_path(path)
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            where = f" (looked in {search_path} and the installed packages)" if search_path else ""
            raise BuilderError(f"The model builder's module `{module_name}` cannot be imported: no such module{where}; "
                               "run tuner where it is, or give --working-dir.") from None
        raise BuilderError(f"The model builder's module `{module_name}` cannot be imported: {_one_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - any import-time failure of user code
        raise BuilderError(f"The model builder's module `{module_name}` cannot be imported: {_one_line(e)}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise BuilderError(f"The module `{module_name}` has no function `{name}` (from `model.builder: {path}`).")
    defaults = getattr(function, "defaults", None) or {}
    if not isinstance(defaults, Mapping):
        raise BuilderError(f"`{path}.defaults` must be a dict of hyperparameter -> value.")
    return Builder(path, function, getattr(module, "__file__", None), dict(defaults))


def shipped_from(builder: Builder, folder: str) -> bool:
    """Whether the builder's module was imported from ``folder`` itself (its top-level
    package or module sits right there), so the workers need that folder shipped. A
    module found elsewhere (installed, or on $PYTHONPATH in an image) is not."""
    if not builder.module_file:
        return False
    module = parse_path(builder.path)[0]
    file = Path(builder.module_file).resolve()
    levels = len(module.split(".")) - (0 if file.name == "__init__.py" else 1)
    return file.parents[levels] == Path(folder).resolve()


def check_builder(builder: Builder, configs: list[dict], inputs: InputSpec, loss: str | None) -> set[str]:
    """Build the model for each of ``configs`` (model hyperparameters) and run it on a
    tiny batch; returns the hyperparameters the builder read.

    Raises:
        BuilderError: one line naming the builder and what is wrong.
    """
    import numpy as np
    import tf_keras

    from tuner import training

    read: set[str] = set()
    for config in configs:
        hp = HyperParameters.of(config)
        shown = ", ".join(f"{k}={v!r}" for k, v in hp.items())
        try:
            net = builder.function(hp, inputs)
        except MissingHyperparameter as e:
            raise BuilderError(f"The model builder `{builder.path}`: {e}.") from None
        except Exception as e:  # noqa: BLE001 - the user's code, any failure
            raise BuilderError(f"The model builder `{builder.path}` raised {type(e).__name__} with "
                               f"{shown or 'no hyperparameters'}: "
                               f"{_one_line(e)}") from None
        finally:
            read |= hp.read
        if not isinstance(net, tf_keras.Model):
            kind = type(net).__module__ + "." + type(net).__name__
            hint = " (a Keras 3 model: build it with `import tf_keras`, not `keras`)" if kind.startswith("keras") else ""
            raise BuilderError(f"The model builder `{builder.path}` returned a {kind}, not a tf_keras.Model{hint}.")
        x = np.zeros((2, *inputs.shape), np.float32)
        try:
            out = np.asarray(net(x, training=False))
        except Exception as e:  # noqa: BLE001
            raise BuilderError(f"The model from `{builder.path}` fails on a batch of shape {x.shape}: {_one_line(e)}") from None
        want = (2, inputs.num_classes) if inputs.task == "classification" else (2,)
        fits = out.shape == want or (inputs.task == "regression" and out.shape == (2, 1))
        if not fits:
            expect = (f"(batch, {inputs.num_classes}): one logit per class" if inputs.task == "classification"
                      else "(batch,) or (batch, 1): one value per example")
            raise BuilderError(f"The model from `{builder.path}` outputs shape (batch, {', '.join(map(str, out.shape[1:]))}) "
                               f"for a {inputs.task} task, but must output {expect}.")
        try:
            y = np.zeros((2,), np.int32 if inputs.task == "classification" else np.float32)
            value = training.batch_loss(training.row_losses(inputs.task, loss), y, out)
        except (ValueError, TypeError) as e:
            raise BuilderError(f"The loss {loss!r} does not apply to the model from `{builder.path}`: {_one_line(e)}") from None
        if not math.isfinite(value):
            raise BuilderError(f"The model from `{builder.path}` gives a loss of {value} on a batch of zeros.")
    return read


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
