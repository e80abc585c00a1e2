"""The spec's ``search.algorithm`` as a Ray Tune searcher (schedulers: ``tuner.schedulers``).

Searchers (each with at most ``max_concurrent`` suggestions out at once):

- ``grid``: Tune's ``BasicVariantGenerator`` over ``tune.grid_search`` axes.
- ``random`` and ``quasi_random``: ``UnitCubeSearch``. Trial *i* gets point *i* of a
  sequence in the unit cube, one coordinate per searched hyperparameter, mapped onto
  the space (``config_from_unit``): independent uniform draws for ``random``, a
  scrambled Sobol sequence (scipy.stats.qmc) for ``quasi_random``, which covers the cube
  more evenly (the Deep Learning Tuning Playbook's advice for exploring). Both follow
  from the seed and the trial's number alone, so the saved state is one counter.
- ``tpe`` and ``bayesian``: Ray's ``OptunaSearch`` with Optuna's TPE or Gaussian-process
  sampler over a define-by-run space (``OptunaSpace``), which asks for a conditional
  hyperparameter only when it is active. Tune saves their state (the Optuna study,
  the sampler's RNG) with every experiment checkpoint and restores it on a resume.

Conditional hyperparameters (``space.CONDITIONS``): momentum is used only by sgd, the
decay settings only by the exponential schedule. In a trial whose config does not use
one, its value is None.

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import math
import pickle
from typing import Mapping, Sequence

import numpy as np
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from tuner.space import CONDITIONS, Dim, active, ordered, searched
from tuner.spec import Spec

# --- the space ------------------------------------------------------------------------


def value_at(name: str, dim: Dim, u: float):
    """The value of hyperparameter ``name`` at ``u`` in [0, 1) along ``dim``."""
    is_int = dim.is_int
    if dim.kind == "choice":
        return dim.values[min(int(u * len(dim.values)), len(dim.values) - 1)]
    low, high = dim.values
    if dim.kind in ("uniform", "int_uniform"):
        if is_int:
            return int(low) + min(int(u * (high - low + 1)), int(high - low))
        return low + u * (high - low)
    if dim.kind in ("loguniform", "int_loguniform"):
        if is_int:  # as tune.lograndint(low, high + 1); exp(log(16)) may come out as 15.999...
            value = int(math.exp(math.log(low) + u * (math.log(high + 1) - math.log(low))) + 1e-9)
            return max(int(low), min(value, int(high)))
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    raise ValueError(f"no unit-cube mapping for a {dim.kind} dimension")  # pragma: no cover


def config_from_unit(space: Mapping[str, Dim], u: Sequence[float]) -> dict:
    """A trial's config from a point ``u`` of the unit cube, one coordinate per
    ``searched(space)`` name in order; inactive conditional hyperparameters are None."""
    names = searched(space)
    if len(u) != len(names):
        raise ValueError(f"expected {len(names)} coordinates, got {len(u)}")
    coords = dict(zip(names, u))
    config = {name: value_at(name, space[name], float(coords[name])) if name in coords else space[name].values[0]
              for name in ordered(space)}
    return {name: value if active(name, config) else None for name, value in config.items()}


class UnitCubeSearch(Searcher):
    """``random`` or ``quasi_random`` search: trial *i* gets point *i* of the sequence.

    Args:
        space: the spec's search space.
        kind: "random" (independent uniform draws) or "quasi_random" (scrambled Sobol).
        seed: the sequence's seed.
    """

    def __init__(self, space: Mapping[str, Dim], kind: str, seed: int, metric: str | None = None,
                 mode: str | None = None):
        super().__init__(metric=metric, mode=mode)
        if kind not in ("random", "quasi_random"):
            raise ValueError(f"unknown unit-cube search {kind!r}")
        self.space, self.kind, self.seed = dict(space), kind, seed
        self.drawn = 0
        self._sobol = None  # the first 2**m points, computed when first needed

    def point(self, i: int) -> np.ndarray:
        """Point ``i`` of this search's sequence."""
        d = len(searched(self.space))
        if d == 0:
            return np.empty(0)
        if self.kind == "random":
            return np.random.default_rng([self.seed, i]).random(d)
        if self._sobol is None or len(self._sobol) <= i:
            from scipy.stats import qmc

            # A power-of-two block: Sobol points keep their balance in such prefixes,
            # and the first points of every block are the same.
            m = max(4, math.ceil(math.log2(i + 1)))
            self._sobol = qmc.Sobol(d, scramble=True, seed=self.seed).random_base2(m)
        return self._sobol[i]

    def suggest(self, trial_id: str) -> dict:
        config = config_from_unit(self.space, self.point(self.drawn))
        self.drawn += 1
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the sequence does not learn from results

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def get_state(self) -> dict:
        return {"drawn": self.drawn, "kind": self.kind, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.drawn, self.kind, self.seed = state["drawn"], state["kind"], state["seed"]
        self._sobol = None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class OptunaSpace:
    """Optuna's define-by-run space: asks the trial for each searched hyperparameter, a
    conditional one only when active, and returns the fixed and inactive ones (None).
    A class rather than a closure: Ray pickles it with the searcher's state."""

    def __init__(self, space: Mapping[str, Dim]):
        self.space = dict(space)

    def __call__(self, trial) -> dict:
        config, fixed = {}, {}
        for name in ordered(self.space):  # conditions come after what they depend on
            dim = self.space[name]
            if not active(name, config):
                config[name] = fixed[name] = None
            elif dim.is_fixed:
                config[name] = fixed[name] = dim.values[0]
            elif dim.kind == "choice":
                config[name] = trial.suggest_categorical(name, list(dim.values))
            else:
                low, high = dim.values
                log = dim.is_log
                if dim.is_int:
                    config[name] = trial.suggest_int(name, int(low), int(high), log=log)
                else:
                    config[name] = trial.suggest_float(name, low, high, log=log)
        return fixed


def optuna_sampler(algorithm: str, seed: int):
    """Optuna's sampler for ``tpe`` or ``bayesian``, seeded."""
    import warnings

    import optuna

    if algorithm == "tpe":
        # multivariate + group model the conditional parameters jointly with what they
        # depend on; the constant liar keeps parallel trials from getting the same point.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)
    if algorithm == "bayesian":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"no Optuna sampler for {algorithm!r}")


