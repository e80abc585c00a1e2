"""The search space: hyperparameters, their values and their roles. Pure: no Ray, no TensorFlow.

Two roles (the Deep Learning Tuning Playbook's split of what is searched):

- **training knobs**, owned by ``tuner``: ``learning_rate`` and its schedule in epochs,
  ``optimizer`` (and sgd's ``momentum``), the per-worker ``batch_size``. Their names,
  types and bounds are fixed here; each has a default.
- **model hyperparameters**: every other name in ``search.space``. They go to the model
  builder in ``hp``; their type follows from their values: a fixed value or a ``choice``
  keeps its values; a ``uniform`` or ``loguniform`` range draws whole numbers when both
  its ends are whole numbers (write ``0.0`` for a float range), ``int_uniform`` /
  ``int_loguniform`` always do; where the builder has a default for the name, a range
  takes that default's type (``with_builder_defaults``).

A value in YAML: ``0.001`` (fixed), ``{loguniform: [1e-4, 1e-2]}``, ``{uniform: [0.0, 0.5]}``,
``{int_uniform: [1, 3]}``, ``{int_loguniform: [16, 1024]}`` or ``{choice: [64, 128]}``.

Conditions: a hyperparameter counts in a trial only where its conditions hold; elsewhere
its value is None (and a model hyperparameter is left out of the builder's ``hp``). The
training knobs have theirs (``CONDITIONS``: momentum only for sgd, ...); a model
hyperparameter's range or choice may carry ``when: {other: [values...]}`` (every named
hyperparameter takes one of its values; conditions may chain, never circle), e.g.
``units_3: {int_uniform: [16, 512], when: {depth: [3, 4]}}``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

OPTIMIZERS = ("adam", "rmsprop", "adagrad", "sgd")
SCHEDULES = ("constant", "exponential")
FLOAT_RANGES = ("loguniform", "uniform")
INT_RANGES = ("int_loguniform", "int_uniform")
RANGE_KINDS = FLOAT_RANGES + INT_RANGES
KINDS = ("fixed", "choice", *RANGE_KINDS)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Invalid(ValueError):
    """A value that does not fit; the message is one line naming the key."""


@dataclass(frozen=True)
class Dim:
    """One hyperparameter's values: a fixed value, a range, or a list of choices."""

    kind: str  # one of KINDS
    values: tuple  # one value when fixed, (low, high) for a range, the choices otherwise
    type: type = float  # what a range draws: int or float (fixed values and choices keep theirs)
    # Where it counts: ((other hyperparameter, the values that make it count), ...), all of them.
    when: tuple[tuple[str, tuple], ...] = ()

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    @property
    def is_range(self) -> bool:
        return self.kind in RANGE_KINDS

    @property
    def is_log(self) -> bool:
        return self.kind in ("loguniform", "int_loguniform")

    @property
    def is_int(self) -> bool:
        return self.type is int

    def to_yaml(self) -> Any:
        if self.is_fixed and not self.when:
            return self.values[0]
        out: dict[str, Any] = {"choice" if self.is_fixed else self.kind: list(self.values)}
        if self.when:
            out["when"] = {parent: list(values) for parent, values in self.when}
        return out

    def __setstate__(self, state: dict) -> None:
        # A Dim pickled by an older tuner (the searcher's space in tuner.pkl) has no type;
        # it stored whole numbers as ints exactly for its integer hyperparameters.
        if "type" not in state:
            values = state["values"]
            whole = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
            state = {**state, "type": int if whole else _type_of(values) if state["kind"] in ("fixed", "choice")
                     else float}
        object.__setattr__(self, "__dict__", state)

    def corners(self) -> tuple[Any, Any]:
        """The first and the last value this dimension gives (a range's ends)."""
        if self.is_range:
            low, high = self.values
            return (int(low), int(high)) if self.is_int else (low, high)
        return self.values[0], self.values[-1]


@dataclass(frozen=True)
class Knob:
    """A training knob: its type, bounds and default."""

    type: type
    default: Any
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # upper bound (inclusive unless high_open)
    high_open: bool = False
    low_open: bool = False
    allowed: tuple | None = None  # the only values a string knob may take
    doc: str = ""


