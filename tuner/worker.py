"""The Ray Train function that runs on each of a trial's workers.

It reads the Ray context, enters ``MultiWorkerMirroredStrategy``, builds the model with
the spec's builder (or restores it from the newest checkpoint), compiles it with
``tuner.training``, trains with ``model.fit`` and reports each epoch.
Imports TensorFlow lazily: the module is imported by trial drivers that never train.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tuner.checkpoints import (  # noqa: F401 - the layout and restore, as this module had them
    MODEL_FILE, RESTORE_CANDIDATES, STATE_FILE, checkpoint_dir_name, copy_checkpoint, replayed_epochs,
    restore_latest, stored_epochs, stored_metrics, stored_records, weights_digest)

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
# `checkpoint.upload` -> ray.train.CheckpointUploadMode's name.
UPLOAD_MODES = {"async": "ASYNC", "sync": "SYNC"}
# A PBT member told to pause at a perturbation point waits this long for Tune to stop it,
# then goes on (the driver's decision may have been lost).
PAUSE_HOLD_SECONDS = 300


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the trial fails alone."""


def train_loop_per_worker(cfg: dict) -> None:
    """Train one trial's configuration on this worker.

    Args:
        cfg: ``params`` (the trial's hyperparameters), ``dataset_uri``, ``builder``
            ("module:function"), ``loss`` (None: the task's), ``inputs`` (the dataset's
            ``InputSpec`` as a dict), ``endpoint``,
            ``run_uri`` (this trial's Ray Train run folder, where its checkpoints are) and
            ``run`` (its name),
            ``max_t`` (epochs), ``seed``, ``lr_scaling``, ``reference_batch``,
            ``warmup_epochs``, ``hp_schedule`` (``training.hyperparameter_schedule``, or
            None), ``threads`` (TensorFlow intra-op threads, 0 = default),
            ``trial_start`` (unix time the trial driver started, for overhead figures),
            ``driver_gpus`` (GPUs Ray gave the trial driver, reported as is),
            ``slots`` and ``trial_id`` (the run's ``resume.Slots`` actor, which knows the
            epochs the driver took in and whether the trial can have stored checkpoints,
            and this trial's id; optional), ``generation`` (a PBT member's, reported with
            each epoch; absent otherwise).
    """
    entered = time.time()
    if cfg.get("console", "normal") != "verbose":
        # Ray Train sets this process's root logger to INFO, and some of its own loggers
        # (its per-report "Reporting training result ...") are named by file path, out of
        # reach of its LoggingConfig; TensorFlow's INFO lines (the strategy's collective
        # set-up) go to the root logger too. Warnings and errors still show.
        logging.getLogger().setLevel(logging.WARNING)
    import ray.train
    import tensorflow as tf
    import tf_keras
    from ray.train.collective import broadcast_from_rank_zero

    from tuner import data, models, raycompat, resume, schedule, space, training

    raycompat.marker_free_checkpoint_upload()
    imported = time.time()

    if cfg.get("threads"):
        tf.config.threading.set_intra_op_parallelism_threads(cfg["threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Must come before any other TensorFlow op: it sets up the collective runtime.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf_keras.utils.set_random_seed(cfg["seed"])

    inputs = models.InputSpec.from_dict(cfg["inputs"])
    manifest = data.read_manifest(cfg["dataset_uri"], cfg["endpoint"])
    train = data.SplitReader(cfg["dataset_uri"], manifest, "train", cfg["endpoint"])
    pieces = data.shards.assign(train.row_groups, world, rank)
    train.check(pieces)
    # Each rank scores its own share of the validation split and the sums are added up;
    # every rank runs the same number of forward passes (see training.score_sums).
    validation = data.SplitReader(cfg["dataset_uri"], manifest, "validation", cfg["endpoint"])
    validation_pieces = data.shards.assign(validation.row_groups, world, rank)
    validation.check(validation_pieces)
    stretches = schedule.stretches(cfg["params"], cfg.get("hp_schedule"), cfg["max_t"])

    def plan_for(params):
        plan = schedule.BatchPlan(world, params["batch_size"], train.rows)
        return plan, schedule.schedule_for(params, plan, cfg["lr_scaling"], cfg["reference_batch"],
                                           cfg["warmup_epochs"])

    # Rank 0 alone asks which epochs the experiment's driver has taken in, lists the run's
    # checkpoints (one storage listing per trial start, not one per worker; none for a new
    # trial's first start, which has nothing stored) and reads the stored records of the
    # newer ones; it hands the epochs to the others, and every rank then loads the same
    # checkpoint.
    records = {}
    if rank == 0:
        run = cfg.get("run", cfg.get("trial_id"))
        reported, any_stored = resume.start(cfg["slots"], run) if cfg.get("slots") else (0, True)
        listed = stored_epochs(cfg["run_uri"], cfg["endpoint"])[:RESTORE_CANDIDATES] if any_stored else []
        records = stored_records(cfg["run_uri"], cfg["endpoint"], [e for e in listed if e > reported])
    stored, reported, recorded = broadcast_from_rank_zero((listed, reported, sorted(records)) if rank == 0 else None)
    with strategy.scope():
        restored = restore_latest(cfg["run_uri"], cfg["endpoint"], stored)
        start_epoch = restored[1] if restored else 0
        params = schedule.stretch_at(stretches, start_epoch).params
        plan, lr_schedule = plan_for(params)
        epoch_schedule = training.EpochSchedule.from_schedule(lr_schedule, plan.steps_per_epoch)
        if restored:
            # Its optimizer state as saved, its hyperparameters this run's: the same for a
            # trial that resumes, explored ones for a PBT member that continues another's.
            net = restored[0]
            training.retune(net, params, epoch_schedule, start_epoch * plan.steps_per_epoch)
        else:
            net = models.load_builder(cfg["builder"])(space.model_hyperparameters(params), inputs)
            training.compile_model(net, training.build_optimizer(params, epoch_schedule), inputs.task,
                                   cfg.get("loss"), steps_per_execution=min(STEPS_PER_EXECUTION, plan.steps_per_epoch))

    # Stored epochs whose reports never reached the driver (it was stopped, or this worker
    # group died, in between): reported again from their checkpoints' records, oldest
    # first, so that ASHA records them at their rungs and the results show them. Every
    # rank reports (a report is a barrier); rank 0's metrics are the ones Ray Train uses.
    for epoch in replayed_epochs(recorded, reported, start_epoch):
        ray.train.report({**records[epoch], "replayed": True} if rank == 0 else {})
    # A trial that had trained to its budget has nothing more to do.
    if start_epoch >= cfg["max_t"]:
        return

    # Where a trial's fixed start-up cost goes, in seconds since the trial driver started.
    startup = {"startup_process_seconds": _process_started() - cfg["trial_start"],
               "startup_worker_entered_seconds": entered - cfg["trial_start"],
               "startup_imported_seconds": imported - cfg["trial_start"],
               "startup_ready_seconds": time.time() - cfg["trial_start"]}
    reporter = _epoch_reporter(cfg, plan, lr_schedule, rank, world, strategy, net,
                               ValidationShare(validation, validation_pieces, world), inputs.task, start_epoch, startup)
    tag = posixpath.basename(cfg["run_uri"])
    for stretch in stretches:
        if stretch.end <= start_epoch:
            continue
        begin = max(stretch.start, start_epoch)
        if begin > start_epoch:  # `training.hyperparameter_schedule` changes the knobs here
            plan, lr_schedule = plan_for(stretch.params)
            with strategy.scope():
                training.retune(net, stretch.params, training.EpochSchedule.from_schedule(lr_schedule, plan.steps_per_epoch),
                                begin * plan.steps_per_epoch)
        reporter.plan, reporter.lr_schedule = plan, lr_schedule
        net.fit(
            tf_keras.utils.experimental.DatasetCreator(
                _dataset_fn(train, pieces, plan, cfg["seed"], rank, begin, tag)),
            epochs=stretch.end,
            initial_epoch=begin,
            steps_per_epoch=plan.steps_per_epoch,
            callbacks=[reporter],
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

    reader: object  # tuner.data.SplitReader
    pieces: list
    world: int

    @property
    def batches(self) -> int:
        from tuner import data, training

        largest = max(hi - lo for lo, hi in (data.shards.share(self.reader.rows, self.world, r)
                                              for r in range(self.world)))
        return math.ceil(largest / training.EVAL_BATCH)


_GATHERS: dict = {}  # id(strategy) -> its all-gather as a tf.function


def _all_gathered(strategy, row):
    """Every worker's ``row`` (a NumPy vector), stacked in rank order (an all-gather:
    every worker calls it).

    One ``tf.function`` per strategy, traced once per row shape and dtype: run eagerly,
    the all-gather builds a new function at each call, which TensorFlow warns about
    (retracing, and "CollectiveAllReduceStrategy eagerly has significant overhead")."""
    import tensorflow as tf

    gather = _GATHERS.get(id(strategy))
    if gather is None:
        @tf.function
        def gather(local):
            # tf.identity places the row on the replica's device; the argument itself has
            # none in the graph, and the all-gather then has no destination.
            every = strategy.run(lambda x: tf.distribute.get_replica_context().all_gather(tf.identity(x), axis=0),
                                 args=(local,))
            return strategy.experimental_local_results(every)[0]

        _GATHERS.clear()  # one strategy per worker process; a new one replaces the old
        _GATHERS[id(strategy)] = gather
    return gather(tf.constant(row[None])).numpy()


def all_summed(strategy, values):
    """``values`` (a float64 vector) summed over every worker, in rank order, so every
    worker gets the same bits (an all-gather: every worker calls it)."""
    import numpy as np

    return _all_gathered(strategy, np.asarray(values, np.float64)).sum(axis=0)


def replica_digests(strategy, digest: str) -> list[str]:
    """Every worker's ``digest``, in rank order (an all-gather: every worker calls it)."""
    import numpy as np

    rows = _all_gathered(strategy, np.frombuffer(bytes.fromhex(digest), np.uint8).astype(np.int32))
    return [bytes(row.astype(np.uint8).tolist()).hex() for row in rows]


def _epoch_reporter(*args, **kwargs):
    """Builds the Keras callback; defined here so that importing this module stays free of TensorFlow."""
    import tf_keras

    class EpochReporter(tf_keras.callbacks.Callback):
        """Scores the validation split, saves on every rank, checkpoints rank 0's save, reports to Ray Train."""

        def __init__(self, cfg, plan, lr_schedule, rank, world, strategy, net, validation, task, resumed_from,
                     startup):
            super().__init__()
            self.cfg, self.plan, self.lr_schedule, self.rank, self.world = cfg, plan, lr_schedule, rank, world
            self.strategy = strategy
            self.net = net
            self.validation = validation
            self.task = task
            self.resumed_from = resumed_from
            # Reported with this worker-group start's first epoch only: it marks each
            # start in the results (results.worker_group_starts counts the restarts).
            self.startup = startup
            self.first_step_at = None
            self.report_seconds = None  # the previous epoch's report: its checkpoint upload, mostly

        def on_train_batch_begin(self, batch, logs=None):
            if self.first_step_at is None:
                self.first_step_at = time.time()
                usage = resource.getrusage(resource.RUSAGE_SELF)
                self.startup_cpu = usage.ru_utime + usage.ru_stime

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            import ray.train

            logs = logs or {}
            train_seconds = time.time() - self.epoch_start
            loss = float(logs.get("loss", math.nan))
            if not math.isfinite(loss):
                raise DivergedError(f"training loss became {loss} in epoch {epoch + 1}")
            from tuner import training

            name = training.TASK_METRIC[self.task]
            scored = time.time()
            v = self.validation
            sums = training.score_sums(self.net, map(v.reader.read, v.pieces), self.task, self.cfg.get("loss"),
                                       batches=v.batches, shape=v.reader.shape, dtype=v.reader.dtype)
            scores = training.scores(all_summed(self.strategy, sums), self.task)
            done = epoch + 1
            metrics = {
                "epoch": done,
                f"val_{name}": scores[name],
                "val_loss": scores["loss"],
                "loss": loss,
                name: float(logs.get(name, math.nan)),
                "learning_rate": self.lr_schedule(done),
                "train_seconds": train_seconds,
                # Reading and scoring the validation split.
                "validation_seconds": time.time() - scored,
                "samples_per_second": self.plan.steps_per_epoch * self.plan.global_batch / train_seconds,
                "workers": self.world,
                "per_worker_batch": self.plan.per_worker_batch,
                "global_batch": self.plan.global_batch,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "resumed_from_epoch": self.resumed_from,
                # Peak resident memory of this worker process so far (Linux: KiB).
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                # GPUs Ray assigned to this worker (and to the trial driver): what was
                # scheduled, whether or not TensorFlow could use them.
                "gpus": len(ray.get_runtime_context().get_accelerator_ids().get("GPU", [])),
                "driver_gpus": self.cfg.get("driver_gpus"),
                **({"generation": self.cfg["generation"]} if "generation" in self.cfg else {}),
            }
            if self.startup:
                metrics.update(self.startup, startup_seconds=self.first_step_at - self.cfg["trial_start"],
                               startup_cpu_seconds=self.startup_cpu)
                self.startup = None
            digest = weights_digest(self.net)
            metrics["weights_sha256"] = digest
            # Every worker's digest, for the checkpoint: equal when the replicas agree.
            digests = replica_digests(self.strategy, digest)
            # Ray deletes `keep` once it is uploaded; with the async mode that is while
            # the next epoch trains, and the metrics reach Tune after the upload.
            keep = tempfile.mkdtemp(prefix="tuner-checkpoint-")
            try:
                with tempfile.TemporaryDirectory() as scratch:
                    # Every rank saves (a save on rank 0 alone deadlocks under the strategy);
                    # rank 0's save alone is the checkpoint (one upload per epoch).
                    save_started = time.time()
                    self.net.save(Path(keep if self.rank == 0 else scratch) / MODEL_FILE)
                if self.rank == 0:
                    Path(keep, STATE_FILE).write_text(json.dumps(
                        {"epoch": done, "metrics": metrics, "replica_weights_sha256": digests}, indent=2))
                metrics["checkpoint_save_seconds"] = time.time() - save_started
                # Known only once it returns: reported with the next epoch.
                metrics["previous_report_seconds"] = self.report_seconds
                upload = ray.train.CheckpointUploadMode[UPLOAD_MODES[self.cfg.get("checkpoint_upload", "sync")]]
                report_started = time.time()
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(keep) if self.rank == 0 else None,
                    checkpoint_dir_name=checkpoint_dir_name(done),
                    checkpoint_upload_mode=upload,
                    delete_local_checkpoint_after_upload=True,
                )
                if self.rank != 0:
                    shutil.rmtree(keep, ignore_errors=True)
            except BaseException:
                shutil.rmtree(keep, ignore_errors=True)  # Ray deletes it only after an upload
                raise
            self.report_seconds = time.time() - report_started
            self.gate(done)

        def gate(self, done: int) -> None:
            """A PBT member at a perturbation point: rank 0 waits for the driver's decision
            (the other ranks wait for rank 0 in the next step's all-reduce); told to pause
            (its turn is over, or it exploits another member), it trains no further while
            Tune stops it."""
            interval = self.cfg.get("pbt_interval")
            if not (interval and self.rank == 0 and self.cfg.get("slots") and done % interval == 0
                    and done < self.cfg["max_t"]):
                return
            from tuner import resume

            if not resume.gate(self.cfg["slots"], self.cfg["run"], done):
                time.sleep(PAUSE_HOLD_SECONDS)

    return EpochReporter(*args, **kwargs)
