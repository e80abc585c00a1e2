"""Peers on `tuner`'s economy space and epoch budget, each single-process per trial:
Keras Tuner's Hyperband, Optuna with a successive-halving pruner, and plain Ray Tune
(ASHA, the model trained in the trial's own process).

    python bench/peers.py kerastuner|optuna|raytune DATASET_URI SAMPLES MAX_T   # prints one JSON line

Run by ``bench/run.py peers`` (one fresh process per peer). Needs the `bench` extra
(keras-tuner, optuna). The peers train with Keras 3, the Keras they are written for
(single process: its fit works there); `tuner` trains with tf_keras under
MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

# The economy space of bench/run.py (the `mnist` preset's, narrower layers, batch 128).
SPACE = {
    "learning_rate": (1e-4, 3e-3),  # log-uniform
    "schedule": ["constant", "exponential"],
    "decay_epochs": [2.0, 3.0, 4.0],
    "decay_rate": 0.5,
    "optimizer": ["adam", "rmsprop"],
    "batch_size": 128,
    "dropout": (0.1, 0.5),  # uniform
    "width": [128, 256, 512],
    "depth": [1, 2],
}
REDUCTION = 3
SEED = 0


def draw(ranged, choice) -> dict:
    """SPACE's searched hyperparameters through one peer's API: ``ranged(name, low, high,
    log)`` for the ranges, ``choice(name, values)`` for the choices."""
    return {
        "learning_rate": ranged("learning_rate", *SPACE["learning_rate"], True),
        "schedule": choice("schedule", SPACE["schedule"]),
        "decay_epochs": choice("decay_epochs", SPACE["decay_epochs"]),
        "optimizer": choice("optimizer", SPACE["optimizer"]),
        "dropout": ranged("dropout", *SPACE["dropout"], False),
        "width": choice("width", SPACE["width"]),
        "depth": choice("depth", SPACE["depth"]),
    }


def load(dataset_uri: str):
    from tuner import data

    out = {}
    for split in ("train", "validation", "test"):
        x, y = data.load_split(dataset_uri, split)
        out[split] = (x.astype("float32") / 255.0, y)
    return out


def build(p: dict, train_rows: int):
    import keras

    layers = [keras.Input((28, 28)), keras.layers.Flatten()]
    for _ in range(p["depth"]):
        layers += [keras.layers.Dense(p["width"], activation="relu"), keras.layers.Dropout(p["dropout"])]
    net = keras.Sequential([*layers, keras.layers.Dense(10)])
    lr = p["learning_rate"]
    if p["schedule"] == "exponential":
        # Decay counted in epochs, smooth, as `tuner` does it.
        steps = math.ceil(train_rows / SPACE["batch_size"])
        lr = keras.optimizers.schedules.ExponentialDecay(lr, p["decay_epochs"] * steps, SPACE["decay_rate"])
    opt = keras.optimizers.Adam(lr) if p["optimizer"] == "adam" else keras.optimizers.RMSprop(lr)
    net.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return net


def test_accuracy(net, d) -> float:
    return float(net.evaluate(*d["test"], batch_size=2048, verbose=0)[1])


def kerastuner(dataset_uri: str, samples: int, max_t: int) -> dict:
    """Hyperband (Li et al., JMLR 2018) as Keras Tuner runs it: one iteration of brackets
    for ``max_epochs = max_t``; the number of trials is Hyperband's, not ``samples``."""
    import tempfile

    import keras_tuner as kt

    d = load(dataset_uri)
    rows = len(d["train"][1])

    def hypermodel(hp):
        return build(draw(lambda name, low, high, log: hp.Float(name, low, high, sampling="log" if log else "linear"),
                          hp.Choice), rows)

    class Hyperband(kt.Hyperband):
        def _configure_tensorboard_dir(self, callbacks, trial, execution=0):
            pass  # no TensorBoard callback here; KT would import the tensorboard package for it

    with tempfile.TemporaryDirectory() as tmp:
        tuner = Hyperband(hypermodel, objective="val_accuracy", max_epochs=max_t, factor=REDUCTION,
                             hyperband_iterations=1, seed=SEED, directory=tmp, project_name="peers", overwrite=True)
        tuner.search(*d["train"], validation_data=d["validation"], batch_size=SPACE["batch_size"], verbose=0)
        trials = list(tuner.oracle.trials.values())
        # A trial promoted to a later round trains from the earlier round's weights:
        # it costs only the epochs past its initial one.
        epochs = sum(t.hyperparameters.values["tuner/epochs"] - t.hyperparameters.values["tuner/initial_epoch"]
                     for t in trials)
        best = tuner.get_best_models(1)[0]
        return {"trials": len(trials), "epochs_spent": int(epochs), "best_test_accuracy": test_accuracy(best, d),
                "best_val_accuracy": float(tuner.oracle.get_best_trials(1)[0].score)}


