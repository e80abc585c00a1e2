"""The end of each epoch on a trial's worker: ``EpochReporter``, a Keras callback that
scores the validation split, saves a checkpoint, reports to Ray Train and, for a PBT
member at a perturbation point, waits for the driver's decision. Imports TensorFlow (the
worker imports this module once it trains).
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import tf_keras

from tuner import checkpoints, training
from tuner.trial import TrialConfig

# `checkpoint.upload` -> ray.train.CheckpointUploadMode's name.
UPLOAD_MODES = {"async": "ASYNC", "sync": "SYNC"}
# A PBT member told to pause at a perturbation point waits this long for Tune to stop it,
# then goes on (the driver's decision may have been lost).
PAUSE_HOLD_SECONDS = 300


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the trial fails alone."""


class EpochReporter(tf_keras.callbacks.Callback):
    """Per epoch: check the loss, score the validation split (each worker its share),
    gather the metrics, save and report (every rank saves, rank 0's save is the
    checkpoint), and wait at a PBT perturbation point."""

    def __init__(self, cfg: TrialConfig, worker, net, validation, resumed_from: int, startup: dict,
                 spent: float = 0.0):
        super().__init__()
        self.cfg, self.worker, self.net, self.validation = cfg, worker, net, validation
        self.resumed_from = resumed_from
        self.spent = spent  # worker-seconds of the trial's earlier worker groups, by resumed_from
        self.param_count = int(sum(math.prod(w.shape) for w in net.trainable_weights))  # not .params: Keras sets that
        self.plan: Any = None  # the fitting stretch's BatchPlan and Schedule, set before each fit
        self.lr_schedule: Any = None
        # Reported with this worker-group start's first epoch only: it marks each start in
        # the results (results.worker_group_starts counts the restarts).
        self.startup: dict | None = startup
        self.first_step_at: float | None = None
        self.startup_cpu = math.nan
        self.report_seconds: float | None = None  # the previous epoch's report: its upload, mostly
        self.epoch_start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step_at is None:
            self.first_step_at = time.time()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.startup_cpu = usage.ru_utime + usage.ru_stime

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        train_seconds = time.time() - self.epoch_start
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            raise DivergedError(f"training loss became {loss} in epoch {epoch + 1}")
        done = epoch + 1
        scored = time.time()
        metrics = {**self.scores(), "epoch": done, "loss": loss,
                   self.metric: float(logs.get(self.metric, math.nan)), "train_seconds": train_seconds,
                   "validation_seconds": time.time() - scored, **self.trial_figures(done, train_seconds)}
        self.save_and_report(done, metrics)
        self.gate(done)

    @property
    def metric(self) -> str:
        return training.TASK_METRIC[self.worker.task]

    def scores(self) -> dict:
        """``val_loss`` and ``val_<metric>`` over the whole validation split: each worker
        scores its share, and the sums are added up (the same bits on every worker)."""
        v = self.validation
        sums = training.score_sums(self.net, map(v.reader.read, v.pieces), self.worker.task, self.cfg.loss,
                                   batches=v.batches, shape=v.reader.shape, dtype=v.reader.dtype)
        scores = training.scores(all_summed(self.worker.strategy, sums), self.worker.task)
        return {f"val_{self.metric}": scores[self.metric], "val_loss": scores["loss"]}

    def trial_figures(self, done: int, train_seconds: float) -> dict:
        """The learning rate, batch, throughput, memory and GPUs of this epoch; the
        start-up figures with a worker-group start's first epoch."""
        import ray

        plan = self.plan
        figures = {
            "learning_rate": self.lr_schedule(done),
            "samples_per_second": plan.steps_per_epoch * plan.global_batch / train_seconds,
            "workers": self.worker.world, "per_worker_batch": plan.per_worker_batch,
            "global_batch": plan.global_batch, "steps_per_epoch": plan.steps_per_epoch,
            "resumed_from_epoch": self.resumed_from,
            # Cost metrics, which a multi-objective search can trade against accuracy: the
            # model's trainable parameters, this training epoch's wall time, and the
            # worker-seconds the trial has held so far (its start-up included).
            "params": self.param_count, "epoch_seconds": train_seconds,
            "worker_seconds": self.spent + self.worker.world * (time.time() - self.cfg.trial_start),
            # Peak resident memory of this worker process so far (Linux: KiB).
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # GPUs Ray assigned to this worker (and to the trial driver): what was
            # scheduled, whether or not TensorFlow could use them.
            "gpus": len(ray.get_runtime_context().get_accelerator_ids().get("GPU", [])),
            "driver_gpus": self.cfg.driver_gpus,
            **({"generation": self.cfg.generation} if self.cfg.generation is not None else {}),
        }
        if self.startup:
            assert self.first_step_at is not None  # set at the first step, before any epoch ends
            figures.update(self.startup, startup_seconds=self.first_step_at - self.cfg.trial_start,
                           startup_cpu_seconds=self.startup_cpu)
            self.startup = None
        return figures

    def save_and_report(self, done: int, metrics: dict) -> None:
        """Save the model on every rank (a save on rank 0 alone deadlocks under the
        strategy) and report ``metrics`` with rank 0's save as the epoch's checkpoint."""
        import ray.train

        rank = self.worker.rank
        digest = checkpoints.weights_digest(self.net)
        metrics["weights_sha256"] = digest
        # Every worker's digest, for the checkpoint: equal when the replicas agree.
        digests = replica_digests(self.worker.strategy, digest)
        # Ray deletes `keep` once it is uploaded; with the async mode that is while the
        # next epoch trains, and the metrics reach Tune after the upload.
        keep = tempfile.mkdtemp(prefix="tuner-checkpoint-")
        try:
            with tempfile.TemporaryDirectory() as scratch:
                save_started = time.time()
                # The Keras v3 zip whatever thread first imported tf_keras' saving
                # module: left to the file name, a save on another thread writes HDF5.
                self.net.save(Path(keep if rank == 0 else scratch) / checkpoints.MODEL_FILE, save_format="keras_v3")
            if rank == 0:
                Path(keep, checkpoints.STATE_FILE).write_text(json.dumps(
                    {"epoch": done, "metrics": metrics, "replica_weights_sha256": digests}, indent=2))
            metrics["checkpoint_save_seconds"] = time.time() - save_started
            # Known only once it returns: reported with the next epoch.
            metrics["previous_report_seconds"] = self.report_seconds
            report_started = time.time()
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(keep) if rank == 0 else None,
                checkpoint_dir_name=checkpoints.checkpoint_dir_name(done),
                checkpoint_upload_mode=ray.train.CheckpointUploadMode[UPLOAD_MODES[self.cfg.checkpoint_upload]],
                delete_local_checkpoint_after_upload=True,
            )
            if rank != 0:
                shutil.rmtree(keep, ignore_errors=True)
        except BaseException:
            shutil.rmtree(keep, ignore_errors=True)  # Ray deletes it only after an upload
            raise
        self.report_seconds = time.time() - report_started

    def gate(self, done: int) -> None:
        """A PBT member at a perturbation point: rank 0 waits for the driver's decision
        (the other ranks wait for rank 0 in the next step's all-reduce); told to pause
        (its turn is over, or it exploits another member), it trains no further while
        Tune stops it."""
        interval = self.cfg.pbt_interval
        if not (interval and self.worker.rank == 0 and self.cfg.slots and done % interval == 0
                and done < self.cfg.max_t):
            return
        from tuner import resume

        if not resume.gate(self.cfg.slots, self.cfg.run, done):
            time.sleep(PAUSE_HOLD_SECONDS)


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
