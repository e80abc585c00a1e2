"""The Ray Train function that runs on each of a trial's workers.

It reads the Ray context, enters ``MultiWorkerMirroredStrategy``, builds the model with
the spec's builder (or restores it from the newest checkpoint), compiles it with
``tuner.training``, trains with ``model.fit`` and reports each epoch
(``tuner.reporter``). Imports TensorFlow lazily: the module is imported by trial drivers
that never train.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import checkpoints
from tuner.trial import TrialConfig

if TYPE_CHECKING:
    from tuner.data import SplitReader
    from tuner.models import InputSpec
    from tuner.schedule import BatchPlan, Schedule, Stretch

# Optimizer steps per tf.function call: a small MLP's step is shorter than the Python
# round trip around it, so running several per call is most of the throughput.
STEPS_PER_EXECUTION = 32
# A worker's shuffle buffer holds the rows of this many row groups (each pass reads its
# row groups in a random order and each one's rows in a random order), at most this many
# bytes of features. The buffer fills before the first batch of each pass: a bigger one
# mixes more and stalls longer. MNIST, 2 workers: 4 x 859 rows = 2.6 MB of a 21 MB share.
SHUFFLE_ROW_GROUPS = 4
SHUFFLE_BUFFER_BYTES = 64 << 20
# Pieces (row-group slices) a worker's reader thread holds ahead of its input pipeline.
READ_AHEAD_PIECES = 4
# Set (tests only): each worker writes the labels of the rows it read in each pass over
# its share to <dir>/<trial's run>-rank<R>-epoch<E>.npy.
DEBUG_ROWS_ENV = "TUNER_DEBUG_ROWS_DIR"


def train_loop_per_worker(config: dict) -> None:
    """Train one trial's configuration on this worker: context -> strategy -> build or
    restore -> fit -> report (each epoch, ``tuner.reporter.EpochReporter``).

    Args:
        config: a ``tuner.trial.TrialConfig`` as ``to_dict()``.
    """
    cfg = TrialConfig.from_dict(config)
    entered = time.time()
    if cfg.console != "verbose":
        # Ray Train sets this process's root logger to INFO, and some of its own loggers
        # (its per-report "Reporting training result ...") are named by file path, out of
        # reach of its LoggingConfig; TensorFlow's INFO lines (the strategy's collective
        # set-up) go to the root logger too. Warnings and errors still show.
        logging.getLogger().setLevel(logging.WARNING)
    from tuner import raycompat, reporter  # reporter: TensorFlow and tf_keras

    raycompat.install("worker")
    imported = time.time()

    worker = _join(cfg)
    start = _build_or_restore(cfg, worker)
    if start.epoch >= cfg.max_t:  # a trial that had trained to its budget: nothing more to do
        return
    # Where a trial's fixed start-up cost goes, in seconds since the trial driver started.
    startup = {"startup_process_seconds": _process_started() - cfg.trial_start,
               "startup_worker_entered_seconds": entered - cfg.trial_start,
               "startup_imported_seconds": imported - cfg.trial_start,
               "startup_ready_seconds": time.time() - cfg.trial_start}
    report = reporter.EpochReporter(cfg, worker, start.net, worker.validation, start.epoch, startup, start.spent)
    _fit(cfg, worker, start, report)


@dataclass(frozen=True)
class Worker:
    """This worker's place in its trial: its rank among ``world`` workers, the strategy
    they share, the task, and the shares of the training and validation splits it reads."""

    rank: int
    world: int
    strategy: Any  # tf.distribute.MultiWorkerMirroredStrategy
    task: str
    inputs: InputSpec
    train: SplitReader
    pieces: list
    validation: "ValidationShare"


def _join(cfg: TrialConfig) -> Worker:
    """The Ray Train context, the strategy (before any other TensorFlow op: it sets up
    the collective runtime), the seed, and this worker's shares of the data."""
    import ray.train
    import tensorflow as tf
    import tf_keras

    from tuner import data, models

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_keras.utils.set_random_seed(cfg.seed)
    inputs = models.InputSpec.from_dict(cfg.inputs)
    manifest = data.staged_manifest(cfg.dataset)
    train = data.SplitReader(cfg.dataset, manifest, "train")
    pieces = data.shards.assign(train.row_groups, world, rank)
    train.check(pieces)
    # Each rank scores its own share of the validation split and the sums are added up;
    # every rank runs the same number of forward passes (see training.score_sums).
    validation = data.SplitReader(cfg.dataset, manifest, "validation")
    validation_pieces = data.shards.assign(validation.row_groups, world, rank)
    validation.check(validation_pieces)
    return Worker(rank, world, strategy, inputs.task, inputs, train, pieces,
                  ValidationShare(validation, validation_pieces, world))