# The training knobs: every trial's config holds these keys.
KNOBS: dict[str, Knob] = {
    "learning_rate": Knob(float, 1e-3, low=0.0, low_open=True, high=10.0, doc="peak learning rate at the reference batch"),
    "schedule": Knob(str, "constant", allowed=SCHEDULES, doc="learning-rate schedule"),
    "decay_epochs": Knob(float, 1.0, low=0.0, low_open=True, high=1e6, doc="exponential schedule: epochs per decay step"),
    "decay_rate": Knob(float, 0.5, low=0.0, low_open=True, high=1.0, doc="exponential schedule: factor per decay step"),
    "staircase": Knob(bool, True, doc="exponential schedule: decay in whole steps"),
    "optimizer": Knob(str, "adam", allowed=OPTIMIZERS, doc="optimizer"),
    "momentum": Knob(float, 0.9, low=0.0, high=1.0, high_open=True, doc="sgd momentum"),
    "batch_size": Knob(int, 32, low=1, high=65536, doc="per-worker batch size"),
}

# Conditional knobs: name -> (the knob it depends on, the value that makes it count).
# Anywhere else a trial's config holds None for it.
CONDITIONS: dict[str, tuple[str, str]] = {
    "momentum": ("optimizer", "sgd"),
    "decay_epochs": ("schedule", "exponential"),
    "decay_rate": ("schedule", "exponential"),
    "staircase": ("schedule", "exponential"),
}


def is_knob(name: str) -> bool:
    return name in KNOBS


def conditions_of(name: str, space: Mapping[str, Dim] | None = None) -> tuple[tuple[str, tuple], ...]:
    """Where ``name`` counts: a knob's own condition, or its ``when`` in ``space``."""
    knob = CONDITIONS.get(name)
    own = space[name].when if space is not None and name in space else ()
    return (((knob[0], (knob[1],)),) if knob else ()) + own


def active(name: str, config: Mapping[str, Any], space: Mapping[str, Dim] | None = None) -> bool:
    """Whether hyperparameter ``name`` counts in a trial with ``config`` (the knobs'
    conditions, and with ``space`` its ``when``). An inactive parent is None in
    ``config``, which no condition names: conditions chain."""
    return all(config.get(parent) in values for parent, values in conditions_of(name, space))


def default_space() -> dict[str, Dim]:
    """Every training knob at its default (model hyperparameters come from the spec)."""
    return {name: Dim("fixed", (k.default,), k.type) for name, k in KNOBS.items()}


def ordered(space: Mapping[str, Dim]) -> list[str]:
    """The space's names: the knobs in their fixed order (conditions after what they
    depend on), then the model hyperparameters in the spec's order, each after the ones
    its ``when`` names."""
    out = [n for n in KNOBS if n in space]
    placed, rest = set(out), [n for n in space if n not in KNOBS]
    while rest:
        ready = [n for n in rest if all(p in placed or p not in space for p, _ in space[n].when)]
        ready = ready or rest  # a circle (check_conditions refuses it): the spec's order
        out += ready
        placed.update(ready)
        rest = [n for n in rest if n not in placed]
    return out


def searched(space: Mapping[str, Dim]) -> list[str]:
    """The hyperparameters a search varies, in ``ordered`` order."""
    return [name for name in ordered(space) if not space[name].is_fixed]


def possible(dim: Dim) -> tuple | None:
    """Every value ``dim`` can take, or None for a range."""
    return None if dim.is_range else dim.values


