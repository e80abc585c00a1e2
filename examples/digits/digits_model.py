"""A small ConvNet for 8x8 digit images: the model builder of examples/digits.

`tuner` calls build(hp, inputs) once per trial, on every worker, inside the distribution
strategy's scope; it compiles, trains, checkpoints and reports the model itself.
"""

import tf_keras


def build(hp, inputs):
    """Conv(filters) -> Conv(2 x filters) -> MaxPool -> Dense(dense) -> Dropout -> logits.

    Args:
        hp: this trial's model hyperparameters: filters, dense, dropout.
        inputs: a tuner.InputSpec: shape (8, 8), num_classes 10.
    """
    L = tf_keras.layers
    x = images = tf_keras.Input(shape=inputs.shape)
    x = L.Reshape((*inputs.shape, 1))(x)
    x = L.Conv2D(hp["filters"], 3, padding="same", activation="relu")(x)
    x = L.Conv2D(2 * hp["filters"], 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D()(x)
    x = L.Flatten()(x)
    x = L.Dense(hp["dense"], activation="relu")(x)
    x = L.Dropout(hp["dropout"])(x)
    return tf_keras.Model(images, L.Dense(inputs.num_classes)(x))  # logits: tuner's loss is from_logits
