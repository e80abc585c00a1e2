"""Tune many trials: ASHA over a search space, each trial a multi-worker TensorflowTrainer.

Ray Train V2 does not accept a Trainer inside ``Tuner``, so each trial is a Tune
function (``TrialRunner``) that builds a ``TensorflowTrainer`` and calls ``fit()``;
``TuneReportCallback`` forwards rank 0's per-epoch metrics to ASHA. ASHA is
asynchronous successive halving (Li et al., MLSys 2020, https://arxiv.org/abs/1810.05934),
with an explicit ``epoch`` metric as its time attribute.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Sequence

from tuner import storage
from tuner.checkpoints import RUNS_DIR
from tuner.interrupt import StopOnSignal
from tuner.rungs import TIME_ATTR
from tuner.spec import Spec
from tuner.trial import TrialConfig

# Ray Train's start timeout of a worker group (documented in its error message), which
# its trainer passes on to the run's controller.
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
TF_ENV = {
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) drowns the progress table.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Workers train with tf_keras. Set from the start, this keeps `import tensorflow` from
    # also importing Keras 3 (and, through it, IPython): 0.65 s less per worker here.
    # Ray Train sets it too, but only once the worker group is up, after the import.
    "TF_USE_LEGACY_KERAS": "1",
}


# On an in-process Ray, trial drivers take one of these, of which the node has exactly
# `max_concurrent` trials' worth: Tune then starts no more drivers than that (a
# driver waiting for a trial slot would hold a CPU the running trials' workers need).
LOCAL_DRIVER_RESOURCE = "tuner_trial_driver"


class ResourceError(RuntimeError):
    """A trial cannot fit on the cluster."""


# --- pure parts -----------------------------------------------------------------------


def batch_sizes(spec: Spec) -> list[int]:
    """Every per-worker batch size the space can produce (the extremes of a range)."""
    dim = spec.search.space["batch_size"]
    return [int(v) for v in dim.values]


def uses_ranges(spec: Spec) -> bool:
    return any(d.is_range for d in spec.search.space.values())


@dataclass(frozen=True)
class TrialResources:
    """What one trial holds while it runs: its driver plus N worker bundles."""

    driver_cpus: float
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    driver_resource: str | None = None  # a custom resource the driver takes 1 of

    @classmethod
    def of(cls, spec: Spec) -> "TrialResources":
        s = spec.scaling
        return cls(s.driver_cpus, s.workers, s.cpus_per_worker, s.gpus_per_worker if s.use_gpu else 0.0,
                   s.driver_resource)

    @property
    def cpus(self) -> float:
        return self.driver_cpus + self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    @property
    def driver_bundle(self) -> dict:
        """The trial driver's Tune resources: CPU (and the driver resource), never a GPU,
        since it never trains."""
        return {"CPU": self.driver_cpus, **({self.driver_resource: 1} if self.driver_resource else {})}

    @property
    def worker_bundle(self) -> dict:
        """Each Ray Train worker's resources."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    def describe(self) -> str:
        text = f"{self.cpus:g} CPUs ({self.driver_cpus:g} driver + {self.workers} workers x {self.cpus_per_worker:g})"
        if self.gpus:
            text += f" and {self.gpus:g} GPUs ({self.workers} workers x {self.gpus_per_worker:g})"
        return text


def concurrent_trials(res: TrialResources, cluster: dict, requested: int | None) -> int:
    """How many trials may run at once on ``cluster`` (Ray's resource dict).

    Trials beyond this would hold their driver CPU while their worker group waits for
    bundles that never come: a deadlock, not a queue. The driver holds no GPU, so GPUs
    bound the count only through the workers' bundles.
    """
    fits = math.floor(cluster.get("CPU", 0) / res.cpus + 1e-9)
    if res.gpus:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / res.gpus + 1e-9))
    if res.driver_resource:
        if cluster.get(res.driver_resource, 0) < 1:
            raise ResourceError(
                f"`scaling.driver_resource` is {res.driver_resource!r}, but no node of the Ray cluster advertises it; "
                f"start the driver nodes with --resources='{{\"{res.driver_resource}\": 100}}' or set it to null."
            )
        fits = min(fits, math.floor(cluster[res.driver_resource] + 1e-9))
    if fits < 1:
        have = f"{cluster.get('CPU', 0):g} CPUs" + (f" and {cluster.get('GPU', 0):g} GPUs" if res.gpus else "")
        raise ResourceError(
            f"A trial needs {res.describe()}, but the Ray cluster has {have}; "
            "lower `scaling.workers`, `scaling.cpus_per_worker` or `scaling.gpus_per_worker`, or add nodes."
        )
    if requested is not None and requested > fits:
        raise ResourceError(
            f"The value of `scaling.max_concurrent_trials` is {requested}, but only {fits} trials of "
            f"{res.describe()} fit on the cluster; lower it or leave it unset."
        )
    return requested or fits


