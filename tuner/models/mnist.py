"""The built-in builders: an MLP (the default) and a small ConvNet. Both work on any
fixed-shape input of the task the data has; their names say what they were tuned for.

TensorFlow is imported when a model is built, not with this module.
"""

from __future__ import annotations


def _check(name: str, value, ok: bool, must: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` is {value!r}, but must be {must}")


def _head(inputs):
    """The output layer's width: one logit per class, or one value."""
    return inputs.num_classes if inputs.task == "classification" else 1


def mnist_mlp(hp, inputs):
    """Flatten -> depth x (Dense(width, relu) -> Dropout(dropout)) -> Dense(classes).

    Hyperparameters: ``width`` (units per hidden layer, 1..4096), ``depth`` (hidden
    layers, 1..3), ``dropout`` (after each hidden layer, in [0, 1)).
    """
    import tensorflow as tf
    import tf_keras

    width, depth, dropout = hp["width"], hp["depth"], hp["dropout"]
    _check("width", width, isinstance(width, int) and 1 <= width <= 4096, "a whole number in 1..4096")
    _check("depth", depth, isinstance(depth, int) and 1 <= depth <= 3, "a whole number in 1..3")
    _check("dropout", dropout, 0 <= dropout < 1, ">= 0 and < 1")
    layers = [tf_keras.Input(shape=tuple(inputs.shape), dtype=tf.float32), tf_keras.layers.Flatten()]
    for _ in range(depth):
        layers.append(tf_keras.layers.Dense(width, activation="relu"))
        layers.append(tf_keras.layers.Dropout(dropout))
    layers.append(tf_keras.layers.Dense(_head(inputs)))
    return tf_keras.Sequential(layers)


mnist_mlp.defaults = {"width": 128, "depth": 1, "dropout": 0.2}  # type: ignore[attr-defined]  # as a user's builder declares them


def mnist_cnn(hp, inputs):
    """Two convolution blocks and a dense layer, for (H, W) or (H, W, C) images:

    Conv(filters) -> Conv(filters) -> MaxPool -> Conv(2 x filters) -> Conv(2 x filters)
    -> MaxPool -> Flatten -> Dense(dense, relu) -> Dropout(dropout) -> Dense(classes);
    every convolution is ``kernel_size`` square, "same"-padded, batch-normalised, ReLU.

    Hyperparameters: ``filters`` (1..256), ``kernel_size`` (odd, 1..7), ``dense``
    (1..4096 units), ``dropout`` (in [0, 1)).
    """
    import tensorflow as tf
    import tf_keras

    filters, kernel, dense, dropout = hp["filters"], hp["kernel_size"], hp["dense"], hp["dropout"]
    _check("filters", filters, isinstance(filters, int) and 1 <= filters <= 256, "a whole number in 1..256")
    _check("kernel_size", kernel, isinstance(kernel, int) and kernel in (1, 3, 5, 7), "1, 3, 5 or 7")
    _check("dense", dense, isinstance(dense, int) and 1 <= dense <= 4096, "a whole number in 1..4096")
    _check("dropout", dropout, 0 <= dropout < 1, ">= 0 and < 1")
    shape = tuple(inputs.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"mnist_cnn needs images of shape (H, W) or (H, W, C), not {shape}")
    L = tf_keras.layers
    x = inputs_layer = tf_keras.Input(shape=shape, dtype=tf.float32)
    if len(shape) == 2:
        x = L.Reshape((*shape, 1))(x)
    for width in (filters, 2 * filters):
        for _ in range(2):
            x = L.Conv2D(width, kernel, padding="same", use_bias=False)(x)
            x = L.BatchNormalization(momentum=0.9)(x)  # moving statistics usable within one epoch
            x = L.ReLU()(x)
        x = L.MaxPooling2D()(x) if min(x.shape[1], x.shape[2]) >= 2 else x
    x = L.Flatten()(x)
    x = L.Dense(dense, activation="relu")(x)
    x = L.Dropout(dropout)(x)
    return tf_keras.Model(inputs_layer, L.Dense(_head(inputs))(x))


mnist_cnn.defaults = {"filters": 32, "kernel_size": 3, "dense": 128, "dropout": 0.3}  # type: ignore[attr-defined]
