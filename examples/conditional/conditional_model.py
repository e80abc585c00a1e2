"""An MLP whose depth is searched, with a width per layer that exists only where that
layer does, and a leaky ReLU's slope that exists only where that activation is chosen
(README: "Conditional hyperparameters"). ``hp`` holds only the ones that count in the
trial: ``hp["units_3"]`` at depth 2 would raise an error naming it."""

import tf_keras


def build(hp, inputs):
    model = tf_keras.Sequential([tf_keras.Input(shape=inputs.shape), tf_keras.layers.Flatten()])
    for i in range(1, hp["depth"] + 1):
        model.add(tf_keras.layers.Dense(hp[f"units_{i}"]))
        if hp["activation"] == "leaky_relu":
            model.add(tf_keras.layers.LeakyReLU(alpha=hp["negative_slope"]))
        else:
            model.add(tf_keras.layers.Activation(hp["activation"]))
    model.add(tf_keras.layers.Dense(inputs.num_classes))
    return model