def searcher_for(spec: Spec, max_concurrent: int, metric: str, mode: str):
    """(search_alg, param_space) for ``tune.Tuner``: Tune's variant generator with the
    param space for ``grid``, else a searcher that holds the space itself."""
    se = spec.search
    if se.algorithm == "grid":
        # The generator's own limit: Tune ignores max_concurrent_trials for it.
        return BasicVariantGenerator(random_state=se.seed, max_concurrent=max_concurrent), param_space(spec)
    if se.algorithm in ("random", "quasi_random"):
        searcher = UnitCubeSearch(se.space, se.algorithm, se.seed, metric=metric, mode=mode)
    elif se.algorithm in ("tpe", "bayesian"):
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(space=OptunaSpace(se.space), metric=metric, mode=mode,
                                sampler=optuna_sampler(se.algorithm, se.seed))
    else:  # pragma: no cover - spec validation admits no other algorithm
        raise ValueError(f"unknown search algorithm {se.algorithm!r}")
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent), {}




# --- grid: Tune's variant generator -----------------------------------------------------


def param_space(spec: Spec) -> dict:
    """The spec's search space as a Ray Tune ``param_space`` (grid search: choices become
    ``grid_search`` axes). A conditional hyperparameter is None where it does not count."""
    out = {}
    grid = spec.search.algorithm == "grid"
    for name in ordered(spec.search.space):
        dim = spec.search.space[name]
        if dim.is_fixed:
            out[name] = dim.values[0]
        elif dim.kind == "choice":
            out[name] = tune.grid_search(list(dim.values)) if grid else tune.choice(list(dim.values))
        elif dim.is_log:
            low, high = dim.values
            out[name] = tune.lograndint(int(low), int(high) + 1) if dim.is_int else tune.loguniform(low, high)
        elif dim.is_range:
            low, high = dim.values
            out[name] = tune.randint(int(low), int(high) + 1) if dim.is_int else tune.uniform(low, high)
        else:  # pragma: no cover - spec validation admits no other kind
            raise ValueError(f"unknown dimension kind {dim.kind!r}")
    for name, (parent, value) in CONDITIONS.items():
        parents = spec.search.space[parent]
        if parents.is_fixed:
            out[name] = out[name] if parents.values[0] == value else None
        elif set(parents.values) != {value}:  # the spec admits only one value here
            out[name] = tune.sample_from(_IfActive(name, spec.search.space[name].values[0]))
    return out


class _IfActive:
    """A fixed value where its condition holds, else None (picklable, unlike a lambda)."""

    def __init__(self, name: str, value):
        self.name, self.value = name, value

    def __call__(self, spec) -> object:
        # Tune's variant generator passes the whole trial spec ({"config": {...}, ...}).
        parent, value = CONDITIONS[self.name]
        config = spec["config"] if "config" in spec and parent not in spec else spec
        return self.value if config[parent] == value else None


def __getattr__(name: str):
    # Experiments interrupted under an older tuner pickled these as tuner.search.*; they
    # live in tuner.schedulers now.
    if name in ("PromotingASHA", "ResumableMedian", "Plateau"):
        from tuner import schedulers

        return getattr(schedulers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