def model_hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial config's model hyperparameters (what the builder gets in ``hp``): the
    inactive ones (None) left out."""
    return {k: v for k, v in config.items() if k not in KNOBS and v is not None}


# --- parsing ---------------------------------------------------------------------------


def parse_space(given: Any, problems: list[str]) -> dict[str, Dim]:
    """``search.space`` from YAML: the knobs at their defaults, overridden by ``given``."""
    space = default_space()
    if not isinstance(given, Mapping):
        problems.append("The value of `search.space` must be a mapping of hyperparameter -> value, range or choice.")
        return space
    for name, value in given.items():
        key = f"search.space.{name}"
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"The hyperparameter name `{key}` must be an identifier (letters, digits and _).")
            continue
        try:
            space[name] = parse_dim(name, value)
        except Invalid as e:
            problems.append(str(e))
    return space


def parse_dim(name: str, value: Any) -> Dim:
    """One hyperparameter's YAML value as a Dim; raises Invalid with one line."""
    key = f"search.space.{name}"
    knob = KNOBS.get(name)
    if isinstance(value, Mapping) and "when" in value:
        if knob is not None:
            raise Invalid(f"`{key}` has `when`, but {name} is a training knob: knobs always count (momentum and the "
                          "decay settings have their own conditions); give `when` to model hyperparameters.")
        rest = {k: v for k, v in value.items() if k != "when"}
        if len(rest) != 1 or next(iter(rest)) not in KINDS[1:]:
            raise Invalid(f"`{key}` has `when`; beside it give exactly one of: {', '.join(KINDS[1:])} "
                          f"(a fixed value as `choice: [VALUE]`).")
        return replace(parse_dim(name, rest), when=_parse_when(key, value["when"]))
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise Invalid(f"The value of `{key}` must have exactly one of: {', '.join(KINDS[1:])}.")
        ((kind, args),) = value.items()
        if kind in RANGE_KINDS:
            return _parse_range(key, kind, args, knob)
        if kind == "choice":
            if not (isinstance(args, list) and args):
                raise Invalid(f"The value of `{key}.choice` must be a non-empty list.")
            values = tuple(_check_value(f"{key}.choice", v, knob) for v in args)
            if knob is None and _type_of(values) is object:
                kinds = sorted({type(v).__name__ for v in values})
                raise Invalid(f"The choices of `{key}` mix {' and '.join(kinds)}; give values of one type "
                              "(whole numbers and decimals may mix).")
            return Dim("choice", values, knob.type if knob else _type_of(values))
        raise Invalid(f"`{key}` has `{kind}`, but must be a value or one of: {', '.join(KINDS[1:])}.")
    checked = _check_value(key, value, knob)
    return Dim("fixed", (checked,), knob.type if knob else type(checked))


def _parse_when(key: str, when: Any) -> tuple[tuple[str, tuple], ...]:
    """``when: {other: [values...]}`` (a single value for one) as Dim.when."""
    if not isinstance(when, Mapping) or not when:
        raise Invalid(f"The value of `{key}.when` must map hyperparameters to the values that make `{key}` count, "
                      "e.g. when: {depth: [3, 4]}.")
    out = []
    for parent, values in when.items():
        values = values if isinstance(values, list) else [values]
        if not isinstance(parent, str) or not values or any(
                not isinstance(v, (bool, int, float, str)) for v in values):
            raise Invalid(f"The value of `{key}.when.{parent}` must be a value or a non-empty list of values.")
        out.append((parent, tuple(values)))
    return tuple(out)


def _parse_range(key: str, kind: str, args: Any, knob: Knob | None) -> Dim:
    if knob is not None and knob.type not in (int, float):
        raise Invalid(f"`{key}` takes no {kind} range; use `choice: [...]`.")
    if not (isinstance(args, list) and len(args) == 2):
        raise Invalid(f"The value of `{key}.{kind}` must be [low, high].")
    low, high = (_check_value(f"{key}.{kind}", v, knob, number=True) for v in args)
    if knob is not None:
        is_int = kind in INT_RANGES or knob.type is int
    else:  # from the values: whole-number ends draw whole numbers (write 0.0 for a float range)
        is_int = kind in INT_RANGES or all(isinstance(v, int) and not isinstance(v, bool) for v in args)
    if is_int and not all(float(v).is_integer() for v in (low, high)):
        raise Invalid(f"The range of `{key}` is [{low}, {high}], but `{kind}` ranges need whole numbers.")
    if not low < high:
        raise Invalid(f"The range of `{key}` is [{low}, {high}], but low must be < high.")
    if kind in ("loguniform", "int_loguniform") and low <= 0:
        raise Invalid(f"The range of `{key}` starts at {low}, but `{kind}` ranges must start > 0.")
    if is_int:
        return Dim(kind, (int(low), int(high)), int)
    return Dim(kind, (float(low), float(high)), float)


