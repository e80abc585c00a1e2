"""The Keras model, optimizer and epoch-based schedule (TensorFlow adapter).

Uses ``tf_keras`` (Keras 2) explicitly: Keras 3's ``model.fit`` is broken under
``MultiWorkerMirroredStrategy`` (keras #20585, ray #47464), and ``TF_USE_LEGACY_KERAS``
set by Ray arrives after TensorFlow has picked Keras 3.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from tuner.schedule import Schedule

NUM_CLASSES = 10


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


def build_model(params: dict) -> tf_keras.Model:
    """Flatten -> depth x (Dense(width, relu) -> Dropout) -> Dense(10) logits."""
    layers = [tf_keras.Input(shape=(28, 28), dtype=tf.float32), tf_keras.layers.Flatten()]
    for _ in range(params["depth"]):
        layers.append(tf_keras.layers.Dense(params["width"], activation="relu"))
        layers.append(tf_keras.layers.Dropout(params["dropout"]))
    layers.append(tf_keras.layers.Dense(NUM_CLASSES))
    return tf_keras.Sequential(layers)


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


def compile_model(model: tf_keras.Model, optimizer: tf_keras.optimizers.Optimizer, steps_per_execution: int = 1) -> None:
    model.compile(
        optimizer=optimizer,
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def normalize(images):
    """uint8 pixels -> float32 in [0, 1]."""
    return tf.cast(images, tf.float32) / 255.0


def evaluate(model: tf_keras.Model, images, labels, batch_size: int = 2048) -> tuple[float, float]:
    """(loss, accuracy) of ``model`` on in-memory data, computed on this process only.

    Called directly rather than through ``model.evaluate`` so that, under a multi-worker
    strategy, each worker scores the whole split without a collective.
    """
    import numpy as np

    total_loss, correct = 0.0, 0
    loss_fn = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start:start + batch_size])
        y = labels[start:start + batch_size]
        logits = model(x, training=False)
        total_loss += float(loss_fn(y, logits))
        correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == y))
    return total_loss / len(labels), correct / len(labels)
