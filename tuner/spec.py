"""The experiment spec: one YAML file, typed and frozen, validated before Ray starts.

A spec is built in three steps, all pure:

1. ``load_raw`` reads a preset or a YAML file into plain dicts;
2. ``apply_overrides`` applies ``--set dotted.key=value`` (unknown keys are errors);
3. ``build_spec`` merges the result over the defaults and validates every field.
   All problems are collected and raised together as one ``SpecError``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from tuner import population, storage
from tuner.space import Dim, Invalid, check_conditions, default_space, parse_dim, parse_space, varies
from tuner.storage import Location

PRESET_PACKAGE = "tuner.presets"

LR_SCALING_RULES = ("none", "linear", "sqrt")
ALGORITHMS = ("random", "grid", "quasi_random", "tpe", "bayesian", "nsga2")
# Schedulers and searchers that follow several objectives (MO-ASHA, MOTPE, NSGA-II; the
# others do not learn from results); PBT and PB2 follow the first.
MULTI_OBJECTIVE_SCHEDULERS = ("asha", "fifo", "pbt", "pb2")
MULTI_OBJECTIVE_ALGORITHMS = ("random", "grid", "quasi_random", "tpe", "nsga2")
SCHEDULERS = ("asha", "asha_promote", "hyperband", "median_stopping", "fifo", "pbt", "pb2")
POPULATION_SCHEDULERS = ("pbt", "pb2")
CHECKPOINT_UPLOADS = ("async", "sync")
MODES = ("max", "min")
LOWER_IS_BETTER = ("val_loss", "val_mae")
# What every trial reports of its cost, beside its validation metrics (lower is better):
# trainable parameters, the last training epoch's wall time, worker-seconds held so far.
COST_METRICS = ("params", "epoch_seconds", "worker_seconds")


class SpecError(ValueError):
    """One or more problems in a spec; each is one line naming the field and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# --- the spec sections -----------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    # Where MNIST comes from when `tuner tune` stages it itself: "builtin" (the subset
    # shipped in the package), a folder or s3://bucket/prefix of the IDX .gz files, or
    # "download" (public mirrors). Your own data: stage it with `tuner stage-data`, set `uri`.
    source: str = "builtin"
    # Where the staged dataset lives; default <storage.uri>/datasets/<mnist|mnist-subset>.
    uri: str | None = None
    # Share of the training images carved off, once, as the fixed validation split.
    validation_fraction: float = 1 / 12


@dataclass(frozen=True)
class StorageSpec:
    # Experiments, checkpoints and staged data: a local path or s3://bucket/prefix.
    uri: str = "./tuner-results"
    # S3 endpoint URL (MinIO, Ceph RGW, ...); default $AWS_ENDPOINT_URL, else AWS S3.
    endpoint: str | None = None

    @property
    def location(self) -> Location:
        return Location(self.uri, self.endpoint)


@dataclass(frozen=True)
class WarmStartSpec:
    # Finished experiments whose trials (configurations and objective values) the
    # searcher learns from before it suggests anything; they are read, never written.
    experiments: list[str] = field(default_factory=list)
    # Where they are stored; default: this experiment's storage.uri.
    storage: str | None = None
    # Their best configurations that run first, as this experiment's first trials.
    top: int = 1


@dataclass(frozen=True)
class SearchSpec:
    # "random": independent draws; "quasi_random": a scrambled Sobol sequence over the
    # same space (covers it more evenly); "tpe": Optuna's TPE; "bayesian": Optuna's
    # Gaussian-process sampler (needs PyTorch); "grid": every combination of the
    # choices that count, num_samples times (ranges are not allowed with grid).
    algorithm: str = "random"
    # Trials (repeats of the grid for grid).
    num_samples: int = 8
    # Seeds the sampler and every trial's weight initialisation and shuffling.
    seed: int = 0
    # Hyperparameter -> fixed value, {loguniform|uniform|int_uniform|int_loguniform: [low, high]}
    # or {choice: [...]}: the training knobs (learning_rate, schedule, decay_epochs,
    # decay_rate, staircase, optimizer, momentum, batch_size) and any model hyperparameter;
    # a model hyperparameter's range or choice may add `when: {other: [values]}` (README).
    space: Mapping[str, Dim] = field(default_factory=default_space)
    # Start from earlier experiments of the same task and objective (see README).
    warm_start: WarmStartSpec = field(default_factory=WarmStartSpec)


@dataclass(frozen=True)
class ModelSpec:
    # The model builder, "module:function": build(hp, inputs) -> an uncompiled tf_keras.Model.
    builder: str = "tuner.models:mnist_mlp"
    # A Keras loss name (e.g. "huber"); default from the task: sparse categorical
    # cross-entropy from logits (classification) or mean squared error (regression).
    loss: str | None = None


