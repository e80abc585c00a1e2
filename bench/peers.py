"""Peers on `tuner`'s economy space and epoch budget. Single-process per trial: Keras
Tuner's Hyperband, Optuna with a successive-halving pruner, and plain Ray Tune (ASHA, the
model trained in the trial's own process). Multi-worker per trial, as `tuner`'s: Ray Tune +
Ray Train written by hand (``raytune_train``: ASHA over 2-worker TensorflowTrainer trials).

    python bench/peers.py kerastuner|optuna|raytune|raytune_train DATASET_URI SAMPLES MAX_T [CONFIGS_JSON]
    # prints one JSON line

Run by ``bench/run.py peers`` (one fresh process per peer). Needs the `bench` extra
(keras-tuner, optuna). The single-process peers train with Keras 3, the Keras they are
written for (single process: its fit works there); `tuner` and ``raytune_train`` train
with tf_keras under MultiWorkerMirroredStrategy.
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


def build(p: dict, train_rows: int, keras=None, global_batch: int = SPACE["batch_size"]):
    """The economy MLP in ``keras`` (default: Keras 3); its decay counted in epochs of
    ``global_batch``."""
    if keras is None:
        import keras

    layers = [keras.Input((28, 28)), keras.layers.Flatten()]
    for _ in range(p["depth"]):
        layers += [keras.layers.Dense(p["width"], activation="relu"), keras.layers.Dropout(p["dropout"])]
    net = keras.Sequential([*layers, keras.layers.Dense(10)])
    lr = p["learning_rate"]
    if p["schedule"] == "exponential":
        # Decay counted in epochs, smooth, as `tuner` does it.
        steps = math.ceil(train_rows / global_batch)
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


def raytune_train(dataset_uri: str, samples: int, max_t: int, configs: list[dict] | None = None) -> dict:
    """`tuner`'s own trials written by hand in the Ray docs' pattern: a Tune function per
    trial that builds a Ray Train ``TensorflowTrainer`` (2 workers of 1 CPU under
    MultiWorkerMirroredStrategy, ``model.fit`` with Ray's ``ReportCheckpointCallback``,
    ``TuneReportCallback`` so ASHA sees the workers' reports), one trial at a time on the
    same 3 logical CPUs `tuner` sizes its local Ray with, checkpoints in local storage as
    `tuner`'s run in this benchmark. tf_keras through ``TF_USE_LEGACY_KERAS`` in the
    workers' environment: Keras 3's fit fails under the strategy (keras #20585).
    ``configs``: the configurations to try, in order (`tuner`'s, for the same draws)."""
    import ray
    from ray import train, tune
    from ray.train.tensorflow import TensorflowTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    workers, storage = 2, os.path.abspath("raytune_train")  # in bench/run.py's working folder

    def train_loop_per_worker(config):
        import tensorflow as tf
        from ray.train.tensorflow.keras import ReportCheckpointCallback

        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        d = load(dataset_uri)
        global_batch = SPACE["batch_size"] * workers

        def batches(split, shuffle):
            ds = tf.data.Dataset.from_tensor_slices(d[split])
            ds = ds.shuffle(len(d[split][1]), seed=SEED, reshuffle_each_iteration=True) if shuffle else ds
            return ds.batch(global_batch)  # sharded by the strategy: each worker gets its half of a batch

        with strategy.scope():
            net = build(config, len(d["train"][1]), tf.keras, global_batch)
        net.fit(batches("train", True), validation_data=batches("validation", False), epochs=max_t, verbose=0,
                callbacks=[ReportCheckpointCallback(metrics={"val_accuracy": "val_accuracy"})])

    def trial(config):
        TensorflowTrainer(
            train_loop_per_worker, train_loop_config=config,
            scaling_config=train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
            run_config=train.RunConfig(name=f"train-{tune.get_context().get_trial_id()}", storage_path=storage,
                                       callbacks=[TuneReportCallback()]),
        ).fit()

    space = draw(lambda name, low, high, log: (tune.loguniform if log else tune.uniform)(low, high),
                 lambda name, values: tune.choice(values))
    # Ray's dashboard (on by default) hosts the state API through which Ray Train removes a
    # finished trial's worker placement group; without it the next trial waits forever.
    # Its address is pinned: Ray's `ray_current_cluster` file may name another cluster.
    from reliability import _free_port

    port = _free_port()
    ray.init(address="local", num_cpus=1 + workers, include_dashboard=True, dashboard_port=port, log_to_driver=False,
             runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                                       "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    try:
        grid = tune.Tuner(
            tune.with_resources(trial, {"CPU": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric="val_accuracy", mode="max", num_samples=samples,
                scheduler=ASHAScheduler(max_t=max_t, grace_period=1, reduction_factor=REDUCTION),
                # One trial at a time: two drivers would hold 2 of the 3 CPUs, and neither
                # worker group could start. (Tune ignores `max_concurrent_trials` beside a
                # search algorithm passed in.)
                search_alg=BasicVariantGenerator(points_to_evaluate=configs, random_state=SEED, max_concurrent=1)),
            run_config=tune.RunConfig(storage_path=storage, name="peers", verbose=0),
        ).fit()
        epochs = sum(int(r.metrics["training_iteration"]) for r in grid)
        best = grid.get_best_result(scope="all")
        import tf_keras

        # Ray Train keeps the checkpoints; TuneReportCallback passes each one's path on.
        reports = best.metrics_dataframe
        top = reports.loc[reports["val_accuracy"].idxmax()]  # the best trial's best report
        with train.Checkpoint(top["checkpoint_path"]).as_directory() as ckpt:
            net = tf_keras.models.load_model(os.path.join(ckpt, "model.keras"))
        return {"trials": len(grid), "epochs_spent": epochs, "best_test_accuracy": test_accuracy(net, load(dataset_uri)),
                "best_val_accuracy": float(top["val_accuracy"]), "best_epoch": int(top["training_iteration"]),
                "best_config": best.config,
                # Each trial's configuration and validation accuracy per epoch, for
                # bench/run.py's paired comparison with `tuner`'s trials.
                "per_trial": [{"config": r.config, "val_accuracy": r.metrics_dataframe.sort_values(
                    "training_iteration")["val_accuracy"].tolist()} for r in grid]}
    finally:
        ray.shutdown()


PEERS = {"kerastuner": kerastuner, "optuna": optuna_sh, "raytune": raytune, "raytune_train": raytune_train}


def main() -> None:
    which, dataset_uri, samples, max_t = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    configs = json.loads(sys.argv[5]) if len(sys.argv) > 5 else None
    started = time.time()
    out = PEERS[which](dataset_uri, samples, max_t, **({"configs": configs} if configs else {}))
    out.update(wall_seconds=round(time.time() - started, 1), multi_worker_trials=which == "raytune_train")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
