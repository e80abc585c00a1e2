"""What ``tuner`` owns around a builder's model: optimizer, learning-rate schedule in
epochs, the task's loss and metrics, compilation, input scaling and evaluation
(TensorFlow adapter).

Uses ``tf_keras`` (Keras 2) explicitly: Keras 3's ``model.fit`` is broken under
``MultiWorkerMirroredStrategy`` (keras #20585, ray #47464), and ``TF_USE_LEGACY_KERAS``
set by Ray arrives after TensorFlow has picked Keras 3.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from tuner.schedule import Schedule
from tuner.tasks import TASK_METRIC

# Rows per forward pass when scoring a split.
EVAL_BATCH = 2048


@tf_keras.utils.register_keras_serializable(package="tuner")
class EpochSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """``tuner.schedule.Schedule`` evaluated at ``step / steps_per_epoch``."""

    def __init__(self, steps_per_epoch: int, peak: float, kind: str, decay_epochs: float,
                 decay_rate: float, staircase: bool, warmup_epochs: float):
        self.steps_per_epoch = int(steps_per_epoch)
        self.peak = float(peak)
        self.kind = kind
        self.decay_epochs = float(decay_epochs)
        self.decay_rate = float(decay_rate)
        self.staircase = bool(staircase)
        self.warmup_epochs = float(warmup_epochs)

    @classmethod
    def from_schedule(cls, schedule: Schedule, steps_per_epoch: int) -> "EpochSchedule":
        return cls(steps_per_epoch, schedule.peak, schedule.kind, schedule.decay_epochs,
                   schedule.decay_rate, schedule.staircase, schedule.warmup_epochs)

    def __call__(self, step):
        # float64 so that a staircase boundary falls on the same step as in Schedule.
        epoch = tf.cast(step, tf.float64) / self.steps_per_epoch
        lr = tf.constant(self.peak, tf.float64)
        if self.kind == "exponential":
            exponent = epoch / self.decay_epochs
            if self.staircase:
                exponent = tf.floor(exponent)
            lr = lr * tf.pow(tf.constant(self.decay_rate, tf.float64), exponent)
        if self.warmup_epochs > 0:
            lr = lr * tf.minimum(epoch / self.warmup_epochs, 1.0)
        return tf.cast(lr, tf.float32)

    def get_config(self):
        return {
            "steps_per_epoch": self.steps_per_epoch, "peak": self.peak, "kind": self.kind,
            "decay_epochs": self.decay_epochs, "decay_rate": self.decay_rate,
            "staircase": self.staircase, "warmup_epochs": self.warmup_epochs,
        }


def build_optimizer(params: dict, learning_rate) -> tf_keras.optimizers.Optimizer:
    name = params["optimizer"]
    if name == "adam":
        return tf_keras.optimizers.Adam(learning_rate)
    if name == "rmsprop":
        return tf_keras.optimizers.RMSprop(learning_rate)
    if name == "adagrad":
        return tf_keras.optimizers.Adagrad(learning_rate)
    if name == "sgd":
        return tf_keras.optimizers.SGD(learning_rate, momentum=params["momentum"])
    raise ValueError(f"unknown optimizer {name!r}")


def retune(model: tf_keras.Model, params: dict, schedule: EpochSchedule, step: int) -> None:
    """Point a compiled (or restored) model's optimizer at ``params``: the learning-rate
    ``schedule``, sgd's momentum, and the optimizer's step count ``step`` (the epochs
    trained x this batch's steps per epoch), so that the schedule, which reads the epoch
    off the step count, is at the right epoch after a change of batch size. The optimizer's
    kind and its state (moments, momenta) stay as they are; the next ``fit`` traces its
    training step anew."""
    optimizer = model.optimizer
    optimizer.learning_rate = schedule
    momentum = params.get("momentum")
    if params.get("optimizer") == "sgd" and momentum is not None and hasattr(optimizer, "momentum"):
        if float(momentum) != float(optimizer.momentum):
            optimizer.jit_compile = False  # an XLA-compiled update step keeps its momentum
        optimizer.momentum = float(momentum)  # tf_keras' sgd keeps momentum slots even at 0
    optimizer.iterations.assign(step)
    model.train_function = None


def loss_for(task: str, name: str | None = None) -> tf_keras.losses.Loss | str:
    """What ``compile`` gets: the spec's ``model.loss`` (a Keras loss name, which Keras
    resolves and saves with the model), else the task's: sparse categorical cross-entropy
    from logits, or mean squared error."""
    if name:
        return name
    if task == "classification":
        return tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return tf_keras.losses.MeanSquaredError()


def row_losses(task: str, name: str | None = None):
    """The same loss as ``loss_for``, unreduced: a function of (labels, outputs) giving
    each row's loss (a Keras loss function, or a Keras ``Loss`` of reduction "none",
    which a multi-worker strategy allows outside ``fit``)."""
    loss = tf_keras.losses.get(name) if name else loss_for(task)
    if isinstance(loss, tf_keras.losses.Loss):
        loss.reduction = "none"
    return loss


def metric_for(task: str) -> tf_keras.metrics.Metric:
    return tf_keras.metrics.SparseCategoricalAccuracy("accuracy") if task == "classification" \
        else tf_keras.metrics.MeanAbsoluteError("mae")


def compile_model(model: tf_keras.Model, optimizer: tf_keras.optimizers.Optimizer, task: str = "classification",
                  loss: str | None = None, steps_per_execution: int = 1) -> None:
    model.compile(
        optimizer=optimizer,
        loss=loss_for(task, loss),
        metrics=[metric_for(task)],
        steps_per_execution=steps_per_execution,
    )


def to_model_input(x):
    """Stored features -> what the model gets: uint8 pixels as float32 in [0, 1], any other
    dtype as float32."""
    if x.dtype == tf.uint8:
        return tf.cast(x, tf.float32) / 255.0
    return tf.cast(x, tf.float32)


def streaming_dataset(generate, shape: tuple, dtype: str, label_dtype: str, batch: int, shuffle_rows: int,
                      seed: int, read_ahead: int = 2) -> tf.data.Dataset:
    """Batches of (model input, labels) from ``generate``, a function yielding (features,
    labels) arrays of one pass over a worker's share per call: ``read_ahead`` arrays read
    ahead in the background, their rows mixed in a shuffle buffer of ``shuffle_rows``
    that each pass empties (so each pass gives every row once), passes repeated without
    end, full batches of ``batch`` (the last of a pass filled from the next)."""
    ds = tf.data.Dataset.from_generator(generate, output_signature=(
        tf.TensorSpec((None, *shape), tf.as_dtype(dtype)), tf.TensorSpec((None,), tf.as_dtype(label_dtype))))
    ds = ds.prefetch(read_ahead).unbatch()
    ds = ds.shuffle(shuffle_rows, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch, drop_remainder=True)
    ds = ds.map(lambda x, y: (to_model_input(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def evaluate(model: tf_keras.Model, chunks, task: str = "classification", loss: str | None = None,
             batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """{"loss": ..., "accuracy" or "mae": ...} of ``model`` on ``chunks``, (features,
    labels) arrays (a split read piece by piece, or one in-memory pair in a list),
    computed on this process only (outside a multi-worker strategy; under one, see
    ``score_sums``). Accuracy is an exact fraction of the rows."""
    return scores(score_sums(model, chunks, task, loss, batch_size), task)


def score_sums(model: tf_keras.Model, chunks, task: str = "classification", loss: str | None = None,
               batch_size: int = EVAL_BATCH, batches: int | None = None, shape=None, dtype=None):
    """[summed loss, correct rows (or summed absolute error), rows] of ``model`` on
    ``chunks``, scored in batches of ``batch_size`` rows cut across the chunks.

    Called directly rather than through ``model.evaluate``, which would split the rows
    its own way between the workers of a multi-worker strategy. Under such a strategy
    each worker scores its share and the sums are added up (``scores`` of the total);
    every worker must then run the same number of forward passes, ``batches``, because
    reading a sync-on-read variable (BatchNormalization's moving statistics) all-reduces
    it: passes past this worker's rows run on one row of zeros (``shape``, ``dtype``: a
    row's) and count for nothing.
    """
    import numpy as np

    sums = np.zeros(3)
    loss_fn = row_losses(task, loss)
    passes = 0
    for x, labels in _batches(chunks, batch_size):
        out = model(to_model_input(x), training=False)
        passes += 1
        sums[0] += batch_loss(loss_fn, labels, out) * len(labels)
        predicted = out.numpy()
        if task == "classification":
            sums[1] += int(np.sum(np.argmax(predicted, axis=-1) == labels))
        else:
            errors = np.abs(predicted.reshape(len(labels), -1) - np.reshape(labels, (-1, 1)))
            sums[1] += float(np.sum(np.mean(errors, axis=-1)))
        sums[2] += len(labels)
    if batches is not None:
        if passes > batches:
            raise ValueError(f"{passes} batches to score, more than the {batches} every worker runs")
        for _ in range(batches - passes):
            model(to_model_input(np.zeros((1, *shape), dtype)), training=False)
    return sums


def batch_loss(loss_fn, labels, out) -> float:
    """The mean loss of one batch as Keras' ``evaluate`` has it: the labels brought to the
    output's rank (a (batch,) label column against a (batch, 1) output, as Keras' compiled
    loss does), the loss per row (``loss_fn`` of reduction "none": a Keras loss averages
    over the last axis, which for a (batch,) output is the batch itself) averaged over
    whatever it returns: a batch mean for a (batch,) output, weighted by the batch's rows
    like any other."""
    labels, out = tf.convert_to_tensor(labels), tf.convert_to_tensor(out)
    if labels.shape.rank == 1 and out.shape.rank == 2:
        labels = tf.expand_dims(labels, -1)
    if labels.dtype.is_floating and out.dtype.is_floating or labels.dtype.is_integer and out.dtype.is_integer:
        labels = tf.cast(labels, out.dtype)
    return float(tf.reduce_mean(loss_fn(labels, out)))


def scores(sums, task: str) -> dict[str, float]:
    """``score_sums``' sums (added up over workers) as {"loss": ..., metric: ...}."""
    total_loss, score, rows = (float(v) for v in sums)
    return {"loss": total_loss / rows, TASK_METRIC[task]: score / rows}


def _batches(chunks, size: int):
    """(features, labels) batches of ``size`` rows (the last may be short) from chunks of
    any lengths."""
    import numpy as np

    held: list = []
    count = 0
    for x, y in chunks:
        start = 0
        while start < len(y):
            take = min(size - count, len(y) - start)
            held.append((x[start:start + take], y[start:start + take]))
            count += take
            start += take
            if count == size:
                yield _joined(held, np)
                held, count = [], 0
    if count:
        yield _joined(held, np)


def _joined(parts, np):
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