@dataclass(frozen=True)
class ObjectiveSpec:
    # The validation metric that schedulers, searchers and the best trial follow:
    # val_loss, and val_accuracy (classification) or val_mae (regression).
    metric: str = "val_accuracy"
    # "max" or "min"; left out: min for val_loss, val_mae and the cost metrics, max otherwise.
    mode: str = "max"
    # A multi-objective search's further objectives, ((metric, mode), ...): the spec then
    # gives `objective` as a list, [{metric: val_accuracy, mode: max}, {metric: params}].
    # They may be cost metrics (COST_METRICS). The first objective is the one a single
    # best trial, PBT and the plateau rule follow.
    more: tuple[tuple[str, str], ...] = ()

    @property
    def all(self) -> list[tuple[str, str]]:
        """Every objective, as (metric, mode), the first first."""
        return [(self.metric, self.mode), *self.more]

    @property
    def metrics(self) -> list[str]:
        return [m for m, _ in self.all]

    @property
    def modes(self) -> list[str]:
        return [mode for _, mode in self.all]

    def to_yaml(self) -> Any:
        entries = [{"metric": m, "mode": mode} for m, mode in self.all]
        return entries if self.more else entries[0]


@dataclass(frozen=True)
class TrainingSpec:
    # Scale the learning rate with the global batch: "none", "linear" or "sqrt".
    lr_scaling: str = "none"
    # The global batch at which search.space.learning_rate is meant.
    reference_batch: int = 32
    # Linear warmup from 0 to the peak learning rate, in epochs.
    warmup_epochs: float = 0.0
    # Training knobs that change as training goes on: [{epoch: E, learning_rate: ..., ...}]
    # sets them from epoch E (epochs trained so far) on; a PBT trial's schedule, replayed
    # (`tuner best` prints it). Knobs: learning_rate, decay_epochs, decay_rate, momentum,
    # batch_size.
    hyperparameter_schedule: list[dict] | None = None


@dataclass(frozen=True)
class AshaSpec:
    # The epoch budget of every trial, whatever the number of workers.
    max_t: int = 10
    # Epochs every trial runs before ASHA may stop it.
    grace_period: int = 1
    # Keep the top 1/reduction_factor at each rung.
    reduction_factor: int = 3


@dataclass(frozen=True)
class SchedulerSpec:
    # "asha", "asha_promote" (the paper's promotion rule: a trial waits, paused, at a rung
    # until it is in the top 1/reduction_factor there), "hyperband" (asynchronous: one
    # bracket per halving rate), "median_stopping"
    # (stop a trial below the median of the others' running means) or "fifo" (every
    # trial runs the whole budget). "pbt" (population-based training) and "pb2" (its GP
    # bandit variant): see `pbt`. Epoch budget, grace period and reduction factor: `asha`.
    kind: str = "asha"
    # median_stopping: trials that must have reached an epoch before any is judged there.
    median_min_trials: int = 3
    # With any scheduler: stop a trial whose objective has not improved by more than
    # plateau_min_delta for plateau_patience epochs; null: never.
    plateau_patience: int | None = None
    plateau_min_delta: float = 0.0


@dataclass(frozen=True)
class PbtSpec:
    # scheduler.kind pbt / pb2. Epochs between a member's perturbation points, where the
    # bottom of the population exploits the top; < asha.max_t, the epochs every member trains.
    interval: int = 2
    # The bottom fraction of the ranked members that continues from the top fraction's
    # checkpoints (> 0 and <= 0.5).
    quantile: float = 0.25
    # pbt's explore: a mutated hyperparameter is drawn again from search.space with this
    # probability, else multiplied by 0.8 or 1.2 (within its range) or moved to a
    # neighbouring choice. pb2 chooses numeric ranges by a GP bandit instead.
    resample_probability: float = 0.25
    # The hyperparameters the population changes: training knobs among learning_rate,
    # decay_epochs, decay_rate, momentum, batch_size; null: every searched one of them.
    # The others (the model's, the optimizer) stay those of the member copied.
    mutate: list[str] | None = None


@dataclass(frozen=True)
class ScalingSpec:
    # Ray Train workers per trial (MultiWorkerMirroredStrategy replicas).
    workers: int = 2
    # Give each worker GPUs.
    use_gpu: bool = False
    # CPUs reserved per worker.
    cpus_per_worker: float = 1.0
    # GPUs reserved per worker when use_gpu is true.
    gpus_per_worker: float = 1.0
    # CPUs reserved by each trial's driver (the Tune function that runs the trainer).
    driver_cpus: float = 1.0
    # A custom Ray resource each trial driver takes one unit of, so drivers run only on
    # the nodes that advertise it (e.g. a CPU head: `ray start --resources='{"trial_driver": 100}'`),
    # never on GPU workers where they would take a Train worker's CPU. None: anywhere.
    driver_resource: str | None = None
    # Trials running at once; default: as many as the cluster's CPUs/GPUs allow.
    max_concurrent_trials: int | None = None