def _type_of(values: tuple) -> type:
    types = {type(v) for v in values}
    if types == {int, float}:
        return float
    return types.pop() if len(types) == 1 else object


def _check_value(key: str, value: Any, knob: Knob | None, number: bool = False) -> Any:
    if knob is None:  # a model hyperparameter: any scalar; a number where a range needs one
        if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise Invalid(f"The value of `{key}` is {value!r}, but must be a number.")
        if not isinstance(value, (bool, int, float, str)):
            raise Invalid(f"The value of `{key}` is {value!r}, but must be a number, a string or true/false.")
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(f"The value of `{key}` is {value!r}, but must be finite.")
        return value
    if knob.type is bool:
        if isinstance(value, bool):
            return value
        raise Invalid(f"The value of `{key}` is {value!r}, but must be true or false.")
    if knob.type is str:
        assert knob.allowed is not None  # every string knob names its values
        if value in knob.allowed:
            return value
        raise Invalid(f"The value of `{key}` is {value!r}, but must be one of: {', '.join(knob.allowed)}.")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid(f"The value of `{key}` is {value!r}, but must be a number.")
    if knob.type is int and value != int(value):
        raise Invalid(f"The value of `{key}` is {value!r}, but must be a whole number.")
    value = knob.type(value)
    lo_ok = value > knob.low if knob.low_open else value >= knob.low
    hi_ok = value < knob.high if knob.high_open else value <= knob.high
    if not (lo_ok and hi_ok):
        lo = f"> {knob.low:g}" if knob.low_open else f">= {knob.low:g}"
        hi = f"< {knob.high:g}" if knob.high_open else f"<= {knob.high:g}"
        raise Invalid(f"The value of `{key}` is {value!r}, but must be {lo} and {hi}.")
    return value


def check_conditions(space: Mapping[str, Dim]) -> list[str]:
    """Conditions that cannot work, one line each naming the fix: a ``when`` naming a
    hyperparameter the space lacks, or a value it never takes, conditions in a circle, and
    a conditional knob the search would vary although no trial uses it (the searcher would
    silently waste trials)."""
    p = []
    for name, (parent, value) in CONDITIONS.items():
        dim, parents = space[name], possible(space[parent])
        if not dim.is_fixed and parents is not None and value not in parents:
            p.append(f"`search.space.{name}` is searched, but only {parent} `{value}` uses it and "
                     f"`search.space.{parent}` never is `{value}`; fix {name} to one value or add `{value}`.")
    for name, dim in space.items():
        for parent, values in dim.when:
            key = f"search.space.{name}.when.{parent}"
            if parent not in space:
                p.append(f"`{key}` names `{parent}`, which `search.space` does not have; name one of "
                         f"{', '.join(n for n in ordered(space) if n != name)}, or add `{parent}`.")
            elif never := [v for v in values if not takes(space[parent], v)]:
                p.append(f"`{key}` has {', '.join(map(repr, never))}, which `{parent}` never takes "
                         f"({describe(space[parent])}); give values it takes.")
    if circle := _circle(space):
        p.append(f"The `when` conditions of `search.space` go in a circle ({' -> '.join(circle)}); a hyperparameter "
                 "cannot depend on itself: remove one of them.")
    return p


def takes(dim: Dim, value: Any) -> bool:
    """Whether ``dim`` can give ``value``."""
    if not dim.is_range:
        return any(value == v and type(value) is type(v) or (_number(value) and _number(v) and value == v)
                   for v in dim.values)
    low, high = dim.values
    return _number(value) and low <= value <= high and (not dim.is_int or float(value).is_integer())


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def describe(dim: Dim) -> str:
    """What ``dim`` gives, for a message."""
    if dim.is_range:
        return f"a {dim.kind} range [{dim.values[0]}, {dim.values[1]}]"
    return "it is " + ", ".join(map(repr, dim.values))


