"""Scoring a split (``tuner.training``): the loss and metric ``tuner`` reports equal a plain
``tf_keras`` ``evaluate`` of the same model on the same rows, for either task, regression
outputs of shape (batch,) and (batch, 1), the Keras losses a spec may name, and a split
scored in shares of unequal size by several workers."""

import numpy as np
import pytest

tf_keras = pytest.importorskip("tf_keras")

from tuner import training  # noqa: E402

ROWS = 53  # a prime: no batch size below divides it


def _regression_model(flat: bool):
    layers = [tf_keras.Input(shape=(3,)), tf_keras.layers.Dense(4, activation="tanh"), tf_keras.layers.Dense(1)]
    if flat:
        layers.append(tf_keras.layers.Reshape(()))
    return tf_keras.Sequential(layers)


def _classification_model(classes: int):
    return tf_keras.Sequential([tf_keras.Input(shape=(3,)), tf_keras.layers.Dense(classes)])


def _data(task: str, classes: int = 3):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (ROWS, 3)).astype("float32")
    if task == "classification":
        return x, rng.integers(0, classes, ROWS).astype("int64")
    return x, (3.0 + 2.0 * x[:, 0] - x[:, 1] ** 2 + rng.normal(0, 0.1, ROWS)).astype("float32")


def _keras_scores(net, task: str, loss: str | None, x, y) -> dict[str, float]:
    """Plain tf_keras: compile as tuner does, then ``evaluate`` the rows in one batch."""
    training.compile_model(net, tf_keras.optimizers.Adam(1e-3), task, loss)
    value, metric = net.evaluate(x, y, batch_size=len(y), verbose=0)
    return {"loss": value, training.TASK_METRIC[task]: metric}


CASES = [("regression", flat, loss) for flat in (True, False)
         for loss in (None, "mse", "mae", "huber", "log_cosh", "mean_squared_logarithmic_error")] + [
    ("classification", classes, loss) for classes in (2, 5) for loss in (None, "sparse_categorical_crossentropy")]


@pytest.mark.parametrize("task,shape,loss", CASES)
def test_scores_equal_keras_evaluate(task, shape, loss):
    tf_keras.utils.set_random_seed(1)
    net = _regression_model(shape) if task == "regression" else _classification_model(shape)
    x, y = _data(task, shape if task == "classification" else 3)
    if task == "regression" and loss == "mean_squared_logarithmic_error":
        y = np.abs(y)
    want = _keras_scores(net, task, loss, x, y)
    # Batches of 7 rows cut across chunks of 20: the last batch is short.
    chunks = [(x[i:i + 20], y[i:i + 20]) for i in range(0, ROWS, 20)]
    got = training.evaluate(net, chunks, task, loss, batch_size=7)
    assert got == pytest.approx(want, rel=1e-5)
    # Two workers with shares of 20 and 33 rows: their sums added, as the validation split is.
    first = training.score_sums(net, [(x[:20], y[:20])], task, loss, batch_size=7)
    second = training.score_sums(net, [(x[20:], y[20:])], task, loss, batch_size=7)
    assert training.scores(first + second, task) == pytest.approx(want, rel=1e-5)


def test_mse_of_a_flat_output_is_not_divided_by_the_rows_again():
    # The error issue 37 found: a (batch,) output's mean squared error came out divided by
    # the batch's rows. MSE >= MAE^2 always holds for the true values.
    tf_keras.utils.set_random_seed(1)
    net = _regression_model(flat=True)
    x, y = _data("regression")
    got = training.evaluate(net, [(x, y)], "regression")
    assert got["loss"] >= got["mae"] ** 2
    assert got["loss"] == pytest.approx(float(np.mean((net(x).numpy() - y) ** 2)), rel=1e-5)