@dataclass(frozen=True)
class CheckpointSpec:
    # Checkpoints kept per trial (the best by val_accuracy, plus always the latest).
    num_to_keep: int = 2
    # "async": a checkpoint uploads while the next epoch trains (its metrics reach Tune
    # once it is stored); "sync": training waits for every upload.
    upload: str = "async"


@dataclass(frozen=True)
class FailureSpec:
    # Restarts of a trial's worker group (from its latest checkpoint) before it fails.
    max_failures: int = 1
    # Times a trial's Train controller retries a worker group that did not start (its
    # resources never came within `worker_start_timeout`); counted apart from
    # `max_failures`, which counts failures of training itself.
    controller_failure_limit: int = 3
    # Seconds a trial's worker group may take to start before that counts as a failed
    # start: on a cluster, pods are scheduled, images pulled and nodes added first (Ray
    # Train's own default is 60 s). Waiting for a trial slot does not count.
    worker_start_timeout: float = 900.0
    # When an interrupted experiment is run again: give trials that had failed another
    # go, from their latest checkpoint (finished trials never run again).
    retry_errored_on_resume: bool = True


@dataclass(frozen=True)
class MlflowSpec:
    # The MLflow tracking server (http://HOST:5000); default $MLFLOW_TRACKING_URI;
    # neither: no tracking. Needs `pip install 'tuner[mlflow]'`.
    uri: str | None = None
    # The MLflow experiment the runs go to (created if missing); default: `name`.
    experiment: str | None = None


@dataclass(frozen=True)
class TrackingSpec:
    # One MLflow run per experiment, with a nested run per trial (tuner.tracking).
    mlflow: MlflowSpec = field(default_factory=MlflowSpec)


@dataclass(frozen=True)
class Spec:
    # Experiment name: the folder under storage.uri.
    name: str = "mnist-asha"
    model: ModelSpec = field(default_factory=ModelSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    data: DataSpec = field(default_factory=DataSpec)
    storage: StorageSpec = field(default_factory=StorageSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    asha: AshaSpec = field(default_factory=AshaSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    pbt: PbtSpec = field(default_factory=PbtSpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    failure: FailureSpec = field(default_factory=FailureSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)

    def to_dict(self) -> dict:
        """The resolved spec as plain YAML-able data (round-trips through build_spec)."""
        out = dataclasses.asdict(self)
        out["search"]["space"] = {k: d.to_yaml() for k, d in self.search.space.items()}
        out["objective"] = self.objective.to_yaml()
        return out

    def with_absolute_paths(self) -> "Spec":
        """Local paths made absolute, so that Ray workers (other cwd) find the same files."""
        return dataclasses.replace(
            self,
            storage=dataclasses.replace(self.storage, uri=storage.absolute(self.storage.uri)),
            data=dataclasses.replace(
                self.data,
                uri=self.data.uri and storage.absolute(self.data.uri),
                source=self.data.source if self.data.source in ("builtin", "download") else storage.absolute(self.data.source),
            ),
        )

    def experiment_uri(self) -> str:
        """Where the experiment keeps its state and outputs: ``<storage.uri>/<name>``."""
        return storage.join(self.storage.uri, self.name)

    def experiment_location(self) -> Location:
        """``experiment_uri`` with the storage's endpoint."""
        return self.storage.location.join(self.name)

    def dataset_uri(self) -> str:
        if self.data.uri:
            return self.data.uri
        folder = "mnist-subset" if self.data.source == "builtin" else "mnist"
        return storage.join(self.storage.uri, "datasets", folder)

    def dataset_location(self) -> Location:
        """``dataset_uri`` with the storage's endpoint (the data's too)."""
        return Location(self.dataset_uri(), self.storage.endpoint)

    def source_location(self) -> Location:
        """``data.source`` (``builtin``, ``download`` or where MNIST's files are) with the storage's endpoint."""
        return Location(self.data.source, self.storage.endpoint)


SECTIONS: dict[str, Callable[[], Any]] = {f.name: f.default_factory  # type: ignore[misc]  # every section has one
                                          for f in dataclasses.fields(Spec) if f.name != "name"}


# --- loading and overrides ---------------------------------------------------------------


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def load_raw(config: str) -> dict:
    """Read a preset name or a YAML file path into a dict."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SpecError([f"The config file `{config}` does not exist; give a YAML file or a preset "
                             f"({', '.join(preset_names())})."])
        text = path.read_text()
    elif config in preset_names():
        text = resources.files(PRESET_PACKAGE).joinpath(f"{config}.yaml").read_text()
    else:
        raise SpecError([f"`{config}` is neither a YAML file nor a preset; presets: {', '.join(preset_names())}."])
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise SpecError([f"The config `{config}` is not valid YAML: {str(e).splitlines()[0]}."]) from None
    if not isinstance(raw, dict):
        raise SpecError([f"The config `{config}` must be a YAML mapping, not {type(raw).__name__}."])
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``1e-3``, ``[1, 2]``)."""
    problems = []
    out = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"The override `{item}` must look like `dotted.key=value`.")
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parts = key.split(".")
        problem = _check_known_path(parts)
        if problem:
            problems.append(problem)
            continue
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    if problems:
        raise SpecError(problems)
    return out


def _check_known_path(parts: list[str]) -> str | None:
    key = ".".join(parts)
    if parts[0] == "name":
        return None if len(parts) == 1 else f"Unknown key `{key}`: `name` is a plain value."
    if parts[0] not in SECTIONS:
        return f"Unknown key `{key}`; known sections: name, {', '.join(SECTIONS)}."
    if parts == ["objective"]:  # objective=[...]: a multi-objective list
        return None
    if len(parts) == 1:
        return f"The key `{key}` is a section; set one of its fields, e.g. `{key}.{_field_names(parts[0])[0]}=...`."
    fields = _field_names(parts[0])
    if parts[1] not in fields:
        return f"Unknown key `{key}`; known keys under `{parts[0]}`: {', '.join(fields)}."
    if parts[:2] == ["search", "space"] and len(parts) >= 3 and not parts[2].isidentifier():
        return f"The hyperparameter name `{key}` must be an identifier (letters, digits and _)."
    return None


def _field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section]())]


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def load_spec(config: str, overrides: Sequence[str] = (), **top_level: Any) -> Spec:
    """Preset or file, then overrides, then validation. ``top_level`` keys such as
    ``name`` or ``storage.uri`` come from CLI flags and win over both."""
    raw = apply_overrides(load_raw(config), list(overrides))
    raw = apply_overrides(raw, [f"{k}={v}" for k, v in top_level.items() if v is not None])
    return build_spec(raw)