def local_cpus(res: TrialResources) -> int:
    """Logical CPUs for an in-process Ray: the machine's, or enough for one trial."""
    return max(os.cpu_count() or 1, math.ceil(res.cpus))


# --- the trial function ---------------------------------------------------------------


class TrialRunner:
    """One Tune trial: a Ray Train ``TensorflowTrainer`` with N workers.

    Pickled to each trial's actor; holds only plain data.
    """

    def __init__(self, spec: Spec, inputs: dict, slots_name: str, console: str = "normal"):
        self.spec_dict = spec.to_dict()
        self.loop_config = TrialConfig.for_experiment(spec, inputs)
        self.slots_name = slots_name  # the run's `resume.Slots`
        self.console = console  # tuner.console.LEVELS
        self.__name__ = "trial"  # Tune names trials <__name__>_<id>

    def __call__(self, params: dict) -> None:
        from ray import tune

        from tuner import resume

        trial_id = tune.get_context().get_trial_id()
        # At most `max_concurrent` trials ask for workers at once, resumed ones included.
        resume.acquire_slot(self.slots_name, trial_id)
        try:
            self._run(params, trial_id)
        finally:
            resume.release_slot(self.slots_name, trial_id)

    def _run(self, params: dict, trial_id: str) -> None:
        trial_start = time.time()  # B2's "trial start": after any wait for a slot
        import ray
        from ray.train import ScalingConfig

        from tuner import raycompat, worker  # raycompat first: keeps TensorFlow out of this process

        raycompat.install("trial")

        from tuner import population
        from tuner.spec import POPULATION_SCHEDULERS, build_spec

        spec = build_spec(self.spec_dict)
        s = spec.scaling
        # Reported by the workers: with use_gpu, shows that this driver's bundle has none.
        driver_gpus = len(ray.get_runtime_context().get_accelerator_ids().get("GPU", []))
        # A PBT member's generation trains in a Train run of its own (from the checkpoint
        # it copied); any other trial in one run named after it.
        generation = population.generation_of(params)
        run = population.run_name(trial_id, generation)
        run_uri = storage.join(spec.experiment_uri(), RUNS_DIR, run)
        member = spec.scheduler.kind in POPULATION_SCHEDULERS
        cfg = TrialConfig(**self.loop_config, params=population.hyperparameters(params), trial_start=trial_start,
                          run_uri=run_uri, run=run, generation=generation if member else None,
                          pbt_interval=spec.pbt.interval if member else None, driver_gpus=driver_gpus, slots=self.slots_name,
                          trial_id=trial_id, console=getattr(self, "console", "normal"))
        trainer = raycompat.trainer(
            train_loop_per_worker=worker.train_loop_per_worker,
            train_loop_config=cfg.to_dict(),
            tensorflow_config=raycompat.Config(),
            scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=s.use_gpu,
                                         resources_per_worker=TrialResources.of(spec).worker_bundle),
            run_config=self._train_run_config(spec, run),
        )
        # Ray Train's own setting (its controller takes it from this process): a worker
        # group waiting for its resources is a wait, up to the spec's timeout.
        os.environ[WORKER_START_TIMEOUT_ENV] = str(spec.failure.worker_start_timeout)
        trainer.fit()

    def _train_run_config(self, spec: Spec, run: str):
        """Ray Train's ``RunConfig`` of the trial's run ``run``."""
        from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
        from ray.tune.integration.ray_train import TuneReportCallback

        fs, root = spec.storage.location.filesystem()
        # To a type checker ray.train's config classes are Train V1's (ray.air.config); at
        # run time, with Train V2 on (Ray's default), they are V2's, which take these.
        return RunConfig(  # type: ignore[call-arg]
            # Unique per trial (and PBT generation) and stable across restarts, so a
            # restarted trial finds its own run, and with it its latest checkpoint.
            name=run,
            storage_path=posixpath.join(root, spec.name, RUNS_DIR),
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.num_to_keep,
                                               checkpoint_score_attribute=spec.objective.metric,
                                               checkpoint_score_order=spec.objective.mode),
            failure_config=FailureConfig(max_failures=spec.failure.max_failures,  # type: ignore[call-arg]
                                         controller_failure_limit=spec.failure.controller_failure_limit),
            # Worker reports reach Tune (and ASHA) through this.
            callbacks=[TuneReportCallback()],  # type: ignore[list-item]
            # Ray Train's INFO lines (each report with its metrics, each checkpoint) are for
            # `--verbose`; warnings and errors always show.
            logging_config=LoggingConfig(log_level="INFO" if getattr(self, "console", "normal") == "verbose"
                                         else "WARNING"),
            worker_runtime_env={"env_vars": {**storage.worker_env(spec.storage.endpoint), **TF_ENV}},
        )