def _circle(space: Mapping[str, Dim]) -> list[str]:
    """One circle of ``when`` conditions (its names, the first again at the end), or []:
    a depth-first walk along every condition of every hyperparameter."""
    parents = {n: [p for p, _ in d.when if p in space] for n, d in space.items()}
    done: set[str] = set()

    def walk(name: str, path: list[str]) -> list[str]:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return []
        for parent in parents[name]:
            if circle := walk(parent, [*path, name]):
                return circle
        done.add(name)
        return []

    for start in parents:
        if circle := walk(start, []):
            return circle
    return []


def with_builder_defaults(space: Mapping[str, Dim], defaults: Mapping[str, Any]) -> dict[str, Dim]:
    """The space completed with a builder's ``defaults`` (fixed values for the model
    hyperparameters the spec leaves out) and typed by them: a ``uniform`` or
    ``loguniform`` range draws ints where the default is an int, floats where it is a
    float (``int_*`` ranges always draw ints)."""
    out = dict(space)
    for name, default in defaults.items():
        if name in KNOBS:
            continue
        dim = out.get(name)
        if dim is None:
            out[name] = Dim("fixed", (default,), type(default))
        elif dim.kind in FLOAT_RANGES and not isinstance(default, bool) and isinstance(default, (int, float)):
            low, high = dim.values
            if isinstance(default, int) and float(low).is_integer() and float(high).is_integer():
                out[name] = replace(dim, values=(int(low), int(high)), type=int)
            elif isinstance(default, float):
                out[name] = replace(dim, values=(float(low), float(high)), type=float)
    return out


# --- points of the space ----------------------------------------------------------------


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
    config: dict[str, Any] = {}
    for name in ordered(space):  # what a condition names comes first
        dim = space[name]
        value = value_at(name, dim, float(coords[name])) if name in coords else dim.values[0]
        config[name] = value if active(name, config, space) else None
    return config


def corner_configs(space: Mapping[str, Dim]) -> list[dict]:
    """Configs to check a builder with: every hyperparameter at its first value, then at its
    last (the inactive ones None), and for each model hyperparameter active in neither, one
    where its conditions hold (their first values), so that every one is built once."""
    def at(chosen: Mapping[str, Any], end: int) -> dict:
        config: dict[str, Any] = {}
        for name in ordered(space):
            value = chosen[name] if name in chosen else space[name].corners()[end]
            config[name] = value if active(name, config, space) else None
        return config

    out = [at({}, 0), at({}, 1)]
    for name in ordered(space):
        if name not in KNOBS and all(c[name] is None for c in out):
            chosen: dict[str, Any] = {}
            wanted = [name]
            while wanted:  # its conditions, theirs, ...
                for parent, values in conditions_of(wanted.pop(), space):
                    if parent in space and parent not in chosen:
                        chosen[parent] = values[0]
                        wanted.append(parent)
            out.append(at(chosen, 0))
    return [c for i, c in enumerate(out) if c not in out[:i]]


def grid_points(space: Mapping[str, Dim]) -> list[dict]:
    """Every combination of the choices (and fixed values) in which each hyperparameter is
    active or None: an inactive one adds no combinations. Ranges are not allowed."""
    points: list[dict] = [{}]
    for name in ordered(space):
        dim = space[name]
        if dim.is_range:
            raise ValueError(f"a grid has no points along the range {name}")
        points = [{**p, name: v} for p in points
                  for v in (dim.values if active(name, p, space) else (None,))]
    return points


def varies(dim: Dim) -> bool:
    """Whether ``dim`` gives more than one value."""
    return dim.is_range or len(dim.values) > 1


def conditional_grid(space: Mapping[str, Dim]) -> bool:
    """Whether the grid's combinations depend on conditions: a hyperparameter that varies,
    or one with a ``when``, whose condition names one that varies."""
    return any(any(varies(space[p]) for p, _ in conditions_of(n, space) if p in space)
               for n, d in space.items() if varies(d) or d.when)