# --- validation ----------------------------------------------------------------------------


def build_spec(raw: Mapping) -> Spec:
    """Merge ``raw`` over the defaults, check every field, and return the frozen Spec."""
    problems: list[str] = []
    unknown = set(raw) - set(SECTIONS) - {"name"}
    for key in sorted(unknown):
        problems.append(f"Unknown key `{key}`; known sections: name, {', '.join(SECTIONS)}.")

    sections: dict[str, Any] = {}
    for section, factory in SECTIONS.items():
        if section == "objective" and isinstance(raw.get(section), list):
            sections[section] = _objective_list(raw[section], problems)
            continue
        given = raw.get(section) or {}
        if not isinstance(given, Mapping):
            problems.append(f"The value of `{section}` must be a mapping of its fields.")
            given = {}
        sections[section] = _build_section(section, factory(), given, problems)
    objective = raw.get("objective")
    if isinstance(objective, Mapping) and "metric" in objective and "mode" not in objective:
        # The mode follows from the metric where left out: lower is better for a loss or an error.
        sections["objective"] = dataclasses.replace(sections["objective"], mode=default_mode(sections["objective"].metric))

    name = raw.get("name", Spec.name)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\ ") or name in (".", ".."):
        problems.append(f"The value of `name` is {name!r}, but must be a non-empty string without '/', '\\' or spaces.")
        name = Spec.name
    if problems:
        raise SpecError(problems)
    spec = Spec(name=name, **sections)
    problems.extend(_check_spec(spec))
    if problems:
        raise SpecError(problems)
    return spec


def default_mode(metric: str) -> str:
    """An objective's mode where the spec leaves it out: lower is better for a loss, an
    error and a cost."""
    return "min" if metric in LOWER_IS_BETTER or metric in COST_METRICS else "max"


def _objective_list(entries: list, problems: list[str]) -> ObjectiveSpec:
    """``objective`` as a list: a multi-objective search's objectives."""
    found: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        key = f"objective[{i}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("metric"), str) or set(entry) - {"metric", "mode"}:
            problems.append(f"The value of `{key}` is {entry!r}, but each objective must be {{metric: NAME}} or "
                            "{metric: NAME, mode: max|min}.")
            continue
        found.append((entry["metric"], entry.get("mode") or default_mode(entry["metric"])))
    metrics = [m for m, _ in found]
    if len(entries) == 1:
        problems.append("The value of `objective` is a list of one objective; give one as a mapping "
                        "(objective: {metric: NAME}), or list two or more for a multi-objective search.")
    for metric in sorted({m for m in metrics if metrics.count(m) > 1}):
        problems.append(f"`objective` names `{metric}` twice; each objective once.")
    if not found:
        return ObjectiveSpec()
    return ObjectiveSpec(found[0][0], found[0][1], tuple(found[1:]))