@dataclass(frozen=True)
class Start:
    """Where this worker group starts: the model (built, or restored with its optimizer
    state) and the epochs it has trained, under the batch plan and learning-rate schedule
    of the hyperparameters in force there, and the trial's stretches of hyperparameters
    (``schedule.stretches``: one, the whole budget, without a replayed schedule)."""

    net: Any  # tf_keras.Model
    epoch: int
    plan: BatchPlan
    lr_schedule: Schedule
    stretches: list[Stretch]
    spent: float = 0.0  # worker-seconds the trial had spent by its restored epoch (rank 0)


def _plan(cfg: TrialConfig, worker: Worker, params: dict):
    """(the batch plan, the learning-rate schedule) of ``params`` on this trial's workers."""
    from tuner import schedule

    plan = schedule.BatchPlan(worker.world, params["batch_size"], worker.train.rows)
    return plan, schedule.schedule_for(params, plan, cfg.lr_scaling, cfg.reference_batch, cfg.warmup_epochs)


def _build_or_restore(cfg: TrialConfig, worker: Worker) -> Start:
    """The newest checkpoint that loads whole, else a new model from the builder; then
    the stored epochs whose reports never reached the driver are reported again.

    Rank 0 alone asks which epochs the experiment's driver has taken in, lists the run's
    checkpoints (one storage listing per trial start, not one per worker; none for a new
    trial's first start, which has nothing stored) and reads the stored records of the
    newer ones; it hands the epochs to the others, and every rank loads the same one."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    from tuner import models, resume, schedule, space, training

    records, listed, reported = {}, [], 0
    if worker.rank == 0:
        reported, any_stored = resume.start(cfg.slots, cfg.run or cfg.trial_id) if cfg.slots else (0, True)
        listed = checkpoints.stored_epochs(cfg.run_location)[:checkpoints.RESTORE_CANDIDATES] if any_stored else []
        records = checkpoints.stored_records(cfg.run_location, [e for e in listed if e > reported])
    stored, reported, recorded = broadcast_from_rank_zero((listed, reported, sorted(records)) if worker.rank == 0 else None)
    with worker.strategy.scope():
        restored = checkpoints.restore_latest(cfg.run_location, stored)
        epoch = restored[1] if restored else 0
        stretches = schedule.stretches(cfg.params, cfg.hp_schedule, cfg.max_t)
        params = schedule.stretch_at(stretches, epoch).params
        plan, lr_schedule = _plan(cfg, worker, params)
        epoch_schedule = training.EpochSchedule.from_schedule(lr_schedule, plan.steps_per_epoch)
        if restored:
            # Its optimizer state as saved, its hyperparameters this run's: the same for a
            # trial that resumes, explored ones for a PBT member that continues another's.
            net = restored[0]
            training.retune(net, params, epoch_schedule, epoch * plan.steps_per_epoch)
        else:
            model_config = {k: v for k, v in params.items() if not space.is_knob(k)}  # None: does not count
            net = models.load_builder(cfg.builder)(model_config, worker.inputs)
            training.compile_model(net, training.build_optimizer(params, epoch_schedule), worker.task, cfg.loss,
                                   steps_per_execution=min(STEPS_PER_EXECUTION, plan.steps_per_epoch))
    # Stored epochs whose reports never reached the driver (it was stopped, or this worker
    # group died, in between): reported again from their checkpoints' records, oldest
    # first, so that ASHA records them at their rungs and the results show them. Every
    # rank reports (a report is a barrier); rank 0's metrics are the ones Ray Train uses.
    for replayed in checkpoints.replayed_epochs(recorded, reported, epoch):
        ray.train.report({**records[replayed], "replayed": True} if worker.rank == 0 else {})
    spent = _spent(cfg, records, epoch) if restored and worker.rank == 0 else 0.0
    return Start(net, epoch, plan, lr_schedule, stretches, spent)


def _spent(cfg: TrialConfig, records: dict[int, dict], epoch: int) -> float:
    """The worker-seconds a resumed trial had spent by its restored ``epoch``, from that
    checkpoint's record (one more read on a resume; 0 for another member's checkpoint)."""
    try:
        record = records.get(epoch) or checkpoints.stored_metrics(cfg.run_location, epoch) or {}
    except Exception:  # noqa: BLE001 - a record that does not read counts nothing
        record = {}
    return float(record.get("worker_seconds") or 0.0)


def _fit(cfg: TrialConfig, worker: Worker, start: Start, report) -> None:
    """Train to the budget, one ``fit`` per stretch of ``training.hyperparameter_schedule``
    (the whole budget without one), each from where the last ended."""
    import tf_keras

    from tuner import training

    net, plan, lr_schedule = start.net, start.plan, start.lr_schedule
    tag = posixpath.basename(cfg.run_uri)
    for stretch in start.stretches:
        if stretch.end <= start.epoch:
            continue
        begin = max(stretch.start, start.epoch)
        if begin > start.epoch:  # the schedule changes the knobs here
            plan, lr_schedule = _plan(cfg, worker, stretch.params)
            with worker.strategy.scope():
                training.retune(net, stretch.params, training.EpochSchedule.from_schedule(lr_schedule, plan.steps_per_epoch),
                                begin * plan.steps_per_epoch)
        report.plan, report.lr_schedule = plan, lr_schedule
        net.fit(
            tf_keras.utils.experimental.DatasetCreator(
                _dataset_fn(worker.train, worker.pieces, plan, cfg.seed, worker.rank, begin, tag)),
            epochs=stretch.end,
            initial_epoch=begin,
            steps_per_epoch=plan.steps_per_epoch,
            callbacks=[report],
            verbose=0,
        )


def _dataset_fn(train, pieces, plan, seed: int, rank: int, start_epoch: int, tag: str):
    """The ``DatasetCreator`` function of one ``fit``: one input pipeline per worker,
    streaming its own share of the rows from ``start_epoch``'s pass on; sharded here, so
    tf.data's auto-sharding has nothing left to split."""
    from tuner import data, training

    def dataset_fn(input_context):
        per_replica = input_context.get_per_replica_batch_size(plan.global_batch)
        return training.streaming_dataset(
            stream_pieces(train, pieces, seed, rank, start_epoch, tag),
            train.shape, train.dtype, train.label_dtype, per_replica,
            shuffle_rows=data.shards.shuffle_buffer(pieces, train.row_bytes, SHUFFLE_ROW_GROUPS, SHUFFLE_BUFFER_BYTES),
            seed=seed * 1009 + rank)

    return dataset_fn


