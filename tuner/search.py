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

Conditional hyperparameters (``space.CONDITIONS``: momentum is used only by sgd, the
decay settings only by the exponential schedule; a model hyperparameter's ``when``): in a
trial whose config does not use one, its value is None. A grid whose combinations depend
on conditions is enumerated by ``ConditionalGrid`` (each inactive hyperparameter adds no
combinations); any other grid is Tune's variant generator, as before.

Imports Ray: load it only where Tune runs.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Mapping, Sequence

import numpy as np
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from tuner import warm
from tuner.space import (  # noqa: F401
    CONDITIONS,
    Dim,
    active,
    conditional_grid,
    conditions_of,
    config_from_unit,
    grid_points,
    ordered,
    searched,
    value_at,
    varies,
)
from tuner.spec import Spec


class UnitCubeSearch(Searcher):
    """``random`` or ``quasi_random`` search: trial *i* gets point *i* of the sequence.

    Args:
        space: the spec's search space.
        kind: "random" (independent uniform draws) or "quasi_random" (scrambled Sobol).
        seed: the sequence's seed.
    """

    # A warm start's known points are skipped: at most this many draws in a row (a space
    # of few choices that the known points cover is then drawn from again).
    SKIPS = 1000

    def __init__(self, space: Mapping[str, Dim], kind: str, seed: int, metric: str | None = None,
                 mode: str | None = None, first: Sequence[dict] = (), known: Sequence[dict] = ()):
        super().__init__(metric=metric, mode=mode)
        if kind not in ("random", "quasi_random"):
            raise ValueError(f"unknown unit-cube search {kind!r}")
        self.space, self.kind, self.seed = dict(space), kind, seed
        self.drawn = 0
        self.first = [dict(c) for c in first]  # a warm start's best configurations: suggested first
        self.given = 0  # of `first`
        self.known = {warm.key(c) for c in [*known, *first]}  # never drawn again
        self._sobol: np.ndarray | None = None  # the first 2**m points, computed when first needed

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
        if self.given < len(self.first):
            self.given += 1
            return dict(self.first[self.given - 1])
        for _ in range(self.SKIPS):
            config = config_from_unit(self.space, list(self.point(self.drawn)))
            self.drawn += 1
            if warm.key(config) not in self.known:
                break
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # the sequence does not learn from results

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def get_state(self) -> dict:
        return {"drawn": self.drawn, "kind": self.kind, "seed": self.seed, "first": self.first, "given": self.given,
                "known": sorted(self.known)}

    def set_state(self, state: dict) -> None:
        self.drawn, self.kind, self.seed = state["drawn"], state["kind"], state["seed"]
        self.first, self.given = state.get("first", []), state.get("given", 0)
        self.known = {tuple(tuple(pair) for pair in k) for k in state.get("known", [])}
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
        config: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for name in ordered(self.space):  # conditions come after what they depend on
            dim = self.space[name]
            if not active(name, config, self.space):
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


def optuna_sampler(algorithm: str, seed: int, trials: int = 0):
    """Optuna's sampler for ``tpe``, ``bayesian`` or ``nsga2``, seeded. NSGA-II breeds
    generations of about a third of the ``trials`` (4 to 50: Optuna's 50 would leave a
    small search random)."""
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
    if algorithm == "nsga2":
        from tuner.nsga2 import NSGAIISampler

        return NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
    raise ValueError(f"no Optuna sampler for {algorithm!r}")


def optuna_distributions(space: Mapping[str, Dim], config: Mapping) -> dict:
    """Optuna's distribution of each hyperparameter ``OptunaSpace`` asks a trial with
    ``config`` for (the searched ones that count in it)."""
    import optuna

    out: dict[str, Any] = {}
    for name in ordered(space):
        dim = space[name]
        if dim.is_fixed or not active(name, config, space):
            continue
        if dim.kind == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(list(dim.values))
        elif dim.is_int:
            out[name] = optuna.distributions.IntDistribution(int(dim.values[0]), int(dim.values[1]), log=dim.is_log)
        else:
            out[name] = optuna.distributions.FloatDistribution(dim.values[0], dim.values[1], log=dim.is_log)
    return out


def warm_study(space: Mapping[str, Dim], mode: str, sampler, points: list) -> tuple:
    """(Optuna storage, study name) of a study that holds a warm start's points as
    finished trials, for ``OptunaSearch`` to load: its sampler learns from them before
    it suggests anything (Optuna's ``add_trials``)."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=sampler, study_name="tuner",
                                direction="maximize" if mode == "max" else "minimize")
    trials = []
    for p in points:
        distributions = optuna_distributions(space, p.config)
        trials.append(optuna.trial.create_trial(params={n: p.config[n] for n in distributions},
                                                distributions=distributions, value=p.value))
    study.add_trials(trials)
    return storage, "tuner"


def searcher_for(spec: Spec, max_concurrent: int, metric: str, mode: str, warm_start=None):
    """(search_alg, param_space) for ``tune.Tuner``: Tune's variant generator with the
    param space for ``grid``, else a searcher that holds the space itself.
    ``warm_start``: a ``tuner.warm.WarmStart`` (its points and first configurations)."""
    se = spec.search
    points, first = (warm_start.points, warm_start.first) if warm_start else ([], [])
    searcher: Searcher
    if se.algorithm == "grid" and not conditional_grid(se.space):
        # The generator's own limit: Tune ignores max_concurrent_trials for it.
        return BasicVariantGenerator(random_state=se.seed, max_concurrent=max_concurrent), param_space(spec)
    if se.algorithm == "grid":
        searcher = ConditionalGrid(se.space, se.num_samples, metric=metric, mode=mode)
    elif se.algorithm in ("random", "quasi_random"):
        searcher = UnitCubeSearch(se.space, se.algorithm, se.seed, metric=metric, mode=mode, first=first,
                                  known=[p.config for p in points])
    elif se.algorithm in ("tpe", "bayesian", "nsga2"):
        from ray.tune.search.optuna import OptunaSearch

        sampler = optuna_sampler(se.algorithm, se.seed, se.num_samples)
        storage, name = warm_study(se.space, mode, sampler, points) if points else (None, None)
        # Several objectives: Optuna's multi-objective study (TPE: MOTPE; NSGA-II), told
        # each trial's last reported value of every objective.
        objectives: Any = (spec.objective.metrics, spec.objective.modes) if spec.objective.more else (metric, mode)
        searcher = OptunaSearch(space=OptunaSpace(se.space), metric=objectives[0], mode=objectives[1], sampler=sampler,
                                storage=storage, study_name=name,
                                points_to_evaluate=[{n: c[n] for n in optuna_distributions(se.space, c)}
                                                    for c in first] or None)
    else:  # pragma: no cover - spec validation admits no other algorithm
        raise ValueError(f"unknown search algorithm {se.algorithm!r}")
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent), {}


def trial_count(spec: Spec) -> int:
    """How many trials the search runs (a grid's combinations times num_samples)."""
    se = spec.search
    if se.algorithm != "grid":
        return se.num_samples
    return len(grid_points(se.space)) * se.num_samples


def tune_num_samples(spec: Spec) -> int:
    """``TuneConfig.num_samples``: Tune's variant generator repeats the grid itself."""
    se = spec.search
    return trial_count(spec) if se.algorithm == "grid" and conditional_grid(se.space) else se.num_samples


class ConditionalGrid(Searcher):
    """A grid whose combinations depend on conditions (``space.grid_points``), each
    ``repeats`` times in a row; then ``Searcher.FINISHED``. Its state is one counter."""

    def __init__(self, space: Mapping[str, Dim], repeats: int, metric: str | None = None, mode: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self.points = [p for p in grid_points(space) for _ in range(repeats)]
        self.given = 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.given >= len(self.points):
            return Searcher.FINISHED  # type: ignore[return-value]  # Ray's own marker, typed as neither
        self.given += 1
        return dict(self.points[self.given - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"given": self.given, "points": self.points}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.given, self.points = state["given"], state["points"]




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
    # Without a ConditionalGrid (search.searcher_for), a condition names only hyperparameters
    # of one value, or its dependant has one value (momentum, fixed, and optimizer choices).
    space, one = spec.search.space, dict[str, Any]()
    for name in ordered(space):
        one[name] = space[name].values[0] if active(name, one, space) else None  # all of one value
        conditions = conditions_of(name, space)
        if not any(varies(space[p]) for p, _ in conditions):
            out[name] = out[name] if one[name] is not None else None
        elif any(set(space[p].values) - set(values) for p, values in conditions):
            out[name] = tune.sample_from(_IfActive(name, space[name].values[0], conditions))
    return out


class _IfActive:
    """A fixed value where its condition holds, else None (picklable, unlike a lambda)."""

    def __init__(self, name: str, value, conditions: tuple = ()):
        self.name, self.value, self.conditions = name, value, conditions

    def __call__(self, spec) -> object:
        # Tune's variant generator passes the whole trial spec ({"config": {...}, ...}).
        # Pickled by an older tuner: no conditions, a knob's own.
        conditions = getattr(self, "conditions", None) or conditions_of(self.name)
        parent = conditions[0][0]
        config = spec["config"] if "config" in spec and parent not in spec else spec
        return self.value if all(config[p] in values for p, values in conditions) else None


def __getattr__(name: str):
    # Experiments interrupted under an older tuner pickled these as tuner.search.*; they
    # live in tuner.schedulers now.
    if name in ("PromotingASHA", "ResumableMedian", "Plateau"):
        from tuner import schedulers

        return getattr(schedulers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