def _build_section(section: str, default: Any, given: Mapping, problems: list[str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(default)}
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key not in fields:
            problems.append(f"Unknown key `{section}.{key}`; known keys under `{section}`: {', '.join(fields)}.")
            continue
        if section == "search" and key == "space":
            values[key] = parse_space(value, problems)
            continue
        if section == "training" and key == "hyperparameter_schedule":
            values[key] = parse_hyperparameter_schedule(value, problems)
            continue
        current = getattr(default, key)
        if dataclasses.is_dataclass(current):  # a section within the section
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                names = ", ".join(f.name for f in dataclasses.fields(current))
                problems.append(f"The value of `{section}.{key}` must be a mapping of its fields ({names}).")
                continue
            values[key] = _build_section(f"{section}.{key}", current, value, problems)
            continue
        coerced = _coerce(f"{section}.{key}", value, current, str(fields[key].type), problems)
        if coerced is not _INVALID:
            values[key] = coerced
    return dataclasses.replace(default, **values)


_INVALID = object()


def _coerce(key: str, value: Any, current: Any, annotation: str, problems: list[str]) -> Any:
    """Check a scalar field against the type its default and annotation imply."""
    optional = "None" in str(annotation)
    if value is None:
        if optional:
            return None
        problems.append(f"The value of `{key}` is empty, but must be set.")
        return _INVALID
    ann = str(annotation)
    if ann.startswith("bool"):
        if isinstance(value, bool):
            return value
        problems.append(f"The value of `{key}` is {value!r}, but must be true or false.")
    elif ann.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        problems.append(f"The value of `{key}` is {value!r}, but must be a whole number.")
    elif ann.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        problems.append(f"The value of `{key}` is {value!r}, but must be a number.")
    elif ann.startswith("str"):
        if isinstance(value, str):
            return value
        problems.append(f"The value of `{key}` is {value!r}, but must be a string.")
    elif ann.startswith("list[str]"):
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            return list(value)
        problems.append(f"The value of `{key}` is {value!r}, but must be a list of names, e.g. [a, b].")
    else:  # pragma: no cover - every field has one of the types above
        return value
    return _INVALID


SCHEDULE_KEY = "training.hyperparameter_schedule"


def parse_hyperparameter_schedule(value: Any, problems: list[str]) -> list[dict] | None:
    """``training.hyperparameter_schedule``: a list of ``{epoch: E, knob: value, ...}``
    with whole, increasing epochs >= 1 and values each knob accepts."""
    if value is None:
        return None
    form = f"a list of {{epoch: E, <knob>: value, ...}} (knobs: {', '.join(population.MUTABLE)})"
    if not isinstance(value, list):
        problems.append(f"The value of `{SCHEDULE_KEY}` is {value!r}, but must be {form}.")
        return None
    out, last = [], 0
    for i, step in enumerate(value):
        key = f"{SCHEDULE_KEY}[{i}]"
        epoch = step.get("epoch") if isinstance(step, Mapping) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= last:
            problems.append(f"`{key}` is {step!r}, but each entry must be {{epoch: E, ...}} with a whole epoch "
                            f">= 1, after the entry before it (> {last}).")
            return None
        values = {}
        for name, v in step.items():
            if name == "epoch":
                continue
            if name not in population.MUTABLE:
                problems.append(f"`{key}` sets `{name}`, but a schedule changes only {', '.join(population.MUTABLE)}.")
                continue
            try:
                dim = parse_dim(name, v)
            except Invalid as e:
                problems.append(str(e).replace(f"`search.space.{name}", f"`{key}.{name}"))
                continue
            if not dim.is_fixed:
                problems.append(f"`{key}.{name}` is a {dim.kind}, but a schedule sets one value.")
                continue
            values[name] = dim.values[0]
        if not values:
            problems.append(f"`{key}` sets nothing; give at least one of {', '.join(population.MUTABLE)}.")
        out.append({"epoch": epoch, **values})
        last = epoch
    return out


def _check_population(spec: Spec) -> list[str]:
    """``scheduler.kind`` pbt / pb2 against the rest of the spec."""
    p: list[str] = []
    pbt, se, a = spec.pbt, spec.search, spec.asha
    if not 0 < pbt.quantile <= 0.5:
        p.append(f"The value of `pbt.quantile` is {pbt.quantile!r}, but must be > 0 and <= 0.5.")
    if not 0 <= pbt.resample_probability <= 1:
        p.append(f"The value of `pbt.resample_probability` is {pbt.resample_probability!r}, but must be >= 0 and <= 1.")
    if spec.scheduler.kind not in POPULATION_SCHEDULERS:
        return p
    kind = spec.scheduler.kind
    if not 1 <= pbt.interval < a.max_t:
        p.append(f"The value of `pbt.interval` is {pbt.interval}, but must be >= 1 and < `asha.max_t` ({a.max_t}), "
                 "the epochs every member trains: at most max_t - 1 epochs between perturbation points.")
    if se.algorithm not in ("random", "quasi_random"):
        p.append(f"`scheduler.kind: {kind}` draws its first population with `search.algorithm` random or "
                 f"quasi_random, not {se.algorithm} (a grid's points, or TPE's and the GP's model of the results, "
                 "would be undone by the exploits); set search.algorithm=random.")
    problems = population.check_mutate(se.space, pbt.mutate)
    p.extend(problems)
    if not problems and kind == "pb2" and not any(se.space[n].is_range for n in population.mutated(se.space, pbt.mutate)):
        p.append("`scheduler.kind: pb2` chooses numeric values by a GP bandit, but no mutated hyperparameter is a "
                 "range; give one of them a range (e.g. search.space.learning_rate={loguniform: [1e-4, 1e-2]}) or "
                 "use pbt.")
    if spec.training.hyperparameter_schedule:
        p.append(f"`{SCHEDULE_KEY}` is set, but `scheduler.kind: {kind}` changes the hyperparameters itself; "
                 "remove one of them.")
    if spec.scheduler.plateau_patience is not None:
        p.append(f"`scheduler.plateau_patience` is set, but `scheduler.kind: {kind}` trains every member to "
                 "`asha.max_t` (a poor member exploits a better one instead of stopping); set it to null.")
    return p


def _check_warm_start(spec: Spec) -> list[str]:
    w, p = spec.search.warm_start, []
    if w.top < 0:
        p.append(f"The value of `search.warm_start.top` is {w.top}, but must be >= 0.")
    if w.storage is not None and (problem := storage.check_uri(w.storage)):
        p.append(f"The value of `search.warm_start.storage` is {w.storage!r}: {problem}")
    for name in w.experiments:
        if any(c in name for c in "/\\ ") or name in (".", ".."):
            p.append(f"`search.warm_start.experiments` names {name!r}, which is not an experiment name.")
        elif name == spec.name and w.storage in (None, spec.storage.uri):
            p.append(f"`search.warm_start.experiments` names this experiment, `{name}`; name earlier ones.")
    if w.experiments and spec.search.algorithm == "grid":
        p.append("`search.warm_start` needs a searcher that can learn or skip points; grid search runs every "
                 "combination anyway: use random, quasi_random, tpe or bayesian.")
    if w.top > spec.search.num_samples and w.experiments:
        p.append(f"The value of `search.warm_start.top` is {w.top}, but only `search.num_samples` "
                 f"({spec.search.num_samples}) trials run; lower it.")
    return p


def _check_schedule(spec: Spec) -> list[str]:
    schedule = spec.training.hyperparameter_schedule or []
    late = [step["epoch"] for step in schedule if step["epoch"] >= spec.asha.max_t]
    if late:
        return [f"`{SCHEDULE_KEY}` has an entry at epoch {late[0]}, but trials train `asha.max_t` "
                f"({spec.asha.max_t}) epochs; it must be < {spec.asha.max_t}."]
    return []


def _check_spec(spec: Spec) -> list[str]:
    """Checks on scalar fields and across fields, one line per problem."""
    p = _Problems()
    _check_places(spec, p)
    _check_search_and_model(spec, p)
    _check_schedule_fields(spec, p)
    _check_resources(spec, p)
    return [*p, *_check_population(spec), *_check_warm_start(spec), *_check_schedule(spec), *_check_objectives(spec)]


def _check_objectives(spec: Spec) -> list[str]:
    """A multi-objective search against the searcher and the scheduler that would run it."""
    o, se, sch = spec.objective, spec.search, spec.scheduler
    if not o.more:
        if se.algorithm == "nsga2":
            return ["`search.algorithm: nsga2` searches several objectives at once, but `objective` names one; "
                    "list two or more (objective=[{metric: val_accuracy}, {metric: params}]), or use tpe."]
        return []
    p = []
    names = " and ".join(o.metrics)
    if se.algorithm not in MULTI_OBJECTIVE_ALGORITHMS:
        p.append(f"`search.algorithm: {se.algorithm}` follows one objective, but `objective` lists {names}; use "
                 f"one of {', '.join(MULTI_OBJECTIVE_ALGORITHMS)} (tpe and nsga2 learn from every objective).")
    if sch.kind not in MULTI_OBJECTIVE_SCHEDULERS:
        p.append(f"`scheduler.kind: {sch.kind}` follows one objective, but `objective` lists {names}; use asha "
                 "(it ranks the trials at each rung by non-dominated sorting) or fifo.")
    if sch.plateau_patience is not None:
        p.append(f"`scheduler.plateau_patience` follows one objective, but `objective` lists {names}; set it to null.")
    if se.warm_start.experiments:
        p.append(f"`search.warm_start` takes the points of one objective, but `objective` lists {names}; leave "
                 "`search.warm_start.experiments` empty.")
    return p


class _Problems(list):
    def need(self, ok: bool, key: str, value: Any, must: str) -> None:
        if not ok:
            self.append(f"The value of `{key}` is {value!r}, but must be {must}.")


def _check_places(spec: Spec, p: _Problems) -> None:
    """The data and where things are stored."""
    d, s = spec.data, spec.storage
    p.need(0 < d.validation_fraction < 1, "data.validation_fraction", d.validation_fraction, "> 0 and < 1")
    for key, uri in (("storage.uri", s.uri), ("data.uri", d.uri)):
        if uri is not None:
            problem = storage.check_uri(uri)
            if problem:
                p.append(f"The value of `{key}` is {uri!r}: {problem}")
    if d.source not in ("builtin", "download"):
        problem = storage.check_uri(d.source)
        if problem:
            p.append(f"The value of `data.source` is {d.source!r}: {problem} Or use `builtin` or `download`.")
    if s.endpoint is not None and not s.endpoint.startswith(("http://", "https://")):
        p.append(f"The value of `storage.endpoint` is {s.endpoint!r}, but must start with http:// or https://.")


def _check_search_and_model(spec: Spec, p: _Problems) -> None:
    """The search, the model and the objective."""
    se, m, o = spec.search, spec.model, spec.objective
    p.need(se.algorithm in ALGORITHMS, "search.algorithm", se.algorithm, f"one of: {', '.join(ALGORITHMS)}")
    p.need(se.num_samples >= 1, "search.num_samples", se.num_samples, ">= 1")
    p.need(se.seed >= 0, "search.seed", se.seed, ">= 0")
    if se.algorithm == "grid":
        for name, dim in se.space.items():
            if dim.is_range:
                p.append(f"`search.space.{name}` is a {dim.kind} range, but grid search needs `choice: [...]` or a fixed value.")
    p.extend(check_conditions(se.space))
    module, sep, function = m.builder.partition(":")
    if not (sep and all(part.isidentifier() for part in [*module.split("."), function])):
        p.append(f"The value of `model.builder` is {m.builder!r}, but must be `module:function` "
                 "(e.g. `my_models:build`, for my_models.py in the working directory).")
    if m.loss is not None and not m.loss.strip():
        p.append("The value of `model.loss` is empty; give a Keras loss name or null (the task's default).")
    for i, (metric, mode) in enumerate(o.all):
        key = f"objective[{i}]" if o.more else "objective"
        p.need(mode in MODES, f"{key}.mode", mode, "max or min")
        if default_mode(metric) == "min" and mode == "max":
            p.append(f"The value of `{key}.mode` is 'max', but `{metric}` is better when lower; use min "
                     "(or leave the mode out).")
        cost = f", or a cost metric: {', '.join(COST_METRICS)}" if o.more else ""
        p.need((metric.startswith("val_") and metric[4:].isidentifier()) or (bool(o.more) and metric in COST_METRICS),
               f"{key}.metric", metric,
               f"a validation metric: val_loss, val_accuracy (classification) or val_mae (regression){cost}")


def _check_schedule_fields(spec: Spec, p: _Problems) -> None:
    """Training's learning-rate rules, the epoch budget and the scheduler."""
    t, a, sch = spec.training, spec.asha, spec.scheduler
    p.need(t.lr_scaling in LR_SCALING_RULES, "training.lr_scaling", t.lr_scaling, f"one of: {', '.join(LR_SCALING_RULES)}")
    p.need(t.reference_batch >= 1, "training.reference_batch", t.reference_batch, ">= 1")
    p.need(t.warmup_epochs >= 0, "training.warmup_epochs", t.warmup_epochs, ">= 0")
    if t.warmup_epochs >= a.max_t:
        p.append(f"The value of `training.warmup_epochs` is {t.warmup_epochs:g}, but must be < `asha.max_t` ({a.max_t}).")
    p.need(a.max_t >= 1, "asha.max_t", a.max_t, ">= 1")
    p.need(a.grace_period >= 1, "asha.grace_period", a.grace_period, ">= 1")
    p.need(a.reduction_factor >= 2, "asha.reduction_factor", a.reduction_factor, ">= 2")
    if a.grace_period >= 1 and a.max_t >= 1 and a.grace_period > a.max_t:
        p.append(
            f"The value of `asha.grace_period` is {a.grace_period}, but must be <= `asha.max_t` ({a.max_t}); "
            "lower the grace period or raise max_t."
        )
    p.need(sch.kind in SCHEDULERS, "scheduler.kind", sch.kind, f"one of: {', '.join(SCHEDULERS)}")
    p.need(sch.median_min_trials >= 1, "scheduler.median_min_trials", sch.median_min_trials, ">= 1")
    if sch.plateau_patience is not None:
        p.need(sch.plateau_patience >= 1, "scheduler.plateau_patience", sch.plateau_patience,
               ">= 1 (epochs), or null (never)")
    p.need(sch.plateau_min_delta >= 0, "scheduler.plateau_min_delta", sch.plateau_min_delta, ">= 0")


def _check_resources(spec: Spec, p: _Problems) -> None:
    """Scaling, checkpoints, failures, tracking and PBT's interval."""
    sc, c, f = spec.scaling, spec.checkpoint, spec.failure
    p.need(sc.workers >= 1, "scaling.workers", sc.workers, ">= 1")
    p.need(sc.cpus_per_worker > 0, "scaling.cpus_per_worker", sc.cpus_per_worker, "> 0")
    p.need(sc.driver_cpus > 0, "scaling.driver_cpus", sc.driver_cpus, "> 0")
    if sc.driver_resource is not None:
        p.need(bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", sc.driver_resource))
               and sc.driver_resource not in ("CPU", "GPU", "memory", "object_store_memory"),
               "scaling.driver_resource", sc.driver_resource,
               "the name of a custom Ray resource (letters, digits, _ and -), or null")
    if sc.use_gpu:
        p.need(sc.gpus_per_worker > 0, "scaling.gpus_per_worker", sc.gpus_per_worker, "> 0 when `scaling.use_gpu` is true")
    if sc.max_concurrent_trials is not None:
        p.need(sc.max_concurrent_trials >= 1, "scaling.max_concurrent_trials", sc.max_concurrent_trials,
               ">= 1 or null (as many as fit)")
    p.need(c.num_to_keep >= 1, "checkpoint.num_to_keep", c.num_to_keep, ">= 1")
    p.need(c.upload in CHECKPOINT_UPLOADS, "checkpoint.upload", c.upload, f"one of: {', '.join(CHECKPOINT_UPLOADS)}")
    p.need(f.max_failures >= 0, "failure.max_failures", f.max_failures, ">= 0")
    for key in ("uri", "experiment"):
        v = getattr(spec.tracking.mlflow, key)
        if v is not None and not v.strip():
            p.append(f"The value of `tracking.mlflow.{key}` is empty; set it or leave it out.")
    p.need(f.controller_failure_limit >= 0, "failure.controller_failure_limit", f.controller_failure_limit,
           ">= 0 (-1 would retry forever)")
    p.need(f.worker_start_timeout > 0, "failure.worker_start_timeout", f.worker_start_timeout, "> 0 (seconds)")
    p.need(spec.pbt.interval >= 1, "pbt.interval", spec.pbt.interval, ">= 1")


# search.algorithm or scheduler.kind -> (tuner's extra, the modules it needs beyond tuner's
# own dependencies, as their packages are named).
EXTRAS = {"tpe": ("tpe", {"optuna": "optuna"}), "nsga2": ("tpe", {"optuna": "optuna"}),
          "bayesian": ("bayesian", {"optuna": "optuna", "torch": "torch"}),
          "pb2": ("pb2", {"sklearn": "scikit-learn"})}


def missing_dependency(spec: Spec) -> str | None:
    """One line naming what ``search.algorithm`` or ``scheduler.kind`` needs and is not
    installed, or None."""
    import importlib.util

    for field_name, choice in (("search.algorithm", spec.search.algorithm), ("scheduler.kind", spec.scheduler.kind)):
        if choice not in EXTRAS:
            continue
        extra, modules = EXTRAS[choice]
        missing = [package for module, package in modules.items() if importlib.util.find_spec(module) is None]
        if not missing:
            continue
        hint = " (for a CPU-only PyTorch, first: pip install torch --index-url https://download.pytorch.org/whl/cpu)" \
            if "torch" in missing else ""
        return (f"`{field_name}: {choice}` needs {' and '.join(missing)}, which "
                f"{'is' if len(missing) == 1 else 'are'} not installed; run: pip install 'tuner[{extra}]'{hint}")
    return None


def differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``Spec.to_dict()`` results (as JSON)."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        keys = sorted(set(stored) | set(current))
        return [d for k in keys for d in differences(stored.get(k), current.get(k), f"{prefix}{k}.")]
    return [] if stored == current else [prefix.rstrip(".")]


def require_fixed(spec: Spec) -> list[str]:
    """Problems that stop ``tuner train`` (one configuration, no search)."""
    return [
        f"`search.space.{name}` is a {dim.kind}, but `tuner train` needs one value: "
        f"--set search.space.{name}=VALUE."
        for name, dim in spec.search.space.items()
        if varies(dim)  # one value (a choice of one, with a `when`, too) is fine
    ]
