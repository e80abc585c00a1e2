"""An MLP for 30 numeric measurements: the model builder of examples/breast_cancer."""

import numpy as np
import tf_keras


def build(hp, inputs):
    """Normalize -> layers x Dense(units, relu) -> Dropout -> logits (malignant, benign).

    The measurements span five orders of magnitude, so the model standardises them with
    the training split's statistics, which tuner measured when it staged the data.

    Args:
        hp: this trial's model hyperparameters: units, layers, dropout.
        inputs: a tuner.InputSpec: shape (30,), num_classes 2, mean and std per column.
    """
    variance = np.square(np.asarray(inputs.std)) + 1e-12
    layers = [tf_keras.Input(shape=inputs.shape), tf_keras.layers.Normalization(mean=inputs.mean, variance=variance)]
    for _ in range(hp["layers"]):
        layers += [tf_keras.layers.Dense(hp["units"], activation="relu"), tf_keras.layers.Dropout(hp["dropout"])]
    layers.append(tf_keras.layers.Dense(inputs.num_classes))
    return tf_keras.Sequential(layers)


build.defaults = {"layers": 1}  # used where the spec leaves it out
