"""One ``tuner tune`` / ``tuner train`` run, as named steps:

1. ``prepare``: every check that can fail, before anything is written: the spec, the
   builder (imported, completed with its defaults, and run on a tiny batch), storage
   (a pre-flight write), the experiment already stored under the name, the dataset
   (staged, or an MNIST source read and checked in memory), the objective against the
   task, the batch sizes against the training rows;
2. ``connect``: Ray, and whether a trial fits on it;
3. ``stage``: the first writes: the pending dataset, the experiment's ``spec.json``;
4. ``run``: Tune (``tuner.tune.run``);
5. ``summarize``: ``results.parquet``, the best model scored on the test split,
   ``summary.json``;
6. ``track``: with MLflow tracking on, the best model, the summary and the report on the
   experiment's MLflow run.

``tuner.cli`` parses arguments and prints; it calls these steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import data, lease, models, results, schedule, storage, warm
from tuner.space import corner_configs, model_hyperparameters, ordered, with_builder_defaults
from tuner.spec import (
    COST_METRICS,
    POPULATION_SCHEDULERS,
    Spec,
    differences,
    load_spec,
    missing_dependency,
    require_fixed,
)
from tuner.tasks import TASK_METRIC

SPEC_FILE = "spec.json"  # <storage>/<name>/spec.json: written when an experiment starts
# Fields that say how to run, not what: a re-run may change them.
RUN_SETTINGS = ("failure.", "scaling.max_concurrent_trials", "checkpoint.upload", "tracking.")
# Left out of the working directory shipped to the workers (Ray's gitignore-style patterns):
# data files among them, since workers read the staged dataset, never the source.
SHIP_EXCLUDES = [".git", "__pycache__", "*.pyc", ".pytest_cache", "*.csv", "*.parquet", "*.pq"]


class UsageError(RuntimeError):
    """A problem the user can fix; printed as lines, exit 2."""

    def __init__(self, *problems: str):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Plan:
    """A prepared run: what ``connect``, ``stage`` and ``run`` need."""

    spec: Spec  # resolved: the builder's defaults filled in
    command: list[str]
    search: bool
    state: str  # see experiment_state
    resume: bool
    inputs: models.InputSpec
    runtime_env: dict
    pending: data.Prepared | None = None  # a dataset to stage
    warnings: list[str] = field(default_factory=list)
    warm_start: warm.WarmStart | None = None  # a new experiment's points from earlier ones


# --- 1. prepare -----------------------------------------------------------------------


def prepare(config: str, overrides: list[str], top_level: dict[str, Any], address: str | None,
            working_dir: str | None, search: bool, command: list[str]) -> Plan:
    """Check everything; write nothing (but the storage pre-flight's marker, removed again).

    Raises:
        UsageError, storage.StorageError, data.DataError: one line per problem.
    """
    from tuner import tune as tuning

    working_dir = str(Path(working_dir or os.getcwd()).resolve())
    spec, builder = load_checked_spec(config, overrides, top_level, address, working_dir, search)
    # Storage before data: both are cheap, and a bad endpoint should not cost a read.
    storage.preflight(spec.storage.location)
    if spec.data.uri:
        storage.preflight(spec.dataset_location())
    state = experiment_state(spec)
    if state != "finished":
        from tuner import tracking  # imports Ray (its MLflow callback)

        try:
            tracking.preflight(spec)
        except tracking.TrackingError as e:
            raise UsageError(str(e)) from None
    resume = state in ("interrupted", "failed-trials") and tuning.can_resume(spec)
    if state == "failed-trials" and not resume:
        state = "finished"  # no Tune state to retry from: never start it over under its name
    plan = Plan(spec, command, search, state, resume, None, {})  # type: ignore[arg-type]
    if state == "finished":
        return plan
    builtin = builder.path.startswith("tuner.")
    manifest = data.read_manifest(spec.dataset_location())
    checked = None
    if builtin and manifest is None:
        # MNIST is still to be read (or downloaded) and staged: its shape is known, so
        # the builder's check comes first.
        checked = check_builder(builder, spec, data.mnist_input_spec())
    plan.inputs, train_rows, plan.pending = dataset(spec, builtin, manifest)
    problems = check_objective(spec, plan.inputs.task)
    problems += sorted({p for b in tuning.batch_sizes(spec)
                        if (p := schedule.check_plan(schedule.BatchPlan(spec.scaling.workers, b, train_rows)))})
    if problems:
        raise UsageError(*problems)
    plan.warnings += checked if checked is not None else check_builder(builder, spec, plan.inputs)
    if search and spec.objective.more and spec.scheduler.kind in POPULATION_SCHEDULERS:
        plan.warnings.append(f"`scheduler.kind: {spec.scheduler.kind}` exploits on the first objective, "
                             f"{spec.objective.metric}; the summary's Pareto front takes every objective.")
    if search and state == "new" and spec.search.warm_start.experiments:
        plan.warm_start = warm_start(spec, plan.inputs.task)
        plan.warnings += plan.warm_start.warnings
    from tuner import raycompat

    plan.warnings += raycompat.report()
    plan.runtime_env = tuning.runtime_env_for(
        spec, *_shipped(builder, working_dir, [spec.storage.uri, spec.data.uri, spec.data.source]))
    return plan


def load_checked_spec(config: str, overrides: list[str], top_level: dict[str, Any], address: str | None,
                      working_dir: str, search: bool) -> tuple[Spec, models.Builder]:
    """The spec, completed with its builder's defaults, and the builder."""
    spec = load_spec(config, overrides, **top_level).with_absolute_paths()
    if not search and (problems := require_fixed(spec)):
        raise UsageError(*problems)
    if search and (missing := missing_dependency(spec)):
        raise UsageError(missing)
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address.startswith("ray://"):
        raise UsageError(f"The Ray address {address!r} is a Ray Client address, which tuner does not support; "
                         "run tuner on the cluster (`ray job submit -- tuner ...`) or give the GCS address (HOST:6379).")
    if not Path(working_dir).is_dir():
        raise UsageError(f"The value of `--working-dir` is {working_dir!r}, which is not a folder.")
    try:
        builder = models.load_builder(spec.model.builder, search_path=working_dir)
    except models.BuilderError as e:
        raise UsageError(str(e)) from None
    space = with_builder_defaults(spec.search.space, builder.defaults)
    return dataclasses.replace(spec, search=dataclasses.replace(spec.search, space=space)), builder


def dataset(spec: Spec, builtin: bool,
            manifest: dict | None) -> tuple[models.InputSpec, int, data.Prepared | None]:
    """(the dataset's InputSpec, its training rows, the MNIST source to stage or None),
    from ``manifest``, the one stored at ``spec.dataset_uri()`` (None: nothing staged there).

    ``builtin``: the builder is one of tuner's; only then is a missing dataset MNIST,
    staged from ``data.source`` (a user's model without its data is a mistake, and their
    tables are staged by `tuner stage-data`)."""
    if not builtin and spec.data.uri is None:
        raise UsageError(f"`data.uri` is not set, but the model `{spec.model.builder}` needs your dataset: stage it "
                         "(tuner stage-data --source YOUR_DATA.csv --dest URI --label COLUMN) and set `data.uri` to URI.")
    dataset_uri = spec.dataset_uri()
    if manifest is not None:
        if "files" not in manifest["splits"]["train"]:
            print(f"tuner: the dataset at {dataset_uri} was staged by an older tuner (one file per split): each worker "
                  "reads all of it every epoch. Stage it again to a new --dest to stream each worker's share.",
                  file=sys.stderr)
        return data.input_spec(manifest), manifest["splits"]["train"]["rows"], None
    if not builtin:
        raise UsageError(f"No staged dataset at {dataset_uri} (no {data.MANIFEST}); stage yours first: tuner stage-data "
                         f"--source YOUR_DATA.csv --dest {dataset_uri} --label COLUMN")
    pending = data.mnist_dataset(data.source_for(spec.source_location()), spec.data.validation_fraction)
    return pending.input_spec(), pending.rows("train"), pending


def warm_start(spec: Spec, task: str) -> warm.WarmStart:
    """The finished trials of ``search.warm_start.experiments`` that fit this space (read,
    never written). Raises UsageError for an experiment that does not exist, has not
    finished or has no finished trials, or followed another task or objective."""
    w, metric, mode = spec.search.warm_start, spec.objective.metric, spec.objective.mode
    where = storage.Location(w.storage or spec.storage.uri, spec.storage.endpoint)
    trials, problems = [], []
    for name in w.experiments:
        try:
            summary = results.read_summary(where, name)
        except FileNotFoundError:
            problems.append(f"The warm-start experiment `{name}` " + (
                "has not finished (no summary.json yet); run its command again to finish it, or leave it out of "
                "`search.warm_start.experiments`." if where.join(name, SPEC_FILE).exists() else
                f"does not exist under {where}; check `search.warm_start.experiments` and `search.warm_start.storage`."))
            continue
        theirs = (summary.get("objective") or {}).get("metric"), (summary.get("objective") or {}).get("mode")
        if theirs != (metric, mode) or summary.get("task", task) != task:
            problems.append(f"The warm-start experiment `{name}` tuned {summary.get('task', task)} for {theirs[0]} "
                            f"({theirs[1]}), this one {task} for {metric} ({mode}); warm-start from experiments of the "
                            "same task and objective.")
            continue
        stored = summary.get("spec") or {}
        if (stored.get("training") or {}).get("hyperparameter_schedule") != spec.training.hyperparameter_schedule:
            problems.append(f"The warm-start experiment `{name}` trained with another "
                            "`training.hyperparameter_schedule` than this one: its scores are not those of its "
                            "configurations here; leave it out of `search.warm_start.experiments`.")
            continue
        # A PBT member's score belongs to its first configuration only before its first
        # exploit: its first generation's rows and configuration are the point.
        pbt = (stored.get("scheduler") or {}).get("kind") in POPULATION_SCHEDULERS
        values = results.trial_values(where, name, metric, mode, first_generation=pbt)
        finished = [t for t in summary["trials"] if t["status"] == "terminated" and t.get(f"best_{metric}") is not None]
        if not finished:
            problems.append(f"The warm-start experiment `{name}` has no finished trials to learn from; leave it out of "
                            "`search.warm_start.experiments`.")
        for t in finished:
            config = t["lineage"][0]["config"] if pbt and t.get("lineage") else t["config"]
            last, best = values.get(t["trial_id"], (t[f"best_{metric}"],) * 2)
            trials.append({"config": config, "value": last, "best": best, "source": f"{name}/{t['trial_id']}"})
    if problems:
        raise UsageError(*problems)
    return warm.select(spec.search.space, trials, mode, w.top)


def check_objective(spec: Spec, task: str) -> list[str]:
    """An objective the trials of this task never report."""
    reported = ["val_loss", f"val_{TASK_METRIC[task]}"]
    o = spec.objective
    if not o.more:
        if o.metric in reported:
            return []
        return [f"The value of `objective.metric` is {o.metric!r}, but the trials of this {task} dataset "
                f"report {' and '.join(reported)}; choose one of them (with `objective.mode` min for val_loss)."]
    reported += COST_METRICS
    return [f"The value of `objective[{i}].metric` is {m!r}, but the trials of this {task} dataset report "
            f"{', '.join(reported)}; choose among them." for i, m in enumerate(o.metrics) if m not in reported]


def check_builder(builder: models.Builder, spec: Spec, inputs: models.InputSpec) -> list[str]:
    """Build the model at both corners of the space (every hyperparameter at its first,
    then at its last value; see ``space.corner_configs``) on a tiny batch; returns
    warnings for model hyperparameters the builder never read."""
    names = [n for n in ordered(spec.search.space) if n in model_hyperparameters(spec.search.space)]
    configs = [{n: c[n] for n in names} for c in corner_configs(spec.search.space)]
    configs = [c for i, c in enumerate(configs) if c not in configs[:i]]
    try:
        read = models.check_builder(builder, configs, inputs, spec.model.loss)
    except models.BuilderError as e:
        raise UsageError(str(e)) from None
    return [f"`search.space.{n}` is never read by the builder `{builder.path}` (a typo?); it only multiplies "
            "trials." for n in names if n not in read and not spec.search.space[n].is_fixed]


def _shipped(builder: models.Builder, working_dir: str, local_paths: list) -> tuple[str | None, list[str]]:
    """(the working directory to ship to the workers, or None, and what to leave out):
    shipped when the builder's module lives there and is not tuner's own."""
    if builder.path.startswith("tuner.") or not models.shipped_from(builder, working_dir):
        return None, []
    excludes = list(SHIP_EXCLUDES)
    for path in local_paths:  # results or data kept inside the working directory
        if path and "://" not in path and path not in ("builtin", "download"):
            try:
                excludes.append("/" + Path(path).resolve().relative_to(working_dir).as_posix())
            except ValueError:
                pass
    return working_dir, excludes


def spec_json(spec: Spec) -> dict:
    """The spec as it is stored (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(spec.to_dict()))


def with_defaults(stored: dict) -> dict:
    """A stored spec with the fields added since it was stored at their defaults (an
    experiment started before `scheduler` existed ran ASHA, as the default does). Not
    validated: only the differences matter here."""

    def merge(stored: Any, defaults: Any, path: tuple) -> Any:
        if not (isinstance(stored, dict) and isinstance(defaults, dict)) or path == ("search", "space"):
            return stored  # a value, or the space (stored whole)
        return {**defaults, **{k: merge(v, defaults[k], (*path, k)) if k in defaults else v for k, v in stored.items()}}

    return merge(stored, spec_json(Spec()), ())


def experiment_state(spec: Spec) -> str:
    """``new``, ``interrupted`` (started, no summary yet), ``failed-trials`` (finished with
    trials that failed, to be retried) or ``finished``, for this spec.

    Running the same command again is safe, which is what a Kubernetes RayJob retry on a
    new cluster does: an interrupted experiment resumes, a finished one is reported.
    The same name with a different spec is refused, so nothing stored is mixed or lost.
    """
    exp = spec.experiment_location()
    summary_file, spec_file = exp.join(results.SUMMARY), exp.join(SPEC_FILE)
    if summary_file.exists():
        summary = summary_file.read_json()
        state, stored = "finished", summary.get("spec")
        if spec.failure.retry_errored_on_resume and any(t["status"] == "error" for t in summary.get("trials", [])):
            state = "failed-trials"  # finished, but some trials failed: retry those
    elif spec_file.exists():
        state, stored = "interrupted", spec_file.read_json()
    else:
        return "new"
    changed = [k for k in (differences(with_defaults(stored), spec_json(spec)) if stored is not None else [])
               if not k.startswith(RUN_SETTINGS)]
    if changed:
        shown = ", ".join(f"`{k}`" for k in changed[:3]) + (" ..." if len(changed) > 3 else "")
        raise UsageError(
            f"The experiment `{spec.name}` under {spec.storage.uri} was {'started' if state == 'interrupted' else 'run'} "
            f"with a different spec ({shown} differ); run it with the same spec to "
            f"{'resume it' if state == 'interrupted' else 'see its results'}, or choose another --name."
        )
    return state


# --- 2. to 5. -----------------------------------------------------------------------------


def hold(plan: Plan) -> lease.Lease:
    """The experiment's lease, for this run alone until it ends (``release``).

    Raises:
        UsageError: another live run holds it, or that run ended in the meantime and
            changed what this one would do.
    """
    spec = plan.spec
    held = lease.Lease(spec.experiment_location())
    try:
        held.acquire(spec.name)
    except lease.LeaseHeld as e:
        raise UsageError(str(e)) from None
    if experiment_state(spec) != plan.state:
        held.release()
        raise UsageError(f"The experiment `{spec.name}` changed while this run started (another run of it ended "
                         "meanwhile); run the command again.")
    return held


def connect(plan: Plan, address: str | None, console: str = "normal"):
    """Ray, and how trials fit on it (``tune.Cluster``); raises UsageError if none fits.
    ``console``: ``tuner.console.LEVELS``."""
    from tuner import tune as tuning

    try:
        return tuning.connect(address, plan.spec, plan.runtime_env, console)
    except tuning.ResourceError as e:
        raise UsageError(str(e)) from None


def disconnect() -> None:
    """Stop the Ray that ``connect`` started (leave the one it joined): the trials are
    over."""
    from tuner import raycompat

    raycompat.shutdown()


def stage(plan: Plan) -> None:
    """The first writes: the pending dataset, then the experiment's spec (a new one)."""
    spec = plan.spec
    if plan.pending is not None:
        plan.pending.write(spec.dataset_location())
        plan.pending = None
    if not plan.resume:
        spec.experiment_location().join(SPEC_FILE).write_json(spec_json(spec))


def run(plan: Plan, cluster, stop=None, console: str = "normal"):
    """Tune's ``ResultGrid`` and the scheduler whose records were kept (or None)."""
    from tuner import tune as tuning

    return tuning.run(plan.spec, plan.inputs.to_dict(), cluster, search=plan.search,
                      resume=plan.resume, stop=stop, console=console, warm_start=plan.warm_start)


def summarize(plan: Plan, cluster, grid, scheduler) -> tuple[dict, str]:
    """Write ``results.parquet``, ``best_model.keras`` and ``summary.json``; returns the
    summary and its URI. ``scheduler``: as ``run`` returns it."""
    import pyarrow.fs as pafs

    from tuner import checkpoints

    spec = plan.spec
    trials = results.trials_from_grid(grid)
    fs, _ = spec.storage.location.filesystem()
    population = getattr(scheduler, "population", None)
    rungs = scheduler.rungs() if hasattr(scheduler, "rungs") else None
    summary = results.summarize(
        spec, plan.command, trials,
        storage_fs_uri=lambda p: storage.to_uri(fs, p),
        checkpoint_exists=lambda p: fs.get_file_info(posixpath.join(p, checkpoints.MODEL_FILE)).type == pafs.FileType.File,
        population=population,
    )
    summary["task"] = plan.inputs.task
    summary["max_concurrent_trials"] = cluster.concurrent
    summary["cluster_resources"] = {k: v for k, v in cluster.resources.items() if k in ("CPU", "GPU") or
                                    k == spec.scaling.driver_resource}
    if rungs is not None:
        summary["asha_rungs"] = results.asha_rungs(rungs, spec.objective.mode)
    lineages = {t["trial_id"]: t["lineage"] for t in summary["trials"] if "lineage" in t}
    results.write_results(spec, results.rows_from_results(trials, lineages))
    results.export_best(spec, summary, spec.dataset_location())
    return summary, results.write_summary(spec, summary)


def tracking_target(plan: Plan):
    """Where the run is tracked (``tuner.tracking.Target``), or None."""
    from tuner import tracking

    return tracking.target(plan.spec)


def track(plan: Plan, summary: dict) -> str | None:
    """The results on the experiment's MLflow run, if tracked (``tuner.tracking.finish``);
    returns where that run is, or None."""
    from tuner import tracking
    from tuner.tune import stopper_name

    return tracking.finish(plan.spec, summary, stopper_name(plan.spec, plan.search))


def track_interrupted(plan: Plan) -> None:
    """A signal stopped the run: its MLflow runs still open end as KILLED (the re-run
    reopens them). A second signal meanwhile (SIGTERM twice) waits for that, a few
    requests without retries, before the process goes on its way out: raised in the
    middle of a request, it left the runs RUNNING."""
    import signal

    from tuner import tracking

    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in held}
    for s in held:
        signal.signal(s, lambda signum, frame: None)
    try:
        tracking.interrupted(plan.spec)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