# --- the experiment -------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this run uses, and how trials fit on it."""

    resources: dict  # Ray's cluster resources
    trial: TrialResources  # what each trial asks for here
    concurrent: int  # trials at once


def runtime_env_for(spec: Spec, working_dir: str | None = None, excludes: Sequence[str] = ()) -> dict:
    """The job's runtime environment: the S3 settings and TensorFlow's switches for every
    process, and ``working_dir`` (the user's builder module) shipped to every worker."""
    env: dict[str, Any] = {"env_vars": {**storage.worker_env(spec.storage.endpoint), **TF_ENV}}
    from tuner.raycompat import HEALTH_CHECK_INTERVAL, PATCHES_VAR

    if PATCHES_VAR in os.environ:  # every process of the job keeps to the driver's choice
        env["env_vars"][PATCHES_VAR] = os.environ[PATCHES_VAR]
    # A trial's reports reach Tune, and its end its driver, when its controller polls the
    # workers next: every 0.5 s rather than Ray's 2 s (about 1 s less per trial).
    variable, value = HEALTH_CHECK_INTERVAL
    env["env_vars"][variable] = os.environ.get(variable, value)
    if working_dir:
        env["working_dir"] = working_dir
        env["excludes"] = list(excludes)
    return env


def connect(address: str | None, spec: Spec, runtime_env: dict | None = None, console: str = "normal") -> Cluster:
    """Connect to Ray (``address``, ``$RAY_ADDRESS``, else a new in-process local Ray).

    Below ``console="verbose"`` (``tuner.console.LEVELS``), Ray's INFO lines are off in
    this driver (``TrialRunner`` and ``worker.train_loop_per_worker`` do the same for Ray
    Train and the workers); warnings and errors still reach this console.

    Raises:
        ResourceError: a trial cannot fit, or not ``scaling.max_concurrent_trials`` of them.
    """
    import ray

    from tuner import raycompat

    runtime_env = dict(runtime_env or runtime_env_for(spec))
    runtime_env["env_vars"] = dict(runtime_env.get("env_vars", {}))
    address = address or os.environ.get("RAY_ADDRESS")
    res = TrialResources.of(spec)
    logs: dict[str, Any] = {} if console == "verbose" else {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, runtime_env=beside_job_runtime_env(runtime_env), log_to_driver=True, **logs)
        resources = ray.cluster_resources()
        return Cluster(resources, res, concurrent_trials(res, resources, spec.scaling.max_concurrent_trials))
    # Sized before Ray starts: the node's driver resource is what limits the drivers.
    cpus = local_cpus(res)
    concurrent = concurrent_trials(replace(res, driver_resource=None), {"CPU": cpus, "GPU": 0},
                                   spec.scaling.max_concurrent_trials)
    driver_resource = res.driver_resource or LOCAL_DRIVER_RESOURCE
    res = replace(res, driver_resource=driver_resource)
    # One machine has no node to lose to preemption: Ray Train's preemption watcher
    # (one more actor process per trial, booting while the workers start) has
    # nothing to watch. Clusters keep it.
    runtime_env["env_vars"][raycompat.NO_PREEMPTION_WATCHER[0]] = raycompat.NO_PREEMPTION_WATCHER[1]
    # The dashboard hosts the state API that Ray Train uses to clean up worker placement
    # groups after a trial ends; without it they leak. Ray Train's cleaner finds it
    # through $RAY_API_SERVER_ADDRESS, else through the `ray_current_cluster` file in
    # Ray's temp folder, which names the last `ray start` cluster of the machine, dead
    # or alive: its cleaner would never see this Ray (and the next trial would wait for
    # workers forever), or would see another one. Pinned to this Ray's own dashboard.
    dashboard_port = free_port()
    runtime_env["env_vars"][raycompat.API_SERVER_ADDRESS] = f"http://127.0.0.1:{dashboard_port}"
    if console != "verbose":
        # "Token authentication is enabled for this Ray cluster": this process started it,
        # on 127.0.0.1, for itself.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    context = ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=0,
        resources={driver_resource: concurrent},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        runtime_env=runtime_env,
        **logs,
    )
    if not (context.dashboard_url or "").endswith(f":{dashboard_port}"):
        raise ResourceError(f"Ray's dashboard did not start on port {dashboard_port} ({context.dashboard_url!r}); "
                            "run the command again.")
    return Cluster(ray.cluster_resources(), res, concurrent)