def optuna_sh(dataset_uri: str, samples: int, max_t: int) -> dict:
    """Optuna's default sampler (TPE) with its SuccessiveHalvingPruner (rungs at 1, 3, 9 ...
    epochs, as ASHA's), ``samples`` trials."""
    import optuna

    d = load(dataset_uri)
    rows = len(d["train"][1])
    spent = [0]
    models = {}

    def objective(trial):
        p = draw(lambda name, low, high, log: trial.suggest_float(name, low, high, log=log),
                 trial.suggest_categorical)
        net, best = build(p, rows), -1.0
        for epoch in range(1, max_t + 1):
            net.fit(*d["train"], batch_size=SPACE["batch_size"], epochs=1, verbose=0)
            spent[0] += 1
            acc = float(net.evaluate(*d["validation"], batch_size=2048, verbose=0)[1])
            if acc > best:
                best = acc
                models[trial.number] = [w.copy() for w in net.get_weights()], p
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEED),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION))
    study.optimize(objective, n_trials=samples)
    # Pruned trials count too: best validation accuracy at any epoch, as tuner picks.
    number = max(models, key=lambda n: max(s for s in study.trials[n].intermediate_values.values()))
    weights, p = models[number]
    net = build(p, rows)
    net.set_weights(weights)
    return {"trials": len(study.trials), "epochs_spent": spent[0], "best_test_accuracy": test_accuracy(net, d),
            "best_val_accuracy": max(study.trials[number].intermediate_values.values())}


def raytune(dataset_uri: str, samples: int, max_t: int) -> dict:
    """Plain Ray Tune: ASHA over the same space, each trial trains in its own actor (one
    worker, both cores), the usual hand-rolled script."""
    import tempfile

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    def trainable(config):
        d = load(dataset_uri)
        net = build(config, len(d["train"][1]))
        for epoch in range(1, max_t + 1):
            net.fit(*d["train"], batch_size=SPACE["batch_size"], epochs=1, verbose=0)
            acc = float(net.evaluate(*d["validation"], batch_size=2048, verbose=0)[1])
            with tempfile.TemporaryDirectory() as tmp:
                net.save(os.path.join(tmp, "model.keras"))
                tune.report({"epoch": epoch, "val_accuracy": acc}, checkpoint=tune.Checkpoint.from_directory(tmp))

    space = draw(lambda name, low, high, log: (tune.loguniform if log else tune.uniform)(low, high),
                 lambda name, values: tune.choice(values))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            grid = tune.Tuner(
                tune.with_resources(trainable, {"CPU": 2}),
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric="val_accuracy", mode="max", num_samples=samples,
                    scheduler=ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=1, reduction_factor=REDUCTION),
                    search_alg=BasicVariantGenerator(random_state=SEED)),
                run_config=tune.RunConfig(storage_path=tmp, name="peers", verbose=0),
            ).fit()
            epochs = sum(int(r.metrics["epoch"]) for r in grid)
            best = grid.get_best_result(scope="all")
            import keras

            with best.get_best_checkpoint("val_accuracy", "max").as_directory() as ckpt:
                net = keras.models.load_model(os.path.join(ckpt, "model.keras"))
            d = load(dataset_uri)
            return {"trials": len(grid), "epochs_spent": epochs, "best_test_accuracy": test_accuracy(net, d),
                    "best_val_accuracy": float(best.metrics_dataframe["val_accuracy"].max())}
    finally:
        ray.shutdown()


PEERS = {"kerastuner": kerastuner, "optuna": optuna_sh, "raytune": raytune}


def main() -> None:
    which, dataset_uri, samples, max_t = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    started = time.time()
    out = PEERS[which](dataset_uri, samples, max_t)
    out.update(wall_seconds=round(time.time() - started, 1), multi_worker_trials=False)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