def stream_pieces(reader, pieces, seed: int, rank: int, start_epoch: int, tag: str = "",
                  read_ahead: int = READ_AHEAD_PIECES):
    """A function yielding (features, labels) of ``pieces``: one pass over them per call,
    each call the next epoch's pass, the pieces and the rows of each in a seeded order of
    that pass (``tuner.data.shards.pass_order``, ``row_order``).

    One background thread reads ``read_ahead`` pieces ahead of the consumer, across the
    end of a pass too: the next pass's first pieces are in memory when it starts, so the
    shuffle buffer refills without waiting on storage."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    from tuner.data import shards

    debug = os.environ.get(DEBUG_ROWS_ENV)
    order = ((epoch, piece) for epoch in range(start_epoch, 1 << 62)
             for piece in shards.pass_order(pieces, seed, rank, epoch))
    reads = ThreadPoolExecutor(1, thread_name_prefix="tuner-read")
    queued: collections.deque = collections.deque()

    def fill():
        while len(queued) < read_ahead:
            epoch, piece = next(order)
            queued.append((epoch, piece, reads.submit(reader.read, piece)))

    def one_pass():
        import numpy as np

        seen = []
        for _ in range(len(pieces)):
            fill()
            epoch, piece, read = queued.popleft()
            fill()  # at a pass's end: the next pass's first pieces
            x, y = read.result()
            rows = shards.row_order(piece, seed, rank, epoch)
            x, y = x[rows], y[rows]
            if debug:
                seen.append(y)
            yield x, y
        if debug:
            np.save(Path(debug, f"{tag}-rank{rank}-epoch{epoch}.npy"), np.concatenate(seen))

    return one_pass


def _process_started() -> float:
    """Unix time this process started (Linux /proc), for start-up figures; NaN elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return math.nan


@dataclass(frozen=True)
class ValidationShare:
    """The validation rows one worker scores (``pieces`` of ``reader``'s split), and the
    forward passes every worker runs: enough for the largest share."""

    reader: SplitReader
    pieces: list
    world: int

    @property
    def batches(self) -> int:
        from tuner import data, training

        largest = max(hi - lo for lo, hi in (data.shards.share(self.reader.rows, self.world, r)
                                              for r in range(self.world)))
        return math.ceil(largest / training.EVAL_BATCH)