def beside_job_runtime_env(runtime_env: dict) -> dict:
    """``runtime_env`` without what a submitted job's own runtime environment sets.

    Ray refuses, rather than merges, a ``ray.init`` runtime environment that sets a field
    or an environment variable that the job's (``ray job submit --runtime-env-json``,
    ``--working-dir``) sets too: "Failed to merge the Job's runtime env". The job's values
    are what its processes get, and this driver has them in its environment already, so
    the ones tuner would derive from there are the same; the job's working directory is
    this driver's, where the builder was found.
    """
    from tuner import raycompat

    job = raycompat.job_runtime_env()
    if job.get("working_dir"):
        runtime_env = {k: v for k, v in runtime_env.items() if k != "excludes"}
    out = {k: v for k, v in runtime_env.items() if k not in job or k == "env_vars"}
    env_vars = {k: v for k, v in runtime_env.get("env_vars", {}).items() if k not in (job.get("env_vars") or {})}
    out.pop("env_vars", None)
    return {**out, **({"env_vars": env_vars} if env_vars else {})}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def experiment_path(spec: Spec):
    """(filesystem, path) of the Tune experiment: ``<storage>/<name>``."""
    fs, root = spec.storage.location.filesystem()
    return fs, posixpath.join(root, spec.name)


def can_resume(spec: Spec) -> bool:
    """Whether storage holds the Tune state of this experiment (it started before)."""
    from ray import tune

    fs, path = experiment_path(spec)
    return tune.Tuner.can_restore(path, storage_filesystem=fs)


def run(spec: Spec, inputs: dict, cluster: Cluster, search: bool = True, resume: bool = False,
        stop: "StopOnSignal | None" = None, console: str = "normal", warm_start=None):
    """Run the experiment on the connected Ray; returns Tune's ``ResultGrid`` and the
    scheduler whose records ``resume.Keeper`` keeps (ASHA's and Hyperband's rungs, the
    median rule's results, PBT's population), else None.

    ``resume``: continue the interrupted experiment stored under ``<storage>/<name>``.
    Tune keeps finished trials and restores the searcher's state; ``resume.Keeper``
    restores the scheduler's and the stopper's records (their time attribute is the
    reported ``epoch``, which restarts do not reset) and this run's concurrency;
    unfinished trials run their function again and each resumes from its newest
    checkpoint in storage (``checkpoints.restore_latest``).

    ``stop``: the run's signal handling; a signal while Tune runs stops it gracefully, and
    ``interrupt.Interrupted`` is raised once Tune has saved its state.

    ``console``: ``quiet``, ``normal`` or ``verbose`` (``tuner.console``): what is printed
    while Tune runs. Only ``verbose`` keeps Tune's own progress tables.

    ``warm_start``: a new experiment's ``tuner.warm.WarmStart``, handed to the searcher.
    """
    from ray import tune

    from tuner import raycompat
    from tuner import resume as keep
    from tuner.tensorboard import local_results

    # Tune saves the experiment state (which trials finished, the scheduler's records) every
    # 10 s or more by default; a driver lost in between forgets trials that finished since
    # and a re-run trains them again. Saved every 2 s here, or less often once the state
    # (about 20 KB per trial, written and uploaded whole) passes 2 MB: at most 1 MiB/s.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "auto")
    # Each trial's results as result.json (which Tune's analysis reads) and TensorBoard
    # events, without Tune's third copy, progress.csv: one upload less per trial-epoch.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    raycompat.install("driver", state_period=2.0, local_results=local_results)
    slots_name = f"tuner-slots-{uuid.uuid4().hex[:12]}"
    slots = keep.start_slots(slots_name, cluster.concurrent)  # noqa: F841 (alive until fit returns)
    # On a restore, Tune gives the re-added trials these resources too.
    trainable = tune.with_resources(TrialRunner(spec if search else single_run(spec), inputs, slots_name,
                                                console), cluster.trial.driver_bundle)
    printer = console_for(spec, search, console)
    trackers = [tracker] if (tracker := tracker_for(spec, search)) else []
    # Tune's own reporter: its progress table at every status change (verbose 1), or each
    # result as a table of its own (2); `Console` prints a line per event instead. Tune's
    # newer output engine prints a header box and paths even at verbose 0; the older one
    # prints nothing there but Tune's errors (a failed trial's traceback included).
    verbose = 1 if console == "verbose" else 0
    if console != "verbose":
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    callbacks = [printer, *trackers]
    tuner, keeper = (_restored_tuner(spec, trainable, cluster, slots_name, verbose, callbacks) if resume else
                     _new_tuner(spec, trainable, cluster, slots_name, verbose, callbacks, search, warm_start))
    with stop.tune_running() if stop else contextlib.nullcontext():
        grid = tuner.fit()
    del slots
    return grid, keeper.scheduler


def _restored_tuner(spec: Spec, trainable, cluster: Cluster, slots_name: str, verbose: int, callbacks: list):
    """(Tune's ``Tuner`` of the interrupted experiment, its ``resume.Keeper``), with this
    run's console, tracker and results logger in the stored callbacks' places."""
    from ray.tune.logger import JsonLoggerCallback

    from tuner import raycompat, schedulers
    from tuner import resume as keep
    from tuner.console import Console
    from tuner.mlflow_runs import is_tracker
    from tuner.tensorboard import TrialResults

    fs, _ = spec.storage.location.filesystem()
    _, path = experiment_path(spec)
    tuner = raycompat.restore_tuner(
        path, trainable, resume_unfinished=True, resume_errored=spec.failure.retry_errored_on_resume,
        storage_filesystem=fs,
    )
    keeper = keep.restored_keeper(tuner, cluster.concurrent, slots_name)
    run_config = raycompat.restored_run_config(tuner)
    run_config.verbose = verbose
    stored = run_config.callbacks
    # The results logger, as a resumed run's (it holds no state; an older tuner stored
    # Tune's plain one, or none): in the stored one's place.
    results_logger = TrialResults(fetch_stored=True)
    stored[:] = [results_logger if isinstance(c, JsonLoggerCallback) else c for c in stored]
    if results_logger not in stored:
        stored.append(results_logger)
    # This run's console level, whatever the interrupted run's was (an older tuner stored
    # none).
    stored[:] = [c for c in stored if not (isinstance(c, Console) or is_tracker(c))] + callbacks
    if isinstance(keeper.scheduler, schedulers.PopulationScheduler):
        callbacks[0].population = keeper.scheduler
    return tuner, keeper


def _new_tuner(spec: Spec, trainable, cluster: Cluster, slots_name: str, verbose: int, callbacks: list, search: bool,
               warm_start):
    """(Tune's ``Tuner`` of a new experiment, its ``resume.Keeper``): the scheduler, the
    searcher (warm-started where asked), the stopper and the callbacks."""
    from ray import tune

    from tuner import resume as keep
    from tuner import schedulers
    from tuner import search as searching
    from tuner.tensorboard import EpochTensorBoard, TrialResults

    fs, root = spec.storage.location.filesystem()
    metric, mode = spec.objective.metric, spec.objective.mode
    scheduler = schedulers.scheduler_for(spec, search, TIME_ATTR, spec.experiment_location().join(RUNS_DIR))
    searcher, space = searching.searcher_for(spec if search else single_run(spec), cluster.concurrent, metric, mode,
                                             warm_start)
    stopper = schedulers.stopper_for(spec, metric, mode, TIME_ATTR) if search else None
    keeper = keep.Keeper(scheduler if hasattr(scheduler, "state") else None, searcher, cluster.concurrent,
                         slots_name, stopper)
    if isinstance(scheduler, schedulers.PopulationScheduler):
        callbacks[0].population = scheduler
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                                    num_samples=searching.tune_num_samples(spec) if search else 1,
                                    search_alg=searcher),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=root,
            storage_filesystem=fs,
            stop=stopper,
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=verbose,
            # The keeper first: Tune restores callback state by list position.
            callbacks=[keeper, EpochTensorBoard(TIME_ATTR), TrialResults(), *callbacks],
        ),
    )
    return tuner, keeper


def console_for(spec: Spec, search: bool, level: str):
    """The ``tuner.console.Console`` callback for this run."""
    from tuner.console import Console
    from tuner.rungs import milestones
    from tuner.search import trial_count
    from tuner.space import searched

    kind = spec.scheduler.kind if search else "fifo"
    trials = trial_count(spec) if search else 1
    ladder = milestones(dataclasses.asdict(spec.asha)) if kind in ("asha", "asha_promote") else []
    return Console(level, spec.objective.metric, spec.objective.mode, spec.asha.max_t, trials * spec.asha.max_t,
                   stopper_name(spec, search), ladder,
                   searched(spec.search.space) if search else [], waits_at_rungs=kind == "asha_promote",
                   experiment_uri=spec.experiment_uri())


def stopper_name(spec: Spec, search: bool) -> str:
    """What may stop a trial early, as the console and the tracking name it."""
    kind = spec.scheduler.kind if search else "fifo"
    stopper = {"asha": "ASHA", "asha_promote": "ASHA", "hyperband": "Hyperband", "median_stopping": "the median rule",
               "fifo": "FIFO", "pbt": "PBT", "pb2": "PB2"}[kind]
    if search and spec.scheduler.plateau_patience:
        stopper += " or the plateau rule"
    return stopper


def tracker_for(spec: Spec, search: bool):
    """The MLflow ``tuner.tracker.Tracker`` callback for this run, or None (no tracking)."""
    from tuner import mlflow_runs

    where = mlflow_runs.target(spec)
    if where is None:
        return None
    from tuner.tracker import Tracker

    settings = {k: v for k, v in mlflow_runs.flat(spec.to_dict()).items() if not k.startswith("tracking.")}
    return Tracker(where, spec.experiment_location(),
                   {**settings, "command": "tune" if search else "train"}, spec.asha.max_t,
                   stopper_name(spec, search))


def single_run(spec: Spec) -> Spec:
    """``tuner train``'s spec: one trial of the space's values, drawn by plain random search,
    run to the budget (no scheduler's pauses, no population)."""
    return replace(spec, search=replace(spec.search, algorithm="random"), scheduler=replace(spec.scheduler, kind="fifo"))


def __getattr__(name: str):
    # A grid experiment interrupted under an older tuner pickled tuner.tune._IfActive.
    if name == "_IfActive":
        from tuner.search import _IfActive

        return _IfActive
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
